/* The TLS sessions a client's session and pool share (a libcurl share handle), so that a
 * new connection resumes a session an earlier one made instead of a full handshake. */
#include <stdlib.h>

#include "transfer.h"

void rrpc_tls_sessions_release(struct rrpc_tls_sessions *s)
{
    if (s != NULL && --s->refs == 0) {
        curl_share_cleanup(s->share);
        free(s);
    }
}

/* tls_sessions() --> rrpc.tls_sessions, for option `tls_sessions` */
int l_tls_sessions(lua_State *L)
{
    struct rrpc_tls_sessions **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, RRPC_TLS_SESSIONS_MT);
    if (!rrpc_curl_ready())
        return luaL_error(L, "cannot initialise libcurl");
    *box = calloc(1, sizeof **box);
    if (*box == NULL)
        return luaL_error(L, "out of memory");
    (*box)->refs = 1;
    (*box)->share = curl_share_init();
    /* one Lua state drives every handle that shares it: no locks needed */
    if ((*box)->share == NULL ||
        curl_share_setopt((*box)->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK)
        return luaL_error(L, "cannot make a libcurl share handle for TLS sessions");
    return 1;
}

static int tls_sessions_gc(lua_State *L)
{
    struct rrpc_tls_sessions **box = luaL_checkudata(L, 1, RRPC_TLS_SESSIONS_MT);
    rrpc_tls_sessions_release(*box);
    *box = NULL;
    return 0;
}

static int tls_sessions_tostring(lua_State *L)
{
    struct rrpc_tls_sessions **box = luaL_checkudata(L, 1, RRPC_TLS_SESSIONS_MT);
    lua_pushstring(L, *box ? "rrpc.tls_sessions" : "rrpc.tls_sessions (released)");
    return 1;
}

static const luaL_Reg tls_sessions_methods[] = {
    {NULL, NULL},
};

const struct rrpc_class rrpc_tls_sessions_class = {RRPC_TLS_SESSIONS_MT, tls_sessions_methods,
                                                   tls_sessions_gc, tls_sessions_tostring};
