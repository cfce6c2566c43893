-- What the suite's clients and servers said, kept for spec/scan/secret_scan.lua:
-- every rrpc error's text (recorded by spec/support/record_errors.lua) and the logs of
-- every emulator and gateway a spec started (appended when it stops).
local suite_log = {}

suite_log.DIR = "build/suite-logs"

function suite_log.path(name)
  os.execute("mkdir -p " .. suite_log.DIR)
  return suite_log.DIR .. "/" .. name
end

-- Appends the files a server wrote (those that exist) to servers.log.
function suite_log.keep(label, files)
  local out = assert(io.open(suite_log.path("servers.log"), "a"))
  for _, file in ipairs(files) do
    local f = io.open(file, "rb")
    if f then
      out:write("== ", label, " ", file, "\n", f:read("*a"), "\n")
      f:close()
    end
  end
  out:close()
end

return suite_log
