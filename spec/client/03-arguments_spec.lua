-- Every bad argument raises an error that names it, before anything is sent.
local rrpc = require "rrpc"

local SECRET = "Spec-Secret-0123456789"
local function new(overrides)
  local opts = { access_key_id = "LTAI5tSpecKey", access_key_secret = SECRET,
                 endpoint = "http://127.0.0.1:9" } -- discard port: nothing is sent in this file
  for k, v in pairs(overrides or {}) do opts[k] = v end
  return rrpc.new(opts)
end

local function raises(pattern, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.is_string(err)
  assert.matches(pattern, err, 1, true)
  assert.is_nil(err:find(SECRET, 1, true))
end

describe("rrpc.new", function()
  it("needs a table with both keys", function()
    raises("bad argument #1 to 'new' (table expected, got nil)", function() rrpc.new() end)
    raises("option 'access_key_id' is required", function() rrpc.new { access_key_secret = SECRET } end)
    raises("option 'access_key_secret' is required", function() rrpc.new { access_key_id = "id" } end)
    raises("option 'access_key_secret' is required", function() new { access_key_secret = "" } end)
  end)

  it("rejects unknown options and wrong types", function()
    raises("unknown option 'acces_key_id'", function() new { acces_key_id = "typo" } end)
    raises("option 'connect_timeout' must be an integer, got string", function() new { connect_timeout = "5" } end)
    raises("option 'connect_timeout' must be an integer, got number", function() new { connect_timeout = 1.5 } end)
    raises("option 'region' must be a string, got number", function() new { region = 1 } end)
  end)

  it("rejects out-of-range values and unknown choices", function()
    raises("option 'connect_timeout' must be in 1..600000, got 0", function() new { connect_timeout = 0 } end)
    raises("option 'signature' has no choice \"v2\"", function() new { signature = "v2" } end)
    raises("option 'placement' has no choice \"header\"", function() new { placement = "header" } end)
  end)

  it("rejects a region or endpoint of the wrong shape", function()
    raises("option 'region' must look like \"cn-shanghai\", got \"Shanghai\"",
      function() new { region = "Shanghai", endpoint = nil } end)
    raises("option 'endpoint' must look like \"https://host[:port]\", got \"ftp://x\"",
      function() new { endpoint = "ftp://x" } end)
    raises("option 'endpoint' must look like", function() new { endpoint = "https://h/path" } end)
  end)

  it("refuses configuration that could never work, naming the option", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    local empty = dir .. "/empty.pem"
    io.open(empty, "w"):close()
    raises("option 'ca_file': cannot read certificates from \"/nonexistent/ca.pem\" (No such file or directory)",
      function() new { ca_file = "/nonexistent/ca.pem" } end)
    raises("option 'ca_file': cannot read certificates from " .. ("%q"):format(dir) .. " (Is a directory)",
      function() new { ca_file = dir } end)
    raises("option 'ca_file': cannot read certificates from " .. ("%q"):format(empty) .. " (empty file)",
      function() new { ca_file = empty } end)
    raises("option 'ca_path': " .. ("%q"):format(empty) .. " is not a readable directory",
      function() new { ca_path = empty } end)
    raises("option 'ca_path': \"/nonexistent\" is not a readable directory", function() new { ca_path = "/nonexistent" } end)
    new({ ca_path = dir }):close()
    os.execute("rm -rf " .. dir)
    raises("option 'proxy' is not a proxy URL: Bad IPv6 address", function() new { proxy = "http://[::1" } end)
    raises("option 'proxy' is not a proxy URL: Port number", function() new { proxy = "http://proxy:99999" } end)
    raises("option 'proxy' is not a proxy URL: scheme 'ftp'", function() new { proxy = "ftp://proxy:21" } end)
    raises("option 'proxy' is not a proxy URL", function() new { proxy = "http://" .. ("p"):rep(10 * 2^20) } end)
    for _, proxy in ipairs { "proxy:3128", "http://user:pw@proxy:3128", "socks5h://127.0.0.1:1080", "https://[::1]:443" } do
      new({ proxy = proxy }):close()
    end
    -- libcurl takes strings of at most 8,000,000 bytes and would drop a longer one
    raises("option 'user_agent' was refused by the HTTP library", function() new { user_agent = ("u"):rep(10 * 2^20) } end)
    raises("option 'no_proxy' was refused by the HTTP library", function() new { no_proxy = ("n"):rep(10 * 2^20) } end)
    raises("option 'access_key_id' must not contain control characters", function() new { access_key_id = "LTAI\r\nX: y" } end)
    raises("option 'security_token' must not contain control characters", function() new { security_token = "tok\n" } end)
    raises("option 'max_response_memory' must be in 1024..1099511627776, got 10", function() new { max_response_memory = 10 } end)
  end)

  it("derives the endpoint from the region, and an explicit endpoint wins", function()
    local c = rrpc.new { access_key_id = "id", access_key_secret = SECRET, region = "ap-southeast-1" }
    assert.equal("https://iot.ap-southeast-1.aliyuncs.com", c.endpoint)
    assert.equal("iot.ap-southeast-1.aliyuncs.com", c.host)
    c:close()
    c = new { endpoint = "http://127.0.0.1:8080/" }
    assert.equal("http://127.0.0.1:8080", c.endpoint)
    assert.equal("127.0.0.1:8080", c.host)
    c:close()
  end)

  it("never shows the secret through tostring or pairs", function()
    local c = new { security_token = "sts-token-value" }
    assert.is_nil(tostring(c):find(SECRET, 1, true))
    assert.matches("rrpc.client (http://127.0.0.1:9, key LTAI****Key, v3)", tostring(c), 1, true)
    for k, v in pairs(c) do
      assert.is_nil(tostring(v):find(SECRET, 1, true), k)
      assert.is_nil(tostring(v):find("sts-token-value", 1, true), k)
    end
    c:close()
  end)

  it("keeps CR and LF out of the headers it sends", function()
    raises("option 'user_agent' must not contain control characters",
      function() new { user_agent = "tool\r\nX-Injected: 1" } end)
    raises("option 'security_token' must not contain control characters",
      function() new { security_token = "token\r\nX-Injected: 1" } end)
    -- credentials that a provider hands out later are checked at each call
    local c = rrpc.new { endpoint = "http://127.0.0.1:9", credentials = rrpc.credentials.provider("spec", function()
      return { access_key_id = "LTAI5tSpecKey", access_key_secret = SECRET, security_token = "token\r\nX-Injected: 1" }
    end) }
    local res, err = c:rrpc { product_key = "pk", device_name = "dn", payload = "x" }
    c:close()
    assert.is_nil(res)
    assert.same({ "credentials", "no" }, { err.kind, err.delivered })
    assert.matches("control characters", err.message, 1, true)
  end)

  it("builds a User-Agent in the official form, with a caller suffix", function()
    local c = new { user_agent = "fleet-tool/2" }
    local vm = jit and "LuaJIT/2%.1[%w%.%-]*" or "Lua/5%.%d"
    assert.matches("^AlibabaCloud %(%w+; [%w_]+%) " .. vm .. " rrpc/%d+%.%d+%.%d+ fleet%-tool/2$", c.user_agent)
    c:close()
  end)
end)

describe("client:rrpc arguments", function()
  local client
  before_each(function() client = new() end)
  after_each(function() client:close() end)

  local function call(args) return function() return client:rrpc(args) end end
  local good = { product_key = "pk", device_name = "dn", payload = "x" }
  local function with(overrides)
    local t = {}
    for k, v in pairs(good) do t[k] = v end
    for k, v in pairs(overrides) do t[k] = v end
    return t
  end

  it("needs a table", function()
    raises("bad argument #1 to 'rrpc' (table expected, got string)", call("x"))
  end)

  it("needs product_key, device_name and payload", function()
    raises("option 'product_key' is required", call { device_name = "dn", payload = "x" })
    raises("option 'device_name' is required", call { product_key = "pk", payload = "x" })
    raises("option 'device_name' is required", call(with { device_name = "" }))
    raises("option 'payload' is required", call { product_key = "pk", device_name = "dn" })
  end)

  it("checks types", function()
    raises("option 'payload' must be a string, got table", call(with { payload = {} }))
    raises("option 'product_key' must be a string, got number", call(with { product_key = 5 }))
    raises("option 'topic' must be a string, got boolean", call(with { topic = true }))
    raises("option 'timeout' must be an integer, got number", call(with { timeout = 1500.5 }))
  end)

  it("keeps Timeout within 1000..8000", function()
    raises("option 'timeout' must be in 1000..8000, got 999", call(with { timeout = 999 }))
    raises("option 'timeout' must be in 1000..8000, got 8001", call(with { timeout = 8001 }))
  end)

  it("limits the payload to 256 KB", function()
    raises("option 'payload' is 262145 bytes, more than the platform's 262144",
      call(with { payload = string.rep("x", 262145) }))
  end)

  it("rejects unknown options", function()
    raises("unknown option 'paylod'", call(with { paylod = "typo" }))
  end)

  it("must be called as a method on an open client", function()
    raises("bad self to 'rrpc' (use client:rrpc(...))", function() return client.rrpc(good) end)
    client:close()
    client:close() -- idempotent
    raises("attempt to use a closed client in 'rrpc'", call(good))
    assert.matches("closed", tostring(client))
  end)
end)

describe("client:request arguments", function()
  local client
  before_each(function() client = new() end)
  after_each(function() client:close() end)

  it("needs an action name and string-keyed scalar parameters", function()
    raises("bad argument #1 to 'request' (action name expected, got nil)", function() client:request() end)
    raises("bad argument #1 to 'request' (action name expected, got \"R Rpc\")", function() client:request("R Rpc") end)
    raises("bad argument #2 to 'request' (table expected, got string)", function() client:request("Pub", "x") end)
    raises("bad argument #2 to 'request' (parameter \"A\": string, number or boolean value expected)",
      function() client:request("Pub", { A = {} }) end)
  end)

  it("refuses parameters the client signs itself", function()
    raises("bad argument #2 to 'request' (parameter \"Signature\": set by the client)",
      function() client:request("Pub", { Signature = "x" }) end)
    raises("parameter \"Timestamp\": set by the client", function() client:request("Pub", { Timestamp = "x" }) end)
  end)

  it("checks its options", function()
    raises("unknown option 'retries'", function() client:request("Pub", {}, { retries = 1 }) end)
  end)
end)
