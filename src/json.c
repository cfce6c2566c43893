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

/* s[i] is the opening quote; returns the index just past the closing quote (or n). */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n;
}

static int is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Finds the number value of member `key` of the top-level object (the last one, as cjson
 * keeps the last of duplicate keys). Returns 1 and its span, or 0. */
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
            int is_key = depth == 1 && end - i >= 2 && end - i - 2 == keylen && memcmp(s + i + 1, key, keylen) == 0;
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

/* decode_response(body) --> table | nil, message
 * Upvalue 1: the decode function of a private cjson instance. */
int l_decode_response(lua_State *L)
{
    size_t n, start, len;
    const char *s = rrpc_checkstring(L, 1, &n);
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON (%s)", lua_tostring(L, 2));
        return 2;
    }
    if (!lua_istable(L, 2)) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid JSON (not an object)");
        return 2;
    }
    lua_getfield(L, 2, "MessageId");
    if (lua_type(L, -1) == LUA_TNUMBER &&
        rrpc_find_member_number(s, n, "MessageId", &start, &len) &&
        is_integer_literal(s + start, len)) {
        lua_pushlstring(L, s + start, len);
        lua_setfield(L, 2, "MessageId");
    }
    lua_settop(L, 2);
    return 1;
}
