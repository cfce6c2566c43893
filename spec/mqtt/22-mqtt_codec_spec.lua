-- The emulator's MQTT 3.1.1 codec (emulator/lua/rrpc_emulator/mqtt.lua), outside nginx:
-- known bytes, round trips through a stream fed in pieces of every size, and fuzzing with
-- random and mutated bytes (it never raises; it decodes, waits for more, or says malformed).
-- Against the real broker it runs inside the emulator (spec/mqtt/21).
package.path = "./emulator/lua/?.lua;" .. package.path
local mqtt = require "rrpc_emulator.mqtt"

local function bytes(...)
  return string.char(...)
end

-- A deterministic generator, the same under every Lua.
local function generator(seed)
  local x = seed
  return function(n)
    x = (x * 1103515245 + 12345) % 2147483648
    return math.floor(x / 65536) % n
  end
end

local function random_bytes(random, length)
  local t = {}
  for i = 1, length do t[i] = string.char(random(256)) end
  return table.concat(t)
end

-- Decodes every packet of `stream`; returns them and the error that stopped it, if any.
local function drain(stream)
  local packets = {}
  while true do
    local packet, malformed = stream:next()
    if malformed then return packets, malformed end
    if not packet then return packets end
    packets[#packets + 1] = packet
  end
end

describe("the emulator's MQTT codec", function()
  it("encodes the packets of MQTT 3.1.1 byte for byte", function()
    assert.equal(bytes(0x10, 0x0D, 0, 4, 77, 81, 84, 84, 4, 2, 0, 60, 0, 1, 97), mqtt.connect { client_id = "a" })
    assert.equal(bytes(0x10, 0x15, 0, 4, 77, 81, 84, 84, 4, 0xC2, 0, 30, 0, 1, 97, 0, 2, 117, 49, 0, 2, 112, 49),
      mqtt.connect { client_id = "a", username = "u1", password = "p1", keepalive = 30 })
    assert.equal(bytes(0x30, 6, 0, 1, 116, 104, 105, 33), mqtt.publish("t", "hi!"))
    assert.equal(bytes(0x32, 5, 0, 1, 116, 0x12, 0x34), mqtt.publish("t", "", 1, 0x1234))
    assert.equal(bytes(0x82, 6, 0, 7, 0, 1, 116, 0), mqtt.subscribe(7, "t", 0))
    assert.equal(bytes(0xA2, 5, 1, 0, 0, 1, 116), mqtt.unsubscribe(256, "t"))
    assert.equal(bytes(0x40, 2, 0xFF, 0xFF), mqtt.puback(65535))
    -- remaining lengths of one to three bytes
    assert.equal(bytes(0x30, 0x7F), mqtt.publish("t", string.rep("x", 124)):sub(1, 2))
    assert.equal(bytes(0x30, 0x80, 0x01), mqtt.publish("t", string.rep("x", 125)):sub(1, 3))
    assert.equal(bytes(0x30, 0x83, 0x80, 0x10), mqtt.publish("t", string.rep("x", 262144)):sub(1, 4))
  end)

  it("decodes what a broker sends", function()
    local connack = mqtt.decode(bytes(0x20, 2, 1, 5), 1)
    assert.same({ type = "connack", session_present = true, return_code = 5 }, connack)
    assert.same({ type = "suback", packet_id = 9, return_codes = { 0, 1, 0x80 } },
      (mqtt.decode(bytes(0x90, 5, 0, 9, 0, 1, 0x80), 1)))
    assert.same({ type = "unsuback", packet_id = 258 }, (mqtt.decode(bytes(0xB0, 2, 1, 2), 1)))
    assert.same({ type = "puback", packet_id = 1 }, (mqtt.decode(bytes(0x40, 2, 0, 1), 1)))
    assert.same({ type = "pingresp" }, (mqtt.decode(bytes(0xD0, 0), 1)))
    local publish, next_pos = mqtt.decode(bytes(0x3B, 7, 0, 1, 116, 0, 5, 104, 105) .. "rest", 1)
    assert.same({ type = "publish", topic = "t", payload = "hi", qos = 1, retain = true, dup = true, packet_id = 5 },
      publish)
    assert.equal(10, next_pos)
  end)

  it("says malformed, never raises, for what no broker sends", function()
    for _, case in ipairs {
      { bytes(0x20, 3, 0, 0, 0), "CONNACK" }, { bytes(0x20, 2, 2, 0), "CONNACK" },
      { bytes(0x36, 3, 0, 1, 116), "QoS 3" }, { bytes(0x30, 3, 0, 5, 116), "topic" },
      { bytes(0x30, 2, 0, 0), "topic" }, { bytes(0x32, 4, 0, 1, 116, 0), "packet id" },
      { bytes(0x32, 5, 0, 1, 116, 0, 0), "packet id" }, { bytes(0x90, 3, 0, 1, 3), "return code" },
      { bytes(0x90, 2, 0, 1), "SUBACK" }, { bytes(0xD0, 1, 0), "PINGRESP" }, { bytes(0x41, 2, 0, 1), "PUBACK" },
      { bytes(0x10, 0), "type 1" }, { bytes(0xE0, 0), "type 14" }, { bytes(0xF0, 0), "type 15" },
      { bytes(0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01), "remaining length" },
      { bytes(0x30, 0xFF, 0xFF, 0xFF, 0x7F), "over the limit" },
    } do
      local packet, next_pos, malformed = mqtt.decode(case[1], 1)
      assert.is_nil(packet)
      assert.is_nil(next_pos)
      assert.matches(case[2], malformed, 1, true)
    end
    assert.matches("over the limit", select(3, mqtt.decode(mqtt.publish("t", string.rep("x", 100)), 1, 50)))
  end)

  it("waits for the rest of a packet cut anywhere", function()
    local packet = mqtt.publish("/sys/pk/dn/rrpc/request/1", string.rep("\0\255", 300), 1, 77)
    for cut = 0, #packet - 1 do
      local decoded, next_pos, malformed = mqtt.decode(packet:sub(1, cut), 1)
      assert.is_nil(decoded)
      assert.is_nil(next_pos)
      assert.is_nil(malformed)
    end
  end)

  it("round-trips random packets through a stream fed in random pieces", function()
    local random = generator(2024)
    for _ = 1, 40 do
      local sent, wire = {}, {}
      for i = 1, 1 + random(30) do
        local qos = random(2)
        local topic = random_bytes(random, 1 + random(200))
        local payload = random_bytes(random, random(8) == 0 and random(300000) or random(3000))
        sent[i] = { topic = topic, payload = payload, qos = qos, packet_id = qos > 0 and 1 + random(65535) or nil }
        wire[i] = mqtt.publish(topic, payload, qos, sent[i].packet_id)
      end
      wire = table.concat(wire)
      local stream, received, pos = mqtt.stream(), {}, 1
      while pos <= #wire do
        local size = 1 + random(random(2) == 0 and 8 or 70000)
        stream:feed(wire:sub(pos, pos + size - 1))
        pos = pos + size
        local packets, malformed = drain(stream)
        assert.is_nil(malformed)
        for _, p in ipairs(packets) do received[#received + 1] = p end
      end
      assert.equal(#sent, #received)
      for i, p in ipairs(received) do
        assert.equal(sent[i].qos, p.qos)
        assert.equal(sent[i].packet_id, p.packet_id)
        assert.is_true(sent[i].topic == p.topic and sent[i].payload == p.payload, "packet " .. i)
      end
    end
  end)

  it("survives random and mutated bytes", function()
    local random = generator(7)
    local valid = table.concat {
      mqtt.publish("$rrpc/reply/sys/pk/dn/rrpc/response/1", "answer", 1, 3), bytes(0x90, 3, 0, 1, 0),
      bytes(0xD0, 0), bytes(0x20, 2, 0, 0), bytes(0xB0, 2, 0, 2), mqtt.publish("$rrpc/presence/pk/dn", "1"),
    }
    for round = 1, 20000 do
      local input
      if round % 2 == 0 then
        input = random_bytes(random, 1 + random(64))
      else
        local t = { valid:byte(1, -1) }
        for _ = 1, 1 + random(4) do t[1 + random(#t)] = random(256) end
        input = string.char((table.unpack or unpack)(t)) -- luacheck: ignore
      end
      local stream, cut = mqtt.stream(4096), random(#input + 1)
      stream:feed(input:sub(1, cut))
      local ok, err = pcall(drain, stream)
      assert(ok, err)
      stream:feed(input:sub(cut + 1))
      ok, err = pcall(drain, stream)
      assert(ok, err)
    end
  end)
end)
