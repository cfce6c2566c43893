-- Test certificates for the emulator's HTTPS listener, made at run time with the
-- openssl CLI (nothing secret is kept in the repository, and nothing expires there).
--
--   local tls = require "tls"
--   local t = tls.generate()
--   -- t.ca_file                        the test CA's certificate (PEM), for ca_file / --cacert
--   -- t.cert, t.key                    server certificate for 127.0.0.1 and localhost, signed by the CA
--   -- t.untrusted_cert, untrusted_key  self-signed, same names: no CA file makes it trusted
--   -- t.wrong_name_cert, wrong_name_key  signed by the CA, valid only for wrong.example
--   tls.remove(t)                      deletes t.dir and everything in it
--
-- EC P-256 keys, so generating all of them takes a fraction of a second.
local tls = {}

-- Extensions per certificate, in an openssl config of our own: the system's
-- openssl.cnf (and OPENSSL_CONF) would add or clash with extensions.
local CONFIG = [[
[req]
distinguished_name = subject

[subject]

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid

[untrusted]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost

[wrong_name]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
authorityKeyIdentifier = keyid
]]

local NEW_P256_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
local DAYS = 2

local function quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; raises with its output when it fails. (The exit status is
-- read from the output, because os.execute reports it differently in Lua 5.1.)
local function run(command)
  local pipe = assert(io.popen("(" .. command .. ") 2>&1; echo \"exit=$?\""))
  local output = pipe:read("*a")
  pipe:close()
  local text, status = output:match("^(.-)exit=(%d+)%s*$")
  if status ~= "0" then
    error("tls: command failed: " .. command .. "\n" .. (text or output), 0)
  end
  return text
end

local write_file = require("process").write_file

-- A self-signed certificate (and its key) with the extensions of `section`.
local function self_signed(dir, name, common_name, section)
  local key, cert = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".pem"
  run(("openssl req -x509 %s -keyout %s -out %s -days %d -subj %s -config %s -extensions %s"):format(
    NEW_P256_KEY, quote(key), quote(cert), DAYS, quote("/CN=" .. common_name),
    quote(dir .. "/openssl.cnf"), section))
  return cert, key
end

-- A certificate signed by the test CA, with the extensions of `section`.
local function signed_by_ca(dir, name, common_name, section)
  local key, cert, request = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".csr"
  local config = quote(dir .. "/openssl.cnf")
  run(("openssl req -new %s -keyout %s -out %s -subj %s -config %s"):format(
    NEW_P256_KEY, quote(key), quote(request), quote("/CN=" .. common_name), config))
  -- A random serial: two runs' certificates never share an issuer and serial.
  run(("openssl x509 -req -in %s -CA %s -CAkey %s -set_serial 0x%s -days %d -out %s -extfile %s -extensions %s"):format(
    quote(request), quote(dir .. "/ca.pem"), quote(dir .. "/ca.key"), run("openssl rand -hex 16"):match("%x+"),
    DAYS, quote(cert), config, section))
  os.remove(request)
  return cert, key
end

function tls.generate()
  local dir = run("mktemp -d /tmp/rrpc-tls.XXXXXX"):match("[^\n]+")
  local ok, result = pcall(function()
    write_file(dir .. "/openssl.cnf", CONFIG)
    local t = { dir = dir }
    t.ca_file = self_signed(dir, "ca", "rrpc test CA", "ca")
    t.cert, t.key = signed_by_ca(dir, "server", "127.0.0.1", "server")
    t.untrusted_cert, t.untrusted_key = self_signed(dir, "untrusted", "127.0.0.1", "untrusted")
    t.wrong_name_cert, t.wrong_name_key = signed_by_ca(dir, "wrong-name", "wrong.example", "wrong_name")
    return t
  end)
  if not ok then
    run("rm -rf " .. quote(dir))
    error(result, 2)
  end
  return result
end

function tls.remove(t)
  if t and t.dir then
    run("rm -rf " .. quote(t.dir))
  end
end

return tls
