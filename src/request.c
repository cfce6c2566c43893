/* A signed RRpc (or any Iot action) request: the URL, the headers and the body, built in
 * the steps the signing documents describe (ALIBABA-API.md, "Signatures"), and the
 * intermediate strings of those steps. Every request draws a fresh nonce and timestamp
 * unless it is given its own (to show what a given request signed). */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
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
    EVP_MAC_CTX *keyed;     /* a signer's key, or NULL: the secret */
    EVP_MD_CTX *hashing;    /* a signer's SHA-256 context, or NULL */
    int v1, in_body;
    const char *nonce, *timestamp; /* drawn into out's buffers, or the caller's */
    struct rrpc_kv *params; /* the API's, then the common ones: room for V1_COMMON_PARAMS */
    size_t n;
    int steps;              /* stack index of the table of intermediate strings, or 0 */
    struct rrpc_text *text; /* where the form, the steps and the URL are written */
    struct rrpc_signed *out; /* the headers sent, the URL and the body */
};

/* A signer: what every request of a client with these credentials shares, read once
 * (rrpc.core.signer). It keeps an HMAC context keyed with the secret, not the secret. */
struct signer {
    char *endpoint, *host, *version, *key_id, *token, *region; /* one allocation */
    size_t text_len;
    EVP_MAC_CTX *keyed;
    EVP_MD_CTX *hashing; /* V3's two digests a request, in a context kept from one to the
                          * next; NULL for V1 */
    int v1, in_body;
    /* kept from request to request, so that signing one allocates nothing once they have
     * grown to size: the text its request is written in, and its parameters' array */
    struct rrpc_text text;
    struct rrpc_kv *params;
    size_t params_room;
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

/* The time is formatted once per second (per thread), not once per request. */
static __thread time_t formatted_at = (time_t)-1;
static __thread char formatted[21];

static void utc_now(char out[21])
{
    time_t now = time(NULL);
    if (now != formatted_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(formatted, sizeof formatted, "%Y-%m-%dT%H:%M:%SZ", &tm);
        formatted_at = now;
    }
    memcpy(out, formatted, sizeof formatted);
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

/* The table at index 1's signature ("v1" | "v3", default "v3") and placement ("body" |
 * "query", default "body"), as build_request and signer both take them. */
static void read_form(lua_State *L, int *v1, int *in_body)
{
    const char *signature = rrpc_opt_string(L, 1, "signature", "v3");
    const char *placement = rrpc_opt_string(L, 1, "placement", "body");
    if (strcmp(signature, "v1") != 0 && strcmp(signature, "v3") != 0)
        luaL_error(L, "bad field 'signature' (\"v1\" or \"v3\" expected, got \"%s\")", signature);
    if (strcmp(placement, "body") != 0 && strcmp(placement, "query") != 0)
        luaL_error(L, "bad field 'placement' (\"body\" or \"query\" expected, got \"%s\")", placement);
    *v1 = strcmp(signature, "v1") == 0;
    *in_body = strcmp(placement, "body") == 0;
}

static void draw_fresh(lua_State *L, struct request *r)
{
    if (r->nonce == NULL) {
        if (!draw_nonce(r->out->nonce))
            luaL_error(L, "cannot draw random bytes for a nonce");
        r->nonce = r->out->nonce;
    }
    if (r->timestamp == NULL) {
        utc_now(r->out->timestamp);
        r->timestamp = r->out->timestamp;
    }
}

/* Step 0 (build_request): the fields of the argument table, the nonce and the time; the
 * API parameters (two values pushed: their array and its anchors) and an empty steps
 * table. */
static void read_request(lua_State *L, struct request *r)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    r->endpoint = rrpc_req_string(L, 1, "endpoint");
    r->host = rrpc_req_string(L, 1, "host");
    r->action = rrpc_req_string(L, 1, "action");
    r->version = rrpc_req_string(L, 1, "version");
    r->key_id = rrpc_req_string(L, 1, "access_key_id");
    r->secret = rrpc_req_string(L, 1, "access_key_secret");
    r->token = rrpc_opt_string(L, 1, "security_token", NULL);
    r->region = rrpc_opt_string(L, 1, "region_id", NULL);
    read_form(L, &r->v1, &r->in_body);
    lua_getfield(L, 1, "access_key_secret");
    lua_tolstring(L, -1, &r->secret_len);
    lua_pop(L, 1);
    r->nonce = rrpc_opt_string(L, 1, "nonce", NULL);
    r->timestamp = rrpc_opt_string(L, 1, "timestamp", NULL);
    draw_fresh(L, r);

    lua_settop(L, 1);
    lua_getfield(L, 1, "params");
    luaL_argcheck(L, lua_istable(L, -1), 1, "field 'params' must be a table");
    r->params = rrpc_collect_params(L, lua_gettop(L), "params", V1_COMMON_PARAMS, &r->n);
    lua_newtable(L);
    r->steps = lua_gettop(L);
}

/* A header the request sends; name and value outlive the request (literals, the stack's
 * strings, the buffers of r->out). */
static void add_header(struct request *r, const char *name, const char *value, size_t vl)
{
    struct rrpc_kv *h = &r->out->headers[r->out->nh++];
    h->k = name;
    h->kl = strlen(name);
    h->v = value;
    h->vl = vl;
}

/* Sets steps[name] to a part of the text. */
static void set_step(lua_State *L, struct request *r, const char *name, struct rrpc_span part)
{
    if (r->steps) {
        lua_pushlstring(L, r->text->data + part.at, part.len);
        lua_setfield(L, r->steps, name);
    }
}

static void set_step_string(lua_State *L, struct request *r, const char *name, const char *s)
{
    if (r->steps) {
        lua_pushstring(L, s);
        lua_setfield(L, r->steps, name);
    }
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
 * parameter after the others. Returns every parameter, form-encoded. */
static struct rrpc_span write_v1_form(lua_State *L, struct request *r)
{
    struct rrpc_text *t = r->text;
    struct rrpc_v1_signed v1;
    struct rrpc_span form;
    size_t at;
    if (!rrpc_sign_v1_text(t, "POST", 4, r->params, r->n, r->secret, r->secret_len, r->keyed,
                           &v1))
        luaL_error(L, "cannot compute HMAC-SHA1");
    at = t->len;
    rrpc_text_add_span(t, v1.canonical_query);
    rrpc_text_add_string(t, "&Signature=");
    rrpc_text_percent_encode(t, v1.signature, strlen(v1.signature));
    form = rrpc_text_since(t, at);
    if (t->failed)
        return form;
    set_step(L, r, "string_to_sign", v1.string_to_sign);
    set_step_string(L, r, "signature", v1.signature);
    if (r->in_body)
        add_header(r, "Content-Type", FORM_TYPE, sizeof FORM_TYPE - 1);
    add_header(r, "Host", r->host, strlen(r->host));
    return form;
}

/* V3: the API parameters form-encoded (the body, or the canonical query), the headers it
 * signs, the canonical request, string to sign and Authorization (whose header is the
 * caller's to add, once the text has stopped moving). Returns the form. */
static struct rrpc_span write_v3_form(lua_State *L, struct request *r,
                                      struct rrpc_span *authorization)
{
    struct rrpc_text *t = r->text;
    struct rrpc_kv h[V3_HEADERS];
    struct rrpc_v3_signed v3;
    struct rrpc_span form, none = {0, 0};
    size_t nh = 0, i, at = t->len;
    char *body_sha = r->out->body_sha;

    qsort(r->params, r->n, sizeof *r->params, rrpc_kv_cmp);
    rrpc_add_canonical_query(t, r->params, r->n, NULL);
    form = rrpc_text_since(t, at);
    if (t->failed)
        return form;
    rrpc_sha256_hex(r->hashing, r->in_body ? t->data + form.at : "", r->in_body ? form.len : 0,
                    body_sha);

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
    if (!rrpc_sign_v3_text(t, "POST", "/", r->in_body ? none : form, h, nh, body_sha, r->key_id,
                           r->secret, r->secret_len, r->keyed, r->hashing, &v3))
        luaL_error(L, "cannot compute HMAC-SHA256");
    if (t->failed)
        return form;
    for (i = 0; i < nh; i++)
        r->out->headers[r->out->nh++] = h[i];
    *authorization = v3.authorization;
    set_step(L, r, "canonical_request", v3.canonical_request);
    set_step_string(L, r, "string_to_sign", v3.string_to_sign);
    set_step(L, r, "authorization", v3.authorization);
    return form;
}

/* Signs r into r->text: the headers, the URL (the form after the endpoint, when it is the
 * query) and the body (the form, or "") in r->out, valid until the text is next written. */
static void sign_request(lua_State *L, struct request *r)
{
    struct rrpc_text *t = r->text;
    struct rrpc_span form, url, authorization = {0, 0};
    size_t at;
    t->len = 0;
    t->failed = 0;
    r->out->nh = 0;
    if (r->v1) {
        add_v1_common_params(r);
        form = write_v1_form(L, r);
    } else {
        form = write_v3_form(L, r, &authorization);
    }
    at = t->len;
    rrpc_text_add_string(t, r->endpoint);
    rrpc_text_add_char(t, '/');
    if (!r->in_body) {
        rrpc_text_add_char(t, '?');
        rrpc_text_add_span(t, form);
    }
    url = rrpc_text_since(t, at);
    if (t->failed)
        luaL_error(L, "out of memory signing a request");
    r->out->url = t->data + url.at;
    r->out->url_len = url.len;
    r->out->body = r->in_body ? t->data + form.at : "";
    r->out->body_len = r->in_body ? form.len : 0;
    if (!r->v1)
        add_header(r, "authorization", t->data + authorization.at, authorization.len);
}

/* build_request{ endpoint=, host=, action=, version=, params=, access_key_id=,
 *   access_key_secret=, security_token=, region_id=, signature="v1"|"v3",
 *   placement="body"|"query", timestamp=, nonce= } --> url, headers, body, steps
 * steps: V1 { string_to_sign, signature }, V3 { canonical_request, string_to_sign,
 * authorization }; timestamp ("2026-01-02T03:04:05Z") and nonce: drawn when absent. */
int l_build_request(lua_State *L)
{
    struct request r;
    struct rrpc_signed out;
    size_t i;
    memset(&r, 0, sizeof r);
    r.out = &out;
    read_request(L, &r);
    r.text = rrpc_push_text(L);
    sign_request(L, &r);
    lua_pushlstring(L, out.url, out.url_len);
    lua_createtable(L, 0, (int)out.nh);
    for (i = 0; i < out.nh; i++) {
        lua_pushlstring(L, out.headers[i].v, out.headers[i].vl);
        lua_setfield(L, -2, out.headers[i].k);
    }
    lua_pushlstring(L, out.body, out.body_len);
    lua_pushvalue(L, r.steps);
    return 4;
}

/* Reads the table at params into the signer's array, grown first when it has no room. */
static void collect_signer_params(lua_State *L, struct signer *g, int params, size_t *n)
{
    size_t entries = 0, room;
    struct rrpc_kv *grown;
    /* an empty table fits an array with no room for the common parameters */
    if (g->params_room > V1_COMMON_PARAMS &&
        rrpc_collect_params_into(L, params, "params", g->params, g->params_room,
                                 V1_COMMON_PARAMS, n))
        return;
    lua_pushnil(L);
    while (lua_next(L, params)) {
        entries++;
        lua_pop(L, 1);
    }
    room = entries + V1_COMMON_PARAMS + 1;
    grown = realloc(g->params, room * sizeof *grown);
    if (grown == NULL)
        luaL_error(L, "out of memory reading parameters");
    g->params = grown;
    g->params_room = room;
    /* the same table, unchanged: it fits now */
    rrpc_collect_params_into(L, params, "params", g->params, g->params_room, V1_COMMON_PARAMS, n);
}

void rrpc_sign_with(lua_State *L, int signer, int action, int params, struct rrpc_signed *out)
{
    struct signer *g = luaL_checkudata(L, signer, RRPC_SIGNER_MT);
    struct request r;
    if (g->keyed == NULL)
        luaL_error(L, "attempt to use a released rrpc signer");
    memset(&r, 0, sizeof r);
    r.out = out;
    r.text = &g->text;
    r.endpoint = g->endpoint;
    r.host = g->host;
    r.version = g->version;
    r.key_id = g->key_id;
    r.token = g->token;
    r.region = g->region;
    r.keyed = g->keyed;
    r.hashing = g->hashing;
    r.v1 = g->v1;
    r.in_body = g->in_body;
    r.action = rrpc_checkstring(L, action, NULL);
    luaL_checktype(L, params, LUA_TTABLE);
    draw_fresh(L, &r);
    collect_signer_params(L, g, params, &r.n);
    r.params = g->params;
    sign_request(L, &r);
}

/* The fields a signer copies, in the order of struct signer's strings. */
static const char *const SIGNER_FIELDS[] = {"endpoint", "host", "version", "access_key_id",
                                             "security_token", "region_id"};
#define SIGNER_REQUIRED 4 /* the first four */
#define SIGNER_STRINGS 6

/* signer{ endpoint=, host=, version=, access_key_id=, access_key_secret=,
 *   security_token=, region_id=, signature="v1"|"v3", placement="body"|"query" }
 *   --> signer: for session:perform_signed and pool:add_signed, which sign as
 *   build_request does with these fields, a fresh nonce and the time */
int l_signer(lua_State *L)
{
    const char *value[SIGNER_STRINGS], *secret;
    char **field[SIGNER_STRINGS];
    size_t len[SIGNER_STRINGS], total = 0, secret_len, i;
    struct signer *g;
    char *text;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    g = lua_newuserdatauv(L, sizeof *g, 0); /* first: the GC frees whatever is made below */
    memset(g, 0, sizeof *g);
    luaL_setmetatable(L, RRPC_SIGNER_MT);
    field[0] = &g->endpoint;
    field[1] = &g->host;
    field[2] = &g->version;
    field[3] = &g->key_id;
    field[4] = &g->token;
    field[5] = &g->region;
    for (i = 0; i < SIGNER_STRINGS; i++) {
        value[i] = i < SIGNER_REQUIRED ? rrpc_req_string(L, 1, SIGNER_FIELDS[i])
                                       : rrpc_opt_string(L, 1, SIGNER_FIELDS[i], NULL);
        len[i] = value[i] ? strlen(value[i]) : 0;
        total += len[i] + 1;
    }
    secret = rrpc_req_string(L, 1, "access_key_secret");
    lua_getfield(L, 1, "access_key_secret");
    lua_tolstring(L, -1, &secret_len);
    lua_pop(L, 1);
    read_form(L, &g->v1, &g->in_body);

    text = malloc(total);
    if (text == NULL)
        return luaL_error(L, "out of memory");
    g->endpoint = text; /* the start of the allocation, freed by the GC from now on */
    g->text_len = total;
    for (i = 0; i < SIGNER_STRINGS; i++) {
        if (value[i] == NULL) {
            *field[i] = NULL;
            continue;
        }
        memcpy(text, value[i], len[i] + 1);
        *field[i] = text;
        text += len[i] + 1;
    }
    if (g->v1) { /* V1's key is the secret and "&" */
        lua_pushlstring(L, secret, secret_len);
        lua_pushliteral(L, "&");
        lua_concat(L, 2);
        secret = lua_tolstring(L, -1, &secret_len);
    }
    g->keyed = rrpc_hmac_key(g->v1 ? RRPC_HMAC_SHA1 : RRPC_HMAC_SHA256, secret, secret_len);
    if (g->keyed == NULL)
        return luaL_error(L, "cannot key an HMAC with the secret");
    if (!g->v1 && (g->hashing = rrpc_sha256_context()) == NULL)
        return luaL_error(L, "cannot make a SHA-256 context");
    if (!rrpc_text_open(&g->text))
        return luaL_error(L, "out of memory");
    lua_settop(L, 2);
    return 1;
}

static int signer_close(lua_State *L)
{
    struct signer *g = luaL_checkudata(L, 1, RRPC_SIGNER_MT);
    EVP_MAC_CTX_free(g->keyed); /* OpenSSL cleanses the key's material */
    g->keyed = NULL;
    EVP_MD_CTX_free(g->hashing);
    g->hashing = NULL;
    rrpc_text_free(&g->text); /* cleansed: its last request's canonical form */
    free(g->params);
    g->params = NULL;
    g->params_room = 0;
    /* the security token is among the copies */
    OPENSSL_clear_free(g->endpoint, g->text_len);
    g->endpoint = NULL;
    return 0;
}

static int signer_tostring(lua_State *L)
{
    struct signer *g = luaL_checkudata(L, 1, RRPC_SIGNER_MT);
    lua_pushfstring(L, "rrpc.signer (%s%s)", g->v1 ? "v1" : "v3", g->keyed ? "" : ", released");
    return 1;
}

static const luaL_Reg signer_methods[] = {
    {"close", signer_close},
    {NULL, NULL},
};

const struct rrpc_class rrpc_signer_class = {RRPC_SIGNER_MT, signer_methods, signer_close,
                                             signer_tostring};
