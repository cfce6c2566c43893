-- The emulator refuses what the platform refuses. These requests are made by hand
-- (signed with rrpc.sign_v1 / sign_v3, sent through rrpc.core's libcurl session),
-- because the client itself never sends them.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local http = require "http"
local emulator = require "emulator"

local KEY, SECRET = "testid", "testsecret"

local function timestamp(offset_s)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + (offset_s or 0))
end

local function form(params)
  local parts = {}
  for k, v in pairs(params) do
    parts[#parts + 1] = rrpc.percent_encode(k) .. "=" .. rrpc.percent_encode(tostring(v))
  end
  return table.concat(parts, "&")
end

local function v1_params(api, overrides)
  local p = {
    AccessKeyId = KEY, Action = "RRpc", Format = "JSON", SignatureMethod = "HMAC-SHA1",
    SignatureNonce = core.nonce(), SignatureVersion = "1.0", Timestamp = timestamp(),
    Version = "2018-01-20",
  }
  for k, v in pairs(api) do p[k] = v end
  for k, v in pairs(overrides or {}) do p[k] = v ~= false and v or nil end
  return p
end

local RRPC = { ProductKey = "a1RRpcDemo", DeviceName = "echo", RequestBase64Byte = "cGluZw==", Timeout = 1000 }

describe("emulator", function()
  local emu, session

  -- Sends a V1 request with its parameters in a form body; returns status and decoded JSON.
  local function send_v1(params, secret)
    params.Signature = rrpc.sign_v1("POST", params, secret or SECRET)
    local status, _, body = session:perform("POST", emu.url .. "/",
      { ["Content-Type"] = "application/x-www-form-urlencoded" }, form(params), 5000)
    assert.is_number(status)
    return status, assert(core.decode_response(body))
  end

  local function refused(status, code, params, secret)
    local got_status, doc = send_v1(params, secret)
    assert.equal(code, doc.Code)
    assert.equal(status, got_status)
    assert.is_false(doc.Success)
    assert.is_string(doc.RequestId)
    return doc
  end

  setup(function()
    emu = emulator.start { workers = 2 }
    session = http.session {}
  end)

  teardown(function()
    session:close()
    emu:stop()
  end)

  it("answers a well-formed V1 request", function()
    local status, doc = send_v1(v1_params(RRPC))
    assert.equal(200, status)
    assert.equal("SUCCESS", doc.RrpcCode)
    assert.equal("cGluZw==", doc.PayloadBase64Byte)
  end)

  it("refuses a reused nonce, across connections and workers", function()
    local params = v1_params(RRPC)
    params.Signature = rrpc.sign_v1("POST", params, SECRET)
    local body = form(params)
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
    local status, _, first = session:perform("POST", emu.url .. "/", headers, body, 5000)
    assert.equal(200, status)
    assert.equal("SUCCESS", core.decode_response(first).RrpcCode)
    for _ = 1, 6 do -- fresh sessions: new connections, spread over both workers
      local other = http.session {}
      local again_status, _, again = other:perform("POST", emu.url .. "/", headers, body, 5000)
      other:close()
      assert.equal(400, again_status)
      assert.equal("SignatureNonceUsed", core.decode_response(again).Code)
    end
  end)

  it("does not burn a nonce on a request with a bad signature", function()
    local params = v1_params(RRPC)
    refused(400, "SignatureDoesNotMatch", params, "wrong")
    params.Signature = nil
    local status = send_v1(params)
    assert.equal(200, status)
  end)

  it("shows its string to sign on SignatureDoesNotMatch, never the secret", function()
    local doc = refused(400, "SignatureDoesNotMatch", v1_params(RRPC), "wrong")
    assert.matches("server string to sign is:POST&%2F&AccessKeyId%3Dtestid", doc.Message, 1, true)
    assert.is_nil(doc.Message:find(SECRET, 1, true))
  end)

  it("refuses missing common and API parameters", function()
    refused(400, "MissingSignatureNonce", v1_params(RRPC, { SignatureNonce = false }))
    refused(400, "MissingTimestamp", v1_params(RRPC, { Timestamp = false }))
    refused(400, "MissingProductKey", v1_params(RRPC, { ProductKey = false }))
    refused(400, "MissingDeviceName", v1_params(RRPC, { DeviceName = false }))
    refused(400, "MissingRequestBase64Byte", v1_params(RRPC, { RequestBase64Byte = false }))
    refused(400, "MissingTimeout", v1_params(RRPC, { Timeout = false }))
  end)

  it("refuses bad timestamps and clock skew over 15 minutes", function()
    refused(400, "InvalidTimeStamp.Format", v1_params(RRPC, { Timestamp = "2026-11-27 10:00:00" }))
    refused(400, "InvalidTimeStamp.Expired", v1_params(RRPC, { Timestamp = timestamp(-16 * 60) }))
    refused(400, "InvalidTimeStamp.Expired", v1_params(RRPC, { Timestamp = timestamp(16 * 60) }))
    assert.equal(200, (send_v1(v1_params(RRPC, { Timestamp = timestamp(-14 * 60) }))))
  end)

  it("refuses a Timeout outside 1000..8000 with HTTP 200 and Success false", function()
    for _, bad in ipairs { 999, 8001, "abc", "1500.5" } do
      refused(200, "iot.messagebroker.InvalidTimeoutValue", v1_params(RRPC, { Timeout = bad }))
    end
  end)

  it("refuses payloads that are not strict Base64", function()
    for _, bad in ipairs { "cGluZw", "cGlu Zw==", "cGluZw-_", "!!!!" } do
      refused(200, "iot.messagebroker.MessageContentIsNotBase64Encode",
        v1_params(RRPC, { RequestBase64Byte = bad }))
    end
  end)

  it("refuses unknown keys and actions", function()
    refused(404, "InvalidAccessKeyId.NotFound", v1_params(RRPC, { AccessKeyId = "nobody" }))
    refused(404, "InvalidAction.NotFound", v1_params(RRPC, { Action = "Reboot" }))
  end)

  it("burns the nonce of a well-signed request that a later check refuses", function()
    for _, case in ipairs { { 404, "InvalidAction.NotFound", { Action = "Reboot" } },
                            { 400, "InvalidVersion", { Version = "2017-04-20" } } } do
      local params = v1_params(RRPC, case[3])
      refused(case[1], case[2], params)
      params.Signature = nil
      refused(400, "SignatureNonceUsed", params)
    end
  end)

  it("refuses a decoded payload over 256 KB with a code of its own", function()
    local exact = string.rep("\255", 256 * 1024)
    local status, doc = send_v1(v1_params(RRPC, { RequestBase64Byte = rrpc.b64encode(exact) }))
    assert.equal(200, status)
    assert.equal("SUCCESS", doc.RrpcCode)
    local over = rrpc.b64encode(exact .. "x")
    refused(200, "iot.messagebroker.MessageContentIsTooLarge", v1_params(RRPC, { RequestBase64Byte = over }))
    refused(200, "iot.messagebroker.MessageContentIsTooLarge", v1_params({ Action = "Pub", ProductKey = "a1RRpcDemo",
      TopicFullName = "/a1RRpcDemo/echo/user/get", MessageContent = over }))
  end)

  it("answers XML to a V1 request without Format, or with Format=XML", function()
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
    local function send_xml(params)
      params.Signature = rrpc.sign_v1("POST", params, SECRET)
      local status, response_headers, body = session:perform("POST", emu.url .. "/", headers, form(params), 5000)
      return status, response_headers, body
    end
    for _, format in ipairs { false, "XML", "xml" } do
      local status, response_headers, body = send_xml(v1_params(RRPC, { Format = format }))
      assert.equal(200, status)
      assert.equal("text/xml;charset=utf-8", response_headers["content-type"])
      assert.matches("^<%?xml version='1.0' encoding='UTF%-8'%?><RRpcResponse><RequestId>[%x%-]+</RequestId>"
        .. "<MessageId>%d+</MessageId>", body)
      assert.matches("<PayloadBase64Byte>cGluZw==</PayloadBase64Byte><RrpcCode>SUCCESS</RrpcCode>"
        .. "<Success>true</Success></RRpcResponse>$", body)
    end
    local status, _, body = send_xml(v1_params(RRPC, { Format = false, Timeout = 1 }))
    assert.equal(200, status)
    assert.matches("<Code>iot.messagebroker.InvalidTimeoutValue</Code>", body, 1, true)
    assert.matches("<Success>false</Success>", body, 1, true)
    status, _, body = send_xml(v1_params(RRPC, { Format = false, AccessKeyId = "nobody" }))
    assert.equal(404, status)
    assert.matches("^<%?xml[^>]*%?><Error><RequestId>[%x%-]+</RequestId><HostId>[^<]*</HostId>"
      .. "<Code>InvalidAccessKeyId.NotFound</Code><Message>[^<]+</Message></Error>$", body)
    -- JSON as before with any other Format
    local json_status, doc = send_v1(v1_params(RRPC, { Format = "JSON" }))
    assert.equal(200, json_status)
    assert.equal("SUCCESS", doc.RrpcCode)
  end)

  describe("V3", function()
    local function send_v3(body, override_headers)
      local headers = {
        ["content-type"] = "application/x-www-form-urlencoded",
        ["x-acs-action"] = "RRpc", ["x-acs-version"] = "2018-01-20", ["x-acs-date"] = timestamp(),
        ["x-acs-signature-nonce"] = core.nonce(),
      }
      local authorization, canonical_request = rrpc.sign_v3 { method = "POST",
        host = emu.url:match("//(.*)"), headers = headers, body = body,
        access_key_id = KEY, access_key_secret = SECRET }
      headers.authorization = authorization
      headers["x-acs-content-sha256"] = canonical_request:match("\n(%x+)$") -- the hashed body
      for k, v in pairs(override_headers or {}) do headers[k] = v end
      local status, _, resp = session:perform("POST", emu.url .. "/", headers, body, 5000)
      return status, assert(core.decode_response(resp))
    end

    it("answers a well-formed request", function()
      local status, doc = send_v3(form(RRPC))
      assert.equal(200, status)
      assert.equal("SUCCESS", doc.RrpcCode)
    end)

    it("refuses a body that does not match x-acs-content-sha256", function()
      local status, doc = send_v3(form(RRPC), { ["x-acs-content-sha256"] = string.rep("0", 64) })
      assert.equal(400, status)
      assert.equal("SignatureDoesNotMatch", doc.Code)
    end)

    it("refuses a request whose signed headers leave out an x-acs-* header", function()
      local status, doc = send_v3(form(RRPC), { ["x-acs-extra"] = "unsigned" })
      assert.equal(400, status)
      assert.equal("SignatureDoesNotMatch", doc.Code)
    end)

    it("refuses a missing x-acs-signature-nonce", function()
      local status, doc = send_v3(form(RRPC), { ["x-acs-signature-nonce"] = "" })
      assert.equal(400, status)
      assert.equal("MissingXAcsSignatureNonce", doc.Code)
    end)
  end)

  it("fails to start on a malformed registry, naming the file", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"access_keys": {"k": {}}, "products": 3}')
    f:close()
    local ok, err = pcall(emulator.start, { devices = path })
    os.remove(path)
    assert.is_false(ok)
    assert.matches(path, err, 1, true)
  end)
end)
