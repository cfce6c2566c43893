/* One source for every Lua: the few API differences rrpc.core meets.
 *
 * Built once per VM (Lua 5.1, 5.3, 5.4, LuaJIT 2.1): the code is written against the
 * 5.4 API and this header supplies what older ones lack. Everything else rrpc.core calls
 * is in Lua 5.1's reference manual; luaL_prepbuffsize and luaL_buffinitsize are not, so
 * the sources do not use them. */
#ifndef RRPC_COMPAT_H
#define RRPC_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

/* LuaJIT's lua.h says "Lua 5.1" and does not include luajit.h (where LUAJIT_VERSION is),
 * but its luaconf.h defines LUA_LJDIR. */
#if LUA_VERSION_NUM == 501 && (defined(LUAJIT_VERSION) || defined(LUA_LJDIR))
#define RRPC_LUAJIT 1
#endif

/* Lua 5.1 and LuaJIT */
#if LUA_VERSION_NUM == 501
#define lua_rawlen(L, i) lua_objlen(L, (i))
#endif

/* Plain Lua 5.1; LuaJIT 2.1 has these three. The shims have their own names, so a
 * LuaJIT that escapes the check above still compiles (and uses them). */
#if LUA_VERSION_NUM == 501 && !defined(RRPC_LUAJIT)
static inline void rrpc_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define luaL_setfuncs rrpc_compat_setfuncs

static inline void *rrpc_compat_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (p == NULL || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    if (!lua_rawequal(L, -1, -2))
        p = NULL;
    lua_pop(L, 2);
    return p;
}
#define luaL_testudata rrpc_compat_testudata

static inline void rrpc_compat_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}
#define luaL_setmetatable rrpc_compat_setmetatable
#endif

/* Lua 5.1, 5.3, LuaJIT: no user values to ask for (rrpc.core always asks for 0) */
#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, size, nuv) lua_newuserdata(L, (size))
#endif

#endif
