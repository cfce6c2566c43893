-- A busted helper (.busted: helper): writes the text of every rrpc error the suite makes
-- to build/suite-logs/errors.log, for the secret scan (spec/scan/secret_scan.lua), which
-- scripts/test.sh runs after the suite. Appends: scripts/test.sh empties the logs before
-- a suite starts, so that the scan reads one whole run.
local errors = require "rrpc.errors"
local suite_log = require "suite_log"

local log = assert(io.open(suite_log.path("errors.log"), "a"))
local make = errors.new
errors.new = function(fields, secret)
  local err = make(fields, secret)
  log:write(tostring(err), "\n")
  log:flush()
  return err
end
