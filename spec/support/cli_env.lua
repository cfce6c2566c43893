-- The command line in the specs' own process (rrpc.cli.main) with streams and an
-- environment of the spec's making:
--
--   local cli_env = require "cli_env"
--   local status, out, err = cli_env.run({ "call", ... }, {
--     env = { RRPC_ENDPOINT = e.url, ... },  -- the whole environment (nothing inherited)
--     stdin = "bytes",                       -- standard input
--     terminal = { stdout = true },          -- which streams are terminals
--     signals = cli_env.signals_after { 0.5, "INT" }, -- signals "arriving" at those times
--   })
local cli = require "rrpc.cli"
local system = require "system"

local cli_env = {}

-- A stream that keeps what is written: sink.text(), and each write call in sink.writes.
function cli_env.sink()
  local s = { writes = {}, flushes = 0 }
  function s.write(self, ...)
    for i = 1, select("#", ...) do self.writes[#self.writes + 1] = tostring((select(i, ...))) end
    return self
  end
  function s.flush(self)
    self.flushes = self.flushes + 1
    return self
  end
  function s.text() return table.concat(s.writes) end
  return s
end

-- A stream to read the bytes of `text` from: read("*a"), read("*l"), read(n), lines().
function cli_env.source(text)
  local s, at = {}, 1
  function s.read(_, how)
    if how == "*a" or how == "a" then
      local rest = text:sub(at)
      at = #text + 1
      return rest
    end
    if at > #text then return nil end
    if type(how) == "number" then
      local piece = text:sub(at, at + how - 1)
      at = at + how
      return piece
    end
    local newline = text:find("\n", at, true)
    local line = text:sub(at, (newline or #text + 1) - 1)
    at = (newline or #text) + 1
    return line
  end
  function s.lines(self) return function() return self:read("*l") end end
  function s.seek() return nil, "Illegal seek", 29 end
  return s
end

--- cli_env.signals_after(schedule) --> a stand-in for rrpc.signals: schedule is a list of
-- { seconds after the first take, name }; each "arrives" once its time has come
function cli_env.signals_after(schedule)
  local started, given = nil, 0
  local fake = { watched = false }
  function fake.watch() fake.watched = true end
  function fake.unwatch() fake.watched = false end
  function fake.take()
    started = started or system.monotime()
    local now, got = system.monotime() - started, {}
    while schedule[given + 1] and schedule[given + 1][1] <= now do
      given = given + 1
      got[#got + 1] = schedule[given][2]
    end
    return got
  end
  function fake.wait(ms)
    system.sleep(ms / 1000)
    return false
  end
  return fake
end

-- Signals that never come.
function cli_env.no_signals()
  return cli_env.signals_after {}
end

--- cli_env.run(argv, options) --> status, standard output, standard error (and the sinks)
function cli_env.run(argv, options)
  options = options or {}
  local stdout, stderr = cli_env.sink(), cli_env.sink()
  local vars = options.env or {}
  local terminal = options.terminal or {}
  local status = cli.main(argv, {
    stdin = cli_env.source(options.stdin or ""),
    stdout = stdout, stderr = stderr,
    getenv = function(name) return vars[name] end,
    is_terminal = function(name) return terminal[name] == true end,
    signals = options.signals or cli_env.no_signals(),
    program = "rrpc",
    emulator_dirs = { "./emulator" },
  })
  return status, stdout.text(), stderr.text(), stdout, stderr
end

return cli_env
