/* One HTTP exchange on a libcurl easy handle. Bodies are collected into C buffers: no Lua
 * runs inside a transfer. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "transfer.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define DEFAULT_MAX_RESPONSE_BYTES (8L * 1024 * 1024)
/* The platform drops pooled connections after about 10 s idle: stop reusing them first. */
#define DEFAULT_IDLE_SECONDS 8L
/* Buffers above this are released after a call instead of kept for the next one. */
#define KEEP_BUFFER_BYTES (64u * 1024)
/* libcurl's receive buffer per handle (default 16 KB): small keeps memory per call in
 * flight low, and RRpc answers are small. */
#define RECEIVE_BUFFER_BYTES 4096L

static int buffer_add(struct rrpc_buffer *b, const char *p, size_t n)
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

static void buffer_reset(struct rrpc_buffer *b)
{
    if (b->cap > KEEP_BUFFER_BYTES) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    b->len = 0;
}

static void buffer_free(struct rrpc_buffer *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct rrpc_transfer *s = ud;
    size_t n = size * nmemb;
    if (s->body.len + n > s->options->max_response) {
        s->too_large = 1;
        return 0;
    }
    return buffer_add(&s->body, p, n) ? n : 0;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct rrpc_transfer *s = ud;
    size_t n = size * nmemb;
    /* a new status line (after 100 Continue, say) starts a new header block */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        s->head.len = 0;
    if (s->head.len + n > s->options->max_response) {
        s->too_large = 1;
        return 0;
    }
    return buffer_add(&s->head, p, n) ? n : 0;
}

static long opt_number(lua_State *L, int t, const char *field, long def, long lo, long hi)
{
    long v = def;
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        /* written so that NaN fails too: converting it to long is undefined */
        if (!lua_isnumber(L, -1) || !(n >= lo && n <= hi))
            luaL_error(L, "bad field '%s' (number in %d..%d expected)", field, (int)lo, (int)hi);
        v = (long)n;
    }
    lua_pop(L, 1);
    return v;
}

/* Returns a copy the caller frees (rrpc_options_free), or NULL. */
static char *opt_copy(lua_State *L, int t, const char *field)
{
    char *v = NULL;
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad field '%s' (string expected, got %s)", field, luaL_typename(L, -1));
        s = lua_tolstring(L, -1, &n);
        v = malloc(n + 1);
        if (v == NULL)
            luaL_error(L, "out of memory copying '%s'", field);
        memcpy(v, s, n + 1);
    }
    lua_pop(L, 1);
    return v;
}

/* options: { connect_timeout=ms, idle_timeout=s, max_response_bytes=, verify=true,
 *            ca_file=, ca_path=, user_agent=, proxy=, no_proxy= }. The caller must free o's strings even when
 * this raises, so o lives in a userdata whose __gc does. */
void rrpc_options_read(lua_State *L, int t, struct rrpc_options *o)
{
    o->connect_ms = opt_number(L, t, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS, 1, 600000);
    o->idle_s = opt_number(L, t, "idle_timeout", DEFAULT_IDLE_SECONDS, 1, 3600);
    o->max_response = (size_t)opt_number(L, t, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES,
                                         1024, 1L << 30);
    lua_getfield(L, t, "verify");
    o->verify = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    o->ca_file = opt_copy(L, t, "ca_file");
    o->ca_path = opt_copy(L, t, "ca_path");
    o->user_agent = opt_copy(L, t, "user_agent");
    o->proxy = opt_copy(L, t, "proxy");
    o->no_proxy = opt_copy(L, t, "no_proxy");
}

void rrpc_options_free(struct rrpc_options *o)
{
    free(o->ca_file);
    free(o->ca_path);
    free(o->user_agent);
    free(o->proxy);
    free(o->no_proxy);
    o->ca_file = o->ca_path = o->user_agent = o->proxy = o->no_proxy = NULL;
}

/* libcurl is set up on first use, not when rrpc.core loads: inside nginx (rrpc.ngx) the
 * module signs requests and never touches libcurl. */
int rrpc_curl_ready(void)
{
    static int ready = 0;
    if (!ready)
        ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    return ready;
}

int rrpc_transfer_open(struct rrpc_transfer *t, const struct rrpc_options *o)
{
    CURL *e = rrpc_curl_ready() ? curl_easy_init() : NULL;
    if (e == NULL)
        return 0;
    t->easy = e;
    t->options = o;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_ms);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, o->idle_s);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, RECEIVE_BUFFER_BYTES);
    /* a Content-Length over the limit fails at once, before any of the body is read;
     * on_body bounds the rest (chunked, or decompressed) */
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_response);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L);
    if (o->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    if (o->ca_path != NULL)
        curl_easy_setopt(e, CURLOPT_CAPATH, o->ca_path);
    if (o->user_agent != NULL)
        curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent);
    /* without these, libcurl follows http_proxy, HTTPS_PROXY, NO_PROXY and friends */
    if (o->proxy != NULL)
        curl_easy_setopt(e, CURLOPT_PROXY, o->proxy);
    if (o->no_proxy != NULL)
        curl_easy_setopt(e, CURLOPT_NOPROXY, o->no_proxy);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    return 1;
}

void rrpc_transfer_close(struct rrpc_transfer *t)
{
    if (t->easy != NULL) {
        curl_easy_cleanup(t->easy);
        t->easy = NULL;
    }
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    buffer_free(&t->body);
    buffer_free(&t->head);
}

void rrpc_transfer_prepare(lua_State *L, struct rrpc_transfer *t, int first, int copy_body)
{
    size_t bl, ml, ul;
    const char *method = rrpc_checkstring(L, first, &ml);
    const char *url = rrpc_checkstring(L, first + 1, &ul);
    const char *body;
    long timeout_ms;
    int lines, i, nlines = 0, has_type = 0, is_post = strcmp(method, "POST") == 0,
        is_put = strcmp(method, "PUT") == 0;
    struct curl_slist *list = NULL;

    luaL_checktype(L, first + 2, LUA_TTABLE);
    body = rrpc_checkstring(L, first + 3, &bl);
    timeout_ms = (long)luaL_checkinteger(L, first + 4);
    /* both reach libcurl as C strings, which a NUL byte would silently cut short */
    luaL_argcheck(L, strlen(method) == ml && (is_post || is_put || strcmp(method, "GET") == 0), first,
                  "\"POST\", \"PUT\" or \"GET\" expected");
    luaL_argcheck(L, strlen(url) == ul, first + 1, "URL without NUL bytes expected");
    luaL_argcheck(L, timeout_ms > 0, first + 4, "timeout must be positive");

    /* all Lua allocation first, so nothing can raise while the curl list is held */
    lua_newtable(L);
    lines = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, first + 2)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, first + 2, "header names and values must be strings");
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
            luaL_error(L, "out of memory building request headers");
        }
        list = grown;
    }
    lua_pop(L, 1);

    curl_slist_free_all(t->headers);
    t->headers = list;
    t->body.len = t->head.len = 0;
    t->too_large = 0;
    t->error[0] = '\0';
    curl_easy_setopt(t->easy, CURLOPT_URL, url);
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (is_post || is_put) {
        curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
        /* PUT with a body in memory (the ECS metadata token): a POST renamed */
        curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, is_put ? "PUT" : NULL);
        curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bl);
        if (copy_body)
            curl_easy_setopt(t->easy, CURLOPT_COPYPOSTFIELDS, body);
        else /* the caller keeps the Lua string alive for the whole transfer */
            curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
    }
}

void rrpc_transfer_done(struct rrpc_transfer *t)
{
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(t->headers);
    t->headers = NULL;
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

/* Failures that happen before the request can have left this machine. Not
 * CURLE_UNSUPPORTED_PROTOCOL: an answer that is not HTTP at all gives it too ("Received
 * HTTP/0.9"); before the transfer began, a pretransfer time of 0 tells. */
static int fails_before_sending(CURLcode c)
{
    switch (c) {
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

static void push_headers(lua_State *L, const struct rrpc_buffer *head)
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

int rrpc_transfer_push_result(lua_State *L, struct rrpc_transfer *t, CURLcode rc)
{
    curl_off_t pretransfer = 0;
    long status = 0, connects = 0;
    double total = 0;

    curl_easy_getinfo(t->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
    curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
    curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &total);
    if (rc != CURLE_OK) {
        const char *name = curl_code_name(rc);
        /* libcurl counts at least 1 us once the transfer began: 0 means nothing was sent */
        int sent = !fails_before_sending(rc) && pretransfer != 0;
        lua_pushnil(L);
        if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
            lua_pushliteral(L, "ResponseTooLarge");
            lua_pushfstring(L, "response larger than max_response_bytes (%d)",
                            (int)t->options->max_response);
        } else {
            if (name != NULL)
                lua_pushstring(L, name);
            else
                lua_pushfstring(L, "CURLE_%d", (int)rc);
            lua_pushstring(L, t->error[0] ? t->error : curl_easy_strerror(rc));
        }
        lua_pushboolean(L, sent);
    } else {
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        lua_pushinteger(L, status);
        push_headers(L, &t->head);
        lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, connects);
        lua_setfield(L, -2, "new_connections");
        lua_pushnumber(L, total);
        lua_setfield(L, -2, "seconds");
    }
    buffer_reset(&t->body);
    buffer_reset(&t->head);
    return 4;
}
