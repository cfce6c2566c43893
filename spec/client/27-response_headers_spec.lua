-- The response headers rrpc.core hands over: a table from session:perform (what a
-- credential provider's fetch is given), an rrpc.headers object from perform_signed and
-- the pool, both read by lower-case name with repeated headers joined.
local core = require "rrpc.core"
local http = require "http"
local process = require "process"

-- Answers every request on a kept-alive connection (a thread each) with the same head:
-- names in every case, a header repeated (twice more, spelled otherwise), blanks around
-- values, an empty one, a colon in a value.
local SERVER = [[
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
body = b'{"RequestId":"R1","Success":true,"RrpcCode":"SUCCESS","PayloadBase64Byte":"","MessageId":1}'
head = (b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"X-Acs-Request-Id:R-42\r\n"
        b"Vary: a\r\n"
        b"x-empty:\r\n"
        b"vary:\t b \t\r\n"
        b"Link: <http://x/>; rel=next\r\n"
        b"VARY: c\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body))
def serve(c):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                c.close()
                return
            data += chunk
        request, data = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in request.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(data) < length:
            data += c.recv(65536)
        data = data[length:]
        c.sendall(head + body)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
]]

local EXPECTED = {
  ["content-type"] = "application/json",
  ["x-acs-request-id"] = "R-42",
  vary = "a, b, c",
  ["x-empty"] = "",
  link = "<http://x/>; rel=next",
  ["content-length"] = "91",
}

local function start_server()
  return process.start_server {
    name = "headers",
    command = function(port, dir)
      process.write_file(dir .. "/headers.py", SERVER)
      return ("python3 %s %d"):format(process.quote(dir .. "/headers.py"), port)
    end,
    healthy = function(port)
      local connected = os.execute(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(port))
      return connected == true or connected == 0 -- Lua 5.1 returns the status
    end,
    ready = function(port, pid, dir)
      return { url = "http://127.0.0.1:" .. port, pid = pid, dir = dir }
    end,
  }
end

-- Every name of EXPECTED, spelled as the table holds it, and the names no header has.
local function assert_read(headers)
  for name, value in pairs(EXPECTED) do assert.equal(value, headers[name], name) end
  for _, absent in ipairs { "Vary", "X-Acs-Request-Id", "x-acs-retry-after", "http/1.1 200 ok", "" } do
    assert.is_nil(headers[absent], absent)
  end
  assert.is_nil(headers[1])
end

describe("response headers", function()
  local server, signer

  setup(function()
    server = start_server()
    signer = core.signer { endpoint = server.url, host = server.url:match("//(.*)"), version = "2018-01-20",
                           access_key_id = "id", access_key_secret = "secret" }
  end)
  teardown(function()
    process.terminate(server.pid)
    os.execute("rm -rf " .. process.quote(server.dir))
  end)

  it("from session:perform are a table with lower-case names", function()
    local session = http.session()
    local status, headers = session:perform("POST", server.url .. "/", {}, "x=1", 5000)
    session:close()
    assert.equal(200, status)
    assert.equal("table", type(headers))
    assert.same(EXPECTED, headers)
  end)

  it("from session:perform_signed and the pool read the same by name, and outlive the next call", function()
    local session = http.session()
    local status, headers = session:perform_signed(signer, "RRpc", { ProductKey = "p" }, 5000)
    assert.equal(200, status)
    assert.equal("userdata", type(headers))
    assert(session:perform_signed(signer, "RRpc", { ProductKey = "p" }, 5000))
    session:close()
    assert_read(headers)

    local pool = http.pool()
    pool:add(1, "POST", server.url .. "/", {}, "x=1", 5000)
    pool:add_signed(2, signer, "RRpc", { ProductKey = "p" }, 5000)
    local done = {}
    while #done < 2 do
      for _, c in ipairs(http.completions(pool:run(1000))) do done[#done + 1] = c end
    end
    pool:close()
    for _, c in ipairs(done) do
      assert.equal(200, c.status)
      assert_read(c.headers)
    end
  end)

  it("come from the pool four slots a completion: token, status, headers, body, or token, sent, code, message", function()
    local pool = http.pool()
    local refused = "http://127.0.0.1:" .. process.spare_port() .. "/" -- nothing listens there
    pool:add(7, "POST", refused, {}, "x=1", 5000)
    pool:add_signed(8, signer, "RRpc", { ProductKey = "p" }, 5000)
    local flat = {}
    while #flat < 8 do
      for _, v in ipairs(pool:run(1000)) do flat[#flat + 1] = v end
    end
    pool:close()
    assert.equal(8, #flat)
    local answer, failure = flat[1] == 8 and 1 or 5, flat[1] == 7 and 1 or 5
    assert.same({ 8, 200 }, { flat[answer], flat[answer + 1] })
    assert_read(flat[answer + 2])
    assert.equal('{"RequestId":"R1","Success":true,"RrpcCode":"SUCCESS","PayloadBase64Byte":"","MessageId":1}',
      flat[answer + 3])
    assert.same({ 7, false, "CURLE_COULDNT_CONNECT" }, { flat[failure], flat[failure + 1], flat[failure + 2] })
    assert.equal("string", type(flat[failure + 3]))
  end)

  if _VERSION ~= "Lua 5.1" then -- pairs() honours __pairs from 5.2 on (not in LuaJIT)
    it("iterate with pairs() as the table does, each name once", function()
      local session = http.session()
      local _, headers = session:perform_signed(signer, "RRpc", { ProductKey = "p" }, 5000)
      session:close()
      local seen = {}
      for name, value in pairs(headers) do
        assert.is_nil(seen[name], name)
        seen[name] = value
      end
      assert.same(EXPECTED, seen)
    end)
  end
end)
