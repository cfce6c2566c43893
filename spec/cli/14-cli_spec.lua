-- The command line, bin/rrpc, run as a child process in a clean environment against the
-- emulator: every command and option, the exit statuses, batch input formats (malformed
-- lines included), binary payloads through pipes, the progress bar under a
-- pseudo-terminal (script), and the emulator command's start and stop.
-- The CLI is Lua 5.4 whatever VM busted runs under, so it needs build/lua5.4.
local cjson = require "cjson"
local rrpc_lib = require "rrpc"
local emulator = require "emulator"
local process = require "process"
local suite_log = require "suite_log"
local system = require "system"
local tls = require "tls"

local CLI = "./bin/rrpc" -- busted runs from the repository root
local PK = "a1RRpcDemo"
local CLOSED_PORT_URL = "http://127.0.0.1:1" -- nothing listens there: connection refused

local quote, command_output = process.quote, process.output
local read_file, write_file = process.read_file, process.write_file

local function count(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do n = n + 1 end
  return n
end

local function json_lines(text)
  local docs = {}
  for line in text:gmatch("[^\n]+") do docs[#docs + 1] = cjson.decode(line) end
  return docs
end

-- A zombie counts as gone, as in spec/support/emulator.lua.
local function alive(pid)
  local state = read_file("/proc/" .. pid .. "/stat"):match("^%d+ %(.*%) (%a)")
  return state ~= nil and state ~= "Z"
end

local function wait_until(condition, seconds)
  local deadline = system.monotime() + seconds
  while not condition() do
    if system.monotime() > deadline then return false end
    system.sleep(0.05)
  end
  return true
end

local ALL_BYTES = (function()
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
  return table.concat(bytes):rep(3)
end)()

describe("rrpc command line #cli #slow", function()
  local e, dir, home

  -- The environment a run gets, as NAME=value words: the test key, the emulator, no ECS
  -- metadata. options.credentials = false drops the key, .endpoint = false the endpoint,
  -- .secret replaces the secret, .env adds { NAME = value }.
  local function environment(options)
    local words = { "PATH=" .. os.getenv("PATH"), "HOME=" .. home, "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true" }
    if options.credentials ~= false then
      words[#words + 1] = "ALIBABA_CLOUD_ACCESS_KEY_ID=testid"
      words[#words + 1] = "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" .. (options.secret or "testsecret")
    end
    if options.endpoint ~= false then words[#words + 1] = "RRPC_ENDPOINT=" .. e.url end
    for name, value in pairs(options.env or {}) do words[#words + 1] = name .. "=" .. value end
    for i, word in ipairs(words) do words[i] = quote(word) end
    return table.concat(words, " ")
  end

  local function command_line(args)
    local words = { CLI }
    for _, word in ipairs(args) do words[#words + 1] = quote(word) end
    return table.concat(words, " ")
  end

  -- Runs bin/rrpc; returns its exit status, standard output and standard error, exact
  -- bytes. options: those of environment(), and stdin (bytes).
  local function rrpc(args, options)
    options = options or {}
    local stdin, stdout, stderr = dir .. "/stdin", dir .. "/stdout", dir .. "/stderr"
    write_file(stdin, options.stdin or "")
    local status = command_output(("env -i %s %s <%s >%s 2>%s; echo $?"):format(
      environment(options), command_line(args), stdin, stdout, stderr))
    local err = read_file(stderr)
    -- for spec 99: the CLI's error text must not hold a secret either
    local log = assert(io.open(suite_log.path("errors.log"), "a"))
    log:write(err)
    log:close()
    return tonumber(status), read_file(stdout), err
  end

  local function call(device, extra, options)
    local args = { "call", "--product-key", PK, "--device", device }
    for _, word in ipairs(extra or { "--payload", "hello" }) do args[#args + 1] = word end
    return rrpc(args, options)
  end

  local function file(name, bytes)
    local path = dir .. "/" .. name
    write_file(path, bytes)
    return path
  end

  local function assert_one_line_error(status, expected_status, stdout, stderr, pattern)
    assert.are.equal(expected_status, status, stderr)
    assert.are.equal("", stdout)
    assert.are.equal(1, count(stderr, "\n"), stderr)
    assert.is_nil(stderr:find("traceback", 1, true), stderr)
    assert.is_truthy(stderr:find(pattern), stderr)
  end

  -- The registry's static STS key (emulator/devices.json): its token must never show, in
  -- any form (raw, percent-encoded once or twice, JSON-escaped), on either output.
  local STS_ID, STS_SECRET, TOKEN = "STS.static", "StsStaticSecret", "CAIS+static/token=="
  local WRONG_SECRET = "Wrong-Secret-Value-42"

  local function sts_options(secret)
    return { credentials = false, env = { ALIBABA_CLOUD_ACCESS_KEY_ID = STS_ID,
                                          ALIBABA_CLOUD_ACCESS_KEY_SECRET = secret,
                                          ALIBABA_CLOUD_SECURITY_TOKEN = TOKEN } }
  end

  local function token_forms()
    local once = rrpc_lib.percent_encode(TOKEN)
    return { TOKEN, once, rrpc_lib.percent_encode(once), (TOKEN:gsub("/", "\\/")) }
  end

  -- and for spec 99, standard output is kept with the errors
  local function assert_no_token(text, what)
    local log = assert(io.open(suite_log.path("errors.log"), "a"))
    log:write(text, "\n")
    log:close()
    for _, form in ipairs(token_forms()) do
      assert.is_nil(text:find(form, 1, true), ("%s shows the token as %s: %s"):format(what, form, text))
    end
  end

  setup(function()
    local core = "build/lua5.4/rrpc/core.so"
    if read_file(core) == "" then os.execute("make -s --no-print-directory build LUA=lua5.4") end
    assert.are_not.equal("", read_file(core), "bin/rrpc needs " .. core .. " (make LUA=lua5.4)")
    e = emulator.start {}
    dir = command_output("mktemp -d /tmp/rrpc-cli-spec.XXXXXX"):match("[^\n]+")
    home = dir .. "/home"
    os.execute("mkdir -p " .. quote(home))
  end)

  teardown(function()
    if e then e:stop() end
    if dir then os.execute("rm -rf " .. quote(dir)) end
  end)

  describe("help and usage", function()
    it("--help lists the commands, the credentials' sources and the exit statuses", function()
      local status, out, err = rrpc { "--help" }
      assert.are.equal(0, status)
      assert.are.equal("", err)
      for _, command in ipairs { "call", "batch", "emulator", "sign" } do
        assert.is_truthy(out:find("\n   " .. command .. " "), command)
      end
      assert.is_truthy(out:find("ALIBABA_CLOUD_ACCESS_KEY_ID", 1, true))
      for _, row in ipairs { "0  ok", "1  other", "2  invalid", "3  timeout", "4  offline", "5  throttled",
                             "6  auth", "7  network", "8  not_found", "10  batch" } do
        assert.is_truthy(out:find("\n +" .. row), row)
      end
    end)

    it("every command has --help with examples, also as 'rrpc help <command>'", function()
      for _, command in ipairs { "call", "batch", "emulator", "sign" } do
        local status, out = rrpc { command, "--help" }
        assert.are.equal(0, status)
        assert.is_truthy(out:find("^Usage: rrpc " .. command))
        assert.is_truthy(out:find("\nExamples:\n  rrpc " .. command .. "[ \n]"), command)
        local _, same = rrpc { "help", command }
        assert.are.equal(out, same)
      end
    end)

    it("a usage error is one line naming the command, exit status 2", function()
      local cases = {
        { { "cal" }, "^rrpc: unknown command 'cal'" },
        { { "call", "--product-key", PK, "--payload", "x" }, "^rrpc call: missing option '%-%-device'" },
        { { "call", "--product-key", PK, "--device", "echo", "--payload", "x", "--timeout", "soon" },
          "^rrpc call: .*'soon'" },
        { { "call", "--product-key", PK, "--device", "echo", "--payload", "x", "-" }, "can not be used together" },
        { { "call", "--product-key", PK, "--device", "echo", "--payload", "x", "--region", "cn-shanghai",
            "--endpoint", "http://127.0.0.1:1" }, "can not be used together" },
        -- secrets are never taken from the command line (ps would show them)
        { { "call", "--product-key", PK, "--device", "echo", "--payload", "x", "--access-key-secret", "s" },
          "unknown option '%-%-access%-key%-secret'" },
        { { "batch", "--devices", "-", "--format", "xml" }, "^rrpc batch: .*'%-%-format' must be one of" },
        { { "sign", "--device", "echo", "--payload", "x" }, "^rrpc sign: missing option '%-%-product%-key'" },
      }
      for _, case in ipairs(cases) do
        local status, out, err = rrpc(case[1])
        assert_one_line_error(status, 2, out, err, case[2])
      end
    end)

    it("input the library or a file refuses is one line too, exit status 2, no stack trace", function()
      local too_big = file("too-big.bin", ("x"):rep(262145))
      local cases = {
        { { "--payload", "x", "--timeout", "50" }, "^rrpc: option 'timeout' must be in 1000%.%.8000, got 50\n$" },
        { { "--payload", "x", "--region", "Not A Region" }, "^rrpc: option 'region' must look like" },
        { { "--payload", "x", "--endpoint", "ftp://example" }, "^rrpc: option 'endpoint' must look like" },
        { { "--payload-file", too_big }, "262145 bytes, more than the platform's 262144" },
        { { "--payload-file", dir .. "/missing.bin" }, "^rrpc: cannot read the payload file: .*missing%.bin" },
        { {}, "^rrpc: no payload: give %-%-payload TEXT, %-%-payload%-file FILE or %-" },
        { { "--payload", "x", "--retries", "100" }, "^rrpc: %-%-retries 100: " },
      }
      for _, case in ipairs(cases) do
        local status, out, err = call("echo", case[1])
        assert_one_line_error(status, 2, out, err, case[2])
      end
    end)
  end)

  describe("call", function()
    it("prints the reply's bytes and nothing else", function()
      local status, out, err = call("echo")
      assert.are.same({ 0, "hello", "" }, { status, out, err })
      status, out = call("upper", { "--payload", "Shout" })
      assert.are.same({ 0, "SHOUT" }, { status, out })
    end)

    it("carries binary payloads through standard input and output, and from files", function()
      local status, out, err = call("echo", { "-" }, { stdin = ALL_BYTES })
      assert.are.equal(0, status, err)
      assert.are.equal(ALL_BYTES, out)
      status, out = call("echo", { "--payload-file", "-" }, { stdin = ALL_BYTES })
      assert.are.equal(0, status)
      assert.are.equal(ALL_BYTES, out)
      status, out = call("reverse", { "--payload-file", file("bytes.bin", ALL_BYTES) })
      assert.are.equal(0, status)
      assert.are.equal(ALL_BYTES:reverse(), out)
    end)

    it("--json: one object with the code, the payload as text, the exact MessageId and the RequestId", function()
      local status, out = call("echo", { "--payload", "hello", "--json" })
      assert.are.equal(0, status)
      assert.are.equal(1, count(out, "\n"))
      local doc = cjson.decode(out)
      assert.are.same({ true, "ok", "SUCCESS", "hello", 1 }, { doc.ok, doc.outcome, doc.code, doc.payload, doc.attempts })
      assert.is_nil(doc.payload_base64)
      assert.is_truthy(out:find('"message_id":"%d+"'), "message_id must be a JSON string")
      assert.is_true(#doc.message_id >= 16) -- above 2^53, which a double would round
      -- the emulator logged the id it sent for this RequestId: they must be the same digits
      local logged
      assert.is_true(wait_until(function()
        for _, line in ipairs(e:log_lines()) do
          if line:find("rid=" .. doc.request_id, 1, true) then logged = line:match(" mid=(%d+)") end
        end
        return logged ~= nil
      end, 3))
      assert.are.equal(logged, doc.message_id)
    end)

    it("--json: Base64 for bytes that are not text (control characters, invalid UTF-8)", function()
      local cases = {
        { "\0\1\2\255", false }, { "bell\7", false }, { "\192\128", false }, { "c1\194\133", false },
        { "tab\tand\r\nnewline", true }, { "caf\195\169 \226\130\172", true },
      }
      for _, case in ipairs(cases) do
        local bytes, is_text = case[1], case[2]
        local status, out = call("echo", { "-", "--json" }, { stdin = bytes })
        assert.are.equal(0, status)
        local doc = cjson.decode(out)
        if is_text then
          assert.are.equal(bytes, doc.payload)
          assert.is_nil(doc.payload_base64)
        else
          assert.is_nil(doc.payload)
          assert.are.equal(bytes, rrpc_lib.b64decode(doc.payload_base64))
        end
      end
    end)

    it("tells outcome classes apart by exit status; the error is one line, --json has it all", function()
      local cases = {
        { "offline", 4, "offline", "OFFLINE", "no" },
        { "halfconn", 4, "offline", "HALFCONN", "maybe" },
        { "silent", 3, "timeout", "TIMEOUT", "maybe" },
        { "timeout-code", 3, "timeout", "iot.messagebroker.TIMEOUT", "maybe" },
        { "throttled", 5, "throttled", "Throttling.User", "no" },
        { "ratelimit", 5, "throttled", "iot.messagebroker.RateLimit", "no" },
        { "unavailable", 5, "throttled", "ServiceUnavailable", "no" },
        { "no-such-device", 8, "not_found", "iot.device.NotExistedDevice", "no" },
        { "inactive", 8, "not_found", "iot.device.InactiveDevice", "no" },
        { "internal-error", 1, "other", "InternalError", "maybe" },
        { "unknown", 1, "other", "UNKNOWN", "maybe" },
        { "html502", 1, "other", "HTTP502", "maybe" },
      }
      for _, case in ipairs(cases) do
        local device, status_wanted, outcome, code, delivered = case[1], case[2], case[3], case[4], case[5]
        local status, out, err = call(device, { "--payload", "x", "--timeout", "1000" })
        assert_one_line_error(status, status_wanted, out, err, code:gsub("%p", "%%%0"))
        status, out = call(device, { "--payload", "x", "--timeout", "1000", "--json" })
        assert.are.equal(status_wanted, status, device)
        local doc = cjson.decode(out)
        assert.are.same({ false, outcome, code, delivered }, { doc.ok, doc.outcome, doc.code, doc.delivered })
      end
    end)

    it("bad input the platform refuses exits 2", function()
      local status, out, err = call("echo", { "--payload", "" })
      assert_one_line_error(status, 2, out, err, "NullMessageContent")
      status, out, err = call("echo", { "--payload", "x", "--topic", "/wrong" })
      assert_one_line_error(status, 2, out, err, "InvalidFormattedTopicName")
    end)

    it("credentials missing or refused exit 6", function()
      local status, out, err = call("echo", nil, { secret = "not-the-secret" })
      assert_one_line_error(status, 6, out, err, "SignatureDoesNotMatch")
      status, out, err = call("echo", nil, { credentials = false })
      assert_one_line_error(status, 6, out, err, "^rrpc: no credentials found; looked in: environment")
      status, out, err = call("echo", nil, { credentials = false,
        env = { ALIBABA_CLOUD_ACCESS_KEY_ID = "inactive-key", ALIBABA_CLOUD_ACCESS_KEY_SECRET = "inactivesecret" } })
      assert_one_line_error(status, 6, out, err, "InvalidAccessKeyId%.Inactive")
    end)

    it("an STS token never shows: a V1 SignatureDoesNotMatch on standard error and in --json", function()
      local status, out, err = call("echo", { "--payload", "x", "--signature", "v1" }, sts_options(WRONG_SECRET))
      assert_one_line_error(status, 6, out, err, "SignatureDoesNotMatch")
      assert.is_truthy(err:find("%26SecurityToken%3D***%26", 1, true), err)
      assert_no_token(err, "standard error")
      status, out, err = call("echo", { "--payload", "x", "--signature", "v1", "--json" }, sts_options(WRONG_SECRET))
      assert.are.equal(6, status)
      assert.is_truthy(cjson.decode(out).message:find("%26SecurityToken%3D***%26", 1, true), out)
      assert_no_token(out, "--json")
      assert_no_token(err, "standard error")
    end)

    it("a key, secret or token of the wrong type in ~/.aliyun/config.json exits 6, naming the file and profile", function()
      os.execute("mkdir -p " .. quote(home .. "/.aliyun"))
      local path = home .. "/.aliyun/config.json"
      finally(function() os.remove(path) end)
      for _, field in ipairs { "access_key_id", "access_key_secret", "sts_token" } do
        local profile = { name = "default", mode = "StsToken", access_key_id = STS_ID,
                          access_key_secret = STS_SECRET, sts_token = TOKEN }
        profile[field] = 31415926
        write_file(path, cjson.encode { current = "default", profiles = { profile } })
        local status, out, err = call("echo", nil, { credentials = false })
        assert_one_line_error(status, 6, out, err, "^rrpc: profile default of " .. path:gsub("%p", "%%%0")
          .. ": " .. field .. " must be a string, got number\n$")
        assert.is_nil(err:find("31415926", 1, true), err)
      end
      write_file(path, cjson.encode { profiles = { { name = "default", mode = "AK", access_key_id = "testid",
                                                     access_key_secret = { "testsecret" } } } })
      local status, out, err = call("echo", nil, { credentials = false })
      assert_one_line_error(status, 6, out, err, "access_key_secret must be a string, got table")
    end)

    it("a numeric secret in ~/.alibabacloud/credentials is the text it is (an INI file has no types)", function()
      os.execute("mkdir -p " .. quote(home .. "/.alibabacloud"))
      local path = home .. "/.alibabacloud/credentials"
      finally(function() os.remove(path) end)
      write_file(path, "[default]\ntype = access_key\naccess_key_id = testid\naccess_key_secret = 31415926\n")
      local status, out, err = call("echo", nil, { credentials = false })
      -- signed with the secret "31415926", which the emulator's key does not have
      assert_one_line_error(status, 6, out, err, "SignatureDoesNotMatch")
      assert.is_nil(err:find("31415926", 1, true), err)
    end)

    it("a connection that cannot be made exits 7", function()
      local status, out, err = call("echo", { "--payload", "x", "--endpoint", CLOSED_PORT_URL })
      assert_one_line_error(status, 7, out, err, "^rrpc network error CURLE_COULDNT_CONNECT")
    end)

    it("--retries sends again what cannot have reached the device, and only that", function()
      local _, out = call("throttled", { "--payload", "x", "--json" })
      assert.are.equal(1, cjson.decode(out).attempts)
      local status
      status, out = call("throttled", { "--payload", "x", "--json", "--retries", "2" })
      assert.are.equal(5, status)
      assert.are.equal(3, cjson.decode(out).attempts)
      status, out = call("offline", { "--payload", "x", "--json", "--retries", "2" })
      assert.are.equal(4, status)
      assert.are.equal(1, cjson.decode(out).attempts)
    end)

    it("--topic, --instance (or RRPC_IOT_INSTANCE_ID)", function()
      local status, out = call("echo", { "--payload", "t", "--topic", "/" .. PK .. "/echo/user/cmd" })
      assert.are.same({ 0, "t" }, { status, out })
      local args = { "call", "--product-key", "a1InstanceOnly", "--device", "echo", "--payload", "i" }
      status = rrpc(args)
      assert.are.equal(8, status) -- the product is not in the legacy instance
      args[#args + 1] = "--instance"
      args[#args + 1] = "iot-060a0demo"
      status, out = rrpc(args)
      assert.are.same({ 0, "i" }, { status, out })
      status, out = rrpc({ "call", "--product-key", "a1InstanceOnly", "--device", "echo", "--payload", "i" },
                         { env = { RRPC_IOT_INSTANCE_ID = "iot-060a0demo" } })
      assert.are.same({ 0, "i" }, { status, out })
    end)

    it("--signature v1 or v3 (the default) is what the emulator verified", function()
      local function signature_logged(extra)
        local _, out = call("echo", extra)
        local request_id = cjson.decode(out).request_id
        local signature
        wait_until(function()
          for _, line in ipairs(e:log_lines()) do
            if line:find("rid=" .. request_id, 1, true) then signature = line:match(" sig=(%w+)") end
          end
          return signature ~= nil
        end, 3)
        return signature
      end
      assert.are.equal("v1", signature_logged { "--payload", "x", "--json", "--signature", "v1" })
      assert.are.equal("v3", signature_logged { "--payload", "x", "--json", "--signature", "v3" })
      assert.are.equal("v3", signature_logged { "--payload", "x", "--json" })
    end)

    it("--endpoint beats RRPC_ENDPOINT", function()
      local status, out = call("echo", { "--payload", "x", "--endpoint", e.url },
                               { env = { RRPC_ENDPOINT = CLOSED_PORT_URL } })
      assert.are.same({ 0, "x" }, { status, out })
      status = call("echo", { "--payload", "x" }, { endpoint = false, env = { RRPC_ENDPOINT = CLOSED_PORT_URL } })
      assert.are.equal(7, status)
    end)

    it("--profile reads that profile of ~/.aliyun/config.json", function()
      os.execute("mkdir -p " .. quote(home .. "/.aliyun"))
      write_file(home .. "/.aliyun/config.json", cjson.encode {
        current = "other",
        profiles = { { name = "emulator", mode = "AK", access_key_id = "testid", access_key_secret = "testsecret" } },
      })
      local status, out = call("echo", { "--payload", "p", "--profile", "emulator" }, { credentials = false })
      os.remove(home .. "/.aliyun/config.json")
      assert.are.same({ 0, "p" }, { status, out })
    end)

    it("--ca-file trusts a CA for HTTPS", function()
      local t = tls.generate()
      local s = emulator.start { tls = { cert = t.cert, key = t.key } }
      finally(function()
        s:stop()
        tls.remove(t)
      end)
      local status, out = call("echo", { "--payload", "tls", "--endpoint", s.https_url, "--ca-file", t.ca_file })
      assert.are.same({ 0, "tls" }, { status, out })
      local err
      status, out, err = call("echo", { "--payload", "tls", "--endpoint", s.https_url })
      assert_one_line_error(status, 7, out, err, "rrpc network error")
    end)
  end)

  describe("sign", function()
    -- "Timestamp%3D2026-01-02T03%253A04%253A05Z" (encoded twice in a V1 string to sign)
    local function v1_field(string_to_sign, name)
      local value = string_to_sign:match("%%26" .. name .. "%%3D(.-)%%26")
      return (value:gsub("%%25(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
    end

    it("V1: the string to sign is the one the emulator computed for the same call", function()
      local _, out = call("echo", { "--payload", "v1 check", "--signature", "v1", "--json" }, { secret = "wrong" })
      local server = cjson.decode(out).message:match("server string to sign is:(POST&%S+)")
      assert.is_string(server)
      local timestamp, nonce = v1_field(server, "Timestamp"), v1_field(server, "SignatureNonce")
      assert.is_truthy(timestamp:find("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"), timestamp)
      local status, signed = rrpc { "sign", "--product-key", PK, "--device", "echo", "--payload", "v1 check",
                                    "--signature", "v1", "--timestamp", timestamp, "--nonce", nonce, "--json" }
      assert.are.equal(0, status)
      local doc = cjson.decode(signed)
      assert.are.equal(server, doc.string_to_sign)
      assert.are.same({ "v1", e.url .. "/" }, { doc.signature_version, doc.url })
      assert.is_truthy(doc.signature:find("^[%w+/]+=*$"))
      assert.is_nil(doc.canonical_request)
    end)

    it("V3: the canonical request and string to sign are the ones the emulator computed", function()
      local _, out = call("upper", { "--payload", "v3 check", "--json" }, { secret = "wrong" })
      local server_sts = cjson.decode(out).message:match("server string to sign is:(ACS3%-HMAC%-SHA256\n%x+)")
      assert.is_string(server_sts)
      -- the emulator logs its canonical request (warn level) on a V3 mismatch
      local canonical
      assert.is_true(wait_until(function()
        for request in read_file(e.stderr):gmatch("server canonical request:\n(.-), client: ") do
          if request:find("x-acs-action:RRpc", 1, true) then canonical = request end
        end
        return canonical ~= nil and #canonical > 0
      end, 3))
      local date = canonical:match("\nx%-acs%-date:(%S+)\n")
      local nonce = canonical:match("\nx%-acs%-signature%-nonce:(%x+)\n")
      local status, signed = rrpc { "sign", "--product-key", PK, "--device", "upper", "--payload", "v3 check",
                                    "--timestamp", date, "--nonce", nonce, "--json" }
      assert.are.equal(0, status)
      local doc = cjson.decode(signed)
      assert.are.equal(canonical, doc.canonical_request)
      assert.are.equal(server_sts, doc.string_to_sign)
      assert.is_truthy(doc.authorization:find(
        "^ACS3%-HMAC%-SHA256 Credential=testid,SignedHeaders=content%-type;host;x%-acs%-action;"
        .. "x%-acs%-content%-sha256;x%-acs%-date;x%-acs%-signature%-nonce;x%-acs%-version,Signature=%x+$"))
    end)

    it("prints the steps under headings, never the secret, the same for the same inputs", function()
      local function sign(extra)
        local args = { "sign", "--product-key", PK, "--device", "echo", "--payload", "same",
                       "--timestamp", "2026-01-02T03:04:05Z", "--nonce", "0123456789abcdef" }
        for _, word in ipairs(extra) do args[#args + 1] = word end
        local status, out, err = rrpc(args)
        assert.are.same({ 0, "" }, { status, err })
        assert.is_nil(out:find("testsecret", 1, true))
        return out
      end
      local v3 = sign {}
      assert.are.equal(v3, sign {})
      assert.is_truthy(v3:find("^== request\nPOST " .. e.url:gsub("%p", "%%%0") .. "/ %(signature v3"))
      assert.is_truthy(v3:find("\n== canonical request\nPOST\n/\n\ncontent%-type:"))
      assert.is_truthy(v3:find("\nx%-acs%-date:2026%-01%-02T03:04:05Z\nx%-acs%-signature%-nonce:0123456789abcdef\n"))
      assert.is_truthy(v3:find("\n== string to sign\nACS3%-HMAC%-SHA256\n%x+\n== authorization\nACS3%-HMAC%-SHA256 "))
      assert.are_not.equal(v3, sign { "--nonce", "fedcba9876543210" })
      local v1 = sign { "--signature", "v1" }
      assert.is_truthy(v1:find("\n== string to sign\nPOST&%%2F&AccessKeyId%%3Dtestid%%26"))
      assert.is_truthy(v1:find("SignatureNonce%%3D0123456789abcdef%%26", 1))
      assert.is_truthy(v1:find("\n== signature\n[%w+/]+=*\n$"))
    end)

    it("masks an STS security token (V1: SecurityToken%3D***, V3: x-acs-security-token:***), and says so", function()
      local function sign(signature, json)
        local args = { "sign", "--product-key", PK, "--device", "echo", "--payload", "x", "--signature", signature }
        if json then args[#args + 1] = "--json" end
        local status, out, err = rrpc(args, sts_options(STS_SECRET))
        assert.are.same({ 0, "" }, { status, err })
        assert_no_token(out, "rrpc sign " .. signature)
        return json and cjson.decode(out) or out
      end
      assert.is_truthy(sign("v1"):find("\n== string to sign\nPOST&.-%%26SecurityToken%%3D%*%*%*%%26SignatureMethod"))
      assert.is_truthy(sign("v1", true).string_to_sign:find("%26SecurityToken%3D***%26", 1, true))
      assert.is_truthy(sign("v3"):find("\nx%-acs%-security%-token:%*%*%*\nx%-acs%-signature%-nonce:"))
      assert.is_truthy(sign("v3", true).canonical_request:find("\nx-acs-security-token:***\n", 1, true))
      local _, help = rrpc { "sign", "--help" }
      assert.is_truthy(help:find("nor an STS security token: the token shows as ***", 1, true), help)
    end)

    it("V1 with an STS token: the masked string to sign is still the platform's (masked the same way)", function()
      local _, out = call("echo", { "--payload", "v1 sts", "--signature", "v1", "--json" }, sts_options(WRONG_SECRET))
      assert_no_token(out, "call --json")
      local server = cjson.decode(out).message:match("server string to sign is:(POST&%S+)")
      assert.is_truthy(server:find("%26SecurityToken%3D***%26", 1, true), server)
      local status, signed = rrpc({ "sign", "--product-key", PK, "--device", "echo", "--payload", "v1 sts",
                                    "--signature", "v1", "--timestamp", v1_field(server, "Timestamp"),
                                    "--nonce", v1_field(server, "SignatureNonce"), "--json" },
                                  sts_options(STS_SECRET))
      assert.are.equal(0, status)
      assert.are.equal(server, cjson.decode(signed).string_to_sign)
    end)

    it("signs for the endpoint the options and environment choose", function()
      local function url(extra, options)
        local args = { "sign", "--product-key", PK, "--device", "echo", "--payload", "x", "--json" }
        for _, word in ipairs(extra) do args[#args + 1] = word end
        local _, out = rrpc(args, options)
        return cjson.decode(out).url
      end
      assert.are.equal(e.url .. "/", url {})
      -- an explicit --region beats the environment's endpoint
      assert.are.equal("https://iot.cn-shanghai.aliyuncs.com/", url { "--region", "cn-shanghai" })
      assert.are.equal("https://iot.ap-southeast-1.aliyuncs.com/",
        url({}, { endpoint = false, env = { RRPC_REGION = "ap-southeast-1" } }))
      assert.are.equal("https://iot.cn-shanghai.aliyuncs.com/", url({}, { endpoint = false }))
    end)
  end)

  describe("batch", function()
    local function batch(extra, options)
      local args = { "batch" }
      for _, word in ipairs(extra) do args[#args + 1] = word end
      local status, out, err = rrpc(args, options)
      return status, json_lines(out), err, out
    end

    local function by_line(docs)
      local map = {}
      for _, doc in ipairs(docs) do map[doc.line] = doc end
      return map
    end

    it("an STS token never shows in the outcome lines, the notes or the summary", function()
      local devices = file("sts.csv", PK .. ",echo\n" .. PK .. ",upper\n")
      local status, docs, err, out = batch({ "--devices", devices, "--payload", "x", "--signature", "v1",
                                              "--retries", "0" }, sts_options(WRONG_SECRET))
      assert.are.equal(10, status)
      assert.are.equal(2, #docs)
      for _, doc in ipairs(docs) do
        assert.are.same({ "auth", "SignatureDoesNotMatch" }, { doc.outcome, doc.code })
        assert.is_truthy(doc.message:find("%26SecurityToken%3D***%26", 1, true), doc.message)
      end
      assert_no_token(out, "batch's outcome lines")
      assert_no_token(err, "batch's standard error")
    end)

    it("CSV: header, quoted fields, blank lines; malformed lines reported by line number, the rest processed", function()
      local devices = file("devices.csv", table.concat({
        "product_key,device_name,payload",    -- 1: a header
        PK .. ",echo",                         -- 2: the default payload
        PK .. ',upper,"hi, ""you"""',          -- 3: quoted, with a comma and quotes
        "",                                    -- 4
        "just-one-field",                      -- 5
        PK .. ",reverse,abc\r",                -- 6: CRLF
        PK .. ',echo,"unterminated',           -- 7
        PK .. ",,x",                           -- 8
        PK .. ",offline",                      -- 9
      }, "\n") .. "\n")
      local status, docs, err = batch { "--devices", devices, "--payload", "hello", "--ordered" }
      assert.are.equal(10, status)
      local lines = {}
      for i, doc in ipairs(docs) do lines[i] = doc.line end
      assert.are.same({ 2, 3, 5, 6, 7, 8, 9 }, lines)
      local got = by_line(docs)
      assert.are.same({ "ok", "hello", PK, "echo" }, { got[2].outcome, got[2].payload, got[2].product_key, got[2].device_name })
      assert.are.equal('HI, "YOU"', got[3].payload)
      assert.are.equal("cba", got[6].payload)
      for _, n in ipairs { 5, 7, 8 } do
        assert.are.same({ false, "invalid", "InvalidLine", "no" }, { got[n].ok, got[n].outcome, got[n].code, got[n].delivered })
        assert.is_truthy(err:find("rrpc batch: line " .. n .. ": " .. got[n].message:gsub("%p", "%%%0"), 1), n)
      end
      assert.is_truthy(got[5].message:find("got 1 field"))
      assert.is_truthy(got[7].message:find("closing quote"))
      assert.are.equal("no device_name", got[8].message)
      assert.are.same({ "offline", "OFFLINE" }, { got[9].outcome, got[9].code })
      assert.is_nil(err:find("line [2369]:"))
      -- the summary table
      assert.is_truthy(err:find("\noutcome +devices\nok +3\ninvalid +3\noffline +1\ntotal +7 "), err)
    end)

    it("JSON lines: payload, payload_base64 (binary), and what makes a line malformed", function()
      local lines = {
        cjson.encode { product_key = PK, device_name = "echo", payload_base64 = "AAEC/w==" },
        cjson.encode { product_key = PK, device_name = "upper", payload = "abc" },
        "{not json",
        cjson.encode { product_key = PK, device_name = "echo", payload = "x", payload_base64 = "eA==" },
        cjson.encode { product_key = PK, device_name = "echo", payload_base64 = "eA" },
        cjson.encode { product_key = PK, device_name = "echo", colour = "red" },
        cjson.encode { product_key = PK, device_name = "echo" },
        cjson.encode { product_key = PK, device_name = "echo", payload = ("z"):rep(262145) },
        cjson.encode { product_key = PK, device_name = 7, payload = "x" },
      }
      local status, docs, err = batch { "--devices", file("devices.jsonl", table.concat(lines, "\n")), "--ordered" }
      assert.are.equal(10, status)
      assert.are.equal(#lines, #docs)
      local got = by_line(docs)
      assert.are.equal("AAEC/w==", got[1].payload_base64)
      assert.are.equal("ABC", got[2].payload)
      local problems = {
        [3] = "not a JSON object", [4] = "payload and payload_base64 together", [5] = "payload_base64: invalid Base64",
        [6] = 'unknown field "colour"', [7] = "no payload", [8] = "262145 bytes, more than the platform's",
        [9] = 'field "device_name" must be a string',
      }
      for n, problem in pairs(problems) do
        assert.are.same({ false, "invalid" }, { got[n].ok, got[n].outcome }, n)
        assert.is_truthy(got[n].message:find(problem, 1, true), got[n].message)
        assert.is_truthy(err:find("rrpc batch: line " .. n .. ": ", 1, true), n)
      end
      -- the library's own refusal carries the line number, not its count of requests
      assert.is_nil(got[8].message:find("request #", 1, true))
    end)

    it("guesses the format from the first character, --format overrides it", function()
      local jsonl = file("guess.jsonl", cjson.encode { product_key = PK, device_name = "echo", payload = "j" } .. "\n")
      local status, docs = batch { "--devices", jsonl }
      assert.are.same({ 0, "j" }, { status, docs[1].payload })
      local csv = file("guess.csv", PK .. ",echo,c\n")
      status, docs = batch { "--devices", csv, "--format", "jsonl" }
      assert.are.same({ 10, "invalid" }, { status, docs[1].outcome })
      assert.is_truthy(docs[1].message:find("not a JSON object", 1, true))
    end)

    it("exits 0 when every device succeeded", function()
      local status, docs, err = batch({ "--devices", "-", "--payload", "ok" }, { stdin = PK .. ",echo\n" .. PK .. ",upper\n" })
      assert.are.equal(0, status, err)
      assert.are.equal(2, #docs)
      assert.is_truthy(err:find("\nok +2\ntotal +2 "), err)
    end)

    it("reads the devices from standard input, the payload from a file; both cannot be stdin", function()
      local payload = file("payload.bin", ALL_BYTES)
      local status, docs = batch({ "--devices", "-", "--payload-file", payload }, { stdin = PK .. ",echo\n" })
      assert.are.equal(0, status)
      assert.are.equal(ALL_BYTES, rrpc_lib.b64decode(docs[1].payload_base64))
      local _, out, err
      status, _, err, out = batch({ "--devices", "-", "-" }, { stdin = PK .. ",echo\n" })
      assert_one_line_error(status, 2, out, err, "^rrpc: standard input cannot be both the devices and the payload")
      status, _, err, out = batch { "--devices", dir .. "/no-such-file.csv", "--payload", "x" }
      assert_one_line_error(status, 2, out, err, "^rrpc: cannot read the devices file: .*no%-such%-file")
    end)

    it("writes outcomes as they complete, or in input order with --ordered", function()
      local devices = file("order.csv", PK .. ",slow\n" .. PK .. ",echo\n" .. PK .. ",upper\n")
      local _, docs = batch { "--devices", devices, "--payload", "o" }
      assert.are.equal(3, #docs)
      assert.are.equal(1, docs[3].line) -- slow (1.5 s) comes last
      _, docs = batch { "--devices", devices, "--payload", "o", "--ordered" }
      assert.are.same({ 1, 2, 3 }, { docs[1].line, docs[2].line, docs[3].line })
      assert.are.equal("ok", docs[1].outcome)
    end)

    it("--concurrency and --qps bound the calls", function()
      local devices = file("bench.csv", ("a1Bench,d200\n"):rep(5)) -- 200 ms each
      local function seconds(extra)
        local started = system.monotime()
        local args = { "--devices", devices, "--payload", "x" }
        for _, word in ipairs(extra) do args[#args + 1] = word end
        local status = batch(args)
        assert.are.equal(0, status)
        return system.monotime() - started
      end
      assert.is_true(seconds { "--concurrency", "1" } >= 1.0)  -- one at a time: 5 x 200 ms
      assert.is_true(seconds { "--concurrency", "5" } < 0.9)   -- all at once
      assert.is_true(seconds { "--qps", "2" } >= 1.8)          -- one every 500 ms
      local status, _, err, out = batch { "--devices", devices, "--payload", "x", "--qps", "0" }
      assert_one_line_error(status, 2, out, err, "option 'qps' must be in")
    end)

    it("--retries and --timeout apply to every device; a bad --timeout is one error before any call", function()
      local devices = file("retry.csv", PK .. ",throttled\n" .. PK .. ",silent\n")
      local started = system.monotime()
      local status, docs = batch { "--devices", devices, "--payload", "r", "--timeout", "1000", "--ordered" }
      assert.is_true(system.monotime() - started < 4) -- silent answers after 1 s, not the default 5 s
      assert.are.equal(10, status)
      assert.are.same({ "throttled", 3 }, { docs[1].outcome, docs[1].attempts }) -- the library's default
      assert.are.same({ "timeout", 1 }, { docs[2].outcome, docs[2].attempts })
      local _, err, out
      _, docs = batch { "--devices", devices, "--payload", "r", "--timeout", "1000", "--ordered", "--retries", "0" }
      assert.are.equal(1, docs[1].attempts)
      status, _, err, out = batch { "--devices", devices, "--payload", "r", "--timeout", "50" }
      assert_one_line_error(status, 2, out, err, "^rrpc: option 'timeout' must be in 1000%.%.8000, got 50")
    end)

    it("prints plain progress lines when standard error is not a terminal", function()
      local devices = file("progress.csv", (PK .. ",slow\n"):rep(3) .. PK .. ",offline\n")
      local status, docs, err = batch { "--devices", devices, "--payload", "p", "--progress-interval", "0.3" }
      assert.are.equal(10, status)
      assert.are.equal(4, #docs)
      assert.is_true(count(err, "rrpc batch: %d+/4 %d+%% [%d.]+/s ETA %d+:%d%d; ") >= 2, err)
      assert.is_nil(err:find("\27", 1, true))
      assert.is_truthy(err:find("\noutcome +devices\nok +3\noffline +1\ntotal +4 "), err)
      local _, _, quiet = batch { "--devices", devices, "--payload", "p", "--progress-interval", "0" }
      assert.are.equal(0, count(quiet, "rrpc batch: "))
    end)

    it("draws a live progress bar on a terminal (under script), keeping standard output clean", function()
      local devices = file("bar.csv", (PK .. ",slow\n"):rep(2) .. PK .. ",echo\n")
      local out_file, typescript = dir .. "/bar.out", dir .. "/bar.typescript"
      local inner = ("env -i %s %s >%s"):format(environment {},
        command_line { "batch", "--devices", devices, "--payload", "b" }, out_file)
      local status = command_output(("script -q -e -c %s /dev/null </dev/null >%s; echo $?"):format(
        quote(inner), typescript))
      assert.are.equal(0, tonumber(status))
      local screen = read_file(typescript)
      assert.is_truthy(screen:find("\r\27%[K%[[#.]+%] 1/3 33%% "), screen) -- the echo first, redrawn in place
      assert.is_truthy(screen:find("\r\27%[K%[" .. ("#"):rep(24) .. "%] 3/3 100%% [%d.]+/s ETA 0:00  ok 3\r?\n"), screen)
      assert.is_truthy(screen:find("outcome +devices\r?\nok +3\r?\ntotal +3 "))
      assert.is_nil(screen:find('"outcome"', 1, true))
      assert.are.equal(3, #json_lines(read_file(out_file)))
    end)
  end)

  describe("emulator", function()
    -- Starts `rrpc emulator` in the background; returns the rrpc PID, the nginx master's
    -- PID (from its health check), the port and the file its standard output goes to.
    local function start(extra)
      for _ = 1, 3 do
        local port = math.random(45001, 50000)
        local out_file = dir .. "/emulator.out"
        local args = { "emulator", "--port", tostring(port) }
        for _, word in ipairs(extra or {}) do args[#args + 1] = word end
        local pid = tonumber(command_output(("env -i %s %s </dev/null >%s 2>%s & echo $!"):format(
          environment { credentials = false, endpoint = false }, command_line(args), out_file, dir .. "/emulator.err")))
        local master
        wait_until(function()
          local headers = command_output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__emulator/health")
          master = tonumber(headers:lower():match("\nx%-emulator%-pid: (%d+)"))
          return master ~= nil or not alive(pid)
        end, 5)
        if master then return pid, master, port, out_file end
        if alive(pid) then os.execute("kill -TERM " .. pid) end
      end
      error("rrpc emulator did not start: " .. read_file(dir .. "/emulator.err"))
    end

    local function stop_all(...)
      for _, pid in ipairs { ... } do
        if alive(pid) then os.execute("kill -TERM " .. pid) end
      end
    end

    -- The banner's "export ..." line and the commands after it, run as a user would paste them.
    local function run_pasted(banner, pattern)
      local exports = banner:match("\n  (export [^\n]+)")
      local command = banner:match("\n  (" .. pattern .. "[^\n]+)")
      assert.is_string(exports, banner)
      assert.is_string(command, banner)
      return command_output(("env -i PATH=%s HOME=%s sh -c %s 2>/dev/null"):format(quote(os.getenv("PATH")), quote(home),
        quote(exports .. "; " .. command)))
    end

    it("prints its address and commands that work as pasted; SIGTERM to rrpc stops it", function()
      local pid, master, port, out_file = start()
      finally(function() stop_all(pid, master) end)
      local banner = read_file(out_file)
      assert.is_truthy(banner:find("^rrpc emulator on http://127%.0%.0%.1:" .. port .. " "), banner)
      assert.is_truthy(banner:find("export RRPC_ENDPOINT=http://127.0.0.1:" .. port
        .. " ALIBABA_CLOUD_ACCESS_KEY_ID=LTAI5tRRpcDemoKey ALIBABA_CLOUD_ACCESS_KEY_SECRET=", 1, true))
      assert.are.equal("hello", run_pasted(banner, "%./bin/rrpc call "))
      local doc = cjson.decode(run_pasted(banner, "printf "))
      assert.are.same({ true, "hello", "echo" }, { doc.ok, doc.payload, doc.device_name })

      os.execute("kill -TERM " .. pid)
      assert.is_true(wait_until(function() return not alive(master) end, 5), "the emulator outlived rrpc")
      assert.are.equal("", command_output("curl -s -m 1 http://127.0.0.1:" .. port .. "/__emulator/health"))
    end)

    it("with --devices, shows that registry's key and device", function()
      local registry = file("registry.json", cjson.encode {
        access_keys = { ["Cli-Key"] = { secret = "Cli-Key-Secret" }, ["A-Off"] = { secret = "x", inactive = true } },
        products = { a1Cli = { devices = { loud = { behaviour = "transform", transform = "upper" } } } },
      })
      local pid, master, _, out_file = start { "--devices", registry }
      finally(function() stop_all(pid, master) end)
      local banner = read_file(out_file)
      assert.is_truthy(banner:find("ALIBABA_CLOUD_ACCESS_KEY_ID=Cli-Key ALIBABA_CLOUD_ACCESS_KEY_SECRET=Cli-Key-Secret\n",
        1, true), banner)
      assert.are.equal("HELLO", run_pasted(banner, "%./bin/rrpc call "))
    end)

    it("stops with Ctrl-C in its terminal", function()
      local port = math.random(45001, 50000)
      local inner = ("env -i %s %s"):format(environment { credentials = false, endpoint = false },
        command_line { "emulator", "--port", tostring(port) })
      local terminal = assert(io.popen(("script -q -c %s /dev/null >%s 2>&1"):format(quote(inner),
        dir .. "/ctrl-c.typescript"), "w"))
      local master
      local started = wait_until(function()
        local headers = command_output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__emulator/health")
        master = tonumber(headers:lower():match("\nx%-emulator%-pid: (%d+)"))
        return master ~= nil
      end, 5)
      finally(function() if master then stop_all(master) end end)
      assert.is_true(started, read_file(dir .. "/ctrl-c.typescript"))
      terminal:write("\3")
      terminal:flush()
      assert.is_true(wait_until(function() return not alive(master) end, 5), "Ctrl-C did not stop the emulator")
      terminal:close()
      assert.is_nil(read_file(dir .. "/ctrl-c.typescript"):find("traceback", 1, true))
    end)
  end)
end)
