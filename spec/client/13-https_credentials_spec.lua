-- HTTPS with a CA made for the run, STS keys, RAM-role credentials that expire while the
-- client works, the metadata service down or slow, and proxies.
local rrpc = require "rrpc"
local credentials = require "rrpc.credentials"
local cjson = require "cjson"
local emulator = require "emulator"
local tls = require "tls"
local system = require "system"
local process = require "process"

local PK = "a1RRpcDemo"

local function http(method, url)
  local pipe = assert(io.popen(("curl -s -X %s '%s'"):format(method, url)))
  local body = pipe:read("*a")
  pipe:close()
  return body
end

local function call(c, device, extra)
  local args = { product_key = PK, device_name = device or "echo", payload = "x" }
  for k, v in pairs(extra or {}) do args[k] = v end
  return c:rrpc(args)
end

describe("HTTPS", function()
  local certs, good, untrusted, wrong_name

  setup(function()
    certs = tls.generate()
    good = emulator.start { tls = { cert = certs.cert, key = certs.key } }
    untrusted = emulator.start { tls = { cert = certs.untrusted_cert, key = certs.untrusted_key } }
    wrong_name = emulator.start { tls = { cert = certs.wrong_name_cert, key = certs.wrong_name_key } }
  end)

  teardown(function()
    good:stop()
    untrusted:stop()
    wrong_name:stop()
    tls.remove(certs)
  end)

  local function client(e, opts)
    local o = { access_key_id = "testid", access_key_secret = "testsecret", endpoint = e.https_url }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rrpc.new(o)
  end

  local function refused_before_sending(c)
    local res, err = call(c)
    c:close()
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.equal("no", err.delivered)
    assert.is_true(err.retryable)
    return err
  end

  it("verifies the platform's certificate against the CA it is given", function()
    local c = client(good, { ca_file = certs.ca_file })
    assert.equal("x", assert(call(c)).payload)
    c:close()
  end)

  it("refuses a certificate no trusted CA signed", function()
    local err = refused_before_sending(client(good))
    assert.equal("CURLE_PEER_FAILED_VERIFICATION", err.code)
    refused_before_sending(client(untrusted, { ca_file = certs.ca_file }))
  end)

  it("refuses a certificate for another host name", function()
    local err = refused_before_sending(client(wrong_name, { ca_file = certs.ca_file }))
    assert.equal("CURLE_PEER_FAILED_VERIFICATION", err.code)
    assert.matches("127.0.0.1", err.message, 1, true)
  end)

  it("skips verification only when told so, loudly", function()
    local c = client(untrusted, { insecure_skip_tls_verify = true })
    assert.equal("x", assert(call(c)).payload)
    c:close()
  end)
end)

describe("STS keys", function()
  local emu
  setup(function() emu = emulator.start {} end)
  teardown(function() emu:stop() end)

  it("sends the security token with both signatures", function()
    for _, signature in ipairs { "v3", "v1" } do
      local c = rrpc.new { access_key_id = "STS.static", access_key_secret = "StsStaticSecret",
                           security_token = "CAIS+static/token==", endpoint = emu.url, signature = signature }
      assert.equal("x", assert(call(c)).payload)
      c:close()
      c = rrpc.new { access_key_id = "STS.static", access_key_secret = "StsStaticSecret",
                     endpoint = emu.url, signature = signature }
      local _, err = call(c)
      c:close()
      assert.equal("MissingSecurityToken", err.code)
    end
  end)
end)

describe("ECS RAM role credentials #slow", function()
  local emu
  setup(function() emu = emulator.start {} end)
  teardown(function()
    http("POST", emu.url .. "/__emulator/metadata?mode=ok")
    emu:stop()
  end)

  local function metadata_counts()
    return cjson.decode(http("GET", emu.url .. "/__emulator/stats")).metadata
  end

  local function role(name)
    return credentials.ecs_ram_role { role_name = name, metadata_endpoint = emu.url }
  end

  it("fetches a token, then the role's credentials, and caches them", function()
    http("POST", emu.url .. "/__emulator/stats/reset")
    local c = rrpc.new { endpoint = emu.url, credentials = role("EcsRole") }
    for _ = 1, 5 do assert.equal("x", assert(call(c)).payload) end
    c:close()
    local counts = metadata_counts()
    assert.same({ 1, 1 }, { counts.token, counts.credentials })
  end)

  it("finds the role name itself when none is given", function()
    local provider = credentials.ecs_ram_role { metadata_endpoint = emu.url }
    assert(provider:get())
    assert.matches("^STS%.", provider.cached.access_key_id)
  end)

  it("keeps a client working across the refresh of credentials that expire within the test", function()
    http("POST", emu.url .. "/__emulator/stats/reset")
    local c = rrpc.new { endpoint = emu.url, credentials = role("ShortRole") } -- valid 4 s
    local ids = {}
    local deadline = system.monotime() + 6
    while system.monotime() < deadline do
      assert.equal("x", assert(call(c)).payload)
      ids[tostring(c):match("key (%S+),")] = true
      system.sleep(0.25)
    end
    c:close()
    local keys = 0
    for _ in pairs(ids) do keys = keys + 1 end
    assert.is_true(keys >= 2, "the calls signed with refreshed credentials") -- STS key ids differ
    local credentials_fetched = metadata_counts().credentials
    assert.is_true(credentials_fetched >= 2 and credentials_fetched <= 4, "fetched " .. credentials_fetched)
  end)

  it("refreshes in the middle of a batch", function()
    http("POST", emu.url .. "/__emulator/stats/reset")
    local c = rrpc.new { endpoint = emu.url, credentials = role("ShortRole") }
    local requests = {}
    for i = 1, 30 do requests[i] = { product_key = "a1Bench", device_name = "d200", payload = "b" .. i } end
    local results, summary = rrpc.batch(c, requests, { concurrency = 1 }) -- about 6 s
    c:close()
    assert.equal(30, summary.ok, require("cjson").encode(summary.by_code))
    assert.equal("b30", results[30].res.payload)
    assert.is_true(metadata_counts().credentials >= 2)
  end)

  it("reports a metadata service that is down, and one that is slow, within bounded time", function()
    http("POST", emu.url .. "/__emulator/metadata?mode=down")
    local c, err = role("EcsRole"):get()
    assert.is_nil(c)
    assert.matches("ECS metadata at " .. emu.url .. ": token: HTTP 503", err, 1, true)
    http("POST", emu.url .. "/__emulator/metadata?mode=slow&delay_ms=5000")
    local started = system.monotime()
    c, err = role("EcsRole"):get()
    assert.is_nil(c)
    assert.matches("CURLE_OPERATION_TIMEDOUT", err, 1, true)
    assert.is_true(system.monotime() - started < 3)
    http("POST", emu.url .. "/__emulator/metadata?mode=ok")
  end)

  it("fails the call, without sending it, once credentials expire and cannot be refreshed", function()
    local c = rrpc.new { endpoint = emu.url, credentials = role("ShortRole") } -- valid 4 s
    assert(call(c))
    http("POST", emu.url .. "/__emulator/metadata?mode=down")
    system.sleep(4.5)
    local res, err = call(c)
    http("POST", emu.url .. "/__emulator/metadata?mode=ok")
    c:close()
    assert.is_nil(res)
    assert.same({ "credentials", "CredentialsUnavailable", "no" }, { err.kind, err.code, err.delivered })
    assert.matches("HTTP 503", err.message, 1, true)
  end)
end)

describe("a provider's cache", function()
  -- a clock of our own: the refresh schedule without waiting for it
  local now = 1000
  local function clock() return now end

  it("refreshes when a fifth of the lifetime (at most 3 minutes), and a clock step, is left", function()
    local fetched = 0
    local p = credentials.provider("test", function()
      fetched = fetched + 1
      return { access_key_id = "STS." .. fetched, access_key_secret = "s", security_token = "t",
               expiration = now + 100 }
    end, clock)
    assert.equal("STS.1", p:get().access_key_id)
    now = now + 78
    assert.equal("STS.1", p:get().access_key_id) -- 22 s left: more than a fifth and a second
    now = now + 2
    assert.equal("STS.2", p:get().access_key_id) -- 20 s left: refreshed
    assert.equal(2, fetched)
    now = now + 1000
    local long = credentials.provider("test", function()
      return { access_key_id = "L", access_key_secret = "s", expiration = now + 3600 }
    end, clock)
    long:get()
    assert.equal(now + 3600 - 180 - 1, long.cached.refresh_at)
  end)

  it("keeps credentials that are still valid when a refresh fails, and says so once they are not", function()
    local up = true
    local p = credentials.provider("test", function()
      if not up then return nil, "metadata down" end
      return { access_key_id = "STS.ok", access_key_secret = "s", expiration = now + 100 }
    end, clock)
    assert(p:get())
    up = false
    now = now + 90 -- past the refresh point, before the expiry
    assert.equal("STS.ok", assert(p:get()).access_key_id)
    now = now + 20 -- expired
    local c, err = p:get()
    assert.is_nil(c)
    assert.equal("metadata down", err)
  end)
end)

describe("proxies", function()
  local emu, proxy_dir, proxy_pid, proxy_url

  -- A forward proxy for plain HTTP: nginx passing absolute-URI requests on.
  setup(function()
    emu = emulator.start {}
    proxy_dir = io.popen("mktemp -d /tmp/rrpc-proxy.XXXXXX"):read("*l")
    local port = process.spare_port()
    local conf = assert(io.open(proxy_dir .. "/nginx.conf", "w"))
    conf:write(([[
      %s
      pid %s/nginx.pid;
      error_log %s/error.log;
      events {}
      http {
        access_log %s/access.log;
        client_body_temp_path %s/body;
        proxy_temp_path %s/proxy;
        server {
          listen 127.0.0.1:%d;
          location / { proxy_pass http://$http_host$request_uri; }
        }
      }
    ]]):format(io.popen("id -u"):read("*l") == "0" and "user root;" or "", proxy_dir, proxy_dir,
      proxy_dir, proxy_dir, proxy_dir, port))
    conf:close()
    proxy_pid = io.popen(("nginx -p %s -c %s/nginx.conf -g 'daemon off;' >/dev/null 2>&1 & echo $!")
      :format(proxy_dir, proxy_dir)):read("*l")
    proxy_url = "http://127.0.0.1:" .. port
    local deadline = system.monotime() + 5
    while system.monotime() < deadline and not io.open(proxy_dir .. "/nginx.pid") do system.sleep(0.05) end
  end)

  teardown(function()
    os.execute("kill -TERM " .. proxy_pid)
    local deadline = system.monotime() + 5
    while system.monotime() < deadline and io.open("/proc/" .. proxy_pid .. "/stat") do system.sleep(0.05) end
    os.execute("rm -rf " .. proxy_dir)
    emu:stop()
  end)

  local function proxied_requests()
    local f = io.open(proxy_dir .. "/access.log")
    local n = 0
    if f then
      for _ in f:lines() do n = n + 1 end
      f:close()
    end
    return n
  end

  it("goes through the proxy it is given, and around it for no_proxy hosts", function()
    local c = rrpc.new { access_key_id = "testid", access_key_secret = "testsecret", endpoint = emu.url,
                         proxy = proxy_url }
    assert.equal("x", assert(call(c)).payload)
    c:close()
    system.sleep(0.2)
    assert.equal(1, proxied_requests())
    c = rrpc.new { access_key_id = "testid", access_key_secret = "testsecret", endpoint = emu.url,
                   proxy = proxy_url, no_proxy = "127.0.0.1" }
    assert.equal("x", assert(call(c)).payload)
    c:close()
    system.sleep(0.2)
    assert.equal(1, proxied_requests())
  end)
end)
