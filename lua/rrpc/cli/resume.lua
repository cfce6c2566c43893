-- rrpc batch --resume FILE: the outcome lines of earlier runs over the same input, so
-- that a run goes on where they stopped. A line of the input with an outcome in FILE is
-- not sent again (with --resend-undelivered, unless every outcome it has there says
-- delivered "no"); FILE must be of this input (its line numbers name the same product key
-- and device name), or nothing starts. A torn last line (a run killed while writing it)
-- is not an outcome.
local cjson = require "cjson.safe"
local common = require "rrpc.cli.common"
local input = require "rrpc.cli.input"
local output = require "rrpc.cli.output"

local resume = {}

local EXIT, fail = output.EXIT, common.fail

local Earlier = {}
Earlier.__index = Earlier

local function is_outcome_line(doc)
  return type(doc) == "table" and type(doc.line) == "number" and doc.line >= 1 and doc.line % 1 == 0
    and type(doc.outcome) == "string"
end

-- Reads one file into by_line: line number --> { product_key, device_name, done }
local function read_one(self, path)
  local handle = input.open(path, "--resume file")
  local text = handle:read("*a")
  handle:close()
  local number, position = 0, 1
  while position <= #text do
    local newline = text:find("\n", position, true)
    local line = text:sub(position, (newline or #text + 1) - 1)
    position = (newline or #text) + 1
    number = number + 1
    if line:find("%S") then
      local doc = cjson.decode(line)
      if not is_outcome_line(doc) then
        if not newline then break end -- torn: written in part when its run was killed
        fail(EXIT.invalid, ("--resume %s: line %d is not an outcome line of rrpc batch"):format(path, number))
      end
      -- a malformed input line was never sent: it is read again, perhaps mended since
      if doc.code ~= "InvalidLine" then
        local known = self.by_line[doc.line]
        local delivered_no = doc.delivered == "no"
        if known then
          if known.product_key ~= doc.product_key or known.device_name ~= doc.device_name then
            fail(EXIT.invalid, ("--resume: line %d of the input is %s,%s in one file and %s,%s in %s"):format(
              doc.line, tostring(known.product_key), tostring(known.device_name), tostring(doc.product_key),
              tostring(doc.device_name), path))
          end
          known.undelivered = known.undelivered and delivered_no
        else
          self.by_line[doc.line] = { product_key = doc.product_key, device_name = doc.device_name,
                                     undelivered = delivered_no, path = path }
          self.count = self.count + 1
          if doc.line > self.max_line then self.max_line = doc.line end
        end
      end
    end
  end
end

--- resume.read(paths, resend_undelivered) --> earlier: the outcomes of those files
function resume.read(paths, resend_undelivered)
  local self = setmetatable({ by_line = {}, count = 0, max_line = 0, resend_undelivered = resend_undelivered,
                              paths = paths, skipped = 0 }, Earlier)
  for _, path in ipairs(paths) do read_one(self, path) end
  return self
end

--- earlier:check(record) -- fails unless an input line that FILE has an outcome for names
-- the same product key and device name there
function Earlier:check(record)
  local known = self.by_line[record.line]
  if not known then return end
  known.seen = true
  if known.product_key ~= record.product_key or known.device_name ~= record.device_name then
    local here = record.problem and "a malformed line" or (record.product_key .. "," .. record.device_name)
    fail(EXIT.invalid, ("--resume %s does not match the input: line %d is %s,%s there and %s here"):format(
      known.path, record.line, tostring(known.product_key), tostring(known.device_name), here))
  end
end

--- earlier:check_all_seen() -- fails when FILE has outcomes for lines the input has not
-- (once the input has been read past them)
function Earlier:check_all_seen()
  local first
  for line, known in pairs(self.by_line) do
    if not known.seen and (not first or line < first) then first = line end
  end
  if first then
    fail(EXIT.invalid, ("--resume %s does not match the input: it has an outcome for line %d, which is no"
      .. " device line of the input"):format(self.by_line[first].path, first))
  end
end

--- earlier:skips(record) --> whether the record has its outcome already (and is not sent)
function Earlier:skips(record)
  local known = self.by_line[record.line]
  if not known then return false end
  if self.resend_undelivered and known.undelivered then return false end
  self.skipped = self.skipped + 1
  return true
end

return resume
