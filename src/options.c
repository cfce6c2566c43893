/* Connection settings, copied out of a Lua options table into C (struct rrpc_options),
 * for the session and the pool alike. */
#include <stdlib.h>
#include <string.h>

#include "transfer.h"

/* A number the caller must give (rrpc.limits holds every default), within what C can
 * take. */
static long opt_number(lua_State *L, int t, const char *field, long lo, long hi)
{
    lua_Number n;
    lua_getfield(L, t, field);
    n = lua_tonumber(L, -1);
    /* written so that NaN fails too: converting it to long is undefined */
    if (!lua_isnumber(L, -1) || !(n >= lo && n <= hi))
        luaL_error(L, "bad field '%s' (number in %d..%d expected)", field, (int)lo, (int)hi);
    lua_pop(L, 1);
    return (long)n;
}

/* A copy of string field `field` after `prefix`, which the caller frees
 * (rrpc_options_free), or NULL when the field is absent. */
static char *opt_copy_after(lua_State *L, int t, const char *field, const char *prefix)
{
    char *v = NULL;
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        size_t n, pl = strlen(prefix);
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad field '%s' (string expected, got %s)", field, luaL_typename(L, -1));
        s = lua_tolstring(L, -1, &n);
        v = malloc(pl + n + 1);
        if (v == NULL)
            luaL_error(L, "out of memory copying '%s'", field);
        memcpy(v, prefix, pl);
        memcpy(v + pl, s, n + 1);
    }
    lua_pop(L, 1);
    return v;
}

static char *opt_copy(lua_State *L, int t, const char *field)
{
    return opt_copy_after(L, t, field, "");
}

/* options: { connect_timeout=ms, idle_timeout=s, max_response_bytes=, receive_buffer_bytes=,
 *            response_budget=, verify=true, ca_file=, ca_path=, user_agent=, proxy=,
 *            no_proxy=, http_version="1.1"|"2",
 *            tls_sessions= }; the numbers and the budget are required. The caller must free
 * o's strings even when this raises, so o lives in a userdata whose __gc does. */
void rrpc_options_read(lua_State *L, int t, struct rrpc_options *o)
{
    o->connect_ms = opt_number(L, t, "connect_timeout", 1, 600000);
    o->idle_s = opt_number(L, t, "idle_timeout", 1, 3600);
    o->max_response = (size_t)opt_number(L, t, "max_response_bytes", 1024, 1L << 30);
    /* libcurl's CURLOPT_BUFFERSIZE range */
    o->receive_buffer = opt_number(L, t, "receive_buffer_bytes", 1024, 10 * 1024 * 1024);
    /* "1.1" (or absent: the metadata service's fetches) or "2": h2 when the TLS handshake
     * agrees on it (ALPN), HTTP/1.1 otherwise and over plain http:// (rrpc.client refuses
     * "2" there) */
    lua_getfield(L, t, "http_version");
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "1.1") == 0))
        o->http_version = CURL_HTTP_VERSION_1_1;
    else if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "2") == 0)
        o->http_version = CURL_HTTP_VERSION_2TLS;
    else
        luaL_error(L, "bad field 'http_version' (\"1.1\" or \"2\" expected)");
    lua_pop(L, 1);
    if (o->http_version != CURL_HTTP_VERSION_1_1) {
        o->goaways = calloc(1, sizeof *o->goaways);
        if (o->goaways == NULL)
            luaL_error(L, "out of memory");
    }
    lua_getfield(L, t, "verify");
    o->verify = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    o->ca_file = opt_copy(L, t, "ca_file");
    o->ca_path = opt_copy(L, t, "ca_path");
    /* a header line of each request's own: libcurl would format CURLOPT_USERAGENT's again
     * for every request */
    o->user_agent_line = opt_copy_after(L, t, "user_agent", RRPC_USER_AGENT_PREFIX);
    o->proxy = opt_copy(L, t, "proxy");
    o->no_proxy = opt_copy(L, t, "no_proxy");
    lua_getfield(L, t, "response_budget");
    if (luaL_testudata(L, -1, RRPC_BUDGET_MT) == NULL) {
        luaL_error(L, "bad field 'response_budget' (rrpc.core.budget expected, got %s)",
                   luaL_typename(L, -1));
    }
    o->budget = *(struct rrpc_budget **)lua_touserdata(L, -1);
    o->budget->refs++;
    lua_pop(L, 1);
    lua_getfield(L, t, "tls_sessions");
    if (!lua_isnil(L, -1)) {
        struct rrpc_tls_sessions **box = luaL_testudata(L, -1, RRPC_TLS_SESSIONS_MT);
        if (box == NULL || *box == NULL)
            luaL_error(L, "bad field 'tls_sessions' (rrpc.core.tls_sessions expected, got %s)",
                       luaL_typename(L, -1));
        o->tls_sessions = *box;
        o->tls_sessions->refs++;
    }
    lua_pop(L, 1);
}

void rrpc_options_free(struct rrpc_options *o)
{
    free(o->ca_file);
    free(o->ca_path);
    free(o->user_agent_line);
    free(o->proxy);
    free(o->no_proxy);
    o->ca_file = o->ca_path = o->user_agent_line = o->proxy = o->no_proxy = NULL;
    rrpc_budget_release(o->budget);
    o->budget = NULL;
    rrpc_tls_sessions_release(o->tls_sessions);
    o->tls_sessions = NULL;
    free(o->goaways);
    o->goaways = NULL;
}
