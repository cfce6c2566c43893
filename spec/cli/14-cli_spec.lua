-- The command line, bin/rrpc, run as a child process in a clean environment against the
-- emulator, under the VM busted runs under (the launcher takes that VM's build): what
-- needs a process. Exit statuses, binary payloads through pipes, the progress bar under
-- a pseudo-terminal (script), real signals (SIGINT and SIGTERM drain and cancel a batch
-- writing to a pipe, no line torn; Ctrl-C in a terminal; an interrupted run and its
-- --resume call every device exactly once, counted at the emulator; rrpc call --json
-- interrupted), and the emulator command's start and stop. Everything else about the
-- command line is spec 24's, in-process.
local cjson = require "cjson"
local rrpc_lib = require "rrpc"
local emulator = require "emulator"
local process = require "process"
local suite_log = require "suite_log"
local system = require "system"

-- busted runs from the repository root; the launcher under this VM
local VM = rawget(_G, "jit") and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
local CLI = VM .. " ./bin/rrpc"
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

  setup(function()
    -- this VM's build for the launcher, and 5.4's for the commands the emulator prints
    -- (./bin/rrpc, whose first line runs lua5.4)
    for _, vm in ipairs { VM, "lua5.4" } do
      local core = "build/" .. vm .. "/rrpc/core.so"
      if read_file(core) == "" then os.execute("make -s --no-print-directory build LUA=" .. vm) end
      assert.are_not.equal("", read_file(core), "bin/rrpc needs " .. core .. " (make LUA=" .. vm .. ")")
    end
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


    it("a usage error or bad input is one line naming the command, exit status 2", function()
      local status, out, err = rrpc { "call", "--product-key", PK, "--payload", "x" }
      assert_one_line_error(status, 2, out, err, "^rrpc call: missing option '%-%-device'")
      status, out, err = rrpc { "batch", "--devices", "-", "--timeout", "abc" }
      assert_one_line_error(status, 2, out, err, "^rrpc batch: option '%-%-timeout': an integer expected, got 'abc'")
      status, out, err = call("echo", { "--payload", "x", "--timeout", "50" })
      assert_one_line_error(status, 2, out, err, "^rrpc: option '%-%-timeout' must be in 1000%.%.8000, got 50\n$")
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


    it("tells outcome classes apart by exit status", function()
      for _, case in ipairs { { "offline", 4 }, { "silent", 3 }, { "throttled", 5 }, { "no-such-device", 8 },
                              { "internal-error", 1 } } do
        local status, out, err = call(case[1], { "--payload", "x", "--timeout", "1000" })
        assert_one_line_error(status, case[2], out, err, ".")
      end
      local status, out, err = call("echo", nil, { secret = "not-the-secret" })
      assert_one_line_error(status, 6, out, err, "SignatureDoesNotMatch")
      status, out, err = call("echo", { "--payload", "x", "--endpoint", CLOSED_PORT_URL })
      assert_one_line_error(status, 7, out, err, "^rrpc network error CURLE_COULDNT_CONNECT")
    end)
  end)


  describe("batch", function()
    local function batch(extra, options)
      local args = { "batch" }
      for _, word in ipairs(extra) do args[#args + 1] = word end
      local status, out, err = rrpc(args, options)
      return status, json_lines(out), err, out
    end

    it("reads the devices from a pipe, the payload from a file", function()
      local payload = file("payload.bin", ALL_BYTES)
      local status, docs = batch({ "--devices", "-", "--payload-file", payload }, { stdin = PK .. ",echo\n" })
      assert.are.equal(0, status)
      assert.are.equal(ALL_BYTES, rrpc_lib.b64decode(docs[1].payload_base64))
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
      -- a port drawn may be in use, also as the local port of some connection (the range lies
      -- in the kernel's ephemeral ports): a try that says so costs little, another port is drawn
      for _ = 1, 10 do
        local port = process.spare_port()
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
        if master then
          -- the banner comes once the emulator listens, in one write
          wait_until(function() return read_file(out_file):find("In another shell:", 1, true) ~= nil end, 5)
          return pid, master, port, out_file
        end
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
      local terminal, master, started
      for _ = 1, 3 do -- another port when this one turns out to be in use
        local port = process.spare_port()
        local inner = ("env -i %s %s"):format(environment { credentials = false, endpoint = false },
          command_line { "emulator", "--port", tostring(port) })
        terminal = assert(io.popen(("script -q -c %s /dev/null >%s 2>&1"):format(quote(inner),
          dir .. "/ctrl-c.typescript"), "w"))
        started = wait_until(function()
          local headers = command_output("curl -s -m 1 -o /dev/null -D - http://127.0.0.1:" .. port .. "/__emulator/health")
          master = tonumber(headers:lower():match("\nx%-emulator%-pid: (%d+)"))
          return master ~= nil or read_file(dir .. "/ctrl-c.typescript"):find("is in use", 1, true) ~= nil
        end, 8)
        if master then break end
        terminal:close()
      end
      finally(function() if master then stop_all(master) end end)
      assert.is_true(started, read_file(dir .. "/ctrl-c.typescript"))
      terminal:write("\3")
      terminal:flush()
      assert.is_true(wait_until(function() return not alive(master) end, 5), "Ctrl-C did not stop the emulator")
      terminal:close()
      assert.is_nil(read_file(dir .. "/ctrl-c.typescript"):find("traceback", 1, true))
    end)

    it("says a port in use or a bad registry in one line, before printing any command", function()
      local busy = emulator.start {}
      finally(function() busy:stop() end)
      local status, out, err = rrpc({ "emulator", "--port", tostring(busy.port) },
        { credentials = false, endpoint = false })
      assert_one_line_error(status, 1, out, err, "^rrpc: port " .. busy.port .. " is in use by another program")
      local bad = file("bad-registry.json", '{"products": {}}')
      status, out, err = rrpc({ "emulator", "--port", tostring(process.spare_port()), "--devices", bad },
        { credentials = false, endpoint = false })
      assert_one_line_error(status, 1, out, err, "^rrpc: the emulator did not start: bad registry: .-bad%-registry%.json: ")
    end)
  end)

  describe("signals", function()
    -- Starts bin/rrpc with `args` in the background, standard output through a pipe to a
    -- reader that starts reading after `reader_delay` s; returns a handle: :pid(),
    -- :signal(name), :wait() --> status, stdout, stderr.
    local function start(args, options)
      options = options or {}
      local out, err, pid_file, status_file = dir .. "/sig.out", dir .. "/sig.err", dir .. "/sig.pid", dir .. "/sig.status"
      for _, path in ipairs { out, err, pid_file, status_file } do os.remove(path) end
      -- the shell that execs rrpc writes its PID; SIGINT is not ignored (a background job's would be)
      local inner = ("echo $$ >%s; exec env --default-signal=INT,TERM env -i %s %s 2>%s"):format(
        quote(pid_file), environment(options), command_line(args), quote(err))
      os.execute(("( sh -c %s; echo $? >%s ) | ( sleep %s; cat >%s ) &"):format(quote(inner), quote(status_file),
        options.reader_delay or 0, quote(out)))
      local pid
      assert.is_true(wait_until(function()
        pid = tonumber(read_file(pid_file):match("%d+"))
        return pid ~= nil
      end, 5))
      local run = {}
      function run.signal(_, name) os.execute("kill -" .. name .. " " .. pid) end
      function run.wait()
        assert.is_true(wait_until(function() return read_file(status_file):find("%d") ~= nil end, 30))
        system.sleep(0.3) -- the reader finishes
        local text = read_file(err)
        local log = assert(io.open(suite_log.path("errors.log"), "a"))
        log:write(text)
        log:close()
        return tonumber(read_file(status_file):match("%d+")), read_file(out), text
      end
      return run
    end

    -- Every line whole and valid JSON, each the outcome of a line given once.
    local function outcome_lines(out)
      assert.are.equal("\n", out:sub(-1), "the output ends with a whole line")
      local docs, lines = {}, {}
      for line in out:gmatch("[^\n]+") do
        local doc = cjson.decode(line)
        assert.is_nil(lines[doc.line], "twice: line " .. doc.line)
        lines[doc.line] = doc
        docs[#docs + 1] = doc
      end
      return docs, lines
    end

    -- n lines of 1 s echo devices, each with its own payload (tag, its line number, and
    -- `size` bytes of padding), so that the emulator counts each line's calls
    local function devices_file(name, n, tag, size, device)
      local lines = {}
      for i = 1, n do lines[i] = ("%s,%s%d-%s"):format(device or "a1Bench,d1000", tag, i, ("x"):rep(size or 0)) end
      return file(name, table.concat(lines, "\n") .. "\n")
    end

    -- the emulator counts a RequestBase64Byte of more than 1024 bytes by its SHA-256
    local function arrival_key(payload)
      local b64 = rrpc_lib.b64encode(payload)
      if #b64 <= 1024 then return b64 end
      local path = os.tmpname()
      write_file(path, b64)
      local hex = command_output("sha256sum " .. quote(path)):match("^(%x+)")
      os.remove(path)
      return "sha256:" .. hex
    end

    local function arrivals_by_line(tag, n, size)
      local arrivals, counts = e:arrivals(), {}
      for i = 1, n do
        counts[i] = arrivals[arrival_key(("%s%d-%s"):format(tag, i, ("x"):rep(size or 0)))] or 0
      end
      return counts
    end

    it("SIGINT or SIGTERM to a batch writing 40 KB lines to a slow pipe: it drains, every call sent has its"
       .. " line, none torn; the summary; 130 or 143", function()
      for _, case in ipairs { { "INT", 130 }, { "TERM", 143 } } do
        -- lines of 40 KB: many times PIPE_BUF, and the pipe (64 KB) is full after one
        local tag, size = "sig-" .. case[1] .. "-", 30000
        local devices = devices_file("sig.csv", 60, tag, size)
        local run = start({ "batch", "--devices", devices, "--concurrency", "20", "--progress-interval", "0" },
          { reader_delay = 2 })
        system.sleep(1.3) -- 20 answered and waiting to be written to the full pipe, 20 in flight
        run:signal(case[1])
        local status, out, err = run:wait()
        assert.are.equal(case[2], status, err)
        local docs, lines = outcome_lines(out)
        local counts = arrivals_by_line(tag, 60, size)
        for i = 1, 60 do
          assert.are.equal(counts[i], lines[i] and 1 or 0, ("SIG%s: line %d arrived %d times"):format(case[1], i, counts[i]))
        end
        assert.is_true(#docs >= 20 and #docs < 60, #docs)
        for _, doc in ipairs(docs) do assert.are.equal("ok", doc.outcome) end
        assert.is_truthy(err:find("\ntotal +" .. #docs .. " .-\nnot started +" .. (60 - #docs) .. "\n"), err)
        assert.is_truthy(err:find("SIG" .. case[1] .. ": draining", 1, true), err)
      end
    end)

    it("SIGINT, then SIGTERM: what is in flight is cancelled, and each of those has its line; 130", function()
      local tag = "sig-cancel-"
      local devices = devices_file("cancel.csv", 30, tag, 0, "a1RRpcDemo,slow-timeout") -- 9 s, past any Timeout
      local run = start({ "batch", "--devices", devices, "--concurrency", "10", "--timeout", "8000",
                          "--progress-interval", "0" }, { reader_delay = 0.5 })
      system.sleep(1.3)
      run:signal("INT")
      system.sleep(0.3)
      run:signal("TERM")
      local status, out, err = run:wait()
      assert.are.equal(130, status, err) -- the first signal's
      local docs, lines = outcome_lines(out)
      assert.are.equal(10, #docs)
      for _, doc in ipairs(docs) do
        assert.are.same({ false, "cancelled", "Cancelled", "maybe" }, { doc.ok, doc.outcome, doc.code, doc.delivered })
      end
      local counts = arrivals_by_line(tag, 30, 0)
      for i = 1, 30 do assert.are.equal(counts[i], lines[i] and 1 or 0, "line " .. i) end
      assert.is_truthy(err:find("SIGTERM, a second signal: cancelling the 10 calls in flight", 1, true), err)
      assert.is_truthy(err:find("\ncancelled +10\ntotal +10 .-\nnot started +20\n"), err)
    end)

    it("an interrupted run and its --resume call every device exactly once, counted at the emulator", function()
      local tag = "resume-"
      local devices = devices_file("resume.csv", 80, tag)
      local run = start { "batch", "--devices", devices, "--concurrency", "25", "--ordered", "--progress-interval", "0" }
      system.sleep(1.5)
      run:signal("INT")
      local status, first = run:wait()
      assert.are.equal(130, status)
      local earlier = file("resume-first.jsonl", first)
      local _, second, err = rrpc { "batch", "--devices", devices, "--resume", earlier, "--concurrency", "40" }
      assert.is_nil(err:find("not started", 1, true), err)
      local _, lines = outcome_lines(first .. second)
      local counts = arrivals_by_line(tag, 80)
      for i = 1, 80 do
        assert.is_truthy(lines[i], "no line " .. i)
        assert.are.equal(1, counts[i], ("line %d arrived %d times"):format(i, counts[i]))
      end
    end)

    it("rrpc call --json interrupted prints its line: cancelled, delivered maybe", function()
      local run = start { "call", "--product-key", PK, "--device", "slow", "--payload", "x", "--json" }
      system.sleep(0.5)
      run:signal("INT")
      local status, out, err = run:wait()
      assert.are.equal(130, status)
      local doc = cjson.decode(out)
      assert.are.same({ false, "cancelled", "maybe" }, { doc.ok, doc.outcome, doc.delivered })
      assert.is_truthy(err:find("^rrpc: interrupted %(SIGINT%)"), err)
    end)

    it("Ctrl-C in a terminal: the bar says it is draining, then the summary", function()
      local devices = devices_file("tty.csv", 30, "tty-")
      local out_file, typescript = dir .. "/tty.out", dir .. "/tty.typescript"
      local inner = ("env -i %s %s >%s"):format(environment {},
        command_line { "batch", "--devices", devices, "--concurrency", "10" }, out_file)
      local terminal = assert(io.popen(("script -q -e -c %s /dev/null >%s 2>&1; echo $? >%s"):format(quote(inner),
        typescript, dir .. "/tty.status"), "w"))
      system.sleep(1.5)
      terminal:write("\3")
      terminal:flush()
      assert.is_true(wait_until(function() return read_file(dir .. "/tty.status") ~= "" end, 10))
      terminal:close()
      local screen = read_file(typescript)
      assert.are.equal(130, tonumber(read_file(dir .. "/tty.status")), screen)
      assert.is_truthy(screen:find("SIGINT: draining: no new calls; the 10 in flight", 1, true), screen)
      assert.is_truthy(screen:find("  draining: 10 in flight", 1, true), screen)
      assert.is_truthy(screen:find("\nnot started +%d+"), screen)
      assert.is_true(#json_lines(read_file(out_file)) >= 10)
    end)
  end)
end)
