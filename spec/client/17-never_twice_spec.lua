-- RRpc is not idempotent: no call is ever sent twice unless the caller asked for it
-- (issue 10). The emulator's `vanish` device (a1Hostile/vanish) reads the request whole,
-- takes its vanish listener away (connects to it are refused at once) and closes the
-- connection with a FIN without answering: on a kept-alive connection libcurl would
-- silently write the request again on a new connection ("Connection died, retrying a fresh
-- connect"). The emulator counts every RRpc request as it arrives, before its signature and
-- nonce are checked (GET /__emulator/arrivals), so a copy shows even when it is refused.
-- Through client:rrpc, rrpc.batch, both signatures and placements, rrpc.ngx's upstream
-- keep-alive, and an emulator killed with SIGKILL and restarted under calls in flight.
local rrpc = require "rrpc"
local cjson = require "cjson"
local core = require "rrpc.core"
local http = require "http"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local process = require "process"

local KEY, SECRET = "testid", "testsecret"
local TIMEOUT = 1000

-- Unique payloads: arrivals are counted by payload (RequestBase64Byte).
local RUN = ("%d-%d"):format(os.time(), math.random(1, 1e9))
local serial = 0
local function unique(label)
  serial = serial + 1
  return ("never-twice %s #%d %s"):format(label, serial, RUN)
end

local function echo_request(payload)
  return { product_key = "a1RRpcDemo", device_name = "echo", payload = payload, timeout = TIMEOUT }
end

local function vanish_request(payload)
  return { product_key = "a1Hostile", device_name = "vanish", payload = payload, timeout = TIMEOUT }
end

local function with(t, extra)
  local copy = {}
  for k, v in pairs(t) do copy[k] = v end
  for k, v in pairs(extra or {}) do copy[k] = v end
  return copy
end

-- The outcome every vanish call must have: the request was sent, so the device may have
-- it, and sending it again could deliver it twice.
local function assert_maybe(err, where)
  where = where .. ": " .. tostring(err)
  assert.is_true(rrpc.is_error(err), where)
  assert.equal("maybe", err.delivered, where)
  assert.is_false(err.retryable, where)
end

describe("never twice #never_twice #slow", function()
  local emu

  setup(function()
    emu = emulator.start { vanish = true }
  end)

  teardown(function()
    emu:stop()
  end)

  -- Each vanish takes the listener away for refuse_ms: the next case starts once it is back.
  after_each(function()
    assert.is_true(emu:wait_listening(emu.vanish_port), "the vanish listener did not come back")
  end)

  local function new_client(url, opts)
    return rrpc.new(with({ endpoint = url, access_key_id = KEY, access_key_secret = SECRET }, opts))
  end

  -- The endpoint a client talks to (a field of emu), named by what a reconnect there meets
  -- while the node is gone.
  local ENDPOINTS = {
    { name = "the vanish port (reconnect refused)", field = "vanish_url" },
    { name = "the main port (reconnect accepted)", field = "url" },
  }

  -- One client, one kept-alive connection: an echo call opens it, the vanish call reuses it.
  local function primed_vanish(url, client_opts, call_opts)
    local c = new_client(url, client_opts)
    local primer = unique("primer")
    local res = assert(c:rrpc(echo_request(primer)))
    assert.equal(primer, res.payload)
    local payload = unique("vanish")
    local res2, err = c:rrpc(with(vanish_request(payload), call_opts))
    return c, payload, res2, err
  end

  describe("the emulator", function()
    -- A V1 request made by hand, so that the very same bytes can be sent twice.
    local function signed_v1_body(payload, secret)
      local params = {
        AccessKeyId = KEY, Action = "RRpc", Format = "JSON", SignatureMethod = "HMAC-SHA1",
        SignatureNonce = core.nonce(), SignatureVersion = "1.0",
        Timestamp = os.date("!%Y-%m-%dT%H:%M:%SZ"), Version = "2018-01-20",
        ProductKey = "a1RRpcDemo", DeviceName = "echo", RequestBase64Byte = rrpc.b64encode(payload), Timeout = 1000,
      }
      params.Signature = rrpc.sign_v1("POST", params, secret)
      local parts = {}
      for k, v in pairs(params) do
        parts[#parts + 1] = rrpc.percent_encode(k) .. "=" .. rrpc.percent_encode(tostring(v))
      end
      return table.concat(parts, "&")
    end

    it("counts each arrival before the signature and nonce checks", function()
      local session = http.session {}
      local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
      local payload = unique("replayed")
      local body = signed_v1_body(payload, SECRET)
      local status = session:perform("POST", emu.url .. "/", headers, body, 5000)
      assert.equal(200, status)
      local again, _, reply = session:perform("POST", emu.url .. "/", headers, body, 5000)
      assert.equal(400, again)
      assert.equal("SignatureNonceUsed", core.decode_response(reply).Code)
      assert.equal(2, emu:arrivals_of(payload)) -- the refused copy arrived too
      local forged = unique("forged")
      status = session:perform("POST", emu.url .. "/", headers, signed_v1_body(forged, "wrong secret"), 5000)
      assert.equal(400, status)
      assert.equal(1, emu:arrivals_of(forged))
      session:close()
      -- the same payload in two calls, each with its own nonce
      local c = new_client(emu.url)
      local twice = unique("twice")
      assert(c:rrpc(echo_request(twice)))
      assert(c:rrpc(echo_request(twice)))
      assert.equal(2, emu:arrivals()[rrpc.b64encode(twice)])
      c:close()
    end)

    it("vanish: the vanish port refuses connects for a while, the main port goes on", function()
      -- a fresh connection: libcurl has nothing to resend, it reports the close as it is
      local c = new_client(emu.vanish_url)
      local payload = unique("fresh")
      local started = core.monotime()
      local _, err = c:rrpc(vanish_request(payload))
      local refused = process.output("curl -s -m 1 -o /dev/null -w '%{exitcode}' " .. emu.vanish_url
        .. "/__emulator/health")
      local main = process.output("curl -s -m 1 -o /dev/null -w '%{http_code}' " .. emu.url .. "/__emulator/health")
      assert.equal("7", refused) -- CURLE_COULDNT_CONNECT: refused at once
      assert.equal("200", main)
      assert_maybe(err, "vanish on a fresh connection")
      assert.equal(1, emu:arrivals_of(payload))
      assert.is_true(emu:wait_listening(emu.vanish_port))
      local back = core.monotime() - started
      assert.is_true(back >= 0.3 and back < 3, ("the listener came back after %.2f s"):format(back))
      local res = assert(c:rrpc(echo_request(unique("back"))))
      assert.is_string(res.message_id)
      c:close()
    end)
  end)

  describe("client:rrpc on a kept-alive connection", function()
    for _, endpoint in ipairs(ENDPOINTS) do
      local name = endpoint.name
      it(name .. ": arrives once, ends maybe and not retryable", function()
        local c, payload, res, err = primed_vanish(emu[endpoint.field])
        assert.is_nil(res)
        assert_maybe(err, name)
        assert.equal(1, emu:arrivals_of(payload))
        assert.is_true(emu:wait_listening(emu.vanish_port))
        -- the client goes on with a new connection
        local after = unique("after")
        assert.equal(after, assert(c:rrpc(echo_request(after))).payload)
        c:close()
      end)

      it(name .. ": with retry (max_attempts 5) still arrives once, in one attempt", function()
        local c, payload, res, err = primed_vanish(emu[endpoint.field], nil, { retry = rrpc.retry.new { max_attempts = 5 } })
        assert.is_nil(res)
        assert_maybe(err, name)
        assert.equal(1, err.attempts)
        assert.equal(1, emu:arrivals_of(payload))
        c:close()
      end)

      it(name .. ": retry_maybe_delivered = true sends it again, as the caller asked", function()
        local c, payload, _, err = primed_vanish(emu[endpoint.field], nil,
          { retry = rrpc.retry.new { max_attempts = 5, base_delay = 200, retry_maybe_delivered = true } })
        assert.is_true(rrpc.is_error(err), tostring(err))
        assert.is_true(err.attempts > 1, "attempts: " .. tostring(err.attempts))
        local arrived = emu:arrivals_of(payload)
        assert.is_true(arrived >= 1 and arrived <= err.attempts,
          ("%d arrivals in %d attempts"):format(arrived, err.attempts))
        c:close()
      end)
    end
  end)

  describe("both signatures and placements", function()
    for _, endpoint in ipairs(ENDPOINTS) do
      local name = endpoint.name
      for _, signature in ipairs { "v3", "v1" } do
        for _, placement in ipairs { "body", "query" } do
          it(("%s, %s in the %s: arrives once with retry on"):format(name, signature, placement), function()
            local c, payload, res, err = primed_vanish(emu[endpoint.field],
              { signature = signature, placement = placement }, { retry = rrpc.retry.new { max_attempts = 5 } })
            assert.is_nil(res)
            assert_maybe(err, ("%s %s %s"):format(name, signature, placement))
            assert.equal(1, err.attempts)
            assert.equal(1, emu:arrivals_of(payload))
            c:close()
          end)
        end
      end
    end
  end)

  describe("rrpc.batch", function()
    local POLICIES = {
      { name = "the default policy", policy = nil },
      { name = "an aggressive policy (5 attempts, OFFLINE and HALFCONN retried)",
        policy = rrpc.retry.new { max_attempts = 5, retry_offline = true, retry_halfconn = true } },
    }
    local WIDTH = 8

    for _, endpoint in ipairs(ENDPOINTS) do
      local name = endpoint.name
      for _, p in ipairs(POLICIES) do
        it(("%s, %s: every vanish call arrives once, maybe, in one attempt"):format(name, p.name), function()
          local c = new_client(emu[endpoint.field])
          -- WIDTH kept-alive connections, each reused by one call of the mixed batch
          local primers = {}
          for i = 1, WIDTH do primers[i] = echo_request(unique("batch primer")) end
          local primed = rrpc.batch(c, primers, { concurrency = WIDTH })
          for i, r in ipairs(primed) do
            assert.equal(primers[i].payload, assert(r.res, tostring(r.err)).payload)
          end
          local requests = {}
          for i = 1, WIDTH do
            requests[i] = i % 2 == 0 and vanish_request(unique("batch vanish")) or echo_request(unique("batch echo"))
          end
          local results, summary = rrpc.batch(c, requests, { concurrency = WIDTH, retry = p.policy })
          local arrivals = emu:arrivals()
          assert.equal(WIDTH, summary.total)
          local vanished = 0
          for i, r in ipairs(results) do
            local request = requests[i]
            local arrived = arrivals[rrpc.b64encode(request.payload)] or 0
            local where = ("call %d (%s)"):format(i, request.device_name)
            if request.device_name == "vanish" then
              assert.is_nil(r.res, where)
              assert_maybe(r.err, where)
              assert.equal(1, (r.res or r.err).attempts, where)
              assert.equal(1, arrived, where)
              vanished = vanished + 1
            else
              assert.is_true(arrived <= 1, where .. " arrived " .. arrived .. " times")
              if r.res then
                assert.equal(request.payload, r.res.payload, where)
                assert.equal(1, arrived, where)
              else
                -- its idle connection closed by the reload as it was reused
                assert_maybe(r.err, where)
              end
            end
          end
          assert.equal(WIDTH / 2, vanished)
          c:close()
        end)
      end
    end
  end)

  describe("rrpc.ngx (nginx's upstream keep-alive) #openresty", function()
    local gateways = {}

    teardown(function()
      for _, gw in pairs(gateways) do gw:stop() end
    end)

    local function gateway(url)
      gateways[url] = gateways[url] or gateway_server.start { endpoint = url, workers = 1 }
      return gateways[url]
    end

    local function post(session, gw, path, body)
      local status, headers, reply = session:perform("POST", gw.url .. path, {}, body, 20000)
      assert(status, headers)
      return status, headers, reply
    end

    for _, endpoint in ipairs(ENDPOINTS) do
      local name = endpoint.name
      it(name .. ": one call and a batch (default policy): each arrives once, delivered maybe", function()
        local gw = gateway(emu[endpoint.field])
        local session = http.session {}
        -- one worker, so the kept-alive upstream connection of the echo call is the one
        -- the vanish call reuses
        local primer = unique("ngx primer")
        local status, _, reply = post(session, gw, "/devices/a1RRpcDemo/echo/rrpc", primer)
        assert.equal(200, status)
        assert.equal(primer, reply)
        local payload = unique("ngx vanish")
        local headers
        status, headers, reply = post(session, gw, "/devices/a1Hostile/vanish/rrpc?timeout=1000", payload)
        assert.equal(502, status, reply)
        assert.equal("maybe", headers["x-rrpc-delivered"], reply)
        assert.equal("1", headers["x-rrpc-attempts"], reply)
        local e = cjson.decode(reply).error
        assert.equal("maybe", e.delivered)
        assert.is_false(e.retryable)
        assert.equal(1, emu:arrivals_of(payload))
        assert.is_true(emu:wait_listening(emu.vanish_port))

        -- a batch through the gateway: rrpc.ngx's batch with the default retry policy
        primer = unique("ngx batch primer")
        assert.equal(200, (post(session, gw, "/devices/a1RRpcDemo/echo/rrpc", primer)))
        payload = unique("ngx batch vanish")
        status, _, reply = post(session, gw, "/products/a1Hostile/batch?timeout=1000",
          cjson.encode { devices = { "vanish" }, payload = payload })
        assert.equal(200, status, reply)
        local result = cjson.decode(reply).results[1]
        assert.equal("maybe", result.error and result.error.delivered, reply)
        assert.equal(1, emu:arrivals_of(payload))
        session:close()
      end)
    end
  end)
end)

describe("an emulator killed with SIGKILL under calls in flight #never_twice #slow", function()
  local emu, restarted

  teardown(function()
    if restarted then restarted:stop() end
    if emu then emu:stop() end
  end)

  it("every call in flight ends maybe, none reaches the restarted emulator, calls after it work", function()
    local IN_FLIGHT = 6
    emu = emulator.start {}
    local c = rrpc.new { endpoint = emu.url, access_key_id = KEY, access_key_secret = SECRET }
    -- IN_FLIGHT kept-alive connections for the slow calls to reuse
    local primers = {}
    for i = 1, IN_FLIGHT do primers[i] = echo_request(unique("kill primer")) end
    for _, r in ipairs(rrpc.batch(c, primers, { concurrency = IN_FLIGHT })) do assert(r.res, tostring(r.err)) end

    local slow = {}
    for i = 1, IN_FLIGHT do
      slow[i] = { product_key = "a1RRpcDemo", device_name = "slow", payload = unique("slow"), timeout = 3000 }
    end
    local arrived_before
    local function all_arrived()
      local arrivals = emu:arrivals()
      for _, request in ipairs(slow) do
        if arrivals[rrpc.b64encode(request.payload)] ~= 1 then return nil end
      end
      return arrivals
    end
    -- Called while the batch waits for the slow device (1.5 s): once every call has
    -- arrived, the emulator dies (master and workers, SIGKILL) and a new one listens on
    -- the same port before the client sees the connections go.
    local function on_progress()
      if restarted then return end
      arrived_before = all_arrived()
      if arrived_before then
        emu:kill()
        restarted = emulator.start { port = emu.port }
      end
    end
    local results, summary = rrpc.batch(c, slow, { concurrency = IN_FLIGHT, on_progress = on_progress })
    assert.is_not_nil(restarted, "the emulator was not killed while the calls waited")
    assert.equal(IN_FLIGHT, summary.total)
    local arrivals_after = restarted:arrivals()
    for i, r in ipairs(results) do
      local where = "slow call " .. i
      assert.is_nil(r.res, where .. " succeeded: it was sent again to the restarted emulator")
      assert_maybe(r.err, where)
      assert.equal(1, (r.res or r.err).attempts, where)
      local key = rrpc.b64encode(slow[i].payload)
      assert.equal(1, arrived_before[key], where)
      assert.is_nil(arrivals_after[key], where .. " reached the restarted emulator")
    end
    for _, line in ipairs(restarted:log_lines()) do
      assert.is_nil(line:find(" dn=slow ", 1, true), "the restarted emulator got a slow call: " .. line)
    end

    -- calls after the restart work, single and batched
    local payload = unique("after the restart")
    assert.equal(payload, assert(c:rrpc(echo_request(payload))).payload)
    local after = {}
    for i = 1, IN_FLIGHT do after[i] = echo_request(unique("batch after the restart")) end
    local _, s = rrpc.batch(c, after, { concurrency = IN_FLIGHT })
    assert.equal(IN_FLIGHT, s.ok)
    c:close()
  end)
end)
