-- rrpc sign: what a call signs (client:sign_rrpc), for comparing with what the platform
-- computed. Never the secret, nor an STS security token (*** in its place).
local common = require "rrpc.cli.common"
local input = require "rrpc.cli.input"
local output = require "rrpc.cli.output"

local sign = {}

local EXIT, fail = output.EXIT, common.fail

-- What sign shows, in order: V1 has a string to sign and a signature, V3 the others.
local SIGN_STEPS = { "canonical_request", "string_to_sign", "signature", "authorization" }
local SIGN_FIELDS = { "signature_version", "url", "canonical_request", "string_to_sign", "signature",
                      "authorization" }

function sign.run(opts, env)
  local payload, label = input.required_payload(opts, env)
  local names = common.option_names(opts, label)
  local request = { product_key = opts.product_key, device_name = opts.device, payload = payload,
                    timeout = opts.timeout, topic = opts.topic }
  common.check_request(request, names)
  local client = common.open_client(opts, env, names)
  local ok, parts, err = pcall(client.sign_rrpc, client, request, { timestamp = opts.timestamp, nonce = opts.nonce })
  client:close()
  if not ok then
    local refusal = common.refusal(parts)
    if refusal then fail(EXIT.invalid, common.renamed(refusal, names)) end
    error(parts, 0)
  end
  if not parts then fail(EXIT.auth, tostring(err)) end
  if opts.json then
    output.writer(env.stdout)(output.json_object(SIGN_FIELDS, parts))
    return EXIT.ok
  end
  local out = { "== request\n", parts.method, " ", parts.url, " (signature ", parts.signature_version,
                ", parameters in the form body)\n" }
  for _, name in ipairs(SIGN_STEPS) do
    if parts[name] then out[#out + 1] = "== " .. name:gsub("_", " ") .. "\n" .. parts[name] .. "\n" end
  end
  env.stdout:write(table.concat(out))
  env.stdout:flush()
  return EXIT.ok
end

return sign
