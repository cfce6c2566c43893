/* The budget of answer bytes held in memory, shared by a client's session and pool
 * (transfer.h, struct rrpc_budget), and its Lua object. */
#include <stdlib.h>

#include "transfer.h"

void rrpc_budget_release(struct rrpc_budget *b)
{
    if (b != NULL && --b->refs == 0)
        free(b);
}

struct rrpc_budget *rrpc_push_budget(lua_State *L, lua_Number limit)
{
    struct rrpc_budget **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, RRPC_BUDGET_MT);
    *box = calloc(1, sizeof **box);
    if (*box == NULL)
        luaL_error(L, "out of memory");
    (*box)->limit = (size_t)limit;
    (*box)->refs = 1;
    return *box;
}

/* budget(limit_bytes) --> rrpc.budget */
int l_budget(lua_State *L)
{
    lua_Number limit = luaL_checknumber(L, 1);
    /* written so that NaN fails too */
    luaL_argcheck(L, limit >= 1024 && limit <= 1099511627776.0, 1, "bytes in 1024..2^40 expected");
    rrpc_push_budget(L, limit);
    return 1;
}

static int budget_gc(lua_State *L)
{
    struct rrpc_budget **box = luaL_checkudata(L, 1, RRPC_BUDGET_MT);
    rrpc_budget_release(*box);
    *box = NULL;
    return 0;
}

static int budget_held(lua_State *L)
{
    struct rrpc_budget **box = luaL_checkudata(L, 1, RRPC_BUDGET_MT);
    lua_pushinteger(L, *box ? (lua_Integer)(*box)->held : 0);
    lua_pushinteger(L, *box ? (lua_Integer)(*box)->limit : 0);
    return 2;
}

static int budget_tostring(lua_State *L)
{
    struct rrpc_budget **box = luaL_checkudata(L, 1, RRPC_BUDGET_MT);
    if (*box == NULL)
        lua_pushliteral(L, "rrpc.budget (released)");
    else
        lua_pushfstring(L, "rrpc.budget (%d of %d bytes held)", (int)(*box)->held, (int)(*box)->limit);
    return 1;
}

static const luaL_Reg budget_methods[] = {
    {"held", budget_held},
    {NULL, NULL},
};

const struct rrpc_class rrpc_budget_class = {RRPC_BUDGET_MT, budget_methods, budget_gc, budget_tostring};
