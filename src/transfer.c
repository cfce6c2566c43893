/* One HTTP exchange on a libcurl easy handle. Bodies are collected into C buffers: no Lua
 * runs inside a transfer. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "transfer.h"

/* Buffers above this are released after a call instead of kept for the next one. */
#define KEEP_BUFFER_BYTES (64u * 1024)

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

/* Holds n more bytes of the answer, within the call's limit and the shared budget. */
static int hold(struct rrpc_transfer *t, struct rrpc_buffer *b, const char *p, size_t n)
{
    struct rrpc_budget *budget = t->options->budget;
    if (t->body.len + t->head.len + n > t->options->max_response) {
        t->too_large = 1;
        return 0;
    }
    if (budget->held + n > budget->limit) {
        t->over_budget = 1;
        return 0;
    }
    if (!buffer_add(b, p, n))
        return 0;
    budget->held += n;
    t->budgeted += n;
    return 1;
}

/* The answer has been handed over (or dropped): its bytes leave the budget. */
void rrpc_transfer_release(struct rrpc_transfer *t)
{
    if (t->budgeted > 0) { /* then the options, and their budget, are there */
        t->options->budget->held -= t->budgeted;
        t->budgeted = 0;
    }
    buffer_reset(&t->body);
    buffer_reset(&t->head);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    size_t n = size * nmemb;
    return hold(ud, &((struct rrpc_transfer *)ud)->body, p, n) ? n : 0;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    struct rrpc_transfer *t = ud;
    size_t n = size * nmemb;
    /* a new status line (after 100 Continue, say) starts a new header block */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        t->options->budget->held -= t->head.len;
        t->budgeted -= t->head.len;
        t->head.len = 0;
    }
    return hold(t, &t->head, p, n) ? n : 0;
}

/* libcurl calls this each time it is about to write the request: once per call, unless a
 * kept-alive connection died before the answer and libcurl would write the request again
 * on a new one ("Connection died, retrying a fresh connect"). RRpc is not idempotent, so
 * that second write is refused here, and any call that got this far may have been
 * delivered, whatever libcurl's final code says. */
static int on_request_start(void *ud, char *primary_ip, char *local_ip, int primary_port,
                            int local_port)
{
    struct rrpc_transfer *t = ud;
    if (++t->requests_started == 1) {
        t->local_port = local_port;
        return CURL_PREREQFUNC_OK;
    }
    /* libcurl 7.88 writes an HTTP/2 request again when its stream was refused (lib/http2.c:
     * REFUSED_STREAM, sent or implied by a GOAWAY, is its only receive error that leaves no
     * message) or when its connection died (always with a message) */
    if (t->requests_started == 2 && t->h2_stream > 0 && t->error[0] == '\0')
        t->refused = 1;
    return CURL_PREREQFUNC_ABORT;
}

/* What libcurl 7.88 says (CURLOPT_VERBOSE) as it opens an HTTP/2 stream and when a GOAWAY
 * arrives (lib/http2.c, "recveived" its spelling). A libcurl that words them otherwise is
 * not understood, and then every failure after the request went out stays "maybe". */
#define H2_STREAM_TEXT "Using Stream ID: "
#define H2_GOAWAY_TEXT "GOAWAY, error="
#define H2_LAST_STREAM_TEXT "last_stream="

static int on_debug(CURL *e, curl_infotype type, char *data, size_t n, void *ud)
{
    struct rrpc_transfer *t = ud;
    struct rrpc_goaways *g = t->options->goaways;
    char text[128];
    const char *last;
    int i;
    (void)e;
    if (type != CURLINFO_TEXT)
        return 0;
    /* not NUL-terminated; both texts fit well within the copy */
    n = n < sizeof text - 1 ? n : sizeof text - 1;
    memcpy(text, data, n);
    text[n] = '\0';
    if (strncmp(text, H2_STREAM_TEXT, sizeof H2_STREAM_TEXT - 1) == 0 && t->h2_stream == 0) {
        t->h2_stream = strtol(text + sizeof H2_STREAM_TEXT - 1, NULL, 10);
        if (t->h2_stream == 1) /* a new connection: a GOAWAY from this port is of an old one */
            for (i = 0; i < RRPC_GOAWAYS; i++)
                if (g->port[i] == t->local_port)
                    g->port[i] = 0;
    } else if (strstr(text, H2_GOAWAY_TEXT) != NULL &&
               (last = strstr(text, H2_LAST_STREAM_TEXT)) != NULL && t->local_port > 0) {
        g->port[g->next] = t->local_port;
        g->last_stream[g->next] = strtol(last + sizeof H2_LAST_STREAM_TEXT - 1, NULL, 10);
        g->next = (g->next + 1) % RRPC_GOAWAYS;
    }
    return 0;
}

/* The server refused this call's HTTP/2 stream, so it never processed the request. */
static int was_refused(const struct rrpc_transfer *t)
{
    const struct rrpc_goaways *g = t->options->goaways;
    int i;
    if (t->refused)
        return 1;
    for (i = 0; g != NULL && t->h2_stream > 0 && i < RRPC_GOAWAYS; i++)
        if (g->port[i] == t->local_port && g->last_stream[i] < t->h2_stream)
            return 1;
    return 0;
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

/* The longest string libcurl takes for an option (its CURL_MAX_INPUT_LENGTH) */
#define CURL_STRING_MAX 8000000

/* Sets an option; on failure, names it for the error (the first one that failed). */
#define SET(option, value, name)                                                        \
    do {                                                                                \
        if (curl_easy_setopt(e, option, value) != CURLE_OK && failed == NULL)           \
            failed = (name);                                                            \
    } while (0)

const char *rrpc_transfer_open(struct rrpc_transfer *t, const struct rrpc_options *o)
{
    CURL *e = rrpc_curl_ready() ? curl_easy_init() : NULL;
    const char *failed = NULL;
    if (e == NULL)
        return "libcurl";
    t->easy = e;
    t->options = o;
    SET(CURLOPT_NOSIGNAL, 1L, "libcurl");
    SET(CURLOPT_PROTOCOLS_STR, "http,https", "libcurl");
    SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_ms, "connect_timeout");
    SET(CURLOPT_MAXAGE_CONN, o->idle_s, "idle_timeout");
    SET(CURLOPT_TCP_KEEPALIVE, 1L, "libcurl");
    SET(CURLOPT_ACCEPT_ENCODING, "", "libcurl");
    SET(CURLOPT_BUFFERSIZE, o->receive_buffer, "receive_buffer_bytes");
    /* a Content-Length over the limit fails at once, before any of the body is read;
     * on_body bounds the rest (chunked, or decompressed) */
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_response, "max_response_bytes");
    /* libcurl's own default would take h2 whenever a server offers it */
    SET(CURLOPT_HTTP_VERSION, o->http_version, "http_version");
    /* a batch's calls wait for the first connection to say whether it multiplexes,
     * rather than each opening its own */
    if (o->http_version != CURL_HTTP_VERSION_1_1)
        SET(CURLOPT_PIPEWAIT, 1L, "http_version");
    /* h2's refused streams are known only from libcurl's own words (on_debug) */
    if (o->goaways != NULL) {
        SET(CURLOPT_VERBOSE, 1L, "http_version");
        SET(CURLOPT_DEBUGFUNCTION, on_debug, "http_version");
        SET(CURLOPT_DEBUGDATA, t, "http_version");
    }
    if (o->tls_sessions != NULL)
        SET(CURLOPT_SHARE, o->tls_sessions->share, "libcurl");
    SET(CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L, "insecure_skip_tls_verify");
    SET(CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L, "insecure_skip_tls_verify");
    if (o->ca_file != NULL)
        SET(CURLOPT_CAINFO, o->ca_file, "ca_file");
    if (o->ca_path != NULL)
        SET(CURLOPT_CAPATH, o->ca_path, "ca_path");
    /* without these, libcurl follows http_proxy, HTTPS_PROXY, NO_PROXY and friends */
    if (o->proxy != NULL)
        SET(CURLOPT_PROXY, o->proxy, "proxy");
    if (o->no_proxy != NULL)
        SET(CURLOPT_NOPROXY, o->no_proxy, "no_proxy");
    /* the User-Agent goes as a header line of rrpc's (rrpc_transfer_prepare*), held to what
     * libcurl would take as CURLOPT_USERAGENT */
    if (o->user_agent_line != NULL &&
        strlen(o->user_agent_line) > strlen(RRPC_USER_AGENT_PREFIX) + CURL_STRING_MAX)
        failed = failed != NULL ? failed : "user_agent";
    SET(CURLOPT_ERRORBUFFER, t->error, "libcurl");
    SET(CURLOPT_WRITEFUNCTION, on_body, "libcurl");
    SET(CURLOPT_WRITEDATA, t, "libcurl");
    SET(CURLOPT_HEADERFUNCTION, on_header, "libcurl");
    SET(CURLOPT_HEADERDATA, t, "libcurl");
    SET(CURLOPT_PREREQFUNCTION, on_request_start, "libcurl");
    SET(CURLOPT_PREREQDATA, t, "libcurl");
    SET(CURLOPT_PRIVATE, t, "libcurl");
    return failed;
}

void rrpc_transfer_close(struct rrpc_transfer *t)
{
    if (t->easy != NULL) {
        curl_easy_cleanup(t->easy);
        t->easy = NULL;
    }
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    rrpc_transfer_release(t);
    buffer_free(&t->body);
    buffer_free(&t->head);
    buffer_free(&t->request);
}

/* What a call learns of its own transfer starts afresh. */
static void reset_call(struct rrpc_transfer *t)
{
    t->too_large = t->over_budget = 0;
    t->requests_started = 0;
    t->local_port = t->h2_stream = 0;
    t->refused = 0;
    t->error[0] = '\0';
}

void rrpc_transfer_prepare(lua_State *L, struct rrpc_transfer *t, int first, int copy_body)
{
    size_t bl, ml, ul;
    const char *method = rrpc_checkstring(L, first, &ml);
    const char *url = rrpc_checkstring(L, first + 1, &ul);
    const char *body;
    long timeout_ms;
    int lines, i, nlines = 0, has_type = 0, has_agent = 0, is_post = strcmp(method, "POST") == 0,
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
        has_agent = has_agent || strcasecmp(lua_tostring(L, -2), "User-Agent") == 0;
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_rawseti(L, lines, ++nlines);
        lua_pop(L, 1);
    }
    if (!has_agent && t->options->user_agent_line != NULL) {
        lua_pushstring(L, t->options->user_agent_line);
        lua_rawseti(L, lines, ++nlines);
    }
    lua_pushliteral(L, "Expect:"); /* no 100-continue round trip */
    lua_rawseti(L, lines, ++nlines);
    lua_pushliteral(L, "Accept:"); /* libcurl's catch-all Accept says nothing: fewer bytes */
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
    rrpc_transfer_release(t);
    reset_call(t);
    {
        CURL *e = t->easy;
        const char *failed = NULL;
        t->signed_url_len = 0;
        SET(CURLOPT_URL, url, "url");
        SET(CURLOPT_HTTPHEADER, list, "headers");
        SET(CURLOPT_TIMEOUT_MS, timeout_ms, "timeout");
        if (is_post || is_put) {
            SET(CURLOPT_POST, 1L, "method");
            /* PUT with a body in memory (the ECS metadata token): a POST renamed */
            SET(CURLOPT_CUSTOMREQUEST, is_put ? "PUT" : NULL, "method");
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bl, "body");
            if (copy_body)
                SET(CURLOPT_COPYPOSTFIELDS, body, "body");
            else /* the caller keeps the Lua string alive for the whole transfer */
                SET(CURLOPT_POSTFIELDS, body, "body");
        } else {
            SET(CURLOPT_CUSTOMREQUEST, NULL, "method");
            SET(CURLOPT_HTTPGET, 1L, "method");
        }
        if (failed != NULL)
            luaL_error(L, "libcurl refused the request's %s", failed);
    }
}

/* The lines libcurl adds to a POST of its own accord, which a signed request goes without:
 * a 100-continue round trip, a catch-all Accept, the list of encodings it decodes (the
 * platform's answers are a few hundred bytes; one that comes compressed all the same is
 * still decoded, within max_response_bytes), and an unsigned form Content-Type (the last
 * only when the request has no Content-Type of its own). */
static const char *const UNSENT[] = {"Expect:", "Accept:", "Accept-Encoding:", "Content-Type:"};
#define UNSENT_COUNT 4

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

void rrpc_transfer_prepare_signed(lua_State *L, struct rrpc_transfer *t, const struct rrpc_signed *s,
                                  long timeout_ms)
{
    size_t need = s->url_len + 1 + s->body_len + 1, i, n = 0, unsent = UNSENT_COUNT;
    int has_type = 0, same_url;
    char *p, *url, *body;
    for (i = 0; i < s->nh; i++) {
        need += s->headers[i].kl + 2 + s->headers[i].vl + 1;
        has_type = has_type || strcasecmp(s->headers[i].k, "Content-Type") == 0;
    }
    if (has_type)
        unsent = UNSENT_COUNT - 1;
    for (i = 0; i < unsent; i++)
        need += strlen(UNSENT[i]) + 1;
    rrpc_transfer_release(t); /* the answer of the call before */
    same_url = t->signed_url_len == s->url_len && memcmp(t->request.data, s->url, s->url_len) == 0;
    if (need > t->request.cap || t->request.cap > KEEP_BUFFER_BYTES) {
        char *grown = realloc(t->request.data, need);
        if (grown == NULL)
            luaL_error(L, "out of memory building the request");
        t->request.data = grown;
        t->request.cap = need;
    }
    p = url = t->request.data;
    p = put(p, s->url, s->url_len);
    *p++ = '\0';
    body = p;
    p = put(p, s->body, s->body_len);
    *p++ = '\0';
    for (i = 0; i < s->nh; i++, n++) {
        t->lines[n].data = p;
        p = put(p, s->headers[i].k, s->headers[i].kl);
        p = put(p, ": ", 2);
        p = put(p, s->headers[i].v, s->headers[i].vl);
        *p++ = '\0';
        t->lines[n].next = &t->lines[n + 1];
    }
    if (t->options->user_agent_line != NULL) {
        t->lines[n].data = t->options->user_agent_line;
        t->lines[n].next = &t->lines[n + 1];
        n++;
    }
    for (i = 0; i < unsent; i++, n++) {
        t->lines[n].data = (char *)UNSENT[i];
        t->lines[n].next = &t->lines[n + 1];
    }
    t->lines[n - 1].next = NULL;

    curl_slist_free_all(t->headers);
    t->headers = NULL;
    reset_call(t);
    {
        CURL *e = t->easy;
        const char *failed = NULL;
        if (!same_url) {
            t->signed_url_len = 0; /* until libcurl has taken it */
            SET(CURLOPT_URL, url, "url");
            if (failed == NULL)
                t->signed_url_len = s->url_len;
        }
        SET(CURLOPT_HTTPHEADER, t->lines, "headers");
        SET(CURLOPT_TIMEOUT_MS, timeout_ms, "timeout");
        SET(CURLOPT_POST, 1L, "method");
        SET(CURLOPT_CUSTOMREQUEST, NULL, "method");
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len, "body");
        /* the buffer stays as it is until the next call's prepare */
        SET(CURLOPT_POSTFIELDS, body, "body");
        if (failed != NULL)
            luaL_error(L, "libcurl refused the request's %s", failed);
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
    case CURLE_HTTP2_STREAM: return "CURLE_HTTP2_STREAM";
    case CURLE_ABORTED_BY_CALLBACK: return "CURLE_ABORTED_BY_CALLBACK";
    default: return NULL;
    }
}

/* Codes of a connection that is being made: after the request was written, they mean
 * libcurl was making a new connection to write it again. */
static int fails_connecting(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return 1;
    default:
        return 0;
    }
}

int rrpc_transfer_push_result(lua_State *L, struct rrpc_transfer *t, CURLcode rc,
                              enum rrpc_headers_form headers)
{
    long status = 0;
    int results = 3;
    if (rc != CURLE_OK) {
        const char *name = curl_code_name(rc);
        /* once libcurl started to write the request, it may have reached the platform */
        int sent = t->requests_started > 0;
        lua_pushnil(L);
        if (t->over_budget) {
            lua_pushliteral(L, "ResponseMemoryExceeded");
            lua_pushfstring(L, "the answers held in memory would exceed max_response_memory "
                            "(%d bytes) over the client's calls in flight",
                            (int)t->options->budget->limit);
        } else if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
            lua_pushliteral(L, "ResponseTooLarge");
            lua_pushfstring(L, "response larger than max_response_bytes (%d)",
                            (int)t->options->max_response);
        } else if (sent && was_refused(t)) {
            /* the one case where a request that went out was certainly not delivered */
            sent = 0;
            lua_pushliteral(L, "StreamRefused");
            lua_pushliteral(L, "the server refused the HTTP/2 stream before processing the request "
                               "(REFUSED_STREAM, or above a GOAWAY's last stream id); it was not "
                               "sent again");
        } else if (t->requests_started > 1 || (sent && fails_connecting(rc))) {
            lua_pushliteral(L, "ConnectionLost");
            lua_pushliteral(L, "the connection closed after the request was sent, without an "
                               "answer; it was not sent again (RRpc is not idempotent)");
        } else {
            if (name != NULL)
                lua_pushstring(L, name);
            else
                lua_pushfstring(L, "CURLE_%d", (int)rc);
            lua_pushstring(L, t->error[0] ? t->error : curl_easy_strerror(rc));
        }
        lua_pushboolean(L, sent);
        results = 4;
    } else {
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        lua_pushinteger(L, status);
        if (headers == RRPC_HEADERS_TABLE)
            rrpc_push_header_table(L, t->head.data, t->head.len);
        else
            rrpc_push_header_object(L, t->head.data, t->head.len);
        lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
    }
    rrpc_transfer_release(t);
    return results;
}
