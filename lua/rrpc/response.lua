-- The platform's answer: its fields checked, then read as a result or an rrpc error.
local core = require "rrpc.core"
local errors = require "rrpc.errors"

local json_null = require("cjson").null

local response = {}

local type, decode_response = type, core.decode_response -- for every answer: upvalues

-- What the fields of the platform's answers must be. A field of another type means the
-- answer is not the platform's, whatever else it says; JSON null counts as absent.
local FIELD_KINDS = {
  string = { named = "a string", check = function(v) return type(v) == "string" end },
  boolean = { named = "a boolean", check = function(v) return type(v) == "boolean" end },
  -- decode_response has turned an integer into its exact digits, so a number left here is
  -- a fraction or an exponent, which no MessageId is; the platform's field is a Long. The
  -- check is decode_response's own.
  digits = { named = "a 64-bit integer", check = core.is_int64_digits },
}
local COMMON_FIELDS = {
  { "RequestId", "string" }, { "Success", "boolean" }, { "Code", "string" },
  { "Message", "string" }, { "ErrorMessage", "string" }, { "MessageId", "digits" },
}
local RRPC_FIELDS = { { "RrpcCode", "string" }, { "PayloadBase64Byte", "string" } }

local function described(value)
  if type(value) == "string" and value:find("^%d+$") then return #value .. " digits" end
  return type(value)
end

-- Says what is wrong with the first field of `fields` that doc has of the wrong kind, or
-- nil; a JSON null it meets is removed (absent).
local function field_problem(doc, fields)
  for _, field in ipairs(fields) do
    local name, kind = field[1], FIELD_KINDS[field[2]]
    local value = doc[name]
    if value == json_null then
      doc[name] = nil
    elseif value ~= nil and not kind.check(value) then
      return ("field '%s' must be %s, got %s"):format(name, kind.named, described(value))
    end
  end
end

-- The kind each field of both lists needs, as decode_response tells them: a Lua type, or
-- "digits" (its check, in C).
local KIND_OF = {}
for _, fields in ipairs { COMMON_FIELDS, RRPC_FIELDS } do
  for _, field in ipairs(fields) do KIND_OF[field[1]] = field[2] end
end


--- response.rrpc(doc, fields_well, secrets) --> { payload, message_id, request_id, rrpc_code } | nil, err
-- The RRpc answer: the device's reply, or its state as an error (made with `secrets`).
-- fields_well: its fields are known to be of their kinds.
function response.rrpc(doc, fields_well, secrets)
  local problem = not fields_well and field_problem(doc, RRPC_FIELDS)
  if problem then
    return nil, errors.invalid_response(200, problem, doc.RequestId, doc.MessageId, secrets)
  end
  local code = doc.RrpcCode
  if code == "SUCCESS" then
    local payload, why = core.b64decode(doc.PayloadBase64Byte or "")
    if not payload then
      return nil, errors.invalid_response(200, "reply payload is not Base64 (" .. why .. ")",
        doc.RequestId, doc.MessageId, secrets)
    end
    -- attempts: counted by whoever made them, a slot of its own from the start
    return { payload = payload, message_id = doc.MessageId, request_id = doc.RequestId,
             rrpc_code = code, attempts = 1 }
  end
  if code then
    return nil, errors.device(code, code, { status = 200, request_id = doc.RequestId,
                                            message_id = doc.MessageId }, secrets)
  end
  return nil, errors.invalid_response(200, "response has no RrpcCode", doc.RequestId, nil, secrets)
end

--- response.document(doc) --> doc: client:request answers with the decoded document.
function response.document(doc)
  return doc
end

local function retry_after_ms(headers)
  local v = tonumber(headers["x-acs-retry-after"] or "")
  return v and math.floor(v) or nil
end

--- response.interpret(outcome, status, headers, body, secrets) --> result | nil, err
-- outcome: response.rrpc or response.document. No error holds a secret or security token
-- of `secrets`, in any field, from the moment it is made: each is made with them.
function response.interpret(outcome, status, headers, body, secrets)
  -- fields_well: whether every field of both lists that the answer has is of its kind
  -- (JSON null is not), told as it is decoded: the common case. When a field is not, the
  -- ordered checks of each list say which one is wrong.
  local doc, fields_well = decode_response(body, KIND_OF)
  if not doc then
    local why = fields_well -- decode_response's nil, why
    return nil, errors.http(status, ("HTTP %d with a body that is not the platform's JSON: %s"):format(
      status, why), headers["x-acs-request-id"], secrets)
  end
  local request_id = type(doc.RequestId) == "string" and doc.RequestId or headers["x-acs-request-id"]
  local problem = not fields_well and field_problem(doc, COMMON_FIELDS)
  if problem then
    return nil, errors.invalid_response(status, problem, request_id, nil, secrets)
  end
  if type(doc.Code) == "string" and (doc.Success ~= true or status >= 400) then
    local message = doc.Message or doc.ErrorMessage
    return nil, errors.api(doc.Code, {
      status = status,
      message = type(message) == "string" and message or nil,
      request_id = request_id,
      retry_after = retry_after_ms(headers),
    }, secrets)
  end
  if status ~= 200 or doc.Success == false then
    return nil, errors.http(status, ("HTTP %d without an error code"):format(status), request_id, secrets)
  end
  return outcome(doc, fields_well, secrets)
end

return response
