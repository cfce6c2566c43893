/* Percent-encoding (section 2 of the Alibaba signing rules), Base64, hex, SHA-256. */
#include <string.h>
#include <openssl/evp.h>

#include "rrpc.h"

/* Chunks keep OpenSSL's int lengths safe; multiples of 3 (encode) and 4 (decode) */
#define B64_ENCODE_CHUNK (3 * 4096)
#define B64_DECODE_CHUNK (4 * 4096)

static const char HEX[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
}

void rrpc_percent_encode(luaL_Buffer *b, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            luaL_addchar(b, (char)c);
        } else {
            luaL_addchar(b, '%');
            luaL_addchar(b, HEX[c >> 4]);
            luaL_addchar(b, HEX[c & 15]);
        }
    }
}

void rrpc_hex(const unsigned char *in, size_t n, char *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = hex_lower[in[i] >> 4];
        out[2 * i + 1] = hex_lower[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void rrpc_sha256_hex(EVP_MD_CTX *ctx, const char *s, size_t n, char out[65])
{
    unsigned char md[32];
    if (!rrpc_sha256(ctx, s, n, md))
        memset(md, 0, sizeof md); /* OpenSSL without SHA-256: the platform refuses the request */
    rrpc_hex(md, sizeof md, out);
}

void rrpc_push_b64encode(lua_State *L, const unsigned char *s, size_t n)
{
    /* each chunk goes through a local array: Lua 5.1 and LuaJIT have no luaL_prepbuffsize */
    unsigned char out[4 * (B64_ENCODE_CHUNK / 3) + 1]; /* EVP_EncodeBlock adds a NUL */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (n > 0) {
        size_t take = n < B64_ENCODE_CHUNK ? n : B64_ENCODE_CHUNK;
        int written = EVP_EncodeBlock(out, s, (int)take);
        luaL_addlstring(&b, (const char *)out, (size_t)written);
        s += take;
        n -= take;
    }
    luaL_pushresult(&b);
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard alphabet, padded, canonical (unused bits zero), nothing else: OpenSSL's
 * decoder is lenient about whitespace and padding, so the checking is ours. */
static const char *b64_check(const unsigned char *s, size_t n)
{
    size_t i, pad = 0;
    if (n % 4 != 0)
        return "length is not a multiple of 4";
    if (n > 0 && s[n - 1] == '=')
        pad = (s[n - 2] == '=') ? 2 : 1;
    for (i = 0; i < n - pad; i++)
        if (b64_value(s[i]) < 0)
            return s[i] == '=' ? "padding before the end" : "character outside the Base64 alphabet";
    if (pad == 2 && (b64_value(s[n - 3]) & 15) != 0)
        return "non-zero bits in padding";
    if (pad == 1 && (b64_value(s[n - 2]) & 3) != 0)
        return "non-zero bits in padding";
    return NULL;
}

/* Pushes the bytes, or nil and a message; returns the number of values pushed. */
int rrpc_push_b64decode(lua_State *L, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    const char *bad = b64_check(s, n);
    size_t pad, done;
    unsigned char out[3 * (B64_DECODE_CHUNK / 4)];
    luaL_Buffer b;
    if (bad != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid Base64: %s", bad);
        return 2;
    }
    pad = (n > 0 && s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
    luaL_buffinit(L, &b);
    for (done = 0; done < n; done += B64_DECODE_CHUNK) {
        size_t take = n - done < B64_DECODE_CHUNK ? n - done : B64_DECODE_CHUNK;
        int written = EVP_DecodeBlock(out, s + done, (int)take);
        /* EVP_DecodeBlock counts padding as zero bytes: drop them on the last chunk */
        luaL_addlstring(&b, (const char *)out, (size_t)written - (done + take == n ? pad : 0));
    }
    luaL_pushresult(&b);
    return 1;
}

int l_percent_encode(lua_State *L)
{
    size_t n;
    const char *s = rrpc_checkstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    rrpc_percent_encode(&b, s, n);
    luaL_pushresult(&b);
    return 1;
}

int l_b64encode(lua_State *L)
{
    size_t n;
    const char *s = rrpc_checkstring(L, 1, &n);
    rrpc_push_b64encode(L, (const unsigned char *)s, n);
    return 1;
}

int l_b64decode(lua_State *L)
{
    size_t n;
    const char *s = rrpc_checkstring(L, 1, &n);
    return rrpc_push_b64decode(L, s, n);
}
