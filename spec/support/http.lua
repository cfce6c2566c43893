-- Raw HTTP for the specs, through rrpc.core's own session and pool, with the connection
-- settings a client would give them (rrpc.limits' defaults): for requests that no client
-- would make (replays, hand-built signatures) and for load beside the client.
--
--   local http = require "http"
--   local session = http.session { ca_file = ... }   -- core.session with the defaults
--   local pool = http.pool { max_connections = 200 }
--   for _, c in ipairs(http.completions(pool:run(100))) do ... c.token, c.status ... end
local core = require "rrpc.core"
local limits = require "rrpc.limits"

local http = {}

--- http.options(extra) --> the options core.session and core.pool require, with extra's
function http.options(extra)
  local options = {
    connect_timeout = limits.CONNECT_TIMEOUT.default,
    idle_timeout = limits.IDLE_TIMEOUT.default,
    max_response_bytes = limits.MAX_RESPONSE_BYTES.default,
    receive_buffer_bytes = limits.RECEIVE_BUFFER_BYTES,
    response_budget = core.budget(limits.MAX_RESPONSE_MEMORY.default),
    max_connections = limits.CONCURRENCY.default,
  }
  for k, v in pairs(extra or {}) do options[k] = v end
  return options
end

function http.session(extra)
  return core.session(http.options(extra))
end

function http.pool(extra)
  return core.pool(http.options(extra))
end

--- http.completions(flat) --> { { token=, status=, headers=, body= } | { token=, sent=, code=, message= }, ... }
-- core.pool's run() answers four slots a completion; the specs read them by name.
function http.completions(flat)
  local list = {}
  for i = 1, #flat, 4 do
    local token, second, third, fourth = flat[i], flat[i + 1], flat[i + 2], flat[i + 3]
    if type(second) == "boolean" then
      list[#list + 1] = { token = token, sent = second, code = third, message = fourth }
    else
      list[#list + 1] = { token = token, status = second, headers = third, body = fourth }
    end
  end
  return list
end

return http
