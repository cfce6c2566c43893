/* A userdata type's metatable (class.h). */
#include "class.h"

void rrpc_register_class(lua_State *L, const struct rrpc_class *c)
{
    luaL_newmetatable(L, c->name);
    lua_newtable(L);
    luaL_setfuncs(L, c->methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c->close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, c->close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, c->tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
