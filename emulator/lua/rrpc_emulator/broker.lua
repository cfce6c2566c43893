-- The emulator's side of its MQTT broker (emulator/run --mqtt-port): in each nginx worker
-- one connection to mosquitto over a cosocket, owned by a timer that never ends while the
-- worker lives. A reader thread decodes what the broker sends (mqtt.lua); a writer thread
-- sends what handlers queue. Handlers never touch the socket (a cosocket belongs to the
-- request or timer that made it): they queue bytes and wait on a semaphore of their own,
-- so no worker ever blocks.
--
-- The broker's plugin (emulator/mqtt/rrpc_plugin.c) publishes each device's number of
-- connections, retained, on $rrpc/presence/<pk>/<dn>, and turns a device's answers into
-- $rrpc/reply<topic>. For each call the worker subscribes to the one reply topic it waits
-- for, in the same write as the request (the broker handles one connection's packets in
-- order, so the subscription exists before the device can see the request), and
-- unsubscribes after: an answer reaches the worker that waits for it, and no other.
local mqtt = require "rrpc_emulator.mqtt"
local reply = require "rrpc_emulator.reply"
local semaphore = require "ngx.semaphore"

local sub = string.sub

local broker = {}

local CONNECT_TIMEOUT_MS = 2000
local SEND_TIMEOUT_MS = 10000
-- how often the reader, idle, looks whether the worker is exiting or the writer failed
local READ_TIMEOUT_MS = 1000
local KEEPALIVE_S = 60
-- after a lost connection; doubled after each failed attempt, up to the maximum
local RECONNECT_DELAY_S, MAX_RECONNECT_DELAY_S = 0.2, 5
-- a handler waits this long for the connection to come back, and for a round trip
local WAIT_FOR_LINK_S = 1
local SWEEP_INTERVAL_S = 1

local PRESENCE_PREFIX = "$rrpc/presence/"
local REPLY_PREFIX = "$rrpc/reply"

local config          -- { host, port, user, password } (broker.configure), nil without a broker
local link            -- the current connection, nil while there is none
local presence = {}   -- "<pk>/<dn>" -> connections the broker last reported
local waiting = {}    -- reply topic -> call
local calls_of = {}   -- "<pk>/<dn>" -> { [call] = true }: calls whose device may go away

function broker.configure(host, port, user, password)
  if port then
    config = { host = host, port = port, user = user, password = password }
  end
end

function broker.enabled()
  return config ~= nil
end

local function connected_key()
  return "mqtt_connected:" .. ngx.worker.id()
end

-- How many workers have their connection up (the health check shows it).
function broker.connected_workers()
  local count = 0
  for id = 0, ngx.worker.count() - 1 do
    if ngx.shared.rrpc_emulator:get("mqtt_connected:" .. id) then
      count = count + 1
    end
  end
  return count
end

local function next_packet_id(l)
  l.packet_id = l.packet_id % 65535 + 1
  return l.packet_id
end

local function enqueue(l, bytes)
  local count = l.queued + 1
  l.queue[count] = bytes
  l.queued = count
  if count == 1 then
    l.wakeup:post(1)
  end
end

-- Ends a call's wait: `code` is SUCCESS (with the device's bytes), HALFCONN or UNKNOWN.
local function finish(call, code, payload)
  if call.code then return end
  call.code, call.payload = code, payload
  call.done:post(1)
end

-- Forgets a call: once it is answered or over, or (the sweep) when its handler is gone.
local function release(call)
  if waiting[call.topic] == call then
    waiting[call.topic] = nil
  end
  local calls = calls_of[call.device]
  if calls then
    calls[call] = nil
    if next(calls) == nil then calls_of[call.device] = nil end
  end
  if call.link == link and link.alive then
    enqueue(link, mqtt.unsubscribe(next_packet_id(link), call.topic))
  end
end

-- A handler that the client left (lua_check_client_abort) never releases its call.
local function sweep(now)
  for _, call in pairs(waiting) do
    if now > call.expires then
      release(call)
    end
  end
end

local function on_publish(l, packet)
  if packet.qos > 0 then
    enqueue(l, mqtt.puback(packet.packet_id))
  end
  local topic = packet.topic
  if sub(topic, 1, #REPLY_PREFIX) == REPLY_PREFIX then
    local call = waiting[topic]
    if call then finish(call, "SUCCESS", packet.payload) end
  elseif sub(topic, 1, #PRESENCE_PREFIX) == PRESENCE_PREFIX then
    local device = sub(topic, #PRESENCE_PREFIX + 1)
    local connections = tonumber(packet.payload) or 0
    presence[device] = connections > 0 and connections or nil
    if connections == 0 then
      for call in pairs(calls_of[device] or {}) do
        finish(call, "HALFCONN")
      end
    end
  end
end

local function dispatch(l, packet)
  local kind = packet.type
  if kind == "publish" then
    on_publish(l, packet)
  elseif kind == "pingresp" then
    local waiter = table.remove(l.pings, 1)
    if waiter then waiter:post(1) end
  elseif kind == "suback" then
    for _, code in ipairs(packet.return_codes) do
      if code == 0x80 then
        ngx.log(ngx.ERR, "rrpc emulator: the MQTT broker refused a subscription of the emulator")
      end
    end
  end
end

-- The writer thread: sends whatever is queued, in order; pings when idle.
local function write_loop(l)
  local last_sweep = ngx.now()
  while l.alive do
    if l.queued == 0 then
      local woken = l.wakeup:wait(KEEPALIVE_S / 2)
      if not l.alive then break end
      if not woken and l.queued == 0 then
        l.pings[#l.pings + 1] = false
        enqueue(l, mqtt.PINGREQ)
      end
    end
    if l.queued > 0 then
      local bytes = table.concat(l.queue, "", 1, l.queued)
      l.queue, l.queued = {}, 0
      local sent, err = l.sock:send(bytes)
      if not sent then
        ngx.log(ngx.ERR, "rrpc emulator: sending to the MQTT broker failed: ", err)
        l.alive = false
      end
    end
    local now = ngx.now()
    if now - last_sweep >= SWEEP_INTERVAL_S then
      last_sweep = now
      sweep(now)
    end
  end
end

-- Reads and decodes until the connection ends (or the worker exits); `stream` holds what
-- came after the CONNACK.
local function read_loop(l, stream)
  while l.alive and not ngx.worker.exiting() do
    while true do
      local packet, malformed = stream:next()
      if malformed then
        ngx.log(ngx.ERR, "rrpc emulator: the MQTT broker sent a bad packet: ", malformed)
        return
      end
      if not packet then break end
      dispatch(l, packet)
    end
    local data, err = l.sock:receiveany(65536)
    if data then
      stream:feed(data)
    elseif err ~= "timeout" then
      ngx.log(ngx.ERR, "rrpc emulator: the connection to the MQTT broker ended: ", err)
      return
    end
  end
end

-- Connects and reads the CONNACK; returns the socket and the stream of what follows it.
local function open()
  local sock = ngx.socket.tcp()
  sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, CONNECT_TIMEOUT_MS)
  local ok, err = sock:connect(config.host, config.port)
  if not ok then return nil, "connect: " .. err end
  ok, err = sock:send(mqtt.connect {
    client_id = "rrpc-emulator-" .. ngx.worker.pid(),
    username = config.user,
    password = config.password,
    keepalive = KEEPALIVE_S,
  })
  local stream = mqtt.stream()
  while ok do
    local packet, malformed = stream:next()
    if packet and packet.type == "connack" then
      if packet.return_code ~= 0 then
        err = "CONNACK " .. packet.return_code
        break
      end
      sock:settimeouts(CONNECT_TIMEOUT_MS, SEND_TIMEOUT_MS, READ_TIMEOUT_MS)
      return sock, stream
    elseif packet or malformed then
      err = malformed or "no CONNACK"
      break
    end
    local data
    data, err = sock:receiveany(65536)
    if not data then break end
    stream:feed(data)
  end
  sock:close()
  return nil, err
end

-- One connection's life; false when it could not be opened.
local function serve()
  local sock, rest = open()
  if not sock then
    ngx.log(ngx.ERR, "rrpc emulator: cannot connect to the MQTT broker at ", config.host, ":", config.port, ": ", rest)
    return false
  end
  local l = { sock = sock, alive = true, queue = {}, queued = 0, wakeup = semaphore.new(), pings = {}, packet_id = 0 }
  link = l
  enqueue(l, mqtt.subscribe(next_packet_id(l), PRESENCE_PREFIX .. "#", 0))
  ngx.shared.rrpc_emulator:set(connected_key(), ngx.worker.pid())
  local writer = ngx.thread.spawn(write_loop, l)
  read_loop(l, rest)
  l.alive = false
  l.wakeup:post(1)
  ngx.thread.wait(writer)
  link = nil
  if ngx.shared.rrpc_emulator:get(connected_key()) == ngx.worker.pid() then
    ngx.shared.rrpc_emulator:delete(connected_key())
  end
  sock:send(mqtt.DISCONNECT)
  sock:close()
  -- what the broker said is now unknown, and no answer can come on this connection
  presence = {}
  for _, call in pairs(waiting) do
    if call.link == l then finish(call, "UNKNOWN") end
  end
  for _, waiter in ipairs(l.pings) do
    if waiter then waiter:post(1) end
  end
  return true
end

local function run(premature)
  local delay = RECONNECT_DELAY_S
  while not premature and not ngx.worker.exiting() do
    local ok, served = pcall(serve)
    if not ok then
      link = nil
      ngx.log(ngx.ERR, "rrpc emulator: the MQTT connection failed: ", served)
    end
    if ngx.worker.exiting() then break end
    delay = (ok and served) and RECONNECT_DELAY_S or math.min(delay * 2, MAX_RECONNECT_DELAY_S)
    ngx.sleep(delay)
  end
end

function broker.init_worker()
  if config then
    assert(ngx.timer.at(0, run))
  end
end

-- The connection, once it is up (at most WAIT_FOR_LINK_S after a start or a reconnect).
local function current_link()
  local deadline = ngx.now() + WAIT_FOR_LINK_S
  while not (link and link.alive) and ngx.now() < deadline do
    ngx.sleep(0.01)
  end
  return link and link.alive and link or nil
end

-- A round trip to the broker: once the PINGRESP is in, whatever the broker sent before it
-- (a device's presence above all) has been read.
local function round_trip(l)
  local waiter = semaphore.new()
  l.pings[#l.pings + 1] = waiter
  enqueue(l, mqtt.PINGREQ)
  waiter:wait(WAIT_FOR_LINK_S)
end

--- broker.rrpc(product_key, device_name, topic, bytes, timeout_ms)
--    --> "SUCCESS", message_id, answer | "TIMEOUT" | "HALFCONN" | "UNKNOWN", message_id | "OFFLINE"
-- `topic`: the call's custom Topic ("/<pk>/<dn>/user/..."), or nil for the default topics.
function broker.rrpc(product_key, device_name, topic, bytes, timeout_ms)
  local l = current_link()
  if not l then return "UNKNOWN", reply.next_message_id() end
  local device = product_key .. "/" .. device_name
  if not presence[device] then
    round_trip(l)
    if not presence[device] then return "OFFLINE" end
  end
  local message_id = reply.next_message_id()
  local request_topic, reply_topic
  if topic then
    request_topic = "/ext/rrpc/" .. message_id .. topic
    reply_topic = REPLY_PREFIX .. request_topic
  else
    request_topic = "/sys/" .. device .. "/rrpc/request/" .. message_id
    reply_topic = REPLY_PREFIX .. "/sys/" .. device .. "/rrpc/response/" .. message_id
  end
  local call = { done = semaphore.new(), device = device, topic = reply_topic, link = l,
                 expires = ngx.now() + timeout_ms / 1000 + 5 }
  waiting[reply_topic] = call
  calls_of[device] = calls_of[device] or {}
  calls_of[device][call] = true
  enqueue(l, mqtt.subscribe(next_packet_id(l), reply_topic, 0) .. mqtt.publish(request_topic, bytes, 0))
  call.done:wait(timeout_ms / 1000)
  release(call)
  return call.code or "TIMEOUT", message_id, call.payload
end

--- broker.publish(topic, bytes, qos) --> true | nil, err: the Pub action's message.
function broker.publish(topic, bytes, qos)
  local l = current_link()
  if not l then return nil, "no connection to the MQTT broker" end
  enqueue(l, mqtt.publish(topic, bytes, qos, qos > 0 and next_packet_id(l) or nil))
  return true
end

return broker
