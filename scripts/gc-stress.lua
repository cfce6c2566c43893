-- Garbage-collection stress for rrpc.core, against a local emulator it starts itself:
--
--   LUA_CPATH="./build/asan/?.so;;" build/asan/lua5.4 scripts/gc-stress.lua [iterations]
--   LUA_CPATH="./build/lua5.4/?.so;;" valgrind ... lua5.4 scripts/gc-stress.lua [iterations]
--
-- (make check-memory runs it both ways.) Each iteration, with the collector switching
-- between generational and incremental-with-pause-0 modes:
-- - a client makes a call and checks the echo;
-- - a stream (rrpc.each) is started over echo and slow devices, a few outcomes are read,
--   and then the iterator, its to-be-closed value and the client are all dropped without
--   close while calls are in flight, and collected: the pool's and the session's __gc do
--   the teardown (easy handles out of the multi, then the multi, then the epoll fd);
-- - every fourth, the stream is left with `break` (its __close cancels the calls) and the
--   client is still dropped unclosed; every third, the client is closed, then collected;
-- - constructors that fail after their userdata exists (bad options) leave the GC a
--   half-made box; sign_v3 with numeric headers, decode_response of cut JSON;
-- - full collections between the steps.
-- At the end: the process holds the same file descriptors as after the first iterations
-- (no socket or epoll fd outlives its client), and the Lua heap has not grown past a bound.
-- Prints one line of counts and exits 0, or says what failed and exits 1. Leaks and memory
-- errors in C are for the sanitizer or valgrind around it to report.
package.path = "./lua/?.lua;./spec/support/?.lua;" .. package.path

local rrpc = require "rrpc"
local core = require "rrpc.core"
local limits = require "rrpc.limits"

-- What core.session and core.pool require (rrpc.limits' defaults), with extra's.
local function c_options(extra)
  local options = {
    connect_timeout = limits.CONNECT_TIMEOUT.default, idle_timeout = limits.IDLE_TIMEOUT.default,
    max_response_bytes = limits.MAX_RESPONSE_BYTES.default, receive_buffer_bytes = limits.RECEIVE_BUFFER_BYTES,
    response_budget = core.budget(limits.MAX_RESPONSE_MEMORY.default),
  }
  for k, v in pairs(extra) do options[k] = v end
  return options
end
local emulator = require "emulator"

local ITERATIONS = tonumber(arg and arg[1]) or 200
local WARM = math.min(10, ITERATIONS)
local HEAP_GROWTH_LIMIT_KB = 2048

-- The pid of this process, not of the `ls` above: /proc/self inside popen's shell would be
-- the shell's. Read once.
local SELF_PID = io.open("/proc/self/stat"):read("*l"):match("^%d+")
local function fd_count()
  local n = 0
  local pipe = assert(io.popen("ls /proc/" .. SELF_PID .. "/fd"))
  for _ in pipe:lines() do n = n + 1 end
  pipe:close()
  return n - 1 -- the pipe being read
end

local function full_gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

local counts = { calls = 0, dropped_streams = 0, broken_streams = 0, dropped_clients = 0,
                 closed_clients = 0, half_made = 0, outcomes = 0 }

local function payload_for(i)
  local bytes = {}
  for j = 1, 1 + i % 40 do bytes[j] = string.char((i * 31 + j * 7) % 256) end
  return table.concat(bytes)
end

local function iteration(e, i)
  if i % 2 == 0 then
    collectgarbage("generational")
  else
    collectgarbage("incremental", 0, 1000)
  end
  local client = rrpc.new {
    access_key_id = "testid", access_key_secret = "testsecret", endpoint = e.url,
    signature = i % 3 == 0 and "v1" or "v3", placement = i % 5 == 0 and "query" or "body",
  }

  local payload = payload_for(i)
  local res, err = client:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = payload }
  assert(res, "call failed: " .. tostring(err))
  assert(res.payload == payload, "the echo differs")
  counts.calls = counts.calls + 1
  full_gc()

  local requests = {}
  for j = 1, 12 do
    requests[j] = { product_key = "a1RRpcDemo", device_name = j % 3 == 0 and "slow" or "echo",
                    payload = payload_for(i + j) }
  end
  if i % 4 == 0 then
    -- left with break: the loop's to-be-closed value cancels what is in flight
    local read = 0
    for _, r in rrpc.each(client, requests, { concurrency = 6, retry = false }) do
      assert(r, "a stream call failed")
      read = read + 1
      if read == 2 then break end
    end
    counts.outcomes = counts.outcomes + read
    counts.broken_streams = counts.broken_streams + 1
  else
    -- started, partly read, then dropped whole: iterator, closer and client
    local next_outcome = rrpc.each(client, requests, { concurrency = 6, retry = false })
    for _ = 1, 1 + i % 2 do
      local index = next_outcome()
      if index then counts.outcomes = counts.outcomes + 1 end
    end
    next_outcome = nil -- luacheck: ignore
    counts.dropped_streams = counts.dropped_streams + 1
  end

  if i % 3 == 0 then
    client:close()
    client:close() -- idempotent
    counts.closed_clients = counts.closed_clients + 1
  else
    counts.dropped_clients = counts.dropped_clients + 1
  end
  client = nil -- luacheck: ignore
  full_gc()

  -- boxes that a constructor leaves to the GC when it raises half-way
  assert(not pcall(core.pool, { connect_timeout = "soon" }))
  assert(not pcall(core.pool, { connect_timeout = 0 / 0 }))
  assert(not pcall(core.session, { ca_file = 1 }))
  assert(not pcall(core.session, { user_agent = "ua", proxy = false }))
  counts.half_made = counts.half_made + 4
  -- an unused pool and session, never closed
  local _ = core.pool(c_options { max_connections = 1 + i % 4 })
  _ = core.session(c_options { user_agent = "gc-stress" })
  _ = nil -- luacheck: ignore

  -- C paths that anchor Lua values while they work
  local headers = {}
  for j = 1, 8 do headers["x-acs-h" .. j] = j % 2 == 0 and j * 1000 or ("v" .. j) end
  local auth, creq = core.sign_v3 { method = "POST", host = "h", access_key_id = "id",
                                     access_key_secret = "s", headers = headers }
  assert(auth and select(2, creq:gsub("\nx%-acs%-h%d:", "")) == 8, "sign_v3 lost a header")
  local doc = '{"MessageId":889455942124347392,"RequestId":"r","Data":[1,2,{"a":"b"}]}'
  assert(core.decode_response(doc).MessageId == "889455942124347392")
  for cut = 1, #doc - 1, 7 do assert(core.decode_response(doc:sub(1, cut)) == nil) end
  full_gc()
end

local e = emulator.start {}
local ok, failure = xpcall(function()
  local fds_warm, heap_warm
  local started = os.time()
  for i = 1, ITERATIONS do
    iteration(e, i)
    if i == WARM then
      full_gc()
      fds_warm, heap_warm = fd_count(), collectgarbage("count")
    end
  end
  full_gc()
  local fds_end, heap_end = fd_count(), collectgarbage("count")
  assert(fds_end <= fds_warm,
    ("file descriptors: %d after %d iterations, %d at the end"):format(fds_warm, WARM, fds_end))
  assert(heap_end - heap_warm < HEAP_GROWTH_LIMIT_KB,
    ("the Lua heap grew from %.0f KB to %.0f KB"):format(heap_warm, heap_end))
  print(("gc-stress: %d iterations in %d s: %d calls, %d stream outcomes, %d streams dropped in flight,"
    .. " %d left by break, %d clients dropped unclosed, %d closed, %d half-made boxes;"
    .. " fds %d -> %d, Lua heap %.0f KB -> %.0f KB: ok"):format(ITERATIONS, os.time() - started, counts.calls,
    counts.outcomes, counts.dropped_streams, counts.broken_streams, counts.dropped_clients, counts.closed_clients,
    counts.half_made, fds_warm, fds_end, heap_warm, heap_end))
end, debug.traceback)
e:stop()
if not ok then
  io.stderr:write("gc-stress: FAILED: ", tostring(failure), "\n")
  os.exit(1, true)
end
os.exit(0, true)
