/* A URL as libcurl reads it, for checking settings before they are used. */
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "rrpc.h"

/* parse_url(url) --> scheme, host, port (or nil) | nil, why: libcurl's own reading of a
 * URL (a scheme-less one is taken as http://, as libcurl takes a proxy) */
int l_parse_url(lua_State *L)
{
    size_t n;
    const char *url = rrpc_checkstring(L, 1, &n);
    CURLU *u = curl_url();
    CURLUcode rc;
    char *scheme = NULL, *host = NULL, *port = NULL;
    if (u == NULL)
        return luaL_error(L, "out of memory");
    rc = strlen(url) != n ? CURLUE_MALFORMED_INPUT
                          : curl_url_set(u, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME);
    if (rc == CURLUE_OK)
        rc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (rc == CURLUE_OK)
        rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
    if (rc == CURLUE_OK && curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
        port = NULL; /* none given */
    if (rc != CURLUE_OK) {
        lua_pushnil(L);
        lua_pushstring(L, curl_url_strerror(rc));
    } else {
        lua_pushstring(L, scheme);
        lua_pushstring(L, host);
        if (port != NULL)
            lua_pushinteger(L, (lua_Integer)strtol(port, NULL, 10));
        else
            lua_pushnil(L);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc != CURLUE_OK ? 2 : 3;
}
