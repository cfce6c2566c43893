/* rrpc.core: the bytes and crypto under lua/rrpc.lua. */
#include <errno.h>
#include <time.h>
#include <sys/utsname.h>
#include <curl/curl.h>

#include "rrpc.h"

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

/* platform() --> os name, machine (for the User-Agent) */
static int l_platform(lua_State *L)
{
    struct utsname u;
    if (uname(&u) != 0) {
        lua_pushliteral(L, "unknown");
        lua_pushliteral(L, "unknown");
    } else {
        lua_pushstring(L, u.sysname);
        lua_pushstring(L, u.machine);
    }
    return 2;
}

void rrpc_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                    lua_CFunction close, lua_CFunction tostring)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}

/* monotime() --> seconds of a clock that never jumps (for deadlines and rate limits) */
static int l_monotime(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sleep(ms): for retry backoff between synchronous calls */
static int l_sleep(lua_State *L)
{
    lua_Number ms = luaL_checknumber(L, 1);
    struct timespec ts;
    luaL_argcheck(L, ms >= 0 && ms <= 3600000, 1, "milliseconds in 0..3600000 expected");
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (lua_Number)ts.tv_sec * 1000) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}

int luaopen_rrpc_core(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"percent_encode", l_percent_encode},
        {"b64encode", l_b64encode},
        {"b64decode", l_b64decode},
        {"sign_v1", l_sign_v1},
        {"sign_v3", l_sign_v3},
        {"build_request", l_build_request},
        {"nonce", l_nonce},
        {"timestamp", l_timestamp},
        {"session", l_session},
        {"pool", l_pool},
        {"budget", l_budget},
        {"parse_url", l_parse_url},
        {"platform", l_platform},
        {"monotime", l_monotime},
        {"sleep", l_sleep},
        {NULL, NULL},
    };

    rrpc_open_session(L);
    rrpc_open_pool(L);
    rrpc_open_budget(L);

    lua_newtable(L);
    luaL_setfuncs(L, functions, 0);
    push_cjson_decode(L);
    lua_pushcclosure(L, l_decode_response, 1);
    lua_setfield(L, -2, "decode_response");
    lua_pushliteral(L, "rrpc.core");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, RRPC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "curl_version");
    return 1;
}
