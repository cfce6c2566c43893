-- What the commands read: the payload (an option, a file or standard input) and the
-- devices of a batch (CSV or JSON lines, read one line at a time as they are wanted).
local cjson = require "cjson.safe"
local rrpc = require "rrpc"
local common = require "rrpc.cli.common"
local output = require "rrpc.cli.output"

local input = {}

local EXIT, fail = output.EXIT, common.fail

--- input.open(path, what) --> a file handle, or fails naming `what` and why
function input.open(path, what)
  local handle, why = io.open(path, "rb")
  if handle then
    -- a directory opens, but cannot be read
    local readable, read_why = handle:read(0)
    if readable == nil and read_why then
      handle:close()
      handle, why = nil, path .. ": " .. read_why
    end
  end
  return handle or fail(EXIT.invalid, ("cannot read the %s: %s"):format(what, why))
end

local function read_file(path, what)
  local handle = input.open(path, what)
  local bytes = handle:read("*a")
  handle:close()
  return bytes
end

function input.payload_uses_stdin(opts)
  return opts.stdin == "-" or opts.payload_file == "-"
end

--- input.payload(opts, env) --> the bytes of --payload, --payload-file or standard input
-- (nil when none is given), and how the user names them in messages
function input.payload(opts, env)
  if opts.payload then return opts.payload, "the payload of option '--payload'" end
  if input.payload_uses_stdin(opts) then return env.stdin:read("*a"), "the payload from standard input" end
  if opts.payload_file then
    return read_file(opts.payload_file, "payload file"), ("the payload file %s"):format(opts.payload_file)
  end
  return nil, "the payload"
end

function input.required_payload(opts, env)
  local payload, label = input.payload(opts, env)
  if not payload then
    fail(EXIT.invalid, "no payload: give --payload TEXT, --payload-file FILE or - (standard input)")
  end
  return payload, label
end

---------------------------------------------------------------------------------------
-- The devices of a batch

local CSV_COLUMNS = { "product_key", "device_name", "payload" }
local JSON_FIELDS = { product_key = true, device_name = true, payload = true, payload_base64 = true }

--- split_csv(text) --> fields | nil, why
-- Fields are separated by commas; a field that starts with a double quote ends at the
-- next lone one and may hold commas and doubled quotes (""). A field cannot span lines.
local function split_csv(text)
  local fields, position = {}, 1
  while true do
    if text:sub(position, position) == '"' then
      local pieces, from = {}, position + 1
      while true do
        local quote = text:find('"', from, true)
        if not quote then return nil, "a quoted field has no closing quote" end
        pieces[#pieces + 1] = text:sub(from, quote - 1)
        if text:sub(quote + 1, quote + 1) ~= '"' then
          position = quote + 1
          break
        end
        pieces[#pieces + 1] = '"'
        from = quote + 2
      end
      fields[#fields + 1] = table.concat(pieces)
      local after = text:sub(position, position)
      if after == "" then return fields end
      if after ~= "," then return nil, "text after a quoted field's closing quote" end
      position = position + 1
    else
      local comma = text:find(",", position, true)
      fields[#fields + 1] = text:sub(position, comma and comma - 1 or -1)
      if not comma then return fields end
      position = comma + 1
    end
  end
end

local function trim(text)
  return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- A first CSV line that names the columns is a header, not a device.
local function is_csv_header(text)
  local fields = split_csv(text)
  if not fields or #fields < 2 or #fields > #CSV_COLUMNS then return false end
  for i, field in ipairs(fields) do
    if trim(field):lower() ~= CSV_COLUMNS[i] then return false end
  end
  return true
end

--- device_fields(product_key, device_name, payload) --> record fields | nil, why
local function device_fields(product_key, device_name, payload)
  if product_key == "" then return nil, "no product_key" end
  if device_name == "" then return nil, "no device_name" end
  -- they are echoed in the JSON output, which must stay valid JSON
  if not (output.is_utf8(product_key) and output.is_utf8(device_name)) then
    return nil, "product_key and device_name must be UTF-8 text"
  end
  return { product_key = product_key, device_name = device_name, payload = payload }
end

-- product_key,device_name[,payload]; an empty payload field means "none on this line".
local function parse_csv_line(text)
  local fields, why = split_csv(text)
  if not fields then return nil, why end
  if #fields < 2 or #fields > 3 then
    return nil, ("expected product_key,device_name[,payload], got %d field%s"
      .. " (a payload with commas goes in double quotes)"):format(#fields, #fields == 1 and "" or "s")
  end
  return device_fields(trim(fields[1]), trim(fields[2]), fields[3] ~= "" and fields[3] or nil)
end

-- {"product_key": .., "device_name": .., "payload": .. | "payload_base64": ..}
local function parse_json_line(text)
  local doc, why = cjson.decode(text)
  if type(doc) ~= "table" or not text:find("^%s*{") then
    return nil, "not a JSON object" .. (why and (": " .. why) or "")
  end
  for name, value in pairs(doc) do
    if not JSON_FIELDS[name] then return nil, ("unknown field %q"):format(tostring(name)) end
    if type(value) ~= "string" then return nil, ("field %q must be a string"):format(name) end
  end
  local payload = doc.payload
  if doc.payload_base64 then
    if payload then return nil, "payload and payload_base64 together" end
    payload, why = rrpc.b64decode(doc.payload_base64)
    if not payload then return nil, "payload_base64: " .. why end
  end
  return device_fields(doc.product_key or "", doc.device_name or "", payload)
end

local LINE_PARSERS = { csv = parse_csv_line, jsonl = parse_json_line }

local UTF8_BOM = "\239\187\191"

--- input.lines(handle) --> iterator of line number, text of the non-blank lines (without
-- line ends and without a byte-order mark on the first line)
function input.lines(handle)
  local number = 0
  return function()
    while true do
      local text = handle:read("*l")
      if not text then return nil end
      number = number + 1
      if number == 1 and text:sub(1, 3) == UTF8_BOM then text = text:sub(4) end
      text = text:gsub("\r$", "")
      if text:find("%S") then return number, text end
    end
  end
end

--- first_line_format(text, format) --> the format (the option's, else guessed), whether the
-- line is a CSV header
local function first_line_format(text, format)
  format = format or (text:find("^%s*{") and "jsonl" or "csv")
  return format, format == "csv" and is_csv_header(text)
end

--- input.records(handle, format) --> iterator of records, read as they are wanted:
-- { seq, line, product_key, device_name, payload } or { seq, line, problem }
function input.records(handle, format)
  local next_line, seq = input.lines(handle), 0
  local parse
  return function()
    local number, text = next_line()
    if number and not parse then
      local is_header
      format, is_header = first_line_format(text, format)
      parse = LINE_PARSERS[format]
      if is_header then number, text = next_line() end
    end
    if not number then return nil end
    seq = seq + 1
    local record, why = parse(text)
    record = record or { problem = why }
    record.seq, record.line = seq, number
    return record
  end
end

--- input.count(handle, path, format) --> how many records the file at path (open as
-- handle) holds, for the progress total; nil for a pipe, which can be read only once
function input.count(handle, path, format)
  if not handle:seek("cur") then return nil end
  local counting = io.open(path, "rb")
  if not counting then return nil end
  local count, first = 0, true
  for _, text in input.lines(counting) do
    if not (first and select(2, first_line_format(text, format))) then count = count + 1 end
    first = false
  end
  counting:close()
  return count
end

return input
