/* A response's headers, by lower-case name, repeated ones joined with ", " as HTTP does:
 * as a table, or as an rrpc.headers object that keeps the header block as it came and
 * reads it only when asked. Calls to the platform get the object: their headers are read
 * on error paths only (the request id, x-acs-retry-after), and a call then costs one
 * allocation instead of a table, its hash part and a string per header. */
#include <string.h>

#include "transfer.h"

struct headers {
    size_t len;
    char block[]; /* the status line, the header lines, as libcurl handed them over */
};

struct header_line {
    char *name;
    const char *value;
    size_t name_len, value_len;
};

/* Reads the line at p: 1 when it holds a header (a name before a colon), 0 for any other
 * line (the status line, the blank one). *next is where the next line starts. */
static int read_line(char *p, char *end, struct header_line *h, char **next)
{
    char *eol = memchr(p, '\n', (size_t)(end - p));
    char *line_end = eol ? eol : end, *colon = memchr(p, ':', (size_t)(line_end - p));
    const char *v, *ve;
    *next = line_end + 1;
    if (colon == NULL || colon == p)
        return 0;
    for (v = colon + 1; v < line_end && (*v == ' ' || *v == '\t'); v++)
        ;
    for (ve = line_end; ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'); ve--)
        ;
    h->name = p;
    h->name_len = (size_t)(colon - p);
    h->value = v;
    h->value_len = (size_t)(ve - v);
    return 1;
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* name, as it came, is `key` (lower-case) once lower-cased */
static int is_named(const struct header_line *h, const char *key, size_t key_len)
{
    size_t i;
    if (h->name_len != key_len)
        return 0;
    for (i = 0; i < key_len; i++)
        if (lower(h->name[i]) != key[i])
            return 0;
    return 1;
}

/* The names are lower-cased where they lie: the buffer is the call's answer, read only
 * here. */
void rrpc_push_header_table(lua_State *L, char *block, size_t len)
{
    char *p, *end = block + len, *next, *c;
    struct header_line h;
    lua_createtable(L, 0, 8);
    for (p = block; p < end; p = next) {
        if (!read_line(p, end, &h, &next))
            continue;
        for (c = h.name; c < h.name + h.name_len; c++)
            *c = lower(*c);
        lua_pushlstring(L, h.name, h.name_len);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) { /* repeated header: join as HTTP does */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h.value, h.value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h.value, h.value_len);
        }
        lua_rawset(L, -3);
    }
}

void rrpc_push_header_object(lua_State *L, const char *block, size_t len)
{
    struct headers *hs = lua_newuserdatauv(L, sizeof *hs + len, 0);
    hs->len = len;
    if (len > 0) /* a block never received is NULL */
        memcpy(hs->block, block, len);
    luaL_setmetatable(L, RRPC_HEADERS_MT);
}

/* Pushes the value of header `key` (lower-case), its repeats joined, or nil. */
static void push_value(lua_State *L, struct headers *hs, const char *key, size_t key_len)
{
    char *p = hs->block, *end = hs->block + hs->len, *next;
    struct header_line h, first;
    int found = 0;
    luaL_Buffer b;
    for (; p < end; p = next) {
        if (!read_line(p, end, &h, &next) || !is_named(&h, key, key_len))
            continue;
        if (found == 0) {
            first = h;
        } else {
            if (found == 1) {
                luaL_buffinit(L, &b);
                luaL_addlstring(&b, first.value, first.value_len);
            }
            luaL_addstring(&b, ", ");
            luaL_addlstring(&b, h.value, h.value_len);
        }
        found++;
    }
    if (found == 0)
        lua_pushnil(L);
    else if (found == 1)
        lua_pushlstring(L, first.value, first.value_len);
    else
        luaL_pushresult(&b);
}

/* headers[name] --> the value, as the table would hold it */
static int headers_index(lua_State *L)
{
    struct headers *hs = luaL_checkudata(L, 1, RRPC_HEADERS_MT);
    size_t key_len;
    const char *key;
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    key = lua_tolstring(L, 2, &key_len);
    push_value(L, hs, key, key_len);
    return 1;
}

/* The iterator of pairs(headers): each name once, lower-case, in the order it first came,
 * with its value. */
static int headers_next(lua_State *L)
{
    struct headers *hs = luaL_checkudata(L, 1, RRPC_HEADERS_MT);
    char *p = hs->block, *end = hs->block + hs->len, *next, *q, *after;
    struct header_line h, earlier;
    size_t key_len = 0, i;
    const char *key = lua_isnil(L, 2) ? NULL : luaL_checklstring(L, 2, &key_len);
    luaL_Buffer b;
    if (key != NULL) { /* past the line where the last name first came */
        for (; p < end; p = next)
            if (read_line(p, end, &h, &next) && is_named(&h, key, key_len))
                break;
        if (p >= end)
            return 0;
        p = next;
    }
    for (; p < end; p = next) {
        int repeat = 0;
        if (!read_line(p, end, &h, &next))
            continue;
        luaL_buffinit(L, &b);
        for (i = 0; i < h.name_len; i++)
            luaL_addchar(&b, lower(h.name[i]));
        luaL_pushresult(&b);
        key = lua_tolstring(L, -1, &key_len);
        for (q = hs->block; q < p && !repeat; q = after)
            repeat = read_line(q, end, &earlier, &after) && is_named(&earlier, key, key_len);
        if (!repeat) {
            push_value(L, hs, key, key_len);
            return 2;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int headers_pairs(lua_State *L)
{
    luaL_checkudata(L, 1, RRPC_HEADERS_MT);
    lua_pushcfunction(L, headers_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* No __gc: the block is the userdata's own memory. */
void rrpc_register_headers(lua_State *L)
{
    luaL_newmetatable(L, RRPC_HEADERS_MT);
    lua_pushcfunction(L, headers_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, headers_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pop(L, 1);
}
