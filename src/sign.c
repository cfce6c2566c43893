/* Request signatures: V1 (HMAC-SHA1 over the canonicalized query) and V3
 * (ACS3-HMAC-SHA256 over the canonical request), and the pieces they share with
 * request.c (sign.h). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "sign.h"

#define MAX_HEADER_NAME 128

int rrpc_kv_cmp(const void *a, const void *b)
{
    const struct rrpc_kv *x = a, *y = b;
    int c = memcmp(x->k, y->k, x->kl < y->kl ? x->kl : y->kl);
    if (c != 0)
        return c;
    return (x->kl > y->kl) - (x->kl < y->kl);
}

void rrpc_kv_set(struct rrpc_kv *kv, const char *k, const char *v)
{
    kv->k = k;
    kv->kl = strlen(k);
    kv->v = v;
    kv->vl = strlen(v);
}

/* Reads the entry at the top of the stack (key at -2, value at -1) into kv. A number's
 * text is converted on a copy: into anchors[slot] when anchors is a stack index, or else
 * left on the stack below the key (the caller made room for it). */
static void read_entry(lua_State *L, struct rrpc_kv *kv, const char *what, int anchors, int slot)
{
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "bad %s: names must be strings, got %s", what, luaL_typename(L, -2));
    kv->k = lua_tolstring(L, -2, &kv->kl);
    if (vt == LUA_TBOOLEAN) {
        kv->v = lua_toboolean(L, -1) ? "true" : "false";
        kv->vl = strlen(kv->v);
    } else if (vt == LUA_TNUMBER) {
        lua_pushvalue(L, -1); /* converting a copy leaves the table untouched */
        kv->v = lua_tolstring(L, -1, &kv->vl);
        if (anchors)
            lua_rawseti(L, anchors, slot);
        else
            lua_insert(L, -3); /* copy, key, value */
    } else if (vt == LUA_TSTRING) {
        kv->v = lua_tolstring(L, -1, &kv->vl);
    } else {
        luaL_error(L, "bad %s: value of '%s' must be a string, number or boolean, got %s", what,
                   kv->k, luaL_typename(L, -1));
    }
}

/* Reads the string-keyed table at absolute index t into an array with room for `extra` more
 * entries. The array lives in a userdata and converted numbers in an anchor table, both
 * pushed (two values), so an error raised later leaks nothing. */
struct rrpc_kv *rrpc_collect_params(lua_State *L, int t, const char *what, size_t extra,
                                     size_t *count)
{
    size_t n = 0, i = 0;
    struct rrpc_kv *a;
    int anchors;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        n++;
        lua_pop(L, 1);
    }
    a = lua_newuserdatauv(L, (n + extra + 1) * sizeof *a, 0);
    lua_newtable(L);
    anchors = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        read_entry(L, &a[i], what, anchors, (int)i + 1);
        i++;
        lua_pop(L, 1);
    }
    *count = n;
    return a;
}

/* As rrpc_collect_params, into the caller's array a (room entries, `extra` of them kept
 * free) in one pass, without a userdata or an anchor table: converted numbers stay on the
 * stack. Returns 0 when the table has more entries than that (a's contents are then
 * meaningless, and some converted numbers may be left on the stack). */
int rrpc_collect_params_into(lua_State *L, int t, const char *what, struct rrpc_kv *a,
                             size_t room, size_t extra, size_t *count)
{
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (i + extra >= room) {
            lua_pop(L, 2);
            return 0;
        }
        luaL_checkstack(L, 3, "reading parameters");
        read_entry(L, &a[i], what, 0, 0);
        i++;
        lua_pop(L, 1);
    }
    *count = i;
    return 1;
}

void rrpc_add_canonical_query(struct rrpc_text *t, const struct rrpc_kv *a, size_t n,
                              const char *skip)
{
    size_t i;
    int first = 1;
    for (i = 0; i < n; i++) {
        if (skip != NULL && a[i].kl == strlen(skip) && memcmp(a[i].k, skip, a[i].kl) == 0)
            continue;
        if (!first)
            rrpc_text_add_char(t, '&');
        first = 0;
        rrpc_text_percent_encode(t, a[i].k, a[i].kl);
        rrpc_text_add_char(t, '=');
        rrpc_text_percent_encode(t, a[i].v, a[i].vl);
    }
}

/* A part of t percent-encoded onto t: the room first, as growing moves the part. */
static void percent_encode_span(struct rrpc_text *t, struct rrpc_span part)
{
    if (part.len <= ((size_t)-1) / 3 && rrpc_text_reserve(t, 3 * part.len))
        rrpc_text_percent_encode(t, t->data + part.at, part.len);
    else
        t->failed = 1;
}

int rrpc_sign_v1_text(struct rrpc_text *t, const char *method, size_t ml,
                      const struct rrpc_kv *p, size_t n, const char *secret, size_t sl,
                      EVP_MAC_CTX *keyed, struct rrpc_v1_signed *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdl = 0, at = t->len;
    int ok;

    rrpc_add_canonical_query(t, p, n, "Signature");
    out->canonical_query = rrpc_text_since(t, at);
    at = t->len;
    rrpc_text_add(t, method, ml);
    rrpc_text_add_string(t, "&%2F&");
    percent_encode_span(t, out->canonical_query);
    out->string_to_sign = rrpc_text_since(t, at);
    if (t->failed)
        return 1; /* the caller reports the text's failure */

    if (keyed != NULL) {
        ok = rrpc_hmac_keyed(keyed, t->data + out->string_to_sign.at, out->string_to_sign.len,
                             md, &mdl);
    } else { /* the key, secret&, after the text for a moment, then wiped */
        at = t->len;
        rrpc_text_add(t, secret, sl);
        rrpc_text_add_char(t, '&');
        if (t->failed)
            return 1;
        ok = rrpc_hmac(RRPC_HMAC_SHA1, t->data + at, sl + 1, t->data + out->string_to_sign.at,
                       out->string_to_sign.len, md, &mdl);
        OPENSSL_cleanse(t->data + at, sl + 1);
        t->len = at;
    }
    if (!ok || mdl != 20)
        return 0;
    EVP_EncodeBlock((unsigned char *)out->signature, md, (int)mdl);
    return 1;
}

static int is_v3_signed_header(const char *name, size_t n)
{
    return (n == 4 && memcmp(name, "host", 4) == 0) ||
           (n == 12 && memcmp(name, "content-type", 12) == 0) ||
           (n > 6 && memcmp(name, "x-acs-", 6) == 0);
}

static void add_trimmed(struct rrpc_text *t, const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    rrpc_text_add(t, s, n);
}

static void add_signed_headers(struct rrpc_text *t, const struct rrpc_kv *h, size_t nh)
{
    size_t i;
    for (i = 0; i < nh; i++) {
        if (i > 0)
            rrpc_text_add_char(t, ';');
        rrpc_text_add(t, h[i].k, h[i].kl);
    }
}

int rrpc_sign_v3_text(struct rrpc_text *t, const char *method, const char *path,
                      struct rrpc_span cq, const struct rrpc_kv *h, size_t nh,
                      const char *body_sha256, const char *key_id, const char *secret,
                      size_t sl, EVP_MAC_CTX *keyed, EVP_MD_CTX *hashing,
                      struct rrpc_v3_signed *out)
{
    size_t i, at = t->len, tl;
    char signature[2 * EVP_MAX_MD_SIZE + 1];
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdl = 0;

    rrpc_text_add_string(t, method);
    rrpc_text_add_char(t, '\n');
    rrpc_text_add_string(t, path);
    rrpc_text_add_char(t, '\n');
    rrpc_text_add_span(t, cq);
    rrpc_text_add_char(t, '\n');
    for (i = 0; i < nh; i++) {
        rrpc_text_add(t, h[i].k, h[i].kl);
        rrpc_text_add_char(t, ':');
        add_trimmed(t, h[i].v, h[i].vl);
        rrpc_text_add_char(t, '\n');
    }
    rrpc_text_add_char(t, '\n');
    add_signed_headers(t, h, nh);
    rrpc_text_add_char(t, '\n');
    rrpc_text_add_string(t, body_sha256);
    out->canonical_request = rrpc_text_since(t, at);
    if (t->failed)
        return 1; /* the caller reports the text's failure */

    memcpy(out->string_to_sign, V3_ALGORITHM "\n", sizeof V3_ALGORITHM);
    rrpc_sha256_hex(hashing, t->data + at, out->canonical_request.len,
                    out->string_to_sign + sizeof V3_ALGORITHM);
    tl = strlen(out->string_to_sign);
    if (!(keyed != NULL ? rrpc_hmac_keyed(keyed, out->string_to_sign, tl, md, &mdl)
                        : rrpc_hmac(RRPC_HMAC_SHA256, secret, sl, out->string_to_sign, tl, md, &mdl)))
        return 0;
    rrpc_hex(md, mdl, signature);

    at = t->len;
    rrpc_text_add_string(t, V3_ALGORITHM " Credential=");
    rrpc_text_add_string(t, key_id);
    rrpc_text_add_string(t, ",SignedHeaders=");
    add_signed_headers(t, h, nh);
    rrpc_text_add_string(t, ",Signature=");
    rrpc_text_add_string(t, signature);
    out->authorization = rrpc_text_since(t, at);
    return 1;
}

/* Raises when signing into t failed. */
static void check_signed(lua_State *L, const struct rrpc_text *t, int ok, const char *mac)
{
    if (t->failed)
        luaL_error(L, "out of memory signing a request");
    if (!ok)
        luaL_error(L, "cannot compute %s", mac);
}

static void push_span(lua_State *L, const struct rrpc_text *t, struct rrpc_span s)
{
    lua_pushlstring(L, t->data + s.at, s.len);
}

int l_sign_v1(lua_State *L)
{
    size_t ml, sl, n;
    const char *method = rrpc_checkstring(L, 1, &ml);
    const char *secret;
    struct rrpc_kv *p;
    struct rrpc_text *t;
    struct rrpc_v1_signed v1;
    int ok;
    luaL_checktype(L, 2, LUA_TTABLE);
    secret = rrpc_checkstring(L, 3, &sl);
    p = rrpc_collect_params(L, 2, "params", 0, &n);
    qsort(p, n, sizeof *p, rrpc_kv_cmp);
    t = rrpc_push_text(L);
    ok = rrpc_sign_v1_text(t, method, ml, p, n, secret, sl, NULL, &v1);
    check_signed(L, t, ok, "HMAC-SHA1");
    lua_pushstring(L, v1.signature);
    push_span(L, t, v1.string_to_sign);
    return 2;
}

const char *rrpc_opt_string(lua_State *L, int t, const char *field, const char *def)
{
    const char *s;
    lua_getfield(L, t, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "bad field '%s' (string expected, got %s)", field, luaL_typename(L, -1));
    s = lua_tostring(L, -1);
    /* the options table keeps the string alive */
    lua_pop(L, 1);
    return s;
}

const char *rrpc_req_string(lua_State *L, int t, const char *field)
{
    const char *s = rrpc_opt_string(L, t, field, NULL);
    if (s == NULL)
        luaL_error(L, "bad field '%s' (string expected, got nil)", field);
    return s;
}

/* Stores a lower-case copy of a header name in the anchor table under `slot` and returns
 * it. The slot is the caller's to choose: collect_params already keeps converted numbers
 * at 1..n, so the table has holes and its length names no free slot. */
static const char *lower_name(lua_State *L, int anchors, int slot, const char *name, size_t n)
{
    char low[MAX_HEADER_NAME];
    size_t i;
    if (n >= sizeof low)
        luaL_error(L, "bad headers: name '%s' is too long", name);
    for (i = 0; i < n; i++)
        low[i] = (char)tolower((unsigned char)name[i]);
    lua_pushlstring(L, low, n);
    name = lua_tostring(L, -1);
    lua_rawseti(L, anchors, slot); /* the table keeps the string alive */
    return name;
}

int l_sign_v3(lua_State *L)
{
    const char *method, *host, *path, *body, *key_id, *secret;
    size_t bl, sl, nq = 0, nh = 0, i, kept = 0;
    struct rrpc_kv *q = NULL, *h;
    int anchors, have_sha = 0;
    char body_sha[65];

    luaL_checktype(L, 1, LUA_TTABLE);
    method = rrpc_req_string(L, 1, "method");
    host = rrpc_req_string(L, 1, "host");
    path = rrpc_opt_string(L, 1, "path", "/");
    body = rrpc_opt_string(L, 1, "body", "");
    key_id = rrpc_req_string(L, 1, "access_key_id");
    secret = rrpc_req_string(L, 1, "access_key_secret");
    lua_getfield(L, 1, "access_key_secret");
    lua_tolstring(L, -1, &sl);
    lua_getfield(L, 1, "body");
    bl = lua_isnil(L, -1) ? 0 : lua_rawlen(L, -1);
    lua_pop(L, 2);
    rrpc_sha256_hex(NULL, body, bl, body_sha);

    lua_settop(L, 1);
    lua_getfield(L, 1, "query"); /* 2 */
    lua_getfield(L, 1, "headers"); /* 3 */
    if (!lua_isnil(L, 2)) {
        luaL_argcheck(L, lua_istable(L, 2), 1, "field 'query' must be a table");
        q = rrpc_collect_params(L, 2, "query", 0, &nq); /* 4, 5 */
        qsort(q, nq, sizeof *q, rrpc_kv_cmp);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    if (lua_isnil(L, 3))
        lua_newtable(L);
    else
        lua_pushvalue(L, 3);
    luaL_argcheck(L, lua_istable(L, -1), 1, "field 'headers' must be a table");
    h = rrpc_collect_params(L, lua_gettop(L), "headers", 2, &nh); /* box, anchors */
    anchors = lua_gettop(L);

    /* keep only what V3 signs; host comes from its own field */
    for (i = 0; i < nh; i++) {
        const char *name = lower_name(L, anchors, (int)(nh + i + 1), h[i].k, h[i].kl);
        /* lengths, not strcmp: a name may hold a NUL ("host\0x" is not host) */
        if (!is_v3_signed_header(name, h[i].kl) || (h[i].kl == 4 && memcmp(name, "host", 4) == 0))
            continue;
        if (h[i].kl == 20 && memcmp(name, "x-acs-content-sha256", 20) == 0)
            have_sha = 1;
        h[kept] = h[i];
        h[kept++].k = name;
    }
    rrpc_kv_set(&h[kept++], "host", host);
    if (!have_sha)
        rrpc_kv_set(&h[kept++], "x-acs-content-sha256", body_sha);
    qsort(h, kept, sizeof *h, rrpc_kv_cmp);

    {
        struct rrpc_text *t = rrpc_push_text(L);
        struct rrpc_v3_signed v3;
        int ok;
        rrpc_add_canonical_query(t, q, nq, NULL);
        ok = rrpc_sign_v3_text(t, method, path, rrpc_text_since(t, 0), h, kept, body_sha, key_id, secret,
                               sl, NULL, NULL, &v3);
        check_signed(L, t, ok, "HMAC-SHA256");
        push_span(L, t, v3.authorization);
        push_span(L, t, v3.canonical_request);
        lua_pushstring(L, v3.string_to_sign);
    }
    return 3; /* authorization, canonical_request, string_to_sign */
}
