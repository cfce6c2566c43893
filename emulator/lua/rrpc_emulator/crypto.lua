-- SHA-256, HMAC-SHA256 and random bytes from the libcrypto nginx is already linked
-- against (its symbols resolve through ffi.C, so no library path is needed).
local ffi = require "ffi"

ffi.cdef [[
const void *EVP_sha256(void);
int EVP_Digest(const void *data, size_t count, unsigned char *md,
               unsigned int *size, const void *type, void *impl);
unsigned char *HMAC(const void *evp_md, const void *key, int key_len,
                    const unsigned char *data, size_t data_len,
                    unsigned char *md, unsigned int *md_len);
int RAND_bytes(unsigned char *buf, int num);
]]

local C = ffi.C
local SHA256_LEN = 32

local digest = ffi.new("unsigned char[?]", SHA256_LEN)
local digest_len = ffi.new("unsigned int[1]")

local function to_hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local crypto = {}

function crypto.sha256_hex(data)
  if C.EVP_Digest(data, #data, digest, digest_len, C.EVP_sha256(), nil) ~= 1 then
    error("EVP_Digest failed")
  end
  return to_hex(ffi.string(digest, digest_len[0]))
end

function crypto.hmac_sha256_hex(key, data)
  if C.HMAC(C.EVP_sha256(), key, #key, data, #data, digest, digest_len) == nil then
    error("HMAC failed")
  end
  return to_hex(ffi.string(digest, digest_len[0]))
end

function crypto.random_bytes(count)
  local buf = ffi.new("unsigned char[?]", count)
  if C.RAND_bytes(buf, count) ~= 1 then
    error("RAND_bytes failed")
  end
  return ffi.string(buf, count)
end

crypto.to_hex = to_hex

return crypto
