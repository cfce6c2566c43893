/* libFuzzer: rrpc_text_percent_encode (codec.c) and rrpc.core.percent_encode on any bytes.
 *
 * Properties (ALIBABA-API.md section 2):
 * - the output holds only unreserved bytes (A-Z a-z 0-9 - _ . ~) and %XY with upper-case
 *   hex, and never escapes an unreserved byte;
 * - decoding it gives the input back, and its length is n + 2 * (bytes escaped);
 * - it equals the reference encoding (fuzz.h) and the Lua-facing function's result. */
#include "fuzz.h"

struct input {
    const char *s;
    size_t n;
};

static int encode(lua_State *L)
{
    const struct input *in = lua_touserdata(L, 1);
    struct rrpc_text *t = rrpc_push_text(L);
    rrpc_text_percent_encode(t, in->s, in->n);
    if (t->failed)
        return luaL_error(L, "out of memory encoding %d bytes", (int)in->n);
    lua_pushlstring(L, t->data, t->len);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    struct input in = {(const char *)data, size};
    struct str ref = {0};
    const char *out, *via_lua;
    size_t n, vn, i, j = 0, escaped = 0;

    CHECK(run_protected(L, encode, &in, 1) == LUA_OK, "%s", lua_tostring(L, -1));
    out = lua_tolstring(L, 1, &n);

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i], decoded;
        if (c == '%') {
            int hi, lo;
            CHECK(i + 2 < n, "'%%' at %zu without two hex digits", i);
            hi = upper_hex_value((unsigned char)out[i + 1]);
            lo = upper_hex_value((unsigned char)out[i + 2]);
            CHECK(hi >= 0 && lo >= 0, "'%%%c%c' at %zu is not upper-case hex", out[i + 1], out[i + 2], i);
            decoded = (unsigned char)(hi * 16 + lo);
            CHECK(!is_unreserved(decoded), "unreserved byte 0x%02x escaped at %zu", decoded, i);
            i += 2;
            escaped++;
        } else {
            CHECK(is_unreserved(c), "byte 0x%02x at %zu is neither unreserved nor %%XY", c, i);
            decoded = c;
        }
        CHECK(j < size && decoded == data[j], "decoding differs from the input at byte %zu", j);
        j++;
    }
    CHECK(j == size, "decoding gives %zu bytes, the input has %zu", j, size);
    CHECK(n == size + 2 * escaped, "length %zu for %zu bytes with %zu escaped", n, size, escaped);

    ref_percent_encode(&ref, in.s, in.n);
    CHECK(ref.n == n && memcmp(ref.p, out, n) == 0, "differs from the reference encoding");
    str_free(&ref);

    push_core_function(L, "percent_encode");
    lua_pushlstring(L, in.s, in.n);
    CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK, "percent_encode raised: %s", lua_tostring(L, -1));
    via_lua = lua_tolstring(L, -1, &vn);
    CHECK(via_lua != NULL && vn == n && memcmp(via_lua, out, n) == 0,
          "rrpc.core.percent_encode differs from rrpc_text_percent_encode");
    return fuzz_close(L);
}
