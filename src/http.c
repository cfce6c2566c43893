/* HTTP through one libcurl easy handle per session, so consecutive calls reuse the
 * kept-alive connection. Bodies are collected into C buffers: no Lua runs inside a
 * transfer. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>

#include "rrpc.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define DEFAULT_MAX_RESPONSE_BYTES (8u * 1024 * 1024)
/* The platform drops pooled connections after about 10 s idle: stop reusing them first. */
#define DEFAULT_IDLE_SECONDS 8L
/* Buffers above this are released after a call instead of kept for the next one. */
#define KEEP_BUFFER_BYTES (64u * 1024)

struct buffer {
    char *data;
    size_t len, cap;
};

struct session {
    CURL *easy;
    struct buffer body, head;
    size_t max_response;
    int too_large;
    char error[CURL_ERROR_SIZE];
};

static int buffer_add(struct buffer *b, const char *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *grown;
        while (cap < b->len + n)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (grown == NULL)
            return 0;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 1;
}

static void buffer_reset(struct buffer *b)
{
    if (b->cap > KEEP_BUFFER_BYTES) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    b->len = 0;
}

static void buffer_free(struct buffer *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct session *s = ud;
    size_t n = size * nmemb;
    if (s->body.len + n > s->max_response) {
        s->too_large = 1;
        return 0;
    }
    return buffer_add(&s->body, p, n) ? n : 0;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct session *s = ud;
    size_t n = size * nmemb;
    /* a new status line (after 100 Continue, say) starts a new header block */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        s->head.len = 0;
    if (s->head.len + n > s->max_response) {
        s->too_large = 1;
        return 0;
    }
    return buffer_add(&s->head, p, n) ? n : 0;
}

static struct session *check_session(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    if (s->easy == NULL)
        luaL_error(L, "attempt to use a closed rrpc session");
    return s;
}

static long opt_ms(lua_State *L, int t, const char *field, long def, long lo, long hi)
{
    long v = def;
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < lo || lua_tonumber(L, -1) > hi)
            luaL_error(L, "bad field '%s' (number in %d..%d expected)", field, (int)lo, (int)hi);
        v = (long)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

static const char *opt_str(lua_State *L, int t, const char *field)
{
    const char *v = NULL;
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad field '%s' (string expected, got %s)", field, luaL_typename(L, -1));
        v = lua_tostring(L, -1);
    }
    lua_pop(L, 1);
    return v; /* kept alive by the options table; libcurl copies it anyway */
}

/* session{ connect_timeout=ms, ca_file=, ca_path=, user_agent=, max_response_bytes=,
 *          idle_timeout=s, verify=true } */
int l_session(lua_State *L)
{
    struct session *s;
    const char *ca_file, *ca_path, *agent;
    long connect_ms, idle_s, max_response;
    int verify = 1;

    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    connect_ms = opt_ms(L, 1, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS, 1, 600000);
    idle_s = opt_ms(L, 1, "idle_timeout", DEFAULT_IDLE_SECONDS, 1, 3600);
    max_response = opt_ms(L, 1, "max_response_bytes", (long)DEFAULT_MAX_RESPONSE_BYTES, 1024,
                          1L << 30);
    ca_file = opt_str(L, 1, "ca_file");
    ca_path = opt_str(L, 1, "ca_path");
    agent = opt_str(L, 1, "user_agent");
    lua_getfield(L, 1, "verify");
    if (!lua_isnil(L, -1))
        verify = lua_toboolean(L, -1);
    lua_pop(L, 1);

    /* box first: if libcurl fails below, the GC owns a harmless empty session */
    s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, RRPC_SESSION_MT);
    s->max_response = (size_t)max_response;
    s->easy = curl_easy_init();
    if (s->easy == NULL)
        return luaL_error(L, "cannot create a libcurl handle");

    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(s->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(s->easy, CURLOPT_MAXAGE_CONN, idle_s);
    curl_easy_setopt(s->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(s->easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(s->easy, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(s->easy, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    if (ca_file != NULL)
        curl_easy_setopt(s->easy, CURLOPT_CAINFO, ca_file);
    if (ca_path != NULL)
        curl_easy_setopt(s->easy, CURLOPT_CAPATH, ca_path);
    if (agent != NULL)
        curl_easy_setopt(s->easy, CURLOPT_USERAGENT, agent);
    curl_easy_setopt(s->easy, CURLOPT_ERRORBUFFER, s->error);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, s);
    return 1;
}

static int session_close(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    if (s->easy != NULL) {
        curl_easy_cleanup(s->easy);
        s->easy = NULL;
    }
    buffer_free(&s->body);
    buffer_free(&s->head);
    return 0;
}

static const char *curl_code_name(CURLcode c)
{
    switch (c) {
    case CURLE_UNSUPPORTED_PROTOCOL: return "CURLE_UNSUPPORTED_PROTOCOL";
    case CURLE_URL_MALFORMAT: return "CURLE_URL_MALFORMAT";
    case CURLE_COULDNT_RESOLVE_PROXY: return "CURLE_COULDNT_RESOLVE_PROXY";
    case CURLE_COULDNT_RESOLVE_HOST: return "CURLE_COULDNT_RESOLVE_HOST";
    case CURLE_COULDNT_CONNECT: return "CURLE_COULDNT_CONNECT";
    case CURLE_WEIRD_SERVER_REPLY: return "CURLE_WEIRD_SERVER_REPLY";
    case CURLE_PARTIAL_FILE: return "CURLE_PARTIAL_FILE";
    case CURLE_WRITE_ERROR: return "CURLE_WRITE_ERROR";
    case CURLE_OUT_OF_MEMORY: return "CURLE_OUT_OF_MEMORY";
    case CURLE_OPERATION_TIMEDOUT: return "CURLE_OPERATION_TIMEDOUT";
    case CURLE_SSL_CONNECT_ERROR: return "CURLE_SSL_CONNECT_ERROR";
    case CURLE_GOT_NOTHING: return "CURLE_GOT_NOTHING";
    case CURLE_SEND_ERROR: return "CURLE_SEND_ERROR";
    case CURLE_RECV_ERROR: return "CURLE_RECV_ERROR";
    case CURLE_SSL_CERTPROBLEM: return "CURLE_SSL_CERTPROBLEM";
    case CURLE_SSL_CIPHER: return "CURLE_SSL_CIPHER";
    case CURLE_PEER_FAILED_VERIFICATION: return "CURLE_PEER_FAILED_VERIFICATION";
    case CURLE_BAD_CONTENT_ENCODING: return "CURLE_BAD_CONTENT_ENCODING";
    case CURLE_SSL_CACERT_BADFILE: return "CURLE_SSL_CACERT_BADFILE";
    case CURLE_HTTP2: return "CURLE_HTTP2";
    default: return NULL;
    }
}

/* Failures that happen before the request can have left this machine. */
static int fails_before_sending(CURLcode c)
{
    switch (c) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
        return 1;
    default:
        return 0;
    }
}

static void push_headers(lua_State *L, const struct buffer *head)
{
    const char *p = head->data, *end = head->data + head->len;
    lua_newtable(L);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end, *colon, *v, *ve;
        colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon != NULL && colon > p) {
            luaL_Buffer name;
            const char *c;
            for (v = colon + 1; v < line_end && (*v == ' ' || *v == '\t'); v++)
                ;
            for (ve = line_end; ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'); ve--)
                ;
            luaL_buffinit(L, &name);
            for (c = p; c < colon; c++)
                luaL_addchar(&name, (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c));
            luaL_pushresult(&name);
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) { /* repeated header: join as HTTP does */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(ve - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(ve - v));
            }
            lua_rawset(L, -3);
        }
        p = line_end + 1;
    }
}

/* session:perform(method, url, headers, body, timeout_ms)
 *   --> status, headers, body, info | nil, code, message, sent */
static int session_perform(lua_State *L)
{
    struct session *s = check_session(L);
    size_t ml, bl;
    const char *method = rrpc_checkstring(L, 2, &ml);
    const char *url = rrpc_checkstring(L, 3, NULL);
    const char *body;
    long timeout_ms, status = 0, connects = 0;
    struct curl_slist *list = NULL;
    curl_off_t pretransfer = 0;
    int lines, i, nlines = 0, is_post = strcmp(method, "POST") == 0, has_type = 0;
    double total = 0;
    CURLcode rc;

    luaL_checktype(L, 4, LUA_TTABLE);
    body = rrpc_checkstring(L, 5, &bl);
    timeout_ms = (long)luaL_checkinteger(L, 6);
    luaL_argcheck(L, is_post || strcmp(method, "GET") == 0, 2, "\"POST\" or \"GET\" expected");
    luaL_argcheck(L, timeout_ms > 0, 6, "timeout must be positive");
    lua_settop(L, 6);

    /* all Lua allocation first, so nothing can raise while the curl list is held */
    lua_newtable(L);
    lines = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, 4)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return luaL_argerror(L, 4, "header names and values must be strings");
        has_type = has_type || strcasecmp(lua_tostring(L, -2), "Content-Type") == 0;
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_rawseti(L, lines, ++nlines);
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "Expect:"); /* no 100-continue round trip */
    lua_rawseti(L, lines, ++nlines);
    if (!has_type) { /* libcurl would add an unsigned form Content-Type to every POST */
        lua_pushliteral(L, "Content-Type:");
        lua_rawseti(L, lines, ++nlines);
    }
    for (i = 1; i <= nlines; i++) {
        struct curl_slist *grown;
        lua_rawgeti(L, lines, i);
        grown = curl_slist_append(list, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (grown == NULL) {
            curl_slist_free_all(list);
            return luaL_error(L, "out of memory building request headers");
        }
        list = grown;
    }

    s->body.len = s->head.len = 0;
    s->too_large = 0;
    s->error[0] = '\0';
    curl_easy_setopt(s->easy, CURLOPT_URL, url);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (is_post) {
        curl_easy_setopt(s->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bl);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, body); /* argument 5 keeps it alive */
    } else {
        curl_easy_setopt(s->easy, CURLOPT_HTTPGET, 1L);
    }
    rc = curl_easy_perform(s->easy);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(list);
    curl_easy_getinfo(s->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
    curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &connects);
    curl_easy_getinfo(s->easy, CURLINFO_TOTAL_TIME, &total);

    if (rc != CURLE_OK) {
        const char *name = curl_code_name(rc);
        int sent = !fails_before_sending(rc) &&
                   !(rc == CURLE_OPERATION_TIMEDOUT && pretransfer == 0);
        lua_pushnil(L);
        if (s->too_large) {
            lua_pushliteral(L, "ResponseTooLarge");
            lua_pushfstring(L, "response larger than max_response_bytes (%d)",
                            (int)s->max_response);
        } else {
            if (name != NULL)
                lua_pushstring(L, name);
            else
                lua_pushfstring(L, "CURLE_%d", (int)rc);
            lua_pushstring(L, s->error[0] ? s->error : curl_easy_strerror(rc));
        }
        lua_pushboolean(L, sent);
        buffer_reset(&s->body);
        buffer_reset(&s->head);
        return 4;
    }

    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, status);
    push_headers(L, &s->head);
    lua_pushlstring(L, s->body.data ? s->body.data : "", s->body.len);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, connects);
    lua_setfield(L, -2, "new_connections");
    lua_pushnumber(L, total);
    lua_setfield(L, -2, "seconds");
    buffer_reset(&s->body);
    buffer_reset(&s->head);
    return 4;
}

static int session_tostring(lua_State *L)
{
    struct session *s = luaL_checkudata(L, 1, RRPC_SESSION_MT);
    lua_pushfstring(L, "rrpc.session (%s)", s->easy ? "open" : "closed");
    return 1;
}

void rrpc_open_session(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"perform", session_perform},
        {"close", session_close},
        {NULL, NULL},
    };
    luaL_newmetatable(L, RRPC_SESSION_MT);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, session_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, session_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, session_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
