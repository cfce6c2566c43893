-- The request as it leaves the machine: the header lines a call sends (signed in C by
-- rrpc.core.signer), read by a server that records each request's head and answers as the
-- platform does.
local rrpc = require "rrpc"
local process = require "process"

-- Records each request head to its file, then answers an RRpc success.
local RECORDER = [[
import json, socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(8)
answer = json.dumps({"RequestId": "R1", "Success": True, "RrpcCode": "SUCCESS",
                     "PayloadBase64Byte": "cG9uZw==", "MessageId": 1}).encode()
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    if b"\r\n\r\n" in data:
        with open(out, "ab") as f:
            f.write(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(answer) + answer)
    c.close()
]]

local function start_recorder()
  return process.start_server {
    name = "recorder",
    command = function(port, dir)
      process.write_file(dir .. "/recorder.py", RECORDER)
      return ("python3 %s %d %s"):format(process.quote(dir .. "/recorder.py"), port,
        process.quote(dir .. "/requests"))
    end,
    healthy = function(port) -- a connection that sends nothing is not recorded
      local connected = os.execute(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(port))
      return connected == true or connected == 0 -- Lua 5.1 returns the status
    end,
    ready = function(port, pid, dir)
      return { url = "http://127.0.0.1:" .. port, pid = pid, dir = dir, requests = dir .. "/requests" }
    end,
  }
end

-- The header names of each recorded request, lower-cased and sorted.
local function recorded_names(server)
  local heads = {}
  for head in process.read_file(server.requests):gmatch("(.-)\r\n\r\n") do
    local names = {}
    for name in head:gmatch("\r\n([^:\r\n]+):") do names[#names + 1] = name:lower() end
    table.sort(names)
    heads[#heads + 1] = table.concat(names, " ")
  end
  return heads
end

describe("the request a call sends", function()
  local server

  setup(function() server = start_recorder() end)
  teardown(function()
    process.terminate(server.pid)
    os.execute("rm -rf " .. process.quote(server.dir))
  end)
  before_each(function() process.write_file(server.requests, "") end)

  local V3 = "authorization content-length content-type host user-agent x-acs-action x-acs-content-sha256 "
    .. "x-acs-date x-acs-signature-nonce x-acs-version"

  it("has the signed headers, a User-Agent and its length, and none of libcurl's Accept, "
    .. "Accept-Encoding or Expect (single calls and batches, V3 and V1)", function()
    for _, case in ipairs {
      { signature = "v3", names = V3 },
      { signature = "v1", names = "content-length content-type host user-agent" },
    } do
      process.write_file(server.requests, "")
      local c = rrpc.new { access_key_id = "testid", access_key_secret = "testsecret", endpoint = server.url,
                           signature = case.signature }
      local request = { product_key = "a1RRpcDemo", device_name = "echo", payload = "ping" }
      assert.equal("pong", assert(c:rrpc(request)).payload)
      local results = rrpc.batch(c, { request, request }, { concurrency = 2 })
      assert.equal("pong", results[1].res.payload)
      assert.equal("pong", results[2].res.payload)
      c:close()
      assert.same({ case.names, case.names, case.names }, recorded_names(server))
    end
  end)

  it("sends a security token in its own signed header", function()
    local c = rrpc.new { access_key_id = "STS.id", access_key_secret = "s", security_token = "token",
                         endpoint = server.url }
    assert(c:rrpc { product_key = "a1RRpcDemo", device_name = "echo", payload = "ping" })
    c:close()
    assert.same({ (V3:gsub("x%-acs%-date ", "x-acs-date x-acs-security-token ")) }, recorded_names(server))
  end)
end)
