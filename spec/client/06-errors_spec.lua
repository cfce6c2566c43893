-- How each platform answer is classified: kind, whether the device may have the message,
-- whether the same call may be sent again.
local errors = require "rrpc.errors"

describe("error classification", function()
  local cases = {
    -- code, HTTP status, kind, delivered, retryable
    { "SignatureDoesNotMatch", 400, "api", "no", false },
    { "InvalidAccessKeyId.NotFound", 404, "api", "no", false },
    { "InvalidTimeStamp.Expired", 400, "api", "no", false },
    { "Forbidden.RAM", 403, "api", "no", false },
    { "Throttling.User", 400, "api", "no", true },
    { "Throttling.Api", 400, "api", "no", true },
    { "ServiceUnavailable", 503, "api", "no", true },
    { "InternalError", 500, "api", "maybe", false },
    { "SignatureNonceUsed", 400, "api", "maybe", false },
    { "MissingProductKey", 400, "invalid", "no", false },
    { "iot.messagebroker.InvalidTimeoutValue", 200, "invalid", "no", false },
    { "iot.messagebroker.MessageContentIsNotBase64Encode", 200, "invalid", "no", false },
    { "iot.messagebroker.NullMessageContent", 200, "invalid", "no", false },
    { "iot.messagebroker.InvalidFormattedTopicName", 200, "invalid", "no", false },
    { "iot.prod.NotExistedProduct", 200, "api", "no", false },
    { "iot.device.NotExistedDevice", 200, "api", "no", false },
    { "iot.device.InactiveDevice", 200, "api", "no", false },
    { "iot.system.InstanceNotFound", 200, "api", "no", false },
    { "iot.common.InvalidTenant", 200, "api", "no", false },
    { "iot.messagebroker.RateLimit", 200, "api", "no", true },
    { "iot.system.SystemException", 200, "api", "maybe", false },
    { "iot.messagebroker.RrpcException", 200, "api", "maybe", false },
    { "iot.messagebroker.RrpcFailed", 200, "api", "maybe", false },
    { "iot.messagebroker.OFFLINE", 200, "device", "no", false },
    { "iot.messagebroker.HALFCONN", 200, "device", "maybe", false },
    { "iot.messagebroker.TIMEOUT", 200, "device", "maybe", false },
    { "SomethingNew", 200, "api", "maybe", false },
    { "SomethingNew", 400, "api", "no", false },
  }
  for _, case in ipairs(cases) do
    local code, status, kind, delivered, retryable = (table.unpack or unpack)(case)
    it(("%s with HTTP %d is %s, delivered %s%s"):format(code, status, kind, delivered,
        retryable and ", retryable" or ""), function()
      local err = errors.api(code, { status = status, request_id = "R" })
      assert.equal(kind, err.kind)
      assert.equal(code, err.code)
      assert.equal(delivered, err.delivered)
      assert.equal(retryable, err.retryable)
    end)
  end

  it("maps device-state codes to their RrpcCode", function()
    assert.equal("TIMEOUT", errors.api("iot.messagebroker.TIMEOUT", {}).rrpc_code)
  end)

  it("network failures before sending are retryable, after sending they may have been delivered", function()
    local before = errors.network("CURLE_COULDNT_CONNECT", "refused", false)
    assert.same({ "network", "no", true }, { before.kind, before.delivered, before.retryable })
    local after = errors.network("CURLE_RECV_ERROR", "reset", true)
    assert.same({ "network", "maybe", false }, { after.kind, after.delivered, after.retryable })
  end)

  it("non-JSON HTTP answers: 4xx refused, 503/429 retryable, other 5xx maybe delivered", function()
    local e414, e429, e502, e503 = errors.http(414, "m"), errors.http(429, "m"), errors.http(502, "m"), errors.http(503, "m")
    assert.same({ "no", false }, { e414.delivered, e414.retryable })
    assert.same({ "no", true }, { e429.delivered, e429.retryable })
    assert.same({ "maybe", false }, { e502.delivered, e502.retryable })
    assert.same({ "no", true }, { e503.delivered, e503.retryable })
  end)

  it("scrubs the secret out of messages", function()
    local err = errors.api("SignatureDoesNotMatch", { status = 400, message = "key s3cr3t.+ echoed s3cr3t.+" }, "s3cr3t.+")
    assert.equal("key *** echoed ***", err.message)
    assert.is_nil(tostring(err):find("s3cr3t", 1, true))
  end)

  it("prints kind, code, message and context", function()
    local err = errors.api("Throttling.User", { status = 400, message = "slow down", request_id = "R1" })
    assert.equal("rrpc api error Throttling.User: slow down (HTTP 400, RequestId R1, delivered: no, retryable)",
      tostring(err))
  end)
end)
