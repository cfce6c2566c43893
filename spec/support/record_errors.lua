-- A busted helper (.busted: helper): writes the text of every rrpc error the suite makes
-- to build/suite-logs/errors.log, for the secret scan. Starts both logs afresh each run.
local errors = require "rrpc.errors"
local suite_log = require "suite_log"

local log = assert(io.open(suite_log.path("errors.log"), "w"))
assert(io.open(suite_log.path("servers.log"), "w")):close()
local make = errors.new
errors.new = function(fields, secret)
  local err = make(fields, secret)
  log:write(tostring(err), "\n")
  log:flush()
  return err
end
