-- The command line in-process (rrpc.cli.main with streams and an environment of the
-- spec's making, spec/support/cli_env.lua) against the emulator: every command and
-- option, the exit statuses, option errors naming the option, batch input formats
-- (malformed lines included), the progress bar and plain lines, interrupting a batch
-- (drain, cancel, both orders of output, the summary), --resume (matching and mismatched
-- files, a torn last line, --resend-undelivered), every output line valid UTF-8 JSON.
-- What needs a process (exit statuses of bin/rrpc, pipes, a terminal, real signals, the
-- emulator command) is spec 14's.
local cjson = require "cjson"
local rrpc_lib = require "rrpc"
local cli_env = require "cli_env"
local emulator = require "emulator"
local process = require "process"
local suite_log = require "suite_log"
local system = require "system"
local tls = require "tls"

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

describe("rrpc.cli in-process", function()
  local e, dir, home

  -- The environment a run gets: the test key, the emulator, no ECS metadata.
  -- options.credentials = false drops the key, .endpoint = false the endpoint, .secret
  -- replaces the secret, .env adds { NAME = value }.
  local function environment(options)
    local vars = { HOME = home, ALIBABA_CLOUD_ECS_METADATA_DISABLED = "true" }
    if options.credentials ~= false then
      vars.ALIBABA_CLOUD_ACCESS_KEY_ID = "testid"
      vars.ALIBABA_CLOUD_ACCESS_KEY_SECRET = options.secret or "testsecret"
    end
    if options.endpoint ~= false then vars.RRPC_ENDPOINT = e.url end
    for name, value in pairs(options.env or {}) do vars[name] = value end
    return vars
  end

  -- Runs rrpc.cli.main; returns its exit status, standard output and standard error.
  -- options: those of environment(), stdin (bytes), terminal, signals.
  local function rrpc(args, options)
    options = options or {}
    local status, out, err, stdout = cli_env.run(args, { env = environment(options), stdin = options.stdin,
      terminal = options.terminal, signals = options.signals })
    -- for spec 99: the CLI's error text must not hold a secret either
    local log = assert(io.open(suite_log.path("errors.log"), "a"))
    log:write(err)
    log:close()
    return status, out, err, stdout
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
    e = emulator.start {}
    dir = command_output("mktemp -d /tmp/rrpc-cli-modules-spec.XXXXXX"):match("[^\n]+")
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
          "^rrpc call: option '%-%-timeout': an integer expected, got 'soon' %(see rrpc call %-%-help%)\n$" },
        { { "call", "--product-key", PK, "--device", "echo", "--payload", "x", "--retries", "100" },
          "^rrpc call: option '%-%-retries' must be in 0%.%.99, got 100 " },
        { { "batch", "--devices", "-", "--concurrency", "many" }, "^rrpc batch: option '%-%-concurrency': an integer" },
        { { "batch", "--devices", "-", "--progress-interval", "often" },
          "^rrpc batch: option '%-%-progress%-interval': a number of seconds expected, got 'often'" },
        { { "emulator", "--port", "70000" }, "^rrpc emulator: option '%-%-port' must be in 1%.%.65535, got 70000" },
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
        { { "--payload", "x", "--timeout", "50" }, "^rrpc: option '%-%-timeout' must be in 1000%.%.8000, got 50\n$" },
        { { "--payload", "x", "--region", "Not A Region" }, "^rrpc: option '%-%-region' must look like" },
        { { "--payload", "x", "--endpoint", "ftp://example" }, "^rrpc: option '%-%-endpoint' must look like" },
        { { "--payload-file", too_big },
          "^rrpc: the payload file " .. too_big:gsub("%p", "%%%0") .. " is 262145 bytes, more than the platform's 262144\n$" },
        { { "--payload-file", dir .. "/missing.bin" }, "^rrpc: cannot read the payload file: .*missing%.bin" },
        { {}, "^rrpc: no payload: give %-%-payload TEXT, %-%-payload%-file FILE or %-" },
      }
      for _, case in ipairs(cases) do
        local status, out, err = call("echo", case[1])
        assert_one_line_error(status, 2, out, err, case[2])
      end
      -- what comes from the environment is named so
      local status, out, err = call("echo", { "--payload", "x" }, { endpoint = false, env = { RRPC_REGION = "Mars" } })
      assert_one_line_error(status, 2, out, err, "^rrpc: environment variable RRPC_REGION must look like")
      status, out, err = call("echo", { "--payload", "x" }, { env = { RRPC_ENDPOINT = "gopher://x" } })
      assert_one_line_error(status, 2, out, err, "^rrpc: environment variable RRPC_ENDPOINT must look like")
      status, out, err = call("echo", { "-" }, { stdin = ("y"):rep(262145) })
      assert_one_line_error(status, 2, out, err, "^rrpc: the payload from standard input is 262145 bytes")
    end)

    it("sign refuses a --timestamp or --nonce of another form, naming it", function()
      local function sign(extra)
        local args = { "sign", "--product-key", PK, "--device", "echo", "--payload", "x" }
        for _, word in ipairs(extra) do args[#args + 1] = word end
        return rrpc(args)
      end
      for _, bad in ipairs { "2026-01-02", "2026-01-02T03:04:05", "2026-02-30T03:04:05Z", "now" } do
        local status, out, err = sign { "--timestamp", bad }
        assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-timestamp' must be a UTC time "
          .. "YYYY%-MM%-DDThh:mm:ssZ, got \"" .. bad:gsub("%p", "%%%0") .. "\"\n$")
      end
      local status, out, err = sign { "--nonce", "two words" }
      assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-nonce' must be 1%.%.64 letters")
      status = sign { "--timestamp", "2026-01-02T03:04:05Z", "--nonce", "abc-123" }
      assert.are.equal(0, status)
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
      assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-qps' must be in 1%.%.1000000, got 0\n$")
      status, _, err, out = batch { "--devices", devices, "--payload", "x", "--concurrency", "0" }
      assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-concurrency' must be in 1%.%.100000, got 0\n$")
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
      assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-timeout' must be in 1000%.%.8000, got 50")
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

    describe("interrupting a batch #slow", function()
    -- n lines of device, each with its own payload (tag .. line), so that the emulator
    -- counts each line's calls
    local function devices_file(name, device, n, tag)
      local lines = {}
      for i = 1, n do lines[i] = ("%s,%s,%s%d"):format(PK, device, tag, i) end
      return file(name, table.concat(lines, "\n") .. "\n")
    end

    local function arrivals_of(tag, n)
      local arrivals, counts = e:arrivals(), {}
      for i = 1, n do counts[i] = arrivals[rrpc_lib.b64encode(tag .. i)] or 0 end
      return counts
    end

    it("the first signal drains: the calls in flight finish and get their lines, no more start", function()
      local devices = devices_file("drain.csv", "slow", 30, "drain-")
      local started = system.monotime()
      local status, docs, err = batch({ "--devices", devices, "--concurrency", "10", "--progress-interval", "0" },
        { signals = cli_env.signals_after { { 0.3, "INT" } } })
      assert.is_true(system.monotime() - started < 3)
      assert.are.equal(130, status)
      assert.are.equal(10, #docs)
      for _, doc in ipairs(docs) do assert.are.same({ true, "ok" }, { doc.ok, doc.outcome }) end
      assert.is_truthy(err:find("rrpc batch: SIGINT: draining: no new calls; the 10 in flight finish within their"
        .. " timeout (SIGINT again cancels them)\n", 1, true), err)
      assert.is_truthy(err:find("\nok +10\ntotal +10 .-\nnot started +20\n"), err)
      assert.is_truthy(err:find("rrpc batch: interrupted (SIGINT): to go on, run the same command again with --resume",
        1, true), err)
      local counts = arrivals_of("drain-", 30)
      local sent = 0
      for _, n in ipairs(counts) do sent = sent + n end
      assert.are.equal(10, sent) -- each sent call has its line
    end)

    it("SIGTERM drains the same way and exits 143", function()
      local devices = devices_file("term.csv", "slow", 6, "term-")
      local status, docs, err = batch({ "--devices", devices, "--concurrency", "2", "--progress-interval", "0" },
        { signals = cli_env.signals_after { { 0.2, "TERM" } } })
      assert.are.equal(143, status)
      assert.are.equal(2, #docs)
      assert.is_truthy(err:find("SIGTERM: draining", 1, true))
      assert.is_truthy(err:find("\nnot started +4\n"), err)
    end)

    it("a second signal cancels what is in flight: each gets its line, cancelled and delivered maybe", function()
      for _, ordered in ipairs { false, true } do
        local devices = devices_file("cancel.csv", "slow-timeout", 8, "cancel-")
        local args = { "--devices", devices, "--concurrency", "4", "--timeout", "8000", "--progress-interval", "0" }
        if ordered then args[#args + 1] = "--ordered" end
        local started = system.monotime()
        local status, docs, err = batch(args, { signals = cli_env.signals_after { { 0.3, "INT" }, { 0.6, "TERM" } } })
        assert.is_true(system.monotime() - started < 2)
        assert.are.equal(130, status) -- the first signal's
        assert.are.equal(4, #docs)
        for i, doc in ipairs(docs) do
          assert.are.same({ false, "cancelled", "Cancelled", "maybe", "cancelled" },
            { doc.ok, doc.outcome, doc.code, doc.delivered, doc.kind })
          if ordered then assert.are.equal(i, doc.line) end
        end
        assert.is_truthy(err:find("SIGTERM, a second signal: cancelling the 4 calls in flight", 1, true), err)
        assert.is_truthy(err:find("\ncancelled +4\ntotal +4 .-\nnot started +4\n"), err)
      end
    end)

    it("--ordered: every line that had its answer is written, in order, also behind a slow one", function()
      -- slow (1.5 s), five echoes, then 1 s devices: at 0.4 s the slow one and five of those are in flight
      local lines = { PK .. ",slow,o1" }
      for i = 2, 6 do lines[i] = PK .. ",echo,o" .. i end
      local devices = file("ordered.csv", table.concat(lines, "\n") .. "\n" .. ("a1Bench,d1000,late\n"):rep(20))
      local status, docs = batch({ "--devices", devices, "--concurrency", "6", "--ordered", "--progress-interval", "0" },
        { signals = cli_env.signals_after { { 0.4, "INT" } } })
      assert.are.equal(130, status)
      assert.are.equal(11, #docs)
      for i, doc in ipairs(docs) do
        assert.are.same({ i, true }, { doc.line, doc.ok })
      end
    end)

    it("the progress bar says it is draining; from standard input, the summary says where reading stopped", function()
      local input = ("%s,slow,x\n"):format(PK):rep(6)
      local status, docs, err = batch({ "--devices", "-", "--concurrency", "3" },
        { stdin = input, terminal = { stderr = true }, signals = cli_env.signals_after { { 0.3, "INT" } } })
      assert.are.equal(130, status)
      assert.are.equal(3, #docs)
      assert.is_truthy(err:find("  draining: 3 in flight", 1, true), err)
      assert.is_truthy(err:find("\nnot started +%? +the input after line 3 was not read\n"), err)
    end)

    it("call: a signal cancels the call; --json still prints its line", function()
      local status, out, err = call("slow", { "--payload", "x", "--json" },
        { signals = cli_env.signals_after { { 0.2, "INT" } } })
      assert.are.equal(130, status)
      local doc = cjson.decode(out)
      assert.are.same({ false, "cancelled", "Cancelled", "maybe" }, { doc.ok, doc.outcome, doc.code, doc.delivered })
      assert.is_truthy(err:find("^rrpc: interrupted %(SIGINT%): rrpc cancelled error Cancelled"), err)
      status, out = call("slow", { "--payload", "x" }, { signals = cli_env.signals_after { { 0.2, "TERM" } } })
      assert.are.same({ 143, "" }, { status, out })
    end)
  end)

  describe("--resume", function()
    local function lines_file(name, lines)
      return file(name, table.concat(lines, "\n") .. "\n")
    end

    local function unique_devices(name, device, n, tag)
      local lines = {}
      for i = 1, n do lines[i] = ("%s,%s,%s%d"):format("a1Bench", device, tag, i) end
      return lines_file(name, lines)
    end

    it("goes on where an interrupted run stopped: every line called exactly once over the two runs", function()
      for _, ordered in ipairs { false, true } do
        local tag = ordered and "resume-o-" or "resume-u-"
        local devices = unique_devices("resume.csv", "d200", 60, tag)
        local base = { "--devices", devices, "--concurrency", "10", "--progress-interval", "0" }
        if ordered then base[#base + 1] = "--ordered" end
        local status, first, _, first_out = batch(base, { signals = cli_env.signals_after { { 0.5, "INT" } } })
        assert.are.equal(130, status)
        assert.is_true(#first > 0 and #first < 60, tostring(#first))
        local earlier = file("first.jsonl", first_out)
        local args = { "--resume", earlier }
        for _, word in ipairs(base) do args[#args + 1] = word end
        local err
        status, _, err = batch(args)
        local _, second, _ = batch(args) -- the same again: nothing new is sent twice either
        assert.are.equal(0, status)
        assert.is_truthy(err:find("\nskipped +" .. #first .. "  with an outcome in " .. earlier:gsub("%p", "%%%0")), err)
        local seen = {}
        for _, doc in ipairs(first) do seen[doc.line] = (seen[doc.line] or 0) + 1 end
        for _, doc in ipairs(second) do seen[doc.line] = (seen[doc.line] or 0) + 1 end
        for line = 1, 60 do assert.are.equal(1, seen[line], "line " .. line) end
        if ordered then
          for i = 2, #second do assert.is_true(second[i].line > second[i - 1].line) end
        end
        local arrivals = e:arrivals()
        for i = 1, 60 do
          local n = arrivals[rrpc_lib.b64encode(tag .. i)] or 0
          assert.is_true(n <= 2, tag .. i) -- once by run 1 or 2, once more by the repeat of run 2 at most
        end
      end
    end)

    it("refuses a FILE of another input before any call; a torn last line is no outcome", function()
      local devices = lines_file("match.csv", { PK .. ",echo,m1", PK .. ",upper,m2", PK .. ",reverse,m3" })
      local _, _, _, out = batch { "--devices", devices, "--ordered" }
      local other = lines_file("other.csv", { PK .. ",echo,m1", PK .. ",echo,m2", PK .. ",reverse,m3" })
      local status, docs, err = batch { "--devices", other, "--resume", file("match.jsonl", out) }
      assert.are.same({ 2, 0 }, { status, #docs })
      assert.is_truthy(err:find("^rrpc: %-%-resume .-match%.jsonl does not match the input: line 2 is a1RRpcDemo,upper"
        .. " there and a1RRpcDemo,echo here\n$"), err)
      for _, payload in ipairs { "m1", "m2", "m3" } do
        assert.are.equal(1, e:arrivals_of(payload), payload) -- the first run's: nothing sent since
      end
      -- a shorter input than the file's outcomes
      status, _, err = batch { "--devices", lines_file("short.csv", { PK .. ",echo,m1" }), "--resume",
                               file("match2.jsonl", out) }
      assert.are.equal(2, status)
      assert.is_truthy(err:find("it has an outcome for line 2, which is no device line of the input", 1, true), err)
      -- torn: the last line cut in the middle, as a run killed while writing it leaves it
      local torn = out:sub(1, #out - 20)
      status, docs, err = batch { "--devices", devices, "--resume", file("torn.jsonl", torn) }
      assert.are.equal(0, status, err)
      assert.are.same({ 3 }, { docs[1].line })
      assert.are.equal(1, #docs)
      -- anything else that is not an outcome line is refused
      status, _, err = batch { "--devices", devices, "--resume", file("junk.jsonl", "not json\n" .. out) }
      assert.are.equal(2, status)
      assert.is_truthy(err:find("junk%.jsonl: line 1 is not an outcome line of rrpc batch"), err)
      status, _, err = batch { "--devices", devices, "--resume", dir .. "/no-such.jsonl" }
      assert.are.equal(2, status)
      assert.is_truthy(err:find("^rrpc: cannot read the %-%-resume file: "), err)
    end)

    it("--resend-undelivered sends again what certainly never arrived (delivered \"no\"), and only that", function()
      local devices = lines_file("undelivered.csv", { PK .. ",offline,u1", PK .. ",halfconn,u2", PK .. ",echo,u3",
                                                      "broken line", PK .. ",throttled,u5" })
      local _, first, _, out = batch { "--devices", devices, "--retries", "0" }
      assert.are.equal(5, #first)
      local earlier = file("undelivered.jsonl", out)
      local status, docs = batch { "--devices", devices, "--resume", earlier, "--ordered", "--retries", "0" }
      -- the malformed line was never sent: it is read again (and is still malformed)
      assert.are.same({ 10, 1, 4 }, { status, #docs, docs[1].line })
      status, docs = batch { "--devices", devices, "--resume", earlier, "--resend-undelivered", "--ordered",
                             "--retries", "0" }
      assert.are.equal(10, status)
      local lines = {}
      for i, doc in ipairs(docs) do lines[i] = doc.line end
      assert.are.same({ 1, 4, 5 }, lines) -- offline and throttled: delivered "no"; halfconn may have arrived
      -- two files: what the second has settles the line
      local second = file("second.jsonl", '{"line":1,"product_key":"a1RRpcDemo","device_name":"offline","ok":true,'
        .. '"outcome":"ok"}\n')
      status, docs = batch { "--devices", devices, "--resume", earlier, "--resume", second, "--resend-undelivered",
                             "--ordered", "--retries", "0" }
      assert.are.equal(10, status)
      lines = {}
      for i, doc in ipairs(docs) do lines[i] = doc.line end
      assert.are.same({ 4, 5 }, lines)
      local err
      status, _, err = batch { "--devices", devices, "--resend-undelivered" }
      assert.are.equal(2, status)
      assert.is_truthy(err:find("^rrpc: %-%-resend%-undelivered goes with %-%-resume FILE\n$"), err)
    end)

    it("reads the devices from standard input too", function()
      local input = table.concat({ PK .. ",echo,s1", PK .. ",upper,s2", PK .. ",echo,s3" }, "\n") .. "\n"
      local earlier = file("stdin.jsonl", '{"line":2,"product_key":"a1RRpcDemo","device_name":"upper","ok":true,'
        .. '"outcome":"ok"}\n')
      local status, docs = batch({ "--devices", "-", "--resume", earlier, "--ordered" }, { stdin = input })
      assert.are.same({ 0, 2, 1, 3 }, { status, #docs, docs[1].line, docs[2].line })
    end)
  end)

  describe("every line valid UTF-8 JSON", function()
    local output = require "rrpc.cli.output"
    local FFFD = "\239\191\189"

    it("ill-formed UTF-8 becomes U+FFFD, one for each maximal subpart", function()
      local cases = {
        { "plain", "plain" }, { "caf\195\169 \226\130\172 \240\159\152\128", "caf\195\169 \226\130\172 \240\159\152\128" },
        { "\128", FFFD }, { "\192\175", FFFD .. FFFD }, { "\237\160\128", FFFD .. FFFD .. FFFD },
        { "\255x", FFFD .. "x" }, { "a\226\130", "a" .. FFFD }, { "\226\130b", FFFD .. "b" },
        { "\240\159\152", FFFD }, { "\244\144\128\128", FFFD .. FFFD .. FFFD .. FFFD }, { "\224\128\128", FFFD:rep(3) },
        { "\245", FFFD }, { "\194", FFFD }, { "\194\194\128", FFFD .. "\194\128" },
      }
      for _, case in ipairs(cases) do
        assert.are.equal(case[2], (output.valid_utf8(case[1])), case[1])
      end
    end)

    it("in the platform's code, message and request id; never in a payload, which is Base64 when it is not text", function()
      local line = output.json_object(output.OUTCOME_FIELDS, output.outcome_fields(nil, rrpc_lib.is_error and {
        kind = "api", code = "Bad\255Code", message = "bad bytes: \128 \237\160\128", request_id = "rid-\192",
        delivered = "maybe", retryable = false, attempts = 1 }, {}))
      assert.is_true(output.is_utf8(line), line)
      local doc = cjson.decode(line)
      assert.are.same({ "Bad" .. FFFD .. "Code", "bad bytes: " .. FFFD .. " " .. FFFD:rep(3), "rid-" .. FFFD },
        { doc.code, doc.message, doc.request_id })
      -- against the emulator: a message of invalid UTF-8, through call --json and batch
      local status, out = rrpc { "call", "--product-key", "a1Hostile", "--device", "invalid-utf8", "--payload", "x",
                                 "--json", "--timeout", "1000" }
      assert.are.equal(1, status)
      assert.is_true(output.is_utf8(out), out)
      assert.is_truthy(cjson.decode(out).message:find(FFFD, 1, true))
      local _, lines = rrpc({ "batch", "--devices", "-", "--payload", "x" },
        { stdin = "a1Hostile,invalid-utf8\n" .. PK .. ",echo,\255\254\n" })
      assert.is_true(output.is_utf8(lines), lines)
      local docs = json_lines(lines)
      assert.are.equal(2, #docs)
      for _, d in ipairs(docs) do
        if d.device_name == "echo" then assert.are.equal("\255\254", rrpc_lib.b64decode(d.payload_base64)) end
      end
    end)
  end)

  describe("small things", function()
    it("call: on a terminal the reply ends its line; elsewhere the bytes are exact", function()
      local status, out = call("echo", { "--payload", "hello" }, { terminal = { stdout = true } })
      assert.are.same({ 0, "hello\n" }, { status, out })
      status, out = call("echo", { "--payload", "line\n" }, { terminal = { stdout = true } })
      assert.are.same({ 0, "line\n" }, { status, out })
      status, out = call("echo", { "--payload", "hello" })
      assert.are.same({ 0, "hello" }, { status, out })
    end)

    it("each output line is written whole, with one write, and flushed", function()
      local _, _, _, stdout = rrpc({ "batch", "--devices", "-", "--payload", ("z"):rep(100000) },
        { stdin = (PK .. ",echo\n"):rep(3) })
      assert.are.equal(3, #stdout.writes)
      for _, written in ipairs(stdout.writes) do
        assert.are.equal("\n", written:sub(-1))
        assert.are.equal(1, count(written, "\n"))
      end
      assert.is_true(stdout.flushes >= 3)
    end)
  end)

  describe("batch --metrics FILE", function()
    it("writes the calls' Prometheus metrics, whole (renamed into place), and counts every line", function()
      local metrics = dir .. "/rrpc.prom"
      local status = rrpc({ "batch", "--devices", "-", "--payload", "m", "--metrics", metrics },
        { stdin = PK .. ",echo\n" .. PK .. ",offline\n" .. PK .. ",upper\n" })
      assert.are.equal(10, status) -- one device offline
      local text = assert(io.open(metrics)):read("*a")
      assert.is_truthy(text:find('rrpc_calls_total{action="RRpc",outcome="ok",code="SUCCESS"} 2', 1, true), text)
      assert.is_truthy(text:find('rrpc_calls_total{action="RRpc",outcome="device",code="OFFLINE"} 1', 1, true), text)
      assert.is_truthy(text:find('rrpc_call_duration_seconds_count{action="RRpc"} 3', 1, true), text)
      assert.is_nil(io.open(metrics .. ".partial"), "the partial file was renamed into place")
      assert.is_nil(text:find("testsecret", 1, true))
    end)

    it("an unwritable FILE is one error before any call", function()
      local status, out, err = rrpc({ "batch", "--devices", "-", "--payload", "m", "--metrics", "/nonexistent/rrpc.prom" },
        { stdin = PK .. ",echo\n" })
      assert_one_line_error(status, 2, out, err, "cannot write %-%-metrics /nonexistent/rrpc%.prom")
    end)
  end)

end)

end)
