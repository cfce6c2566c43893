/* A userdata type's metatable: its methods, and a close function that also runs on __gc
 * and __close. A leaf: it depends on nothing of rrpc.core but the Lua API. */
#ifndef RRPC_CLASS_H
#define RRPC_CLASS_H

#include "compat.h"

struct rrpc_class {
    const char *name;
    const luaL_Reg *methods;
    lua_CFunction close, tostring;
};

void rrpc_register_class(lua_State *L, const struct rrpc_class *c);

#endif
