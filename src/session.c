/* A session: one libcurl easy handle, one call at a time, so consecutive calls reuse its
 * kept-alive connection. */
#include <string.h>

#include "transfer.h"

struct session {
    struct rrpc_transfer transfer;
    struct rrpc_options options;
};

static struct session *check_session(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    if (s->transfer.easy == NULL)
        luaL_error(L, "attempt to use a closed rrpc session");
    return s;
}

/* session{ connect_timeout=ms, idle_timeout=s, max_response_bytes=, verify=true,
 *          ca_file=, ca_path=, user_agent=, proxy=, no_proxy=, response_budget= }
 *   --> session | nil, the name of the option libcurl refused */
int l_session(lua_State *L)
{
    struct session *s;
    const char *failed;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    /* box first: whatever fails below, the GC owns and frees what was made */
    s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, RRPC_SESSION_MT);
    rrpc_options_read(L, 1, &s->options);
    failed = rrpc_transfer_open(&s->transfer, &s->options);
    if (failed != NULL) { /* nil, the option libcurl refused (its value never shown) */
        lua_pushnil(L);
        lua_pushstring(L, failed);
        return 2;
    }
    return 1;
}

static int session_close(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    rrpc_transfer_close(&s->transfer);
    rrpc_options_free(&s->options);
    return 0;
}

/* session:perform(method, url, headers, body, timeout_ms)
 *   --> status, headers, body | nil, code, message, sent */
static int session_perform(lua_State *L)
{
    struct session *s = check_session(L);
    CURLcode rc;
    lua_settop(L, 6);
    rrpc_transfer_prepare(L, &s->transfer, 2, 0); /* argument 5 keeps the body alive */
    rc = curl_easy_perform(s->transfer.easy);
    rrpc_transfer_done(&s->transfer);
    return rrpc_transfer_push_result(L, &s->transfer, rc, RRPC_HEADERS_TABLE);
}

/* session:perform_signed(signer, action, params, timeout_ms) --> as perform, the headers an
 * rrpc.headers object: a POST signed in C with rrpc.core.signer (what build_request would
 * send, in one step) */
static int session_perform_signed(lua_State *L)
{
    struct session *s = check_session(L);
    struct rrpc_signed request;
    long timeout_ms = (long)luaL_checkinteger(L, 5);
    CURLcode rc;
    luaL_argcheck(L, timeout_ms > 0, 5, "timeout must be positive");
    lua_settop(L, 5);
    rrpc_sign_with(L, 2, 3, 4, &request);
    rrpc_transfer_prepare_signed(L, &s->transfer, &request, timeout_ms);
    rc = curl_easy_perform(s->transfer.easy);
    rrpc_transfer_done(&s->transfer);
    return rrpc_transfer_push_result(L, &s->transfer, rc, RRPC_HEADERS_OBJECT);
}

static int session_tostring(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    lua_pushfstring(L, "rrpc.session (%s)", s->transfer.easy ? "open" : "closed");
    return 1;
}

static const luaL_Reg session_methods[] = {
    {"perform", session_perform},
    {"perform_signed", session_perform_signed},
    {"close", session_close},
    {NULL, NULL},
};

const struct rrpc_class rrpc_session_class = {RRPC_SESSION_MT, session_methods, session_close,
                                              session_tostring};
