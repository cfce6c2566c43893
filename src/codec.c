/* Percent-encoding (section 2 of the Alibaba signing rules), Base64, hex, SHA-256, and
 * the texts in C memory that signing builds. */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "rrpc.h"

/* Chunks keep OpenSSL's int lengths safe; multiples of 3 (encode) and 4 (decode) */
#define B64_ENCODE_CHUNK (3 * 4096)
#define B64_DECODE_CHUNK (4 * 4096)
#define PERCENT_CHUNK 4096

static const char HEX[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
}

/* Writes s percent-encoded to out (room for 3n); returns the length written. */
static size_t percent_encode_into(char *out, const char *s, size_t n)
{
    size_t i, w = 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            out[w++] = (char)c;
        } else {
            out[w++] = '%';
            out[w++] = HEX[c >> 4];
            out[w++] = HEX[c & 15];
        }
    }
    return w;
}

int rrpc_text_reserve(struct rrpc_text *t, size_t more)
{
    size_t cap;
    char *grown;
    if (t->failed)
        return 0;
    if (more <= t->cap - t->len)
        return 1;
    cap = t->cap ? t->cap : 256;
    while (cap - t->len < more) {
        if (cap > ((size_t)-1) / 2) {
            t->failed = 1;
            return 0;
        }
        cap *= 2;
    }
    /* not realloc: the old block may hold a security token, and is cleansed before it goes */
    grown = malloc(cap);
    if (grown == NULL) {
        t->failed = 1;
        return 0;
    }
    if (t->len > 0)
        memcpy(grown, t->data, t->len);
    OPENSSL_clear_free(t->data, t->cap);
    t->data = grown;
    t->cap = cap;
    return 1;
}

void rrpc_text_percent_encode(struct rrpc_text *t, const char *s, size_t n)
{
    if (n > ((size_t)-1) / 3) {
        t->failed = 1;
        return;
    }
    if (rrpc_text_reserve(t, 3 * n))
        t->len += percent_encode_into(t->data + t->len, s, n);
}

int rrpc_text_open(struct rrpc_text *t)
{
    return rrpc_text_reserve(t, 1);
}

void rrpc_text_free(struct rrpc_text *t)
{
    OPENSSL_clear_free(t->data, t->cap);
    t->data = NULL;
    t->len = t->cap = 0;
}

#define TEXT_MT "rrpc.text"

static int text_gc(lua_State *L)
{
    rrpc_text_free(lua_touserdata(L, 1));
    return 0;
}

struct rrpc_text *rrpc_push_text(lua_State *L)
{
    struct rrpc_text *t = lua_newuserdatauv(L, sizeof *t, 0);
    memset(t, 0, sizeof *t);
    if (luaL_newmetatable(L, TEXT_MT)) {
        lua_pushcfunction(L, text_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    if (!rrpc_text_open(t))
        luaL_error(L, "out of memory");
    return t;
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
    /* a chunk at a time through a local array: Lua 5.1 and LuaJIT have no luaL_prepbuffsize */
    char out[3 * PERCENT_CHUNK];
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (n > 0) {
        size_t take = n < PERCENT_CHUNK ? n : PERCENT_CHUNK;
        luaL_addlstring(&b, out, percent_encode_into(out, s, take));
        s += take;
        n -= take;
    }
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
