-- The emulator's credential surface: the ECS instance metadata service (RAM-role
-- credentials), the STS keys it issues as the API accepts them, and the HTTPS
-- listener with run-time test certificates (spec/support/tls.lua). Metadata tokens
-- are fetched with the curl CLI (PUT); the rest goes through rrpc.core's session
-- and the rrpc client.
local rrpc = require "rrpc"
local core = require "rrpc.core"
local http = require "http"
local emulator = require "emulator"
local process = require "process"
local system = require "system"
local tls = require "tls"

local ROLES_PATH = "/latest/meta-data/ram/security-credentials/"
local PK = "a1RRpcDemo"

local quote, command_output = process.quote, process.output

-- curl with `options` (a shell fragment) against `url`: the status and the body.
local function curl(options, url)
  local output = command_output("curl -s -m 10 -w '\\n%{http_code}' " .. options .. " " .. quote(url))
  local body, status = output:match("^(.*)\n(%d+)$")
  return tonumber(status), body
end

local function utc(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

-- ISO 8601 UTC times compare as text.
local function wait_until_past(iso_time)
  while utc(os.time()) <= iso_time do
    system.sleep(0.1)
  end
end

describe("emulator credentials", function()
  local emu, session

  local function new_token(ttl)
    return curl("-X PUT -H " .. quote("X-aliyun-ecs-metadata-token-ttl-seconds: " .. ttl), emu.url .. "/latest/api/token")
  end

  local function token()
    local status, body = new_token(60)
    assert.equal(200, status)
    return body
  end

  local function get(path, metadata_token, timeout_ms)
    local headers = {}
    if metadata_token then
      headers["X-aliyun-ecs-metadata-token"] = metadata_token
    end
    return session:perform("GET", emu.url .. path, headers, "", timeout_ms or 5000)
  end

  local function fetch_credentials(role)
    local status, _, body = get(ROLES_PATH .. role, token())
    assert.equal(200, status)
    return assert(core.decode_response(body))
  end

  local function post(path)
    local status, _, body = session:perform("POST", emu.url .. path, {}, "", 5000)
    return status, body
  end

  local function set_metadata_mode(query)
    local status, body = post("/__emulator/metadata?" .. query)
    assert.equal(200, status, body)
  end

  local function stats()
    local status, _, body = session:perform("GET", emu.url .. "/__emulator/stats", {}, "", 5000)
    assert.equal(200, status)
    return assert(core.decode_response(body))
  end

  -- client:rrpc on the echo device with the given key, token and signature version.
  local function call(key_id, secret, security_token, signature)
    local client = rrpc.new { access_key_id = key_id, access_key_secret = secret, security_token = security_token,
                              endpoint = emu.url, signature = signature }
    local res, err = client:rrpc { product_key = PK, device_name = "echo", payload = "x", retry = false }
    client:close()
    return res, err
  end

  local function refused(code, key_id, secret, security_token)
    for _, signature in ipairs { "v1", "v3" } do
      local res, err = call(key_id, secret, security_token, signature)
      assert.is_nil(res, signature)
      assert.equal(code, err.code, signature)
      assert.equal(400, err.status, signature)
    end
  end

  local function accepted(key_id, secret, security_token)
    for _, signature in ipairs { "v1", "v3" } do
      local res, err = call(key_id, secret, security_token, signature)
      assert.is_nil(err, signature .. ": " .. tostring(err))
      assert.equal("x", res.payload)
    end
  end

  setup(function()
    emu = emulator.start { workers = 2 } -- tokens and keys must be shared by the workers
    session = http.session {}
  end)

  teardown(function()
    session:close()
    emu:stop()
  end)

  describe("ECS metadata service", function()
    it("issues a session token for a TTL of 1..21600 seconds and refuses others", function()
      local status, body = new_token(21600)
      assert.equal(200, status)
      assert.matches("^%w+$", body)
      assert.are_not.equal(body, token())
      for _, bad in ipairs { "0", "21601", "-1", "abc", "" } do
        assert.equal(400, (new_token(bad)), bad)
      end
      assert.equal(400, (curl("-X PUT", emu.url .. "/latest/api/token")))
      assert.equal(405, (curl("", emu.url .. "/latest/api/token")))
    end)

    it("wants a valid token for the role list and the credentials", function()
      for _, path in ipairs { ROLES_PATH, ROLES_PATH .. "EcsRole" } do
        assert.equal(401, (get(path)))
        assert.equal(401, (get(path, "not-a-token")))
      end
      local status, _, body = get(ROLES_PATH, token())
      assert.equal(200, status)
      assert.equal("EcsRole\nShortRole", body) -- the registry's roles, sorted, one a line
    end)

    it("lets a token expire after its TTL", function()
      local status, short_lived = new_token(1)
      assert.equal(200, status)
      assert.equal(200, (get(ROLES_PATH, short_lived)))
      system.sleep(1.3)
      assert.equal(401, (get(ROLES_PATH, short_lived)))
    end)

    it("shares tokens between workers", function()
      local shared = token()
      for _ = 1, 6 do -- new connections, spread over both workers
        local other = http.session {}
        local status = other:perform("GET", emu.url .. ROLES_PATH, { ["X-aliyun-ecs-metadata-token"] = shared }, "", 5000)
        other:close()
        assert.equal(200, status)
      end
    end)

    it("issues fresh STS credentials on every fetch, valid for the role's ttl_s", function()
      local before = os.time()
      local first = fetch_credentials("EcsRole")
      local second = fetch_credentials("EcsRole")
      local after = os.time()
      assert.matches("^STS%.%w+$", first.AccessKeyId)
      assert.are_not.equal(first.AccessKeyId, second.AccessKeyId)
      assert.are_not.equal(first.AccessKeySecret, second.AccessKeySecret)
      assert.are_not.equal(first.SecurityToken, second.SecurityToken)
      assert.is_true(#first.SecurityToken > 500)
      assert.equal("Success", first.Code)
      assert.is_true(first.LastUpdated >= utc(before) and first.LastUpdated <= utc(after))
      assert.is_true(first.Expiration >= utc(before + 3600) and first.Expiration <= utc(after + 3600))
    end)

    it("answers 404 for an unknown role or path, 405 for another method", function()
      local metadata_token = token()
      assert.equal(404, (get(ROLES_PATH .. "NoSuchRole", metadata_token)))
      assert.equal(404, (get("/latest/meta-data/instance-id", metadata_token)))
      assert.equal(405, (post(ROLES_PATH)))
    end)

    it("counts its requests per kind in /__emulator/stats; the reset clears them", function()
      assert.equal(204, (post("/__emulator/stats/reset")))
      local metadata_token = token()
      get(ROLES_PATH, metadata_token)
      get(ROLES_PATH .. "EcsRole", metadata_token)
      get(ROLES_PATH .. "EcsRole", metadata_token)
      get(ROLES_PATH .. "EcsRole") -- refused, counted all the same
      local counts = stats().metadata
      assert.equal(1, counts.token)
      assert.equal(1, counts.role)
      assert.equal(3, counts.credentials)
      assert.equal(204, (post("/__emulator/stats/reset")))
      counts = stats().metadata
      assert.same({ 0, 0, 0 }, { counts.token, counts.role, counts.credentials })
    end)

    describe("mode", function()
      after_each(function()
        set_metadata_mode("mode=ok")
      end)

      it("down: answers 503 on every metadata path, still counting; the API is unaffected", function()
        local metadata_token = token()
        assert.equal(204, (post("/__emulator/stats/reset")))
        set_metadata_mode("mode=down")
        assert.equal(503, (new_token(60)))
        assert.equal(503, (get(ROLES_PATH, metadata_token)))
        assert.equal(503, (get(ROLES_PATH .. "EcsRole", metadata_token)))
        assert.equal(1, stats().metadata.credentials)
        accepted("testid", "testsecret")
        set_metadata_mode("mode=ok")
        assert.equal(200, (get(ROLES_PATH .. "EcsRole", metadata_token)))
      end)

      it("slow: answers after delay_ms, so a client's short timeout fires", function()
        local metadata_token = token()
        set_metadata_mode("mode=slow&delay_ms=600")
        local started = system.monotime()
        assert.equal(200, (get(ROLES_PATH .. "EcsRole", metadata_token)))
        assert.is_true(system.monotime() - started >= 0.55)
        local status, code = get(ROLES_PATH .. "EcsRole", metadata_token, 200)
        assert.is_nil(status)
        assert.equal("CURLE_OPERATION_TIMEDOUT", code)
      end)

      it("is reported by GET and checked by POST /__emulator/metadata", function()
        set_metadata_mode("mode=slow&delay_ms=250")
        local status, _, body = session:perform("GET", emu.url .. "/__emulator/metadata", {}, "", 5000)
        assert.equal(200, status)
        local mode = assert(core.decode_response(body))
        assert.equal("slow", mode.mode)
        assert.equal(250, mode.delay_ms)
        for _, bad in ipairs { "", "mode=off", "mode=slow", "mode=slow&delay_ms=-5", "mode=down&delay_ms=10",
                               "mode=ok&extra=1" } do
          assert.equal(400, (post("/__emulator/metadata?" .. bad)), bad)
        end
      end)
    end)
  end)

  describe("STS credentials", function()
    it("are accepted with their token, in V1 and V3, for RRpc and Pub", function()
      local c = fetch_credentials("EcsRole")
      accepted(c.AccessKeyId, c.AccessKeySecret, c.SecurityToken)
      local client = rrpc.new { access_key_id = c.AccessKeyId, access_key_secret = c.AccessKeySecret,
                                security_token = c.SecurityToken, endpoint = emu.url }
      local doc, err = client:request("Pub", { ProductKey = PK, TopicFullName = "/" .. PK .. "/echo/user/get",
                                               MessageContent = "eA==" }, { retry = false })
      client:close()
      assert.is_nil(err, tostring(err))
      assert.is_true(doc.Success)
    end)

    it("are counted per AccessKeyId in /__emulator/stats", function()
      local c = fetch_credentials("EcsRole")
      accepted(c.AccessKeyId, c.AccessKeySecret, c.SecurityToken)
      assert.equal(2, stats().keys[c.AccessKeyId].total)
    end)

    it("are refused without their token: MissingSecurityToken", function()
      local c = fetch_credentials("EcsRole")
      refused("MissingSecurityToken", c.AccessKeyId, c.AccessKeySecret)
      refused("MissingSecurityToken", "STS.static", "StsStaticSecret")
    end)

    it("are refused with another key's token: InvalidSecurityToken.MismatchWithAccessKey", function()
      local c = fetch_credentials("EcsRole")
      local newer = fetch_credentials("EcsRole")
      refused("InvalidSecurityToken.MismatchWithAccessKey", c.AccessKeyId, c.AccessKeySecret, newer.SecurityToken)
    end)

    it("are refused with a wrong secret: SignatureDoesNotMatch", function()
      local c = fetch_credentials("EcsRole")
      refused("SignatureDoesNotMatch", c.AccessKeyId, "not-the-secret", c.SecurityToken)
    end)

    it("expire: InvalidSecurityToken.Expired after the role's ttl_s", function()
      local c = fetch_credentials("ShortRole") -- ttl_s 4
      accepted(c.AccessKeyId, c.AccessKeySecret, c.SecurityToken)
      wait_until_past(c.Expiration)
      refused("InvalidSecurityToken.Expired", c.AccessKeyId, c.AccessKeySecret, c.SecurityToken)
      refused("InvalidSecurityToken.Expired", "STS.expired", "StsExpiredSecret", "CAIS+expired/token==")
    end)

    it("come from the registry too (sts_keys), with a token that needs percent-encoding", function()
      accepted("STS.static", "StsStaticSecret", "CAIS+static/token==")
    end)

    it("leave long-term keys alone: their token is ignored", function()
      accepted("testid", "testsecret", "any-token")
    end)
  end)

  it("does not start with a bad sts_keys or ram_roles entry, and names it", function()
    local entries = {
      ['"sts_keys": {"NOTSTS": {"secret": "s", "token": "t", "expires": "2099-01-01T00:00:00Z"}}'] = "sts_keys.NOTSTS",
      ['"sts_keys": {"STS.x": {"secret": "s", "token": "t", "expires": "2099-02-30T00:00:00Z"}}'] = "sts_keys.STS.x.expires",
      ['"ram_roles": {"Role": {"ttl_s": 0}}'] = "ram_roles.Role.ttl_s",
      ['"ram_roles": {"a/b": {"ttl_s": 60}}'] = "ram_roles.a/b",
    }
    for entry, where in pairs(entries) do
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write('{"access_keys": {}, "products": {}, ' .. entry .. "}")
      f:close()
      local ok, err = pcall(emulator.start, { devices = path })
      os.remove(path)
      assert.is_false(ok)
      assert.matches(path .. ": " .. where .. ":", err, 1, true)
    end
  end)
end)

describe("emulator HTTPS listener", function()
  local certs, emu

  local function client_for(url, options)
    local o = { access_key_id = "testid", access_key_secret = "testsecret", endpoint = url }
    for k, v in pairs(options or {}) do o[k] = v end
    return rrpc.new(o)
  end

  local function call(url, options)
    local client = client_for(url, options)
    local res, err = client:rrpc { product_key = PK, device_name = "echo", payload = "x", retry = false }
    client:close()
    return res, err
  end

  local function fails_verification(url, options)
    local res, err = call(url, options)
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.is_truthy(err.code == "CURLE_PEER_FAILED_VERIFICATION" or err.code:find("^CURLE_SSL_CACERT"), err.code)
  end

  -- An emulator serving HTTPS with the certificate `name` of `certs` (cert, untrusted_cert, ...).
  local function start_with(name)
    local key_name = name == "cert" and "key" or name:gsub("_cert$", "_key")
    return emulator.start { tls = { cert = certs[name], key = certs[key_name] } }
  end

  setup(function()
    certs = tls.generate()
    emu = start_with("cert")
  end)

  teardown(function()
    if emu then emu:stop() end
    tls.remove(certs)
  end)

  it("serves the API to a client that trusts the test CA, by IP address and by name", function()
    assert.matches("^https://127%.0%.0%.1:%d+$", emu.https_url)
    assert.equal(emu.https_url, "https://127.0.0.1:" .. emu.tls_port)
    for _, signature in ipairs { "v1", "v3" } do
      for _, url in ipairs { emu.https_url, "https://localhost:" .. emu.tls_port } do
        local res, err = call(url, { ca_file = certs.ca_file, signature = signature })
        assert.is_nil(err, tostring(err))
        assert.equal("x", res.payload)
      end
    end
  end)

  it("keeps serving plain HTTP on e.url", function()
    local res, err = call(emu.url)
    assert.is_nil(err, tostring(err))
    assert.equal("x", res.payload)
  end)

  it("serves the metadata service too", function()
    local session = http.session { ca_file = certs.ca_file }
    local token = command_output("curl -s --cacert " .. quote(certs.ca_file)
      .. " -X PUT -H 'X-aliyun-ecs-metadata-token-ttl-seconds: 60' " .. emu.https_url .. "/latest/api/token")
    local status, _, body = session:perform("GET", emu.https_url .. ROLES_PATH .. "EcsRole",
      { ["X-aliyun-ecs-metadata-token"] = token }, "", 5000)
    session:close()
    assert.equal(200, status)
    assert.matches('"AccessKeyId" : "STS.', body, 1, true)
  end)

  it("speaks TLS 1.3 and TLS 1.2", function()
    local base = "curl -s -v -o /dev/null --cacert " .. quote(certs.ca_file) .. " "
    local url = emu.https_url .. "/__emulator/health 2>&1"
    assert.matches("SSL connection using TLSv1.3", command_output(base .. url), 1, true)
    assert.matches("SSL connection using TLSv1.2", command_output(base .. "--tlsv1.2 --tls-max 1.2 " .. url), 1, true)
  end)

  it("is refused by a client without the test CA", function()
    fails_verification(emu.https_url)
  end)

  it("is refused with a self-signed certificate, even with the CA file", function()
    local untrusted = start_with("untrusted_cert")
    finally(function() untrusted:stop() end)
    fails_verification(untrusted.https_url, { ca_file = certs.ca_file })
  end)

  it("is refused with a certificate for another name, even with the CA file", function()
    local wrong_name = start_with("wrong_name_cert")
    finally(function() wrong_name:stop() end)
    fails_verification(wrong_name.https_url, { ca_file = certs.ca_file })
  end)

  it("is only started with --tls-port, --tls-cert and --tls-key together", function()
    local run = "timeout 10 emulator/run" -- busted runs from the repository's root, like .busted's paths
    local output = command_output(run .. " --port 1 --tls-port 2 2>&1; echo \"exit=$?\"")
    assert.matches("--tls-port, --tls-cert and --tls-key go together", output, 1, true)
    assert.matches("exit=2", output, 1, true)
    output = command_output(run .. " --port 1 --tls-port 2 --tls-cert /nonexistent --tls-key /nonexistent 2>&1")
    assert.matches("cannot read the TLS file '/nonexistent'", output, 1, true)
  end)
end)
