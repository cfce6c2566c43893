-- The STS security token is as secret as the AccessKey secret. The platform echoes it: a
-- V1 SignatureDoesNotMatch shows the platform's string to sign, which holds the token
-- percent-encoded twice. No error (tostring, message or any other field), no batch
-- outcome and no emulator log may hold either secret in any form: raw, percent-encoded
-- once or twice, JSON-escaped. The command line's side is in spec/14; the whole suite's
-- errors and logs are scanned by spec/99.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local http = require "http"
local client_module = require "rrpc.client"
local credentials = require "rrpc.credentials"
local errors = require "rrpc.errors"
local emulator = require "emulator"
local process = require "process"
local system = require "system"

-- The registry's static STS key (emulator/devices.json) and a secret that is not its own.
local KEY, SECRET, TOKEN = "STS.static", "StsStaticSecret", "CAIS+static/token=="
local WRONG_SECRET = "Wrong-Secret-Value-42"
local PK = "a1RRpcDemo"

local pe = core.percent_encode

-- Every form of `secret` that must never show.
local function forms(secret)
  local once = pe(secret)
  return {
    secret, once, (once:gsub("%%%x%x", string.lower)), pe(once), (secret:gsub("/", "\\/")),
    (secret:gsub("[+/=]", function(c) return ("\\u%04x"):format(c:byte()) end)),
  }
end

local function assert_clean(text, secrets, what)
  for _, secret in ipairs(secrets) do
    for _, form in ipairs(forms(secret)) do
      assert.is_nil(text:find(form, 1, true), ("%s holds %q: %s"):format(what, form, text))
    end
  end
end

-- tostring(err) and every string field of err.
local function assert_clean_error(err, secrets)
  assert.is_true(rrpc.is_error(err), tostring(err))
  assert_clean(tostring(err), secrets, "tostring(err)")
  for name, value in pairs(err) do
    if type(value) == "string" then assert_clean(value, secrets, "err." .. name) end
  end
end

describe("errors.mask", function()
  it("finds a secret raw, percent-encoded once or twice (either case), JSON-escaped, and mixed", function()
    for _, form in ipairs(forms(TOKEN)) do
      assert.equal("a ***, b", errors.mask("a " .. form .. ", b", TOKEN), form)
    end
    assert.equal("x=***&y=***", errors.mask("x=CAIS%252Bstatic%2Ftoken\\u003d=&y=" .. TOKEN, TOKEN))
    assert.equal("*** and ***", errors.mask(SECRET .. " and " .. TOKEN, { SECRET, nil, TOKEN }))
    assert.equal("CAIS+static/token=", errors.mask("CAIS+static/token=", TOKEN)) -- not all of it
    assert.equal("as it was", errors.mask("as it was", nil))
    assert.equal("as it was", errors.mask("as it was", { "", 42 }))
  end)
end)

describe("the security token in errors", function()
  local emu
  setup(function() emu = emulator.start {} end)
  teardown(function() emu:stop() end)

  local function new_client(signature, placement, opts)
    opts = opts or {}
    return rrpc.new { access_key_id = opts.id or KEY, access_key_secret = opts.secret or WRONG_SECRET,
                      security_token = opts.token or TOKEN, endpoint = emu.url, signature = signature,
                      placement = placement }
  end

  local REQUEST = { product_key = PK, device_name = "echo", payload = "x" }

  it("is in the platform's V1 SignatureDoesNotMatch, percent-encoded twice (the leak's source)", function()
    local url, headers, body = core.build_request {
      endpoint = emu.url, host = emu.url:match("//(.*)"), action = "RRpc", version = "2018-01-20",
      params = { ProductKey = PK, DeviceName = "echo", RequestBase64Byte = "eA==", Timeout = 5000 },
      access_key_id = KEY, access_key_secret = WRONG_SECRET, security_token = TOKEN,
      region_id = "cn-shanghai", signature = "v1", placement = "body",
    }
    local session = http.session {}
    local status, _, answer = session:perform("POST", url, headers, body, 10000)
    session:close()
    assert.equal(400, status)
    assert.is_truthy(answer:find("SecurityToken%3D" .. pe(pe(TOKEN)) .. "%26", 1, true), answer)
  end)

  it("never shows in client:rrpc's error: V1 and V3, parameters in the body or the query", function()
    for _, signature in ipairs { "v1", "v3" } do
      for _, placement in ipairs { "body", "query" } do
        local c = new_client(signature, placement)
        local res, err = c:rrpc(REQUEST)
        c:close()
        assert.is_nil(res)
        assert.equal("SignatureDoesNotMatch", err.code)
        if signature == "v1" then
          -- the platform's string to sign, with the token masked where it was
          assert.is_truthy(err.message:find("%26SecurityToken%3D***%26SignatureMethod", 1, true), err.message)
        end
        assert_clean_error(err, { TOKEN, WRONG_SECRET })
      end
    end
  end)

  it("never shows in client:request's error, nor in rrpc.batch's or rrpc.each's outcomes", function()
    local c = new_client("v1", "body")
    local doc, err = c:request("Pub", { ProductKey = PK, TopicFullName = "/a1RRpcDemo/echo/user/get",
                                        MessageContent = "eA==" })
    assert.is_nil(doc)
    assert.equal("SignatureDoesNotMatch", err.code)
    assert_clean_error(err, { TOKEN, WRONG_SECRET })
    local results = rrpc.batch(c, { REQUEST, REQUEST }, { retry = false })
    for i = 1, 2 do
      assert.equal("SignatureDoesNotMatch", results[i].err.code)
      assert_clean_error(results[i].err, { TOKEN, WRONG_SECRET })
    end
    local seen = 0
    for _, res, each_err in rrpc.each(c, { REQUEST }, { retry = false }) do
      assert.is_nil(res)
      assert_clean_error(each_err, { TOKEN, WRONG_SECRET })
      seen = seen + 1
    end
    assert.equal(1, seen)
    c:close()
  end)

  it("never shows when it is one the metadata service issued (long, with + / =)", function()
    local issued = assert(credentials.ecs_ram_role { role_name = "EcsRole", metadata_endpoint = emu.url }:get())
    assert.is_true(#issued.security_token > 500)
    for _, signature in ipairs { "v1", "v3" } do
      local c = new_client(signature, "body", { id = issued.access_key_id, token = issued.security_token })
      local _, err = c:rrpc(REQUEST)
      c:close()
      assert.equal("SignatureDoesNotMatch", err.code)
      assert_clean_error(err, { issued.security_token, issued.access_key_secret })
    end
  end)

  it("is scrubbed from every field of any answer, and so is the one before a refresh", function()
    -- a provider whose credentials change when its clock passes the refresh point
    local now, generation = 1000, 1
    local TOKENS = { "CAIS+Before/Refresh==", "CAIS+After/Refresh==" }
    local provider = credentials.provider("spec", function()
      return { access_key_id = "STS.spec", access_key_secret = "Spec-Secret-0123456789",
               security_token = TOKENS[generation], expiration = now + 100 }
    end, function() return now end)
    local c = rrpc.new { endpoint = "http://127.0.0.1:9", credentials = provider }
    local p = client_module.open_state(c, "spec", 1)
    local call = client_module.prepare_rrpc(c, "spec", REQUEST, nil, 1)
    assert(client_module.sign(c, p, call)) -- a request signed with the first token
    now, generation = 1090, 2
    assert(client_module.sign(c, p, call)) -- and one with the refreshed token
    assert.equal(TOKENS[2], provider.cached.security_token)
    local all = { TOKENS[1], TOKENS[2], "Spec-Secret-0123456789" }
    local function check(status, headers, body)
      local res, err = client_module.interpret(p, call, status, headers, body)
      assert.is_nil(res)
      assert_clean_error(err, all)
      return err
    end
    -- the first token (an answer to the earlier request) in the message, once and twice encoded
    local err = check(400, {}, ('{"Code":"SignatureDoesNotMatch","Message":"to sign: SecurityToken%%3D%s, %s","RequestId":"R-%s"}')
      :format(pe(pe(TOKENS[1])), pe(TOKENS[1]), TOKENS[2]))
    assert.equal("to sign: SecurityToken%3D***, ***", err.message)
    assert.equal("R-***", err.request_id)
    -- in the code, in JSON escapes
    err = check(400, {}, ('{"Code":"X.%s","Message":"%s","RequestId":"r"}'):format(TOKENS[2],
      (TOKENS[1]:gsub("/", "\\/"))))
    assert.equal("X.***", err.code)
    -- an RRpc answer's RrpcCode, a body that is not JSON (its RequestId from the header)
    check(200, {}, ('{"Success":true,"RrpcCode":"%s","RequestId":"r"}'):format(TOKENS[2]))
    err = check(502, { ["x-acs-request-id"] = TOKENS[1] }, "<html>bad gateway</html>")
    assert.equal("***", err.request_id)
    c:close()
  end)
end)

describe("the emulator's logs", function()
  it("mask the security token in the V3 canonical request logged on a signature mismatch", function()
    local emu = emulator.start {}
    for _, signature in ipairs { "v3", "v1" } do
      for _, placement in ipairs { "body", "query" } do
        local c = rrpc.new { access_key_id = KEY, access_key_secret = WRONG_SECRET, security_token = TOKEN,
                             endpoint = emu.url, signature = signature, placement = placement }
        local _, err = c:rrpc { product_key = PK, device_name = "echo", payload = "x" }
        c:close()
        assert.equal("SignatureDoesNotMatch", err.code)
      end
    end
    system.sleep(0.2) -- the access log is flushed every 100 ms
    local stderr, access = process.read_file(emu.stderr), process.read_file(emu.log)
    emu:stop() -- spec 99 scans them too
    -- the mismatch was logged, with the token's header line masked
    assert.equal(2, select(2, stderr:gsub("V3 signature mismatch", "")), stderr)
    assert.equal(2, select(2, stderr:gsub("\nx%-acs%-security%-token:%*%*%*\n", "")), stderr)
    assert_clean(stderr, { TOKEN, SECRET, WRONG_SECRET }, "the emulator's error log")
    assert_clean(access, { TOKEN, SECRET, WRONG_SECRET }, "the emulator's access log")
  end)
end)
