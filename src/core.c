/* rrpc.core: the bytes and crypto under lua/rrpc.lua. Registration only: each function
 * and class lives in the file named for what it holds (rrpc.h). */
#include <curl/curl.h>

#include "rrpc.h"

int luaopen_rrpc_core(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"percent_encode", l_percent_encode},
        {"b64encode", l_b64encode},
        {"b64decode", l_b64decode},
        {"is_int64_digits", l_is_int64_digits},
        {"sign_v1", l_sign_v1},
        {"sign_v3", l_sign_v3},
        {"build_request", l_build_request},
        {"signer", l_signer},
        {"nonce", l_nonce},
        {"timestamp", l_timestamp},
        {"session", l_session},
        {"pool", l_pool},
        {"redis", l_redis},
        {"budget", l_budget},
        {"tls_sessions", l_tls_sessions},
        {"parse_url", l_parse_url},
        {"platform", l_platform},
        {"monotime", l_monotime},
        {"sleep", l_sleep},
        {"watch_signals", l_watch_signals},
        {"unwatch_signals", l_unwatch_signals},
        {"take_signals", l_take_signals},
        {"wait_signals", l_wait_signals},
        {"signal_number", l_signal_number},
        {NULL, NULL},
    };

    rrpc_register_class(L, &rrpc_session_class);
    rrpc_register_class(L, &rrpc_pool_class);
    rrpc_register_class(L, &rrpc_budget_class);
    rrpc_register_class(L, &rrpc_tls_sessions_class);
    rrpc_register_class(L, &rrpc_redis_class);
    rrpc_register_class(L, &rrpc_signer_class);
    rrpc_register_headers(L);

    lua_newtable(L);
    luaL_setfuncs(L, functions, 0);
    rrpc_push_decode_response(L);
    lua_setfield(L, -2, "decode_response");
    lua_pushliteral(L, "rrpc.core");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, RRPC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "curl_version");
    return 1;
}
