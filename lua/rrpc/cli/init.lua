-- The command line of rrpc (bin/rrpc is its launcher): it calls devices through the
-- Alibaba Cloud IoT Platform operation RRpc (one call, or a batch streamed from a file),
-- runs the local emulator, and shows what a call signs. `rrpc --help` and
-- `rrpc <command> --help` say how. Signing, retries, batching, credentials and error
-- classification all come from the library's public API; these modules parse arguments,
-- read input and print outcomes. Runs on Lua 5.1, 5.3, 5.4 and LuaJIT.
--
--   local cli = require "rrpc.cli"
--   local status = cli.main(argv, env)
--
-- argv: the arguments ({ "call", "--product-key", ... }); env (every field optional):
--   stdin, stdout, stderr   streams (read, lines / write, flush); io.stdin, ... by default
--   getenv(name)            the environment (os.getenv); "" counts as unset
--   is_terminal(name)       whether "stdout" or "stderr" is a terminal (false)
--   signals                 rrpc.signals, or a stand-in with watch, take, unwatch
--   program                 the name shown in the commands the emulator prints ("rrpc")
--   emulator_dirs           where to look for the emulator's run script
local argparse = require "argparse"
local rrpc = require "rrpc"
local common = require "rrpc.cli.common"
local output = require "rrpc.cli.output"

local cli = {}

local EXIT = output.EXIT
local limits = rrpc.limits

local COMMANDS = {
  call = "rrpc.cli.call", batch = "rrpc.cli.batch", emulator = "rrpc.cli.emulator", sign = "rrpc.cli.sign",
}
-- The commands that watch SIGINT and SIGTERM themselves (the others end the default way).
local WATCHES_SIGNALS = { call = true, batch = true, emulator = true }

---------------------------------------------------------------------------------------
-- Options: each conversion names the option it refuses

local function integer_option(name, range)
  return function(text)
    local n = text:match("^%-?%d+$") and tonumber(text)
    if not n then return nil, ("option '%s': an integer expected, got '%s'"):format(name, text) end
    if range and (n < range.min or n > range.max) then
      return nil, ("option '%s' must be in %d..%d, got %s"):format(name, range.min, range.max, text)
    end
    return n
  end
end

local function seconds_option(name)
  return function(text)
    local n = text:match("^%d+%.?%d*$") and tonumber(text)
    if not n then return nil, ("option '%s': a number of seconds expected, got '%s'"):format(name, text) end
    return n
  end
end

local function add_device_options(command)
  command:option("--product-key", "The device's ProductKey."):argname("PK"):count(1)
  command:option("--device", "The device's DeviceName."):argname("DN"):count(1)
end

local function add_payload_options(command, what)
  command:mutex(
    command:option("--payload", what .. ", as text."):argname("TEXT"),
    command:option("--payload-file", what .. ": the bytes of FILE ('-': standard input)."):argname("FILE"),
    command:argument("stdin", what .. ": the bytes of standard input."):args("?"):choices { "-" })
end

local function add_request_options(command, with_topic)
  command:option("--timeout", "Milliseconds the platform waits for the device, 1000..8000 (default 5000).")
    :argname("MS"):convert(integer_option("--timeout"))
  if with_topic then
    command:option("--topic", "A custom RRpc topic, /<PK>/<DN>/user/<name>."):argname("T")
  end
  command:option("--instance", "The IotInstanceId of the product's instance (env RRPC_IOT_INSTANCE_ID).")
    :argname("ID")
end

local function add_connection_options(command)
  command:mutex(
    command:option("--region", "Calls https://iot.<R>.aliyuncs.com (env RRPC_REGION; default cn-shanghai).")
      :argname("R"),
    command:option("--endpoint",
      "Calls this URL instead, e.g. the emulator's http://127.0.0.1:8080 (env RRPC_ENDPOINT).")
      :argname("URL"))
  command:option("--profile", "The profile of ~/.aliyun/config.json or ~/.alibabacloud/credentials"
    .. " (env ALIBABA_CLOUD_PROFILE)."):argname("P")
  command:option("--signature", "The signature version (default v3)."):choices { "v1", "v3" }
  command:option("--ca-file", "Trust the CAs of this PEM file for HTTPS instead of the system's."):argname("FILE")
end

local function add_retries_option(command, default)
  command:option("--retries", "Send again up to N times what cannot have reached the device"
    .. " (throttling, refused connections) (default " .. default .. ")."):argname("N")
    :convert(integer_option("--retries", limits.CLI_RETRIES))
end

local function exit_status_text()
  local lines = { "Exit status:" }
  for _, outcome in ipairs(output.OUTCOMES) do
    if outcome.status then
      lines[#lines + 1] = ("  %2d  %-10s %s"):format(outcome.status, outcome.name, outcome.meaning)
    end
  end
  lines[#lines + 1] = ("  %2d  %-10s %s"):format(output.EXIT_BATCH_FAILURES, "batch",
    "some device of a batch did not succeed")
  lines[#lines + 1] = ("%d  %-10s %s"):format(130, "", "interrupted by SIGINT (Ctrl-C); 143: by SIGTERM")
  return table.concat(lines, "\n")
end

local ROOT_EPILOG = [[
Credentials come from the environment (ALIBABA_CLOUD_ACCESS_KEY_ID,
ALIBABA_CLOUD_ACCESS_KEY_SECRET, ALIBABA_CLOUD_SECURITY_TOKEN), then the profile files
(~/.aliyun/config.json, ~/.alibabacloud/credentials; --profile or ALIBABA_CLOUD_PROFILE),
then the ECS instance's RAM role. Never on the command line.

Examples:
  rrpc emulator
  rrpc call --product-key a1RRpcDemo --device echo --payload hello
  rrpc batch --devices devices.csv --payload reboot > outcomes.jsonl
  rrpc sign --product-key a1RRpcDemo --device echo --payload hello --signature v1

]] .. exit_status_text()

local CALL_EPILOG = [[
Prints the device's reply as raw bytes (on a terminal, with a newline after it); with
--json, one JSON object:
  {"ok":true,"outcome":"ok","code":"SUCCESS","payload":"..." or "payload_base64":"...",
   "message_id":"<exact decimal>","request_id":"...","attempts":1}
or, on failure, "ok":false with outcome, code, kind, message, delivered, retryable, ...
The payload is text when it is UTF-8 without control characters (tab, CR, LF allowed).
On failure, one line on standard error; the exit status tells the outcome (rrpc --help).
Ctrl-C (SIGINT) or SIGTERM cancels the call: with --json its line says "outcome":
"cancelled" and "delivered": "maybe"; exit status 130 (143 for SIGTERM).

Examples:
  rrpc call --product-key a1RRpcDemo --device echo --payload hello
  printf '\001\002' | rrpc call --product-key a1RRpcDemo --device echo - | od -c
  rrpc call --product-key a1RRpcDemo --device lamp-1 --payload-file cmd.bin --timeout 8000 --json
  rrpc call --endpoint http://127.0.0.1:8080 --product-key a1RRpcDemo --device echo --payload hi]]

local BATCH_EPILOG = [[
Input (--devices FILE, or - for standard input), one device a line; blank lines are skipped:
  CSV:         product_key,device_name[,payload]   (a first line naming these columns is a
               header; a field in double quotes may hold commas and "" for a quote; an
               empty payload field means the default payload)
  JSON lines:  {"product_key":"..","device_name":"..","payload":".."}  or "payload_base64"
The format is the first non-blank character's ('{': JSON lines) unless --format says.
Lines without a payload get --payload, --payload-file or -'s.

Output: one JSON line per device (line, product_key, device_name, then the fields of
rrpc call --json), as calls complete or, with --ordered, in input order; each line is
valid UTF-8 JSON, written whole. A malformed line gets its JSON line (outcome "invalid",
code "InvalidLine") and a note on standard error; the rest is still processed. Standard
error shows a progress bar on a terminal, a plain line every --progress-interval seconds
otherwise, and a summary table at the end.

Interrupting: the first Ctrl-C (SIGINT) or SIGTERM drains the batch: no more lines are
read and no call is started; the calls in flight finish (each within its timeout) and
get their lines. A second one cancels the calls still in flight: their lines say
"outcome": "cancelled", "delivered": "maybe". Then the summary, with the lines not
started; exit status 130 (143 for SIGTERM). --resume FILE (the interrupted run's output)
goes on where it stopped: the lines FILE has an outcome for are not sent again, and a
FILE of another input is refused. Every device is called once over the two runs.

Exit status: 0 when every device succeeded, 10 when some did not, 2 for bad input.

Examples:
  rrpc batch --devices devices.csv --payload reboot > outcomes.jsonl
  rrpc batch --devices devices.csv --payload reboot --resume outcomes.jsonl > more.jsonl
  printf 'a1RRpcDemo,echo\na1RRpcDemo,upper,hi\n' | rrpc batch --devices - --payload hello --ordered
  rrpc batch --devices fleet.jsonl --concurrency 500 --qps 800 --retries 3 --timeout 8000]]

local EMULATOR_EPILOG = [[
Runs the local stand-in of the RRpc endpoint (nginx + Lua) in the foreground and, once it
listens, prints the commands to call it. Ctrl-C, SIGINT or SIGTERM stops it.
The default registry has product a1RRpcDemo with devices echo, upper, reverse, slow,
offline, halfconn, silent (TIMEOUT), unknown, throttled, ... and key testid/testsecret.

Examples:
  rrpc emulator
  rrpc emulator --port 9000 --devices my-devices.json]]

local SIGN_EPILOG = [[
Shows what a call signs, for comparing with what the platform computed (its
SignatureDoesNotMatch message shows its string to sign): V1, the string to sign and the
signature; V3, the canonical request, the string to sign and the Authorization header.
Never the secret, nor an STS security token: the token shows as *** (SecurityToken%3D***
in a V1 string to sign, x-acs-security-token:*** in a V3 canonical request), as it does
in the platform's message that rrpc reports. Without --timestamp and --nonce a fresh pair
is drawn, as for a call.

Examples:
  rrpc sign --product-key a1RRpcDemo --device echo --payload hello
  rrpc sign --product-key a1RRpcDemo --device echo --payload hello --signature v1 \
    --timestamp 2026-01-02T03:04:05Z --nonce 6a3f0c2d9b8e4f7a1c5d2e3f4a5b6c7d]]

--- build_parser() --> the parser, and a table whose .help is set to the command whose
-- --help was asked for (argparse's own help would print and exit)
local function build_parser()
  local asked = {}
  local function with_help(command)
    command:add_help(false)
    command:flag("-h --help", "Show this help message and exit."):action(function() asked.help = command end)
    return command
  end
  local parser = with_help(argparse("rrpc", "Calls IoT devices through the Alibaba Cloud IoT Platform operation RRpc.")
    :epilog(ROOT_EPILOG)
    :command_target("command"))

  local call = with_help(parser:command("call", "Sends a payload to one device and prints its reply.")
    :epilog(CALL_EPILOG))
  add_device_options(call)
  add_payload_options(call, "The payload")
  add_request_options(call, true)
  add_connection_options(call)
  add_retries_option(call, limits.CLI_RETRIES.call)
  call:flag("--json", "Print one JSON object instead of the reply's bytes.")

  local batch = with_help(parser:command("batch", "Calls every device of a file, streaming JSON lines.")
    :epilog(BATCH_EPILOG))
  batch:option("--devices", "The devices, one a line ('-': standard input)."):argname("FILE|-"):count(1)
  batch:option("--format", "The input's format (default: guessed)."):choices { "csv", "jsonl" }
  add_payload_options(batch, "The payload of lines without one")
  add_request_options(batch, false)
  add_connection_options(batch)
  add_retries_option(batch, limits.CLI_RETRIES.batch)
  batch:option("--concurrency", "Calls in flight at most (default 100)."):argname("N")
    :convert(integer_option("--concurrency"))
  batch:option("--qps", "Calls started per second at most (default 1000, the account's quota).")
    :argname("N"):convert(integer_option("--qps"))
  batch:flag("--ordered", "Write the outcomes in input order (default: as they complete).")
  batch:option("--metrics", "Write the calls' Prometheus metrics (rrpc.metrics) to FILE, every "
    .. limits.CLI_METRICS_INTERVAL_S .. " s and at the end, for node-exporter's textfile collector.")
    :argname("FILE")
  batch:option("--progress-interval", "Seconds between progress lines when standard error is not a terminal"
    .. " (default " .. limits.CLI_PROGRESS_INTERVAL_S .. "; 0: none)."):argname("S")
    :convert(seconds_option("--progress-interval"))
  batch:option("--resume", "Skip the lines FILE (an earlier run's output over the same input) has an outcome"
    .. " for; may be given more than once."):argname("FILE"):count("*")
  batch:flag("--resend-undelivered", "With --resume: send again the lines whose outcome there says"
    .. " delivered \"no\" (they certainly never reached the device).")

  local emulator = with_help(parser:command("emulator", "Runs the local RRpc emulator in the foreground.")
    :epilog(EMULATOR_EPILOG))
  emulator:option("--port", "The port on 127.0.0.1 (default " .. limits.CLI_EMULATOR_PORT .. ").")
    :argname("P"):convert(integer_option("--port", { min = 1, max = 65535 }))
  emulator:option("--devices", "The registry of keys and devices (default: the emulator's devices.json).")
    :argname("FILE")
  emulator:option("--mqtt-port", "Also run the MQTT broker your own devices connect to, on 127.0.0.1:P.")
    :argname("P"):convert(integer_option("--mqtt-port", { min = 1, max = 65535 }))

  local sign = with_help(parser:command("sign", "Shows what a call signs (never the secret or the token).")
    :epilog(SIGN_EPILOG))
  add_device_options(sign)
  add_payload_options(sign, "The payload")
  add_request_options(sign, true)
  add_connection_options(sign)
  sign:option("--timestamp", "The timestamp to sign, UTC YYYY-MM-DDThh:mm:ssZ (default: now)."):argname("T")
  sign:option("--nonce", "The nonce to sign (default: a fresh one)."):argname("N")
  sign:flag("--json", "Print one JSON object with the strings.")

  local help = with_help(parser:command("help", "Show help for commands."))
  help:argument("topic", "The command to show help for."):args("?"):argname("<command>")
  return parser, asked, { call = call, batch = batch, emulator = emulator, sign = sign }
end

---------------------------------------------------------------------------------------
-- Main

-- The streams and environment of the process, for what env leaves out.
local function full_env(env)
  env = env or {}
  local getenv = env.getenv or os.getenv
  return {
    stdin = env.stdin or io.stdin, stdout = env.stdout or io.stdout, stderr = env.stderr or io.stderr,
    getenv = function(name)
      local value = getenv(name)
      if value ~= "" then return value end
    end,
    is_terminal = env.is_terminal or function() return false end,
    signals = env.signals or rrpc.signals,
    program = env.program or "rrpc",
    emulator_dirs = env.emulator_dirs or {},
  }
end

-- The command a usage error is about, for "rrpc batch: ...": argparse does not say.
local function command_of(argv)
  for _, word in ipairs(argv) do
    if COMMANDS[word] or word == "help" then return word end
    if not word:find("^%-") then return nil end
  end
end

local function keep_or_trace(err)
  if common.is_failure(err) or common.refusal(err) then return err end
  return debug.traceback(tostring(err), 2)
end

local function run(argv, env)
  local parser, asked, commands = build_parser()
  local parsed, opts = parser:pparse(argv)
  if asked.help then
    env.stdout:write(asked.help:get_help(), "\n")
    return EXIT.ok
  end
  if not parsed then
    local command = command_of(argv)
    local name = command and ("rrpc " .. command) or "rrpc"
    env.stderr:write(("%s: %s (see %s --help)\n"):format(name, (opts:gsub("\n", " ")), name))
    return EXIT.invalid
  end
  if opts.command == "help" then
    local target = opts.topic and commands[opts.topic]
    if opts.topic and not target then
      env.stderr:write(("rrpc help: unknown command '%s' (see rrpc --help)\n"):format(opts.topic))
      return EXIT.invalid
    end
    env.stdout:write((target or parser):get_help(), "\n")
    return EXIT.ok
  end
  local command = require(COMMANDS[opts.command])
  if not WATCHES_SIGNALS[opts.command] then return command.run(opts, env) end
  -- Deferred from here on: a signal is noticed between lines, never in the middle of one.
  env.signals.watch({ "INT", "TERM" }, { force_after = limits.CLI_SIGNALS_FORCE_AFTER })
  local ok, result = xpcall(function() return command.run(opts, env) end, keep_or_trace)
  env.signals.unwatch()
  if not ok then error(result, 0) end
  return result
end

--- cli.main(argv, env) --> exit status
function cli.main(argv, env)
  env = full_env(env)
  local ok, result = xpcall(function() return run(argv, env) end, keep_or_trace)
  if ok then return result end
  if common.is_failure(result) then
    env.stderr:write("rrpc: ", result.message, "\n")
    return result.status
  end
  local refusal = common.refusal(result)
  if refusal then
    env.stderr:write("rrpc: ", refusal, "\n")
    return EXIT.invalid
  end
  env.stderr:write("rrpc: internal error: ", tostring(result), "\n")
  return EXIT.other
end

return cli
