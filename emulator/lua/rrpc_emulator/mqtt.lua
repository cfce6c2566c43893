-- A minimal MQTT 3.1.1 codec: the packets the emulator sends to its broker and those the
-- broker sends back (OASIS MQTT 3.1.1, section 2 and 3). Plain Lua (5.1 to 5.4, LuaJIT),
-- no nginx, so that specs test and fuzz it outside nginx; broker.lua does the I/O.
--
--   mqtt.connect{ client_id=, username=, password=, keepalive= }   --> bytes
--   mqtt.publish(topic, payload, qos, packet_id)                    --> bytes
--   mqtt.subscribe(packet_id, filter, qos), mqtt.unsubscribe(packet_id, filter)
--   mqtt.puback(packet_id), mqtt.PINGREQ, mqtt.DISCONNECT
--   mqtt.decode(buffer, pos, max_length)
--       --> packet, next_pos       a whole packet starts at pos
--       --> nil                    not all of it is there yet
--       --> nil, nil, message      malformed: the connection cannot go on
--   local stream = mqtt.stream()    what a connection receives, in pieces of any size:
--   stream:feed(bytes); stream:next() --> packet | nil (not yet) | nil, message (malformed)
--   packets: { type = "connack", session_present, return_code }
--            { type = "publish", topic, payload, qos, retain, dup, packet_id }
--            { type = "puback" | "unsuback", packet_id }
--            { type = "suback", packet_id, return_codes = { ... } }
--            { type = "pingresp" }
local byte, char, sub = string.byte, string.char, string.sub
local floor = math.floor
local unpack = table.unpack or unpack -- luacheck: ignore

local mqtt = {}

-- The broker refuses device messages over 256 KB (emulator/run's message_size_limit); a
-- packet far beyond that is not a broker's.
mqtt.MAX_PACKET = 1024 * 1024

mqtt.PINGREQ = "\192\0"
mqtt.DISCONNECT = "\224\0"

local function uint16(n)
  return char(floor(n / 256), n % 256)
end

local function remaining_length(n)
  local bytes = {}
  repeat
    local digit = n % 128
    n = floor(n / 128)
    bytes[#bytes + 1] = n > 0 and digit + 128 or digit
  until n == 0
  return char(unpack(bytes))
end

local function packet(first_byte, body)
  return char(first_byte) .. remaining_length(#body) .. body
end

-- An MQTT string: its length in two bytes, then the bytes (at most 65535).
local function mqtt_string(text)
  assert(#text <= 65535, "an MQTT string holds at most 65535 bytes")
  return uint16(#text) .. text
end

function mqtt.connect(options)
  local flags = 2 -- clean session
  local payload = { mqtt_string(options.client_id) }
  if options.username then
    flags = flags + 128
    payload[#payload + 1] = mqtt_string(options.username)
  end
  if options.password then
    flags = flags + 64
    payload[#payload + 1] = mqtt_string(options.password)
  end
  return packet(0x10, mqtt_string("MQTT") .. char(4, flags) .. uint16(options.keepalive or 60)
    .. table.concat(payload))
end

function mqtt.publish(topic, payload, qos, packet_id)
  qos = qos or 0
  return packet(0x30 + qos * 2, mqtt_string(topic) .. (qos > 0 and uint16(packet_id) or "") .. payload)
end

function mqtt.subscribe(packet_id, filter, qos)
  return packet(0x82, uint16(packet_id) .. mqtt_string(filter) .. char(qos or 0))
end

function mqtt.unsubscribe(packet_id, filter)
  return packet(0xA2, uint16(packet_id) .. mqtt_string(filter))
end

function mqtt.puback(packet_id)
  return "\64\2" .. uint16(packet_id)
end

local function read_uint16(buffer, pos)
  local high, low = byte(buffer, pos, pos + 1)
  return high * 256 + low
end

-- The body of each packet type a broker sends a client, from `body_start` to `body_end`.
local readers = {}

readers[2] = function(buffer, first, body_start, body_end) -- CONNACK
  if first ~= 0x20 or body_end - body_start + 1 ~= 2 then return nil, "malformed CONNACK" end
  local flags, code = byte(buffer, body_start, body_start + 1)
  if flags > 1 then return nil, "malformed CONNACK" end
  return { type = "connack", session_present = flags == 1, return_code = code }
end

readers[3] = function(buffer, first, body_start, body_end) -- PUBLISH
  local qos = floor(first / 2) % 4
  if qos == 3 then return nil, "PUBLISH with QoS 3" end
  if body_end - body_start + 1 < 2 then return nil, "malformed PUBLISH" end
  local topic_length = read_uint16(buffer, body_start)
  local topic_end = body_start + 1 + topic_length
  if topic_length == 0 or topic_end > body_end then return nil, "malformed PUBLISH topic" end
  local payload_start, packet_id = topic_end + 1, nil
  if qos > 0 then
    if payload_start + 1 > body_end then return nil, "malformed PUBLISH packet id" end
    packet_id = read_uint16(buffer, payload_start)
    if packet_id == 0 then return nil, "malformed PUBLISH packet id" end
    payload_start = payload_start + 2
  end
  return {
    type = "publish",
    topic = sub(buffer, body_start + 2, topic_end),
    payload = sub(buffer, payload_start, body_end),
    qos = qos,
    retain = first % 2 == 1,
    dup = first % 16 >= 8,
    packet_id = packet_id,
  }
end

local function packet_id_only(name, expected_first)
  return function(buffer, first, body_start, body_end)
    if first ~= expected_first or body_end - body_start + 1 ~= 2 then return nil, "malformed " .. name end
    return { type = name:lower(), packet_id = read_uint16(buffer, body_start) }
  end
end

readers[4] = packet_id_only("PUBACK", 0x40)
readers[11] = packet_id_only("UNSUBACK", 0xB0)

readers[9] = function(buffer, first, body_start, body_end) -- SUBACK
  if first ~= 0x90 or body_end - body_start + 1 < 3 then return nil, "malformed SUBACK" end
  local codes = { byte(buffer, body_start + 2, body_end) }
  for _, code in ipairs(codes) do
    if code > 2 and code ~= 0x80 then return nil, "malformed SUBACK return code" end
  end
  return { type = "suback", packet_id = read_uint16(buffer, body_start), return_codes = codes }
end

readers[13] = function(_, first, body_start, body_end) -- PINGRESP
  if first ~= 0xD0 or body_end >= body_start then return nil, "malformed PINGRESP" end
  return { type = "pingresp" }
end

function mqtt.decode(buffer, pos, max_length)
  local size = #buffer
  if size - pos + 1 < 2 then return nil end
  local first = byte(buffer, pos)
  local length, multiplier, i = 0, 1, pos + 1
  while true do
    if i > size then return nil end
    local digit = byte(buffer, i)
    length = length + (digit % 128) * multiplier
    i = i + 1
    if digit < 128 then break end
    multiplier = multiplier * 128
    if i - pos > 4 then return nil, nil, "malformed remaining length" end
  end
  if length > (max_length or mqtt.MAX_PACKET) then
    return nil, nil, "packet of " .. length .. " bytes, over the limit"
  end
  local body_end = i + length - 1
  if body_end > size then return nil end
  local reader = readers[floor(first / 16)]
  if not reader then return nil, nil, "unexpected packet type " .. floor(first / 16) end
  local decoded, err = reader(buffer, first, i, body_end)
  if not decoded then return nil, nil, err end
  return decoded, body_end + 1
end

local Stream = {}
Stream.__index = Stream

function mqtt.stream(max_length)
  return setmetatable({ buffer = "", pos = 1, max_length = max_length }, Stream)
end

-- Only what is not decoded yet is copied: a whole packet per read costs no copy.
function Stream:feed(bytes)
  self.buffer = self.pos > #self.buffer and bytes or sub(self.buffer, self.pos) .. bytes
  self.pos = 1
end

function Stream:next()
  local decoded, next_pos, malformed = mqtt.decode(self.buffer, self.pos, self.max_length)
  if decoded then
    self.pos = next_pos
  end
  return decoded, malformed
end

return mqtt
