/* A signed RRpc (or any Iot action) request: the URL, the headers and the body, built in
 * the steps the signing documents describe (ALIBABA-API.md, "Signatures"), and the
 * intermediate strings of those steps. Every request draws a fresh nonce and timestamp
 * unless it is given its own (to show what a given request signed). */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <openssl/rand.h>

#include "sign.h"

/* V1's common parameters, at most, beside the API's own. */
#define V1_COMMON_PARAMS 10
/* The headers V3 signs that this request sends. */
#define V3_HEADERS 8
#define FORM_TYPE "application/x-www-form-urlencoded"

struct request {
    const char *endpoint, *host, *action, *version, *key_id, *secret, *token, *region;
    size_t secret_len;
    int v1, in_body;
    const char *nonce, *timestamp; /* drawn into the buffers below, or the caller's */
    char drawn_nonce[33], drawn_timestamp[21];
    struct rrpc_kv *params; /* the API's, then the common ones: room for V1_COMMON_PARAMS */
    size_t n;
    int headers;            /* stack index of the headers table */
    int steps;              /* stack index of the table of intermediate strings */
};

/* Nonces are drawn from OpenSSL's generator a block at a time: one RAND_bytes per
 * NONCES_PER_BLOCK requests instead of one each (a fifth of signing's cost went there).
 * Each thread has a block of its own (Lua states in several threads may sign at once),
 * and a forked child drops the block it inherited, so that it never sends a nonce its
 * parent sends too. */
#define NONCE_BYTES 16
#define NONCES_PER_BLOCK 64

static __thread unsigned char nonce_block[NONCE_BYTES * NONCES_PER_BLOCK];
static __thread size_t nonces_left;
static pthread_once_t fork_handler = PTHREAD_ONCE_INIT;

static void drop_block_in_child(void)
{
    nonces_left = 0;
}

static void watch_forks(void)
{
    pthread_atfork(NULL, NULL, drop_block_in_child);
}

static int draw_nonce(char out[33])
{
    unsigned char *raw;
    if (pthread_once(&fork_handler, watch_forks) != 0)
        return 0;
    if (nonces_left == 0) {
        if (RAND_bytes(nonce_block, sizeof nonce_block) != 1)
            return 0;
        nonces_left = NONCES_PER_BLOCK;
    }
    raw = nonce_block + NONCE_BYTES * --nonces_left;
    rrpc_hex(raw, NONCE_BYTES, out);
    return 1;
}

static void utc_now(char out[21])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* nonce() --> 32 hex digits */
int l_nonce(lua_State *L)
{
    char hex[33];
    if (!draw_nonce(hex))
        return luaL_error(L, "cannot draw random bytes for a nonce");
    lua_pushstring(L, hex);
    return 1;
}

/* timestamp() --> "2026-12-01T12:00:00Z" */
int l_timestamp(lua_State *L)
{
    char ts[21];
    utc_now(ts);
    lua_pushstring(L, ts);
    return 1;
}

static void set_header(lua_State *L, int headers, const char *name, const char *value)
{
    lua_pushstring(L, value);
    lua_setfield(L, headers, name);
}

/* Step 0: the fields of the argument table, the nonce and the time; the API parameters
 * (two values pushed: their array and its anchors), an empty headers table and an empty
 * steps table. */
static void read_request(lua_State *L, struct request *r)
{
    const char *signature, *placement;
    luaL_checktype(L, 1, LUA_TTABLE);
    r->endpoint = rrpc_req_string(L, 1, "endpoint");
    r->host = rrpc_req_string(L, 1, "host");
    r->action = rrpc_req_string(L, 1, "action");
    r->version = rrpc_req_string(L, 1, "version");
    r->key_id = rrpc_req_string(L, 1, "access_key_id");
    r->secret = rrpc_req_string(L, 1, "access_key_secret");
    r->token = rrpc_opt_string(L, 1, "security_token", NULL);
    r->region = rrpc_opt_string(L, 1, "region_id", NULL);
    signature = rrpc_opt_string(L, 1, "signature", "v3");
    placement = rrpc_opt_string(L, 1, "placement", "body");
    if (strcmp(signature, "v1") != 0 && strcmp(signature, "v3") != 0)
        luaL_error(L, "bad field 'signature' (\"v1\" or \"v3\" expected, got \"%s\")", signature);
    if (strcmp(placement, "body") != 0 && strcmp(placement, "query") != 0)
        luaL_error(L, "bad field 'placement' (\"body\" or \"query\" expected, got \"%s\")", placement);
    r->v1 = strcmp(signature, "v1") == 0;
    r->in_body = strcmp(placement, "body") == 0;
    lua_getfield(L, 1, "access_key_secret");
    lua_tolstring(L, -1, &r->secret_len);
    lua_pop(L, 1);
    r->nonce = rrpc_opt_string(L, 1, "nonce", NULL);
    r->timestamp = rrpc_opt_string(L, 1, "timestamp", NULL);
    if (r->nonce == NULL) {
        if (!draw_nonce(r->drawn_nonce))
            luaL_error(L, "cannot draw random bytes for a nonce");
        r->nonce = r->drawn_nonce;
    }
    if (r->timestamp == NULL) {
        utc_now(r->drawn_timestamp);
        r->timestamp = r->drawn_timestamp;
    }

    lua_settop(L, 1);
    lua_getfield(L, 1, "params");
    luaL_argcheck(L, lua_istable(L, -1), 1, "field 'params' must be a table");
    r->params = rrpc_collect_params(L, lua_gettop(L), "params", V1_COMMON_PARAMS, &r->n);
    lua_newtable(L);
    r->headers = lua_gettop(L);
    lua_newtable(L);
    r->steps = lua_gettop(L);
}

/* V1, steps 1-2: the common parameters join the API's, all sorted by name. */
static void add_v1_common_params(struct request *r)
{
    struct rrpc_kv *p = r->params;
    rrpc_kv_set(&p[r->n++], "AccessKeyId", r->key_id);
    rrpc_kv_set(&p[r->n++], "Action", r->action);
    rrpc_kv_set(&p[r->n++], "Format", "JSON");
    rrpc_kv_set(&p[r->n++], "SignatureMethod", "HMAC-SHA1");
    rrpc_kv_set(&p[r->n++], "SignatureNonce", r->nonce);
    rrpc_kv_set(&p[r->n++], "SignatureVersion", "1.0");
    rrpc_kv_set(&p[r->n++], "Timestamp", r->timestamp);
    rrpc_kv_set(&p[r->n++], "Version", r->version);
    if (r->region != NULL)
        rrpc_kv_set(&p[r->n++], "RegionId", r->region);
    if (r->token != NULL)
        rrpc_kv_set(&p[r->n++], "SecurityToken", r->token);
    qsort(p, r->n, sizeof *p, rrpc_kv_cmp);
}

/* V1, steps 3-6: canonicalized query, string to sign, HMAC-SHA1, and the Signature
 * parameter after the others. Pushes every parameter, form-encoded. */
static void push_v1_form(lua_State *L, struct request *r)
{
    luaL_Buffer b;
    size_t cl, sigl;
    const char *canonical, *signature;
    rrpc_push_v1(L, "POST", 4, r->params, r->n, r->secret, r->secret_len);
    signature = lua_tolstring(L, -1, &sigl);
    canonical = lua_tolstring(L, -3, &cl);
    lua_pushvalue(L, -2);
    lua_setfield(L, r->steps, "string_to_sign");
    lua_pushvalue(L, -1);
    lua_setfield(L, r->steps, "signature");
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, canonical, cl);
    luaL_addstring(&b, "&Signature=");
    rrpc_percent_encode(&b, signature, sigl);
    luaL_pushresult(&b);
    if (r->in_body)
        set_header(L, r->headers, "Content-Type", FORM_TYPE);
    set_header(L, r->headers, "Host", r->host);
}

/* V3: the API parameters form-encoded (the body, or the canonical query), the headers it
 * signs, the canonical request, string to sign and Authorization. Pushes the form. */
static void push_v3_form(lua_State *L, struct request *r)
{
    struct rrpc_kv h[V3_HEADERS];
    size_t nh = 0, fl, i;
    const char *form;
    char body_sha[65];
    luaL_Buffer b;

    qsort(r->params, r->n, sizeof *r->params, rrpc_kv_cmp);
    luaL_buffinit(L, &b);
    rrpc_add_canonical_query(&b, r->params, r->n, NULL);
    luaL_pushresult(&b);
    form = lua_tolstring(L, -1, &fl);
    rrpc_sha256_hex(r->in_body ? form : "", r->in_body ? fl : 0, body_sha);

    /* sorted by name, as the canonical headers must be */
    if (r->in_body)
        rrpc_kv_set(&h[nh++], "content-type", FORM_TYPE);
    rrpc_kv_set(&h[nh++], "host", r->host);
    rrpc_kv_set(&h[nh++], "x-acs-action", r->action);
    rrpc_kv_set(&h[nh++], "x-acs-content-sha256", body_sha);
    rrpc_kv_set(&h[nh++], "x-acs-date", r->timestamp);
    if (r->token != NULL)
        rrpc_kv_set(&h[nh++], "x-acs-security-token", r->token);
    rrpc_kv_set(&h[nh++], "x-acs-signature-nonce", r->nonce);
    rrpc_kv_set(&h[nh++], "x-acs-version", r->version);
    rrpc_push_v3(L, "POST", "/", r->in_body ? "" : form, r->in_body ? 0 : fl, h, nh, body_sha,
                 r->key_id, r->secret, r->secret_len); /* canonical request, sts, authorization */
    for (i = 0; i < nh; i++)
        set_header(L, r->headers, h[i].k, h[i].v);
    lua_pushvalue(L, -1);
    lua_setfield(L, r->steps, "authorization");
    lua_setfield(L, r->headers, "authorization");
    lua_setfield(L, r->steps, "string_to_sign");
    lua_setfield(L, r->steps, "canonical_request");
}

/* The form goes in the body, or after the endpoint as the query. Pushes url, headers,
 * body, steps. */
static int push_url_headers_body(lua_State *L, struct request *r)
{
    size_t fl;
    const char *form = lua_tolstring(L, -1, &fl);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, r->endpoint);
    luaL_addchar(&b, '/');
    if (!r->in_body) {
        luaL_addchar(&b, '?');
        luaL_addlstring(&b, form, fl);
    }
    luaL_pushresult(&b);
    lua_pushvalue(L, r->headers);
    if (r->in_body)
        lua_pushvalue(L, -3);
    else
        lua_pushliteral(L, "");
    lua_pushvalue(L, r->steps);
    return 4;
}

/* build_request{ endpoint=, host=, action=, version=, params=, access_key_id=,
 *   access_key_secret=, security_token=, region_id=, signature="v1"|"v3",
 *   placement="body"|"query", timestamp=, nonce= } --> url, headers, body, steps
 * steps: V1 { string_to_sign, signature }, V3 { canonical_request, string_to_sign,
 * authorization }; timestamp ("2026-01-02T03:04:05Z") and nonce: drawn when absent. */
int l_build_request(lua_State *L)
{
    struct request r;
    memset(&r, 0, sizeof r);
    read_request(L, &r);
    if (r.v1) {
        add_v1_common_params(&r);
        push_v1_form(L, &r);
    } else {
        push_v3_form(L, &r);
    }
    return push_url_headers_body(L, &r);
}
