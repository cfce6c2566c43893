/* Response parsing: lua-cjson decodes, and the MessageId keeps its exact digits.
 *
 * lua-cjson turns every JSON number into a double, which rounds MessageIds above 2^53.
 * So after cjson has accepted the document, we look up the raw text of the top-level
 * member and hand its digits to Lua as a string. The scan only needs to tell strings
 * from structure; cjson has already validated everything else. */
#include <string.h>

#include "rrpc.h"

static size_t skip_space(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is the opening quote; returns the index just past the closing quote (or n). Most
 * of an answer's bytes are inside its strings (the Base64 payload), so quotes are found
 * with memchr: a quote closes the string unless an odd run of backslashes precedes it. */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    size_t open = i;
    for (i++; i < n; i++) {
        const char *quote = memchr(s + i, '"', n - i);
        size_t backslashes = 0;
        if (quote == NULL)
            return n;
        i = (size_t)(quote - s);
        while (i - backslashes - 1 > open && s[i - backslashes - 1] == '\\')
            backslashes++;
        if (backslashes % 2 == 0)
            return i + 1;
    }
    return n;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Whether the JSON string s[i..end) (both quotes included) spells `key` once its escapes
 * are decoded, as cjson decodes them: "Message\u0049d" is the member MessageId too. `key`
 * is ASCII, so only escapes of ASCII characters can match. */
static int string_is(const char *s, size_t i, size_t end, const char *key, size_t keylen)
{
    size_t k = 0, last = end - 1; /* the closing quote */
    for (i++; i < last; k++) {
        unsigned v = (unsigned char)s[i];
        if (v == '\\') {
            if (i + 1 >= last)
                return 0;
            switch (s[i + 1]) {
            case '"': case '\\': case '/': v = (unsigned char)s[i + 1]; break;
            case 'b': v = '\b'; break;
            case 'f': v = '\f'; break;
            case 'n': v = '\n'; break;
            case 'r': v = '\r'; break;
            case 't': v = '\t'; break;
            case 'u': {
                int d, j;
                if (last - i < 6)
                    return 0;
                for (v = 0, j = 2; j < 6; j++) {
                    if ((d = hex_digit(s[i + j])) < 0)
                        return 0;
                    v = v * 16 + (unsigned)d;
                }
                i += 4;
                break;
            }
            default: return 0;
            }
            i += 2;
        } else {
            i++;
        }
        if (k >= keylen || v != (unsigned char)key[k])
            return 0;
    }
    return k == keylen;
}

static int is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Finds the number value of member `key` (ASCII) of the top-level object (the last one,
 * as cjson keeps the last of duplicate keys, however each spells the key). Returns 1 and
 * its span, or 0. Safe on any input; meaningful on JSON that cjson accepted. */
int rrpc_find_member_number(const char *s, size_t n, const char *key, size_t *start,
                            size_t *len)
{
    size_t i = skip_space(s, n, 0), keylen = strlen(key);
    int depth = 0, found = 0;
    if (i >= n || s[i] != '{')
        return 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            size_t end = skip_string(s, n, i);
            int is_key = depth == 1 && end - i >= 2 && string_is(s, i, end, key, keylen);
            i = skip_space(s, n, end);
            if (is_key && i < n && s[i] == ':') {
                size_t v = skip_space(s, n, i + 1), e = v;
                while (e < n && is_number_char(s[e]))
                    e++;
                if (e > v) {
                    *start = v;
                    *len = e - v;
                    found = 1;
                }
            }
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']')
            depth--;
        i++;
    }
    return found;
}

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

#define INT64_MAX_DIGITS "9223372036854775807"

/* Whether the value at idx is a string of the digits of a 64-bit integer (at most
 * INT64_MAX): what decode_response made of a MessageId given as a JSON integer. */
static int is_int64_digits(lua_State *L, int idx)
{
    size_t n, max = sizeof INT64_MAX_DIGITS - 1;
    const char *s;
    if (lua_type(L, idx) != LUA_TSTRING)
        return 0;
    s = lua_tolstring(L, idx, &n);
    return n <= max && n > 0 && s[0] != '-' && is_integer_literal(s, n) &&
           (n < max || memcmp(s, INT64_MAX_DIGITS, max) <= 0);
}

/* Whether each member of the table at `doc` that the table at `kinds` names is of the kind
 * kinds gives it: a Lua type name ("string", "boolean", ...), or "digits" (the digits of a
 * 64-bit integer, a string). */
static int members_of_kinds(lua_State *L, int doc, int kinds)
{
    int well = 1;
    lua_pushnil(L);
    while (lua_next(L, doc) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *want;
            lua_pushvalue(L, -2);
            lua_rawget(L, kinds);
            want = lua_tostring(L, -1);
            if (want != NULL && (strcmp(want, "digits") == 0 ? !is_int64_digits(L, -2)
                                                            : strcmp(want, luaL_typename(L, -2)) != 0))
                well = 0;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (!well) {
            lua_pop(L, 1); /* the key: the walk ends here */
            break;
        }
    }
    return well;
}

/* is_int64_digits(value) --> whether value is a string of a 64-bit integer's digits: the
 * check of the kind "digits", for the Lua side's ordered field checks */
int l_is_int64_digits(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushboolean(L, is_int64_digits(L, 1));
    return 1;
}

/* decode_response(body [, kinds]) --> table [, well] | nil, message
 * kinds: member name -> Lua type name or "digits"; `well` says whether every member it
 * names that the document has is of that kind, in one walk of the document (JSON null is
 * not).
 * Upvalue 1: the decode function of a private cjson instance. */
static int l_decode_response(lua_State *L)
{
    size_t n, start, len;
    const char *s = rrpc_checkstring(L, 1, &n);
    int has_kinds = !lua_isnoneornil(L, 2);
    if (has_kinds)
        luaL_checktype(L, 2, LUA_TTABLE);
    /* cjson takes a NUL byte for the end of the text and would accept '{"a":1}\0<anything>';
     * JSON has no raw NUL (a string escapes it as \u0000) */
    const char *nul = memchr(s, '\0', n);
    if (nul != NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON (a NUL byte at character %d)", (int)(nul - s) + 1);
        return 2;
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON (%s)", lua_tostring(L, 3));
        return 2;
    }
    /* an array decodes to a table too */
    if (!lua_istable(L, 3) || s[skip_space(s, n, 0)] != '{') {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid JSON (not an object)");
        return 2;
    }
    lua_getfield(L, 3, "MessageId");
    if (lua_type(L, -1) == LUA_TNUMBER &&
        rrpc_find_member_number(s, n, "MessageId", &start, &len) &&
        is_integer_literal(s + start, len)) {
        lua_pushlstring(L, s + start, len);
        lua_setfield(L, 3, "MessageId");
    }
    lua_settop(L, 3);
    if (!has_kinds)
        return 1;
    lua_pushboolean(L, members_of_kinds(L, 3, 2));
    return 2;
}

/* A private lua-cjson instance, so a caller's cjson settings never change our parsing.
 * Leaves its decode function on the stack. */
static void push_cjson_decode(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_invalid_numbers"); /* no hex, NaN or Infinity */
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode");
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* Pushes decode_response, closed over its own cjson instance. */
void rrpc_push_decode_response(lua_State *L)
{
    push_cjson_decode(L);
    lua_pushcclosure(L, l_decode_response, 1);
}
