/* libFuzzer: the response parser, rrpc.core.decode_response (json.c, with the private cjson
 * instance that luaopen_rrpc_core makes), and rrpc_find_member_number on raw bytes.
 *
 * Properties:
 * - rrpc_find_member_number, on any bytes, returns a span inside them made of number
 *   characters;
 * - decode_response never raises on a string; it returns a table exactly when a reference
 *   cjson instance (configured as core.c configures its own) decodes the text and the text
 *   is a JSON object (a reference parser below accepts it: no NUL byte, which cjson takes
 *   for the end of the text, no array), else nil and "invalid JSON (...)";
 * - every member but MessageId is what cjson made of it;
 * - MessageId: when cjson made a number of it, the result is a string exactly when the raw
 *   text of that member (found by the reference parser: the last top-level member whose
 *   key decodes to "MessageId", its number ending where strtod ends it) is an integer
 *   literal; the string is that raw text, a substring of the input, and reads back as the
 *   double cjson decoded (within rounding). Otherwise it is cjson's value untouched. */
#include <math.h>

#include "fuzz.h"

/* ---- reference: a small JSON parser that reports the raw span of the last top-level
 * member named MessageId. Lenient where cjson is (any byte but '"' and '\\' inside strings),
 * numbers as strtod reads them (cjson reads them with strtod too). */
struct parser {
    const char *s; /* NUL-terminated copy of the input */
    size_t n, i;
    int found, is_number, is_object;
    size_t start, len;
};

static void skip_ws(struct parser *p)
{
    while (p->i < p->n && strchr(" \t\n\r", p->s[p->i]) != NULL && p->s[p->i] != '\0')
        p->i++;
}

static int hex4(const char *s, unsigned *v)
{
    int j;
    *v = 0;
    for (j = 0; j < 4; j++) {
        char c = s[j];
        int d = (c >= '0' && c <= '9') ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0)
            return 0;
        *v = *v * 16 + (unsigned)d;
    }
    return 1;
}

static void add_utf8(struct str *out, unsigned cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | cp >> 6);
        b[1] = (unsigned char)(0x80 | (cp & 63));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | cp >> 12);
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 63));
        b[2] = (unsigned char)(0x80 | (cp & 63));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | cp >> 18);
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 63));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 63));
        b[3] = (unsigned char)(0x80 | (cp & 63));
        n = 4;
    }
    str_add(out, b, n);
}

/* At '"': the decoded string into out (may be NULL). */
static int parse_string(struct parser *p, struct str *out)
{
    if (p->i >= p->n || p->s[p->i] != '"')
        return 0;
    for (p->i++; p->i < p->n; p->i++) {
        char c = p->s[p->i];
        if (c == '"') {
            p->i++;
            return 1;
        }
        if (c != '\\') {
            if (out)
                str_add(out, &c, 1);
            continue;
        }
        if (++p->i >= p->n)
            return 0;
        c = p->s[p->i];
        if (c == 'u') {
            unsigned cp, lo;
            if (p->n - p->i < 5 || !hex4(p->s + p->i + 1, &cp))
                return 0;
            p->i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p->n - p->i >= 7 && p->s[p->i + 1] == '\\' &&
                p->s[p->i + 2] == 'u' && hex4(p->s + p->i + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p->i += 6;
            }
            if (out)
                add_utf8(out, cp);
            continue;
        }
        {
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *at = strchr(from, c);
            if (at == NULL || c == '\0')
                return 0;
            if (out)
                str_add(out, &to[at - from], 1);
        }
    }
    return 0;
}

static int parse_value(struct parser *p, int top_member_of_interest);

static int parse_container(struct parser *p, char close, int top)
{
    int first = 1;
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
        return 1;
    }
    for (;;) {
        int interesting = 0;
        if (!first) {
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == close) {
                p->i++;
                return 1;
            }
            if (p->i >= p->n || p->s[p->i] != ',')
                return 0;
            p->i++;
        }
        first = 0;
        skip_ws(p);
        if (close == '}') {
            struct str key = {0};
            int ok = parse_string(p, &key);
            interesting = ok && top && key.n == 9 && memcmp(key.p, "MessageId", 9) == 0;
            str_free(&key);
            if (!ok)
                return 0;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':')
                return 0;
            p->i++;
        }
        if (!parse_value(p, interesting))
            return 0;
    }
}

static int parse_value(struct parser *p, int interesting)
{
    char c;
    skip_ws(p);
    if (p->i >= p->n)
        return 0;
    c = p->s[p->i];
    if (interesting) { /* the latest MessageId member wins, whatever its value */
        p->found = 1;
        p->is_number = 0;
    }
    if (c == '{' || c == '[')
        return parse_container(p, c == '{' ? '}' : ']', 0);
    if (c == '"')
        return parse_string(p, NULL);
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *end;
        (void)strtod(p->s + p->i, &end);
        if (end == p->s + p->i || (size_t)(end - p->s) > p->n)
            return 0;
        if (interesting) {
            p->is_number = 1;
            p->start = p->i;
            p->len = (size_t)(end - p->s) - p->i;
        }
        p->i = (size_t)(end - p->s);
        return 1;
    }
    if (p->n - p->i >= 4 && (memcmp(p->s + p->i, "true", 4) == 0 || memcmp(p->s + p->i, "null", 4) == 0)) {
        p->i += 4;
        return 1;
    }
    if (p->n - p->i >= 5 && memcmp(p->s + p->i, "false", 5) == 0) {
        p->i += 5;
        return 1;
    }
    return 0;
}

/* Parses the whole text; 1 if it is one JSON value. */
static int reference_parse(struct parser *p)
{
    int ok;
    skip_ws(p);
    p->is_object = p->i < p->n && p->s[p->i] == '{';
    if (p->is_object)
        ok = parse_container(p, '}', 1);
    else
        ok = parse_value(p, 0);
    skip_ws(p);
    return ok && p->i == p->n;
}

/* The oracle's own copy, not src/json.c's: the check must not trust the code under test. */
static int is_integer_literal(const char *s, size_t n)
{
    size_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    if (i == n)
        return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* ---- the target */

/* Pushes a cjson instance's decode configured as core.c's (decode_invalid_numbers off). */
static void push_reference_decode(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.cjson_decode");
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK, "require cjson: %s", lua_tostring(L, -1));
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_invalid_numbers");
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.cjson_decode");
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* Members of the result `r` other than MessageId are cjson's `t`, key for key. */
static void check_other_members(lua_State *L, int r, int t)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int same;
        if (lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "MessageId") == 0 &&
            lua_rawlen(L, -2) == 9) {
            lua_pop(L, 1);
            continue;
        }
        lua_pushvalue(L, -2);
        lua_rawget(L, r);
        /* scalars compare equal; tables and cjson.null by type (different instances) */
        same = lua_type(L, -1) == lua_type(L, -2) &&
               (lua_istable(L, -1) || lua_type(L, -1) == LUA_TLIGHTUSERDATA || lua_rawequal(L, -1, -2));
        CHECK(same, "member differs from cjson's: %s vs %s", luaL_typename(L, -1), luaL_typename(L, -2));
        lua_pop(L, 2);
    }
    lua_pushnil(L);
    while (lua_next(L, r)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, t);
        CHECK(!lua_isnil(L, -1), "a member cjson did not make");
        lua_pop(L, 2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    const char *s = (const char *)data;
    size_t start = 0, len = 0;
    char *copy;
    struct parser p;
    int ref_ok, json_ok;

    /* any bytes: a span of number characters inside them */
    if (rrpc_find_member_number(s, size, "MessageId", &start, &len)) {
        size_t i;
        CHECK(len > 0 && start <= size && len <= size - start, "span %zu+%zu of %zu", start, len, size);
        for (i = start; i < start + len; i++)
            CHECK(strchr("0123456789+-.eE", s[i]) != NULL && s[i] != '\0', "0x%02x in the span", (unsigned char)s[i]);
    }

    copy = malloc(size + 1);
    if (copy == NULL)
        abort();
    memcpy(copy, data, size);
    copy[size] = '\0';
    memset(&p, 0, sizeof p);
    p.s = copy;
    p.n = size;
    ref_ok = reference_parse(&p);

    /* 1 body, 2 reference result (or error), 3 decode_response's result, 4 its message */
    lua_pushlstring(L, s, size);
    push_reference_decode(L);
    lua_pushvalue(L, 1);
    json_ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, 2);
    push_core_function(L, "decode_response");
    lua_pushvalue(L, 1);
    CHECK(lua_pcall(L, 1, 2, 0) == LUA_OK, "decode_response raised: %s", lua_tostring(L, -1));

    if (!(json_ok && ref_ok && p.is_object)) {
        const char *msg = lua_tostring(L, 4);
        CHECK(lua_isnil(L, 3), "accepted text that %s",
              !json_ok ? "cjson refuses (or decodes to no table)" : !ref_ok ? "is not JSON" : "is not an object");
        CHECK(msg != NULL && strncmp(msg, "invalid JSON (", 14) == 0, "message: %s", msg ? msg : "(none)");
    } else {
        int m_type;
        CHECK(lua_istable(L, 3), "refused JSON that cjson decodes: %s", lua_tostring(L, 4));
        check_other_members(L, 3, 2);
        lua_getfield(L, 2, "MessageId"); /* 5: cjson's */
        lua_getfield(L, 3, "MessageId"); /* 6: ours */
        m_type = lua_type(L, 5);
        if (m_type != LUA_TNUMBER) {
            CHECK(lua_type(L, 6) == m_type, "MessageId: %s, cjson has %s", luaL_typename(L, 6), luaL_typename(L, 5));
        } else {
            double m = lua_tonumber(L, 5);
            int want_string;
            CHECK(p.found && p.is_number, "cjson has a number MessageId, the reference parser no member");
            want_string = is_integer_literal(copy + p.start, p.len);
            if (!want_string) {
                CHECK(lua_type(L, 6) == LUA_TNUMBER && lua_tonumber(L, 6) == m,
                      "MessageId %.*s: not cjson's number", (int)p.len, copy + p.start);
            } else {
                size_t sl;
                const char *id;
                double back;
                CHECK(lua_type(L, 6) == LUA_TSTRING, "MessageId %.*s is not a string", (int)p.len, copy + p.start);
                id = lua_tolstring(L, 6, &sl);
                CHECK(sl == p.len && memcmp(id, copy + p.start, sl) == 0,
                      "MessageId \"%s\", the member's text is %.*s", id, (int)p.len, copy + p.start);
                CHECK(is_integer_literal(id, sl), "MessageId \"%s\" is not an integer literal", id);
                CHECK(contains(s, size, id, sl), "MessageId \"%s\" is not in the input", id);
                back = strtod(id, NULL);
                CHECK(back == m || fabs(back - m) <= fabs(m) * 1e-15,
                      "MessageId \"%s\" reads as %.17g, cjson decoded %.17g", id, back, m);
            }
        }
    }
    free(copy);
    return fuzz_close(L);
}
