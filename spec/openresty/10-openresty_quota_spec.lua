-- rrpc.ngx inside real nginx, under load: clients that leave while their calls wait, the
-- shared quota as a bounded queue (429 with Retry-After beyond max_quota_wait), and the
-- checks of rrpc_ngx.new's options. The example gateway (examples/openresty) in front of
-- the emulator; HTTP to the gateway through rrpc.core's libcurl pool.
local http = require "http"
local cjson = require "cjson"
local emulator = require "emulator"
local process = require "process"
local suite_log = require "suite_log"
local system = require "system"

local PK = "a1RRpcDemo"
local KEY = "LTAI5tRRpcDemoKey"

local ROOT = debug.getinfo(1, "S").source:match("^@(.-)/?spec/openresty/[^/]*$") or ""
if ROOT == "" then ROOT = "." end

-- The gateway as spec/support/gateway_server.lua starts it (with the emulator's demo key:
-- the gateway has none of its own), with --max-quota-wait too.
local Gateway = {}
Gateway.__index = Gateway

local function start_gateway(o)
  local quote = process.quote
  return process.start_server {
    name = "gateway",
    command = function(port, dir)
      return ("env RRPC_ACCESS_KEY_ID=LTAI5tRRpcDemoKey RRPC_ACCESS_KEY_SECRET=RRpcDemoSecretNotForProduction"
        .. " %s/examples/openresty/run --port %d --endpoint %s --workers %d --qps %d%s --log %s%s"):format(
        quote(ROOT), port, quote(o.endpoint), o.workers or 1, o.qps or 1000,
        o.max_quota_wait and (" --max-quota-wait " .. o.max_quota_wait) or "",
        quote(dir .. "/access.log"), o.include and (" --include " .. quote(o.include)) or "")
    end,
    healthy = function(port, pid)
      local headers = process.output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__gateway/health")
      return headers:lower():match("\nx%-gateway%-master%-pid: (%d+)") == tostring(pid)
    end,
    ready = function(port, pid, dir)
      return setmetatable({ url = "http://127.0.0.1:" .. port, pid = pid, dir = dir,
                            log = dir .. "/access.log", stderr = dir .. "/stderr.log" }, Gateway)
    end,
  }
end

function Gateway:stop()
  if self.stopped then return end
  self.stopped = true
  process.terminate(self.pid)
  suite_log.keep("gateway", { self.log, self.stderr })
  os.execute("rm -rf " .. process.quote(self.dir))
end

-- Locations of the spec's own, added to the gateway's server block.
local SPEC_LOCATIONS = [[
      location = /__spec/new {
        content_by_lua_block {
          local cjson = require "cjson"
          ngx.req.read_body()
          local opts = cjson.decode(ngx.req.get_body_data())
          opts.access_key_id, opts.access_key_secret = "LTAI5tRRpcDemoKey", "RRpcDemoSecretNotForProduction"
          local ok, err = pcall(require("rrpc.ngx").new, opts)
          ngx.print(ok and "ok" or tostring(err))
        }
      }
      location = /__spec/on-abort {
        content_by_lua_block {
          local rrpc_ngx = require "rrpc.ngx"
          local r = { rrpc_ngx.on_abort(function() end) }
          local again = { rrpc_ngx.on_abort(function() end) }
          local own = { ngx.on_abort(function() end) }
          ngx.print(require("cjson").encode { tostring(r[1]), tostring(r[2]), tostring(again[1]),
            tostring(again[2]), tostring(own[1]), tostring(own[2]) })
        }
      }
      location = /__spec/foreign-on-abort {
        content_by_lua_block {
          ngx.on_abort(function() end)
          local c = require("gateway").client()
          local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "x" }
          ngx.print(res and res.payload or tostring(err))
        }
      }
      location = /__spec/unwatched {
        lua_check_client_abort off;
        content_by_lua_block {
          local c = require("gateway").client()
          local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "y" }
          ngx.print(res and res.payload or tostring(err))
        }
      }
      location = /__spec/user-callback {
        content_by_lua_block {
          local rrpc_ngx = require "rrpc.ngx"
          local out = assert(io.open(ngx.var.arg_file, "w"))
          out:setvbuf("line")
          assert(rrpc_ngx.on_abort(function()
            out:write("callback gone=", tostring(rrpc_ngx.client_gone()), " at ", ngx.now(), "\n")
          end))
          local c = require("gateway").client()
          for i = 1, tonumber(ngx.var.arg_n) do
            local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = ngx.var.arg_device, payload = "u" .. i }
            ngx.update_time()
            out:write(i, " ", res and "ok" or err.code, " at ", ngx.now(), "\n")
          end
          out:write("end\n")
          out:close()
        }
      }
    ]]

local function with_spec_locations()
  local include = os.tmpname()
  process.write_file(include, SPEC_LOCATIONS)
  return include
end

local function stats_reset(emu)
  os.execute("curl -s -X POST " .. emu.url .. "/__emulator/stats/reset >/dev/null")
end

local function key_stats(emu)
  return cjson.decode(process.output("curl -s " .. emu.url .. "/__emulator/stats")).keys[KEY]
end

-- The emulator's log lines of RRpc calls to one device (its log is flushed every 100 ms).
local function calls_to(emu, device)
  system.sleep(0.3)
  local n = 0
  for _, line in ipairs(emu:log_lines()) do
    if line:find(" action=RRpc ", 1, true) and line:find(" dn=" .. device .. " ", 1, true) then n = n + 1 end
  end
  return n
end

-- Clients on one libcurl pool, so that all their transfers go on together: groups of
-- POSTs sent at once; each answer is { status, headers, body, code, seconds } (code:
-- libcurl's, for a transfer that failed, e.g. on its timeout).
local function clients()
  local pool = http.pool { max_connections = 1000 }
  local started, groups, of, next_token = {}, {}, {}, 0
  local self = {}
  -- sends n POSTs; returns the group's table of answers (filled as they come)
  function self.add(n, url, timeout_ms, body_of)
    local group = {}
    for i = 1, n do
      next_token = next_token + 1
      started[next_token], of[next_token] = system.monotime(), { group, i }
      pool:add(next_token, "POST", url, {}, body_of and body_of(i) or ("p" .. i), timeout_ms)
    end
    groups[group] = n
    return group
  end
  local function poll(ms)
    for _, c in ipairs(http.completions(pool:run(ms))) do
      c.seconds = system.monotime() - started[c.token]
      local where = of[c.token]
      where[1][where[2]] = c
    end
  end
  -- drives every transfer for `seconds`
  function self.run_for(seconds)
    local deadline = system.monotime() + seconds
    while system.monotime() < deadline do poll(10) end
  end
  -- drives every transfer until the group has all its answers
  function self.wait(group)
    while true do
      local n = 0
      for _ in pairs(group) do n = n + 1 end
      if n == groups[group] then return group end
      poll(10)
    end
  end
  function self.close() pool:close() end
  return self
end

-- n POSTs at once, and their answers.
local function fire(url, n, timeout_ms, body_of)
  local c = clients()
  local answers = c.wait(c.add(n, url, timeout_ms, body_of))
  c.close()
  return answers
end

local function percentile(values, p)
  table.sort(values)
  return values[math.max(1, math.ceil(#values * p))]
end

describe("OpenResty gateway: clients that leave #openresty #slow", function()
  local emu, gw, include

  setup(function()
    emu = emulator.start {}
    -- 5 calls/s over 2 workers, and calls may wait 10 s for a slot: a queue that clients
    -- on short timeouts leave
    include = with_spec_locations()
    gw = start_gateway { endpoint = emu.url, workers = 2, qps = 5, max_quota_wait = 10000, include = include }
  end)

  teardown(function()
    gw:stop()
    emu:stop()
    os.remove(include)
  end)

  it("sends nothing for clients that left while their calls waited for the quota", function()
    stats_reset(emu)
    -- 15 clients that stay take the slots of the next 3 seconds...
    local c = clients()
    local stayed = c.add(15, gw.url .. "/devices/" .. PK .. "/echo/rrpc", 20000)
    c.run_for(0.2)
    -- ...15 on 1 s timeouts queue behind them and leave about 2 s before their turn
    local left = c.wait(c.add(15, gw.url .. "/devices/" .. PK .. "/upper/rrpc", 1000))
    -- 5 more that stay, after the others left: they get the slots the leavers gave back
    local came_late = c.wait(c.add(5, gw.url .. "/devices/" .. PK .. "/reverse/rrpc", 20000))
    c.wait(stayed)
    c.close()
    for i = 1, 15 do
      assert.equal(200, stayed[i].status, stayed[i].body or stayed[i].message)
      assert.is_nil(left[i].status) -- timed out, and closed its connection
    end
    local late_seconds = {}
    for i = 1, 5 do
      assert.equal(200, came_late[i].status, came_late[i].body or came_late[i].message)
      late_seconds[i] = came_late[i].seconds
    end
    -- behind the 15 slots of the leavers they would have waited about 4 s more
    local slowest_late = percentile(late_seconds, 1)
    assert.is_true(slowest_late < 3, ("the late clients waited %.2f s"):format(slowest_late))
    -- past the seconds the leavers' calls had reserved
    system.sleep(3)
    assert.equal(15, calls_to(emu, "echo"))
    assert.equal(0, calls_to(emu, "upper"))
    assert.equal(5, calls_to(emu, "reverse"))
    local key = key_stats(emu)
    assert.equal(20, key.total)
    assert.is_true(key.max_per_second <= 5, "busiest second: " .. key.max_per_second)
  end)

  it("sends no call of a batch whose client left, after it left", function()
    stats_reset(emu)
    local devices = {}
    for i = 1, 30 do devices[i] = "echo" end
    local started = system.gettime()
    -- 30 calls at 5/s: 6 s; the client leaves after 1.5 s
    local done = fire(gw.url .. "/products/" .. PK .. "/batch", 1, 1500, function()
      return cjson.encode { devices = devices, payload = "b" }
    end)
    local left_at = started + done[1].seconds
    assert.is_nil(done[1].status)
    system.sleep(5)
    local key = key_stats(emu)
    assert.is_true(key.total >= 5 and key.total <= 15, "calls sent: " .. key.total)
    for second in pairs(key.per_second) do
      -- nothing in a second that began after the client left
      assert.is_true(tonumber(second) <= math.floor(left_at),
        ("calls in second %s, after the client left at %.3f"):format(second, left_at))
    end
  end)

  it("fails a waiting call the moment its client leaves, when a callback of rrpc_ngx.on_abort lets the request run on",
    function()
      local out = os.tmpname()
      local left = fire(gw.url .. "/__spec/user-callback?n=30&device=echo&file=" .. out, 1, 1500)[1]
      assert.is_nil(left.status)
      system.sleep(0.5)
      local lines = {}
      for line in process.read_file(out):gmatch("[^\n]+") do lines[#lines + 1] = line end
      os.remove(out)
      assert.equal("end", lines[#lines], table.concat(lines, "\n"))
      local callback_at, ok, refused, after = nil, 0, 0, {}
      for _, line in ipairs(lines) do
        local t = line:match("^callback gone=true at ([%d.]+)$")
        if t then
          callback_at = tonumber(t)
        elseif line ~= "end" then
          local code, at = line:match("^%d+ (%S+) at ([%d.]+)$")
          assert(code, line)
          if code == "ok" then
            ok = ok + 1
            assert.is_nil(callback_at, "a call sent after the callback: " .. line)
          else
            assert.equal("ClientClosedRequest", code)
            refused = refused + 1
            if callback_at then after[#after + 1] = tonumber(at) - callback_at end
          end
        end
      end
      assert.truthy(callback_at, table.concat(lines, "\n"))
      assert.equal(30, ok + refused)
      assert.is_true(ok >= 5 and ok <= 15, "sent: " .. ok)
      -- the call waiting for its slot, and every one after it, at once
      assert.is_true(percentile(after, 1) < 0.1, ("the last refusal came %.3f s after the callback"):format(
        percentile(after, 1)))
    end)
end)

describe("OpenResty gateway: many clients on a small quota #openresty #slow", function()
  local emu, gw

  setup(function()
    emu = emulator.start {}
    gw = start_gateway { endpoint = emu.url, workers = 2, qps = 10 } -- max_quota_wait: 1000 ms
  end)

  teardown(function()
    gw:stop()
    emu:stop()
  end)

  it("answers calls beyond max_quota_wait at once with 429 and Retry-After, never over the quota", function()
    stats_reset(emu)
    local N = 200
    local all = fire(gw.url .. "/devices/" .. PK .. "/echo/rrpc", N, 20000)
    local ok, throttled, seconds, throttled_seconds, retry_after = 0, 0, {}, {}, 0
    for i = 1, N do
      local c = all[i]
      seconds[#seconds + 1] = c.seconds
      if c.status == 200 then
        ok = ok + 1
      else
        assert.equal(429, c.status, c.body or c.message)
        throttled = throttled + 1
        throttled_seconds[#throttled_seconds + 1] = c.seconds
        local wait = tonumber(c.headers["retry-after"])
        assert.truthy(wait and wait >= 1 and wait <= 2, tostring(c.headers["retry-after"]))
        retry_after = math.max(retry_after, wait)
        assert.equal("no", c.headers["x-rrpc-delivered"])
        local err = cjson.decode(c.body).error
        assert.equal("api", err.kind)
        assert.equal("Throttling.Quota", err.code)
        assert.equal("no", err.delivered)
        assert.is_true(err.retryable)
        assert.is_true(err.retry_after >= 1 and err.retry_after <= 2000, tostring(err.retry_after))
      end
    end
    -- this second and the next: 10 to 20 slots (30 if the calls came across a second)
    assert.is_true(ok >= 10 and ok <= 30, "answered 200: " .. ok)
    assert.equal(N, ok + throttled)
    local p99, p99_throttled = percentile(seconds, 0.99), percentile(throttled_seconds, 0.99)
    assert.is_true(p99 < 1 + 1, ("p99 %.2f s, above max_quota_wait + 1 s"):format(p99))
    assert.is_true(p99_throttled < 0.5, ("429s in p99 %.2f s: not at once"):format(p99_throttled))
    local key = key_stats(emu)
    assert.equal(ok, key.total) -- nothing sent for a 429
    assert.is_true(key.max_per_second <= 10, "busiest second: " .. key.max_per_second)
    -- Retry-After later, there is room
    system.sleep(retry_after)
    local session = http.session {}
    local status = session:perform("POST", gw.url .. "/devices/" .. PK .. "/echo/rrpc", {}, "again", 5000)
    session:close()
    assert.equal(200, status)
  end)
end)

describe("OpenResty gateway: a long max_quota_wait #openresty #slow", function()
  local emu, gw

  setup(function()
    emu = emulator.start {}
    gw = start_gateway { endpoint = emu.url, workers = 2, qps = 10, max_quota_wait = 5000 }
  end)

  teardown(function()
    gw:stop()
    emu:stop()
  end)

  it("lets 40 calls at 10/s wait their turn, over 4 seconds, within the quota", function()
    stats_reset(emu)
    local all = fire(gw.url .. "/devices/" .. PK .. "/echo/rrpc", 40, 20000)
    local seconds = {}
    for i = 1, 40 do
      assert.equal(200, all[i].status, all[i].body or all[i].message)
      seconds[i] = all[i].seconds
    end
    local slowest = percentile(seconds, 1)
    -- in the 4th second from the first: 2 to 3 s later
    assert.is_true(slowest > 1.9 and slowest < 3.5, ("the last call took %.2f s"):format(slowest))
    local key = key_stats(emu)
    assert.equal(40, key.total)
    assert.is_true(key.max_per_second <= 10, "busiest second: " .. key.max_per_second)
  end)
end)

describe("rrpc_ngx.new and rrpc_ngx.on_abort #openresty #slow", function()
  local emu, gw, include, session

  local function get(path, body)
    local status, headers, reply = session:perform("POST", gw.url .. path, {}, body or "", 5000)
    assert(status, headers)
    return status, reply, headers
  end

  setup(function()
    emu = emulator.start {}
    include = with_spec_locations()
    gw = start_gateway { endpoint = emu.url, include = include }
    session = http.session {}
  end)

  teardown(function()
    session:close()
    gw:stop()
    emu:stop()
    os.remove(include)
  end)

  it("refuses a qps that is not an integer >= 1, and other bad options, naming the option", function()
    local cases = {
      { { qps = 0 }, "option 'qps' must be in 1..1000000, got 0" },
      { { qps = 0.5 }, "option 'qps' must be an integer, got number" },
      { { qps = -3 }, "option 'qps' must be in 1..1000000, got -3" },
      { { qps = "10" }, "option 'qps' must be an integer, got string" },
      { { max_quota_wait = -1 }, "option 'max_quota_wait' must be in 0..60000, got -1" },
      { { max_quota_wait = 2.5 }, "option 'max_quota_wait' must be an integer, got number" },
      { { max_quota_wait = 60001 }, "option 'max_quota_wait' must be in 0..60000, got 60001" },
      { { location = "_rrpc" }, "option 'location' must be a location's URI, starting with \"/\", got \"_rrpc\"" },
      { { quota_dict = "nope" }, "option 'quota_dict': no lua_shared_dict \"nope\" in nginx.conf" },
      { { quota_dict = 1 }, "option 'quota_dict' must be a string, got number" },
      { { http_version = "2" },
        "option 'http_version' \"2\" is not available in rrpc.ngx (nginx's upstream speaks HTTP/1.1)" },
    }
    for _, case in ipairs(cases) do
      local _, reply = get("/__spec/new", cjson.encode(case[1]))
      assert.matches("bad argument #1 to 'new' (" .. case[2] .. ")", reply, 1, true)
    end
    local _, reply = get("/__spec/new", cjson.encode { qps = 1, max_quota_wait = 0, quota_dict = "rrpc_quota",
                                                            http_version = "1.1" })
    assert.equal("ok", reply)
  end)

  it("rrpc_ngx.on_abort chains one callback; a second, or ngx.on_abort after it, is a duplicate", function()
    local _, reply = get("/__spec/on-abort")
    assert.same({ "1", "nil", "nil", "duplicate call", "nil", "duplicate call" }, cjson.decode(reply))
  end)

  it("says once in the error log why it cannot see clients leave", function()
    for _ = 1, 3 do
      local status, reply = get("/__spec/foreign-on-abort")
      assert.equal(200, status)
      assert.equal("x", reply)
      status, reply = get("/__spec/unwatched")
      assert.equal(200, status)
      assert.equal("y", reply)
    end
    local log = process.read_file(gw.stderr)
    local function count(text)
      local n = 0
      for _ in log:gmatch(text:gsub("%p", "%%%0")) do n = n + 1 end
      return n
    end
    assert.equal(1, count("rrpc.ngx: an ngx.on_abort callback other than rrpc's is registered (register yours "
      .. "with rrpc_ngx.on_abort): calls of clients that have gone cannot be held back"))
    assert.equal(1, count("rrpc.ngx: lua_check_client_abort is off: calls of clients that have gone cannot be held back"))
  end)
end)
