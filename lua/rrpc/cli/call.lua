-- rrpc call: one payload to one device, its reply's bytes on standard output (or one
-- JSON line with --json), the outcome in the exit status. SIGINT or SIGTERM cancels the
-- call: with --json its line still comes (outcome "cancelled", delivered "maybe").
local rrpc = require "rrpc"
local common = require "rrpc.cli.common"
local input = require "rrpc.cli.input"
local output = require "rrpc.cli.output"

local call = {}

function call.run(opts, env)
  local payload, label = input.required_payload(opts, env)
  local names = common.option_names(opts, label)
  local request = { product_key = opts.product_key, device_name = opts.device, payload = payload,
                    timeout = opts.timeout, topic = opts.topic }
  common.check_request(request, names)
  local client = common.open_client(opts, env, names)
  local signal
  -- one call as a stream of one, so that a signal ends its wait at once
  local function should_stop()
    signal = signal or env.signals.take()[1]
    return signal and "cancel" or nil
  end
  local res, err
  local ok, why = pcall(function()
    for _, r, e in rrpc.each(client, { request }, {
      concurrency = 1, retry = common.retry_policy(opts.retries or rrpc.limits.CLI_RETRIES.call),
      should_stop = should_stop,
    }) do
      res, err = r, e
    end
  end)
  client:close()
  if not ok then error(why, 0) end
  if opts.json then
    output.writer(env.stdout)(output.json_object(output.OUTCOME_FIELDS, output.outcome_fields(res, err, {})))
  elseif res then
    local text = res.payload
    -- on a terminal the reply ends its line; a pipe gets the exact bytes
    if text:sub(-1) ~= "\n" and env.is_terminal("stdout") then text = text .. "\n" end
    env.stdout:write(text)
    env.stdout:flush()
  end
  if res then return output.EXIT.ok end
  local outcome = output.outcome_of(err)
  if outcome == "cancelled" then
    env.stderr:write(("rrpc: interrupted (SIG%s): %s\n"):format(signal, output.one_line(err)))
    return 128 + rrpc.signals.number(signal)
  end
  -- one line, even when the platform's message has several (a V3 string to sign)
  env.stderr:write(output.one_line(err), "\n")
  return output.EXIT[outcome]
end

return call
