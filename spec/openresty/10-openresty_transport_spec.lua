-- rrpc.ngx's transport in real nginx: every HTTP the library does goes through nginx's own
-- non-blocking machinery, RAM-role credentials included, and each call's own timeout is
-- honoured (the upstream's balancer_by_lua), not the location's fixed one.
local http = require "http"
local core = require "rrpc.core"
local emulator = require "emulator"
local gateway_server = require "gateway_server"
local process = require "process"

-- Locations of the spec's own in the gateway's server block (examples/openresty/run --include).
local SPEC_LOCATIONS = [[
location = /spec/role-call {
  content_by_lua_block {
    local rrpc_ngx = require "rrpc.ngx"
    local opts = { endpoint = ngx.var.arg_endpoint, metadata_endpoint = ngx.var.arg_metadata }
    if ngx.var.arg_provider == "explicit" then
      opts.credentials = rrpc_ngx.credentials.ecs_ram_role { metadata_endpoint = ngx.var.arg_metadata }
      opts.metadata_endpoint = nil
    end
    local ok, c = pcall(rrpc_ngx.new, opts)
    if not ok then return ngx.say("new: ", c) end
    local res, err = c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "via the role" }
    ngx.say(res and res.payload or tostring(err))
  }
}
location = /spec/quick {
  content_by_lua_block { ngx.say("quick") }
}
location = /spec/hang {
  content_by_lua_block {
    local rrpc_ngx = require "rrpc.ngx"
    local c = rrpc_ngx.new { endpoint = ngx.var.arg_endpoint, access_key_id = "testid",
                             access_key_secret = "testsecret", connect_timeout = 1000, timeout_margin = 0 }
    local started = ngx.now()
    local _, err = c:rrpc { product_key = "a1Hostile", device_name = "hang", payload = "x", timeout = 1000 }
    ngx.update_time()
    ngx.say(err.code, " ", err.delivered, " ", ngx.now() - started)
  }
}
]]

describe("rrpc.ngx's transport #openresty #slow", function()
  local emu, gw, include, session

  setup(function()
    emu = emulator.start {}
    include = os.tmpname()
    process.write_file(include, SPEC_LOCATIONS)
    gw = gateway_server.start { endpoint = emu.url, workers = 1, include = include }
    session = http.session {}
  end)

  teardown(function()
    session:close()
    gw:stop()
    emu:stop()
    os.remove(include)
  end)

  local function metadata_mode(query)
    local status = session:perform("POST", emu.url .. "/__emulator/metadata?" .. query, {}, "", 5000)
    assert.equal(200, status)
  end

  for _, provider in ipairs { "chain", "explicit" } do
    it(("fetches RAM-role credentials (%s) without blocking the worker: its other requests answer at once"):format(
      provider), function()
      metadata_mode("mode=slow&delay_ms=1200") -- each of its 3 answers (token, role, credentials)
      finally(function() metadata_mode("mode=ok") end)
      local pool = http.pool { max_connections = 4 }
      local role_url = ("%s/spec/role-call?endpoint=%s&metadata=%s&provider=%s"):format(gw.url, emu.url, emu.url,
        provider)
      local started = core.monotime()
      pool:add(1, "GET", role_url, {}, "", 20000)
      local done = {}
      for _, c in ipairs(http.completions(pool:run(300))) do done[c.token] = { c, core.monotime() - started } end
      assert.is_nil(done[1], "the role call cannot be over yet")
      local quick_started = core.monotime()
      pool:add(2, "GET", gw.url .. "/spec/quick", {}, "", 20000)
      while not (done[1] and done[2]) do
        for _, c in ipairs(http.completions(pool:run(100))) do done[c.token] = { c, core.monotime() - quick_started } end
      end
      pool:close()
      local role, quick = done[1][1], done[2][1]
      assert.equal(200, quick.status)
      assert.equal("quick\n", quick.body)
      -- one worker: had the fetch blocked it, the quick request would have waited seconds
      assert.is_true(done[2][2] < 0.5, ("the quick request took %.2f s"):format(done[2][2]))
      assert.equal(200, role.status)
      assert.equal("via the role\n", role.body)
      assert.is_true(done[1][2] >= 2.5, "the slow metadata service was asked three times")
    end)
  end

  it("honours each call's own HTTP timeout, not the location's 15 s", function()
    local status, _, body = session:perform("GET", ("%s/spec/hang?endpoint=%s"):format(gw.url, emu.url), {}, "", 20000)
    assert.equal(200, status)
    local code, delivered, seconds = body:match("^(%S+) (%S+) (%S+)")
    assert.equal("UpstreamTimeout", code, body)
    assert.equal("maybe", delivered)
    -- at most connect_timeout 1000 + Timeout 1000 + margin 0, as with libcurl; here the
    -- connection is made at once, and the answer may take Timeout + margin
    seconds = tonumber(seconds)
    assert.is_true(seconds >= 0.95 and seconds < 2.5, ("the call took %.2f s"):format(seconds))
  end)
end)
