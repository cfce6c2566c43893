/* libFuzzer: rrpc_push_b64decode and rrpc_push_b64encode (codec.c).
 *
 * The first byte picks a mode; the rest is the data:
 *   0  round trip: decode(encode(x)) == x, the encoding is canonical and equals the
 *      reference encoder's;
 *   1  the data as Base64 text: decode accepts exactly what a strict reference decoder
 *      accepts (standard alphabet, padded, unused bits zero) and returns the same bytes, and
 *      then encode(decode(t)) == t; what it refuses comes back as nil, "invalid Base64: ..."
 *   2  round trip of the data repeated past the 12288-byte / 16384-character chunks that
 *      codec.c works in, ending anywhere near a chunk boundary;
 *   3  the same long text with one character replaced, checked as in mode 1. */
#include "fuzz.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
    static signed char value[256];
    if (value['B'] == 0) {
        int i;
        memset(value, -1, sizeof value);
        for (i = 0; i < 64; i++)
            value[(unsigned char)ALPHABET[i]] = (signed char)i;
    }
    return value[c];
}

static void ref_encode(struct str *out, const unsigned char *s, size_t n)
{
    size_t i;
    for (i = 0; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        char q[4] = {ALPHABET[v >> 18], ALPHABET[(v >> 12) & 63], ALPHABET[(v >> 6) & 63],
                     ALPHABET[v & 63]};
        str_add(out, q, 4);
    }
    if (n - i == 1) {
        char q[4] = {ALPHABET[s[i] >> 2], ALPHABET[(s[i] & 3) << 4], '=', '='};
        str_add(out, q, 4);
    } else if (n - i == 2) {
        unsigned v = (unsigned)s[i] << 8 | s[i + 1];
        char q[4] = {ALPHABET[v >> 10], ALPHABET[(v >> 4) & 63], ALPHABET[(v & 15) << 2], '='};
        str_add(out, q, 4);
    } else {
        str_add(out, "", 0);
    }
}

/* Strict: quantums of four alphabet characters; only the last may end in "=" or "==",
 * with the bits that padding leaves unused zero. Returns 1 and the bytes, or 0. */
static int ref_decode(const unsigned char *s, size_t n, struct str *out)
{
    size_t i;
    str_add(out, "", 0);
    if (n % 4 != 0)
        return 0;
    for (i = 0; i < n; i += 4) {
        int last = i + 4 == n, v0 = b64_value(s[i]), v1 = b64_value(s[i + 1]),
            v2 = b64_value(s[i + 2]), v3 = b64_value(s[i + 3]);
        unsigned char b[3];
        if (v0 < 0 || v1 < 0)
            return 0;
        b[0] = (unsigned char)(v0 << 2 | v1 >> 4);
        if (last && s[i + 2] == '=' && s[i + 3] == '=') {
            if ((v1 & 15) != 0)
                return 0;
            str_add(out, b, 1);
        } else if (last && v2 >= 0 && s[i + 3] == '=') {
            if ((v2 & 3) != 0)
                return 0;
            b[1] = (unsigned char)((v1 & 15) << 4 | v2 >> 2);
            str_add(out, b, 2);
        } else if (v2 >= 0 && v3 >= 0) {
            b[1] = (unsigned char)((v1 & 15) << 4 | v2 >> 2);
            b[2] = (unsigned char)((v2 & 3) << 6 | v3);
            str_add(out, b, 3);
        } else {
            return 0;
        }
    }
    return 1;
}

struct input {
    const char *s;
    size_t n;
};

static int encode(lua_State *L)
{
    const struct input *in = lua_touserdata(L, 1);
    rrpc_push_b64encode(L, (const unsigned char *)in->s, in->n);
    return 1;
}

static int decode(lua_State *L)
{
    const struct input *in = lua_touserdata(L, 1);
    int pushed = rrpc_push_b64decode(L, in->s, in->n);
    CHECK(pushed == 1 || pushed == 2, "rrpc_push_b64decode says it pushed %d values", pushed);
    if (pushed == 1)
        lua_pushnil(L);
    return 2;
}

/* Through the Lua-facing function `name` (b64encode or b64decode): the same values as the
 * C function gave, which are at stack slots `first`.. (`count` of them: a string, or nil
 * and a message). */
static void same_via_lua(lua_State *L, const char *name, const char *arg, size_t n, int first, int count)
{
    int base = lua_gettop(L), i;
    push_core_function(L, name);
    lua_pushlstring(L, arg, n);
    CHECK(lua_pcall(L, 1, count, 0) == LUA_OK, "%s raised: %s", name, lua_tostring(L, -1));
    for (i = 0; i < count; i++)
        CHECK(lua_rawequal(L, first + i, base + 1 + i), "rrpc.core.%s differs from the C function", name);
    lua_settop(L, base);
}

/* x --> encode --> decode: back to x, and the text is the reference's. */
static void round_trip(lua_State *L, const char *x, size_t n)
{
    struct input in = {x, n};
    struct str ref = {0};
    const char *e, *d;
    size_t el, dl, i;

    CHECK(run_protected(L, encode, &in, 1) == LUA_OK, "encode raised: %s", lua_tostring(L, -1));
    e = lua_tolstring(L, -1, &el); /* slot 1 */
    CHECK(el == (n + 2) / 3 * 4, "%zu bytes encode to %zu characters", n, el);
    for (i = 0; i < el; i++)
        CHECK(b64_value((unsigned char)e[i]) >= 0 || (e[i] == '=' && i + 2 >= el),
              "character 0x%02x at %zu of %zu", (unsigned char)e[i], i, el);
    ref_encode(&ref, (const unsigned char *)x, n);
    CHECK(ref.n == el && memcmp(ref.p, e, el) == 0, "differs from the reference encoder");
    str_free(&ref);
    same_via_lua(L, "b64encode", x, n, 1, 1);

    in.s = e;
    in.n = el;
    CHECK(run_protected(L, decode, &in, 2) == LUA_OK, "decode raised: %s", lua_tostring(L, -1));
    CHECK(lua_type(L, 2) == LUA_TSTRING, "decode refused its own encoding: %s", lua_tostring(L, 3));
    d = lua_tolstring(L, 2, &dl);
    CHECK(dl == n && memcmp(d, x, n) == 0, "decode(encode(x)) != x (%zu bytes, got %zu)", n, dl);
    same_via_lua(L, "b64decode", e, el, 2, 1);
    lua_settop(L, 0);
}

/* Any text: accepted exactly when the reference accepts it, with the same bytes. */
static void decode_text(lua_State *L, const char *t, size_t n)
{
    struct input in = {t, n};
    struct str ref = {0};
    int valid = ref_decode((const unsigned char *)t, n, &ref);

    CHECK(run_protected(L, decode, &in, 2) == LUA_OK, "decode raised: %s", lua_tostring(L, -1));
    if (!valid) {
        const char *msg = lua_tostring(L, 2);
        CHECK(lua_isnil(L, 1), "decode accepted %zu characters that are not canonical Base64", n);
        CHECK(msg != NULL && strncmp(msg, "invalid Base64: ", 16) == 0, "message %s", msg ? msg : "(none)");
        same_via_lua(L, "b64decode", t, n, 1, 2);
    } else {
        size_t dl;
        const char *d = lua_tolstring(L, 1, &dl);
        CHECK(d != NULL, "decode refused valid Base64: %s", lua_tostring(L, 2));
        CHECK(dl == ref.n && memcmp(d, ref.p, dl) == 0, "decoded bytes differ from the reference");
        same_via_lua(L, "b64decode", t, n, 1, 1);
        lua_settop(L, 0);
        in.s = ref.p;
        in.n = ref.n;
        CHECK(run_protected(L, encode, &in, 1) == LUA_OK, "encode raised");
        d = lua_tolstring(L, -1, &dl);
        CHECK(dl == n && memcmp(d, t, n) == 0, "encode(decode(t)) != t");
    }
    str_free(&ref);
    lua_settop(L, 0);
}

/* The data repeated to 12288 * k + delta bytes (delta in -8..7): across codec.c's chunks. */
static void tile(struct str *out, const uint8_t *p, size_t n, unsigned k, unsigned delta)
{
    size_t want = 12288u * (1 + k % 3) + (delta % 16) - 8;
    str_add(out, "", 0);
    if (n == 0)
        return;
    while (out->n < want)
        str_add(out, p, want - out->n < n ? want - out->n : n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    struct reader r = {data, size};
    unsigned mode = take_byte(&r) % 4;
    struct str big = {0}, text = {0};

    if (mode == 0) {
        round_trip(L, (const char *)r.p, r.n);
    } else if (mode == 1) {
        decode_text(L, (const char *)r.p, r.n);
    } else {
        unsigned k = take_byte(&r), delta = take_byte(&r);
        unsigned at = take_byte(&r) << 8 | take_byte(&r), with = take_byte(&r);
        tile(&big, r.p, r.n, k, delta);
        if (mode == 2) {
            round_trip(L, big.p, big.n);
        } else {
            ref_encode(&text, (const unsigned char *)big.p, big.n);
            if (text.n > 0)
                text.p[(size_t)at * 7 % text.n] = (char)with;
            decode_text(L, text.p, text.n);
        }
    }
    str_free(&big);
    str_free(&text);
    return fuzz_close(L);
}
