/* libFuzzer: V3 canonicalisation and signing, rrpc.core.sign_v3 (sign.c: l_sign_v3), the
 * requests rrpc.core.build_request makes (V3 and V1, parameters in the body or the query),
 * and rrpc.core.sign_v1.
 *
 * The first byte picks (modulo 3) sign_v3, build_request or sign_v1; the rest is read as a
 * stream of choices and strings (fuzz.h: take_byte, take_string).
 *
 * sign_v3{ method=, host=, path=, body=, query={...}, headers={...}, access_key_id=,
 * access_key_secret= }, with string, integer, float and boolean values:
 * - it raises only for a header name of 128 bytes or more;
 * - canonical request, string to sign and Authorization equal a reference written from
 *   ALIBABA-API.md section 3 (below, sharing no code with sign.c): method, path, the
 *   sorted percent-encoded query, the signed headers (host from its field, content-type,
 *   x-acs-*; names lower-cased, values trimmed, sorted; x-acs-content-sha256 added when
 *   absent), their names joined by ';', hex(sha256(body)); "ACS3-HMAC-SHA256\n" and the
 *   hash of that; HMAC-SHA256 with the secret;
 * - when the inputs hold no newline, NUL or ':' in a name, the canonical request also
 *   parses back into that documented structure line by line.
 * build_request{...}:
 * - V3: the Authorization it made verifies with the reference over the headers it made,
 *   x-acs-content-sha256 is the body's hash, and the URL / body carry the parameters as the
 *   reference's canonical query string;
 * - V1: the form it made percent-decodes into exactly the parameters given plus the common
 *   ones of section 2, and its Signature is the reference V1 signature of the others.
 * sign_v1(method, params, secret): string to sign and signature are the reference's
 * (section 2), a parameter named Signature left out. */
#include <ctype.h>

static void reference_self_test(void);
#define FUZZ_SELF_TEST reference_self_test
#include "fuzz.h"

#define V3 "ACS3-HMAC-SHA256"

/* ---- building the Lua input */

/* Pushes a value: string, integer, float or boolean. */
static void push_value(lua_State *L, struct reader *r)
{
    unsigned kind = take_byte(r) % 5;
    size_t n;
    const char *s;
    switch (kind) {
    case 1:
        /* small, or near the ends of the range */
        lua_pushinteger(L, (lua_Integer)((uint64_t)take_byte(r) << 56 | (uint64_t)take_byte(r) << 8 | take_byte(r)));
        break;
    case 2: {
        uint64_t bits = 0;
        double d;
        int i;
        for (i = 0; i < 8; i++)
            bits = bits << 8 | take_byte(r);
        memcpy(&d, &bits, sizeof d);
        if (d != d) /* NaN prints as "nan" or "-nan": keep it, it is a value too */
            d = 0.5;
        lua_pushnumber(L, d);
        break;
    }
    case 3:
        lua_pushboolean(L, take_byte(r) & 1);
        break;
    default:
        s = take_string(r, 64, &n);
        lua_pushlstring(L, s, n);
    }
}

static const char *const HEADER_PREFIXES[] = {
    "", "x-acs-", "X-Acs-", "X-ACS-", "host", "Host", "content-type", "Content-Type",
    "x-acs-content-sha256", "X-Acs-Content-SHA256", "x-acs-action", "content-length",
};

/* A header name: a prefix from the list and fuzz bytes, or a long one (the 128 limit). */
static void push_header_name(lua_State *L, struct reader *r)
{
    unsigned pick = take_byte(r);
    size_t n;
    const char *s = take_string(r, 32, &n);
    if (pick == 255) {
        luaL_Buffer b;
        size_t want = 120 + take_byte(r) % 16, i;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "x-acs-");
        for (i = 6; i < want; i++)
            luaL_addchar(&b, n ? s[i % n] : 'a');
        luaL_pushresult(&b);
        return;
    }
    lua_pushstring(L, HEADER_PREFIXES[pick % (sizeof HEADER_PREFIXES / sizeof *HEADER_PREFIXES)]);
    lua_pushlstring(L, s, n);
    lua_concat(L, 2);
}

static void lower(char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        s[i] = (char)tolower((unsigned char)s[i]);
}

/* ---- the reference (ALIBABA-API.md section 3) */

struct pair {
    char *k, *v;
    size_t kl, vl;
};

static int pair_cmp(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    int c = memcmp(x->k, y->k, x->kl < y->kl ? x->kl : y->kl);
    return c ? c : (x->kl > y->kl) - (x->kl < y->kl);
}

/* The table at index t as (name, value-as-text) pairs, values converted as Lua does. */
static size_t table_pairs(lua_State *L, int t, struct pair **out)
{
    size_t n = 0, cap = 8;
    struct pair *a = malloc(cap * sizeof *a);
    if (a == NULL)
        abort();
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl), *v;
        if (lua_type(L, -1) == LUA_TBOOLEAN) {
            v = lua_toboolean(L, -1) ? "true" : "false";
            vl = strlen(v);
        } else {
            lua_pushvalue(L, -1);
            v = lua_tolstring(L, -1, &vl);
            lua_pop(L, 1); /* the text is copied below */
        }
        if (n == cap) {
            a = realloc(a, (cap *= 2) * sizeof *a);
            if (a == NULL)
                abort();
        }
        a[n].k = malloc(kl + 1);
        a[n].v = malloc(vl + 1);
        if (a[n].k == NULL || a[n].v == NULL)
            abort();
        memcpy(a[n].k, k, kl + 1);
        memcpy(a[n].v, v, vl + 1);
        a[n].kl = kl;
        a[n].vl = vl;
        n++;
        lua_pop(L, 1);
    }
    *out = a;
    return n;
}

static void pairs_free(struct pair *a, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        free(a[i].k);
        free(a[i].v);
    }
    free(a);
}

/* sorted, pe(k) "=" pe(v), joined by "&" */
static void ref_canonical_query(struct str *out, struct pair *q, size_t nq)
{
    size_t i;
    str_add(out, "", 0);
    if (nq > 1)
        qsort(q, nq, sizeof *q, pair_cmp);
    for (i = 0; i < nq; i++) {
        if (i > 0)
            str_adds(out, "&");
        ref_percent_encode(out, q[i].k, q[i].kl);
        str_adds(out, "=");
        ref_percent_encode(out, q[i].v, q[i].vl);
    }
}

struct signed_v3 {
    struct str creq, sts, auth;
};

static void signed_v3_free(struct signed_v3 *o)
{
    str_free(&o->creq);
    str_free(&o->sts);
    str_free(&o->auth);
}

/* Headers h (names as given): lower-cased; host, content-type and x-acs-* kept, the
 * caller's host dropped for the `host` field; x-acs-content-sha256 added when absent. */
static void ref_sign_v3(struct signed_v3 *o, const char *method, const char *path, const char *host,
                        const char *body, size_t bl, struct pair *q, size_t nq, struct pair *h,
                        size_t nh, const char *key_id, const char *secret, size_t sl)
{
    struct pair *k = malloc((nh + 2) * sizeof *k);
    struct str cq = {0}, names = {0};
    size_t nk = 0, i;
    int have_sha = 0;
    char body_hash[65], creq_hash[65], sig[65];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdl = 0;

    if (k == NULL)
        abort();
    ref_sha256_hex(body, bl, body_hash);
    for (i = 0; i < nh; i++) {
        lower(h[i].k, h[i].kl);
        if (h[i].kl == 4 && memcmp(h[i].k, "host", 4) == 0)
            continue;
        if (!(h[i].kl == 12 && memcmp(h[i].k, "content-type", 12) == 0) &&
            !(h[i].kl > 6 && memcmp(h[i].k, "x-acs-", 6) == 0))
            continue;
        if (h[i].kl == 20 && memcmp(h[i].k, "x-acs-content-sha256", 20) == 0)
            have_sha = 1;
        k[nk++] = h[i];
    }
    k[nk].k = (char *)"host";
    k[nk].kl = 4;
    k[nk].v = (char *)host;
    k[nk++].vl = strlen(host);
    if (!have_sha) {
        k[nk].k = (char *)"x-acs-content-sha256";
        k[nk].kl = 20;
        k[nk].v = body_hash;
        k[nk++].vl = 64;
    }
    qsort(k, nk, sizeof *k, pair_cmp);

    ref_canonical_query(&cq, q, nq);
    str_add(&names, "", 0);
    for (i = 0; i < nk; i++) {
        if (i > 0)
            str_adds(&names, ";");
        str_add(&names, k[i].k, k[i].kl);
    }
    str_adds(&o->creq, method);
    str_adds(&o->creq, "\n");
    str_adds(&o->creq, path);
    str_adds(&o->creq, "\n");
    str_add(&o->creq, cq.p, cq.n);
    str_adds(&o->creq, "\n");
    for (i = 0; i < nk; i++) {
        const char *v = k[i].v;
        size_t vl = k[i].vl;
        while (vl > 0 && (*v == ' ' || *v == '\t')) {
            v++;
            vl--;
        }
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        str_add(&o->creq, k[i].k, k[i].kl);
        str_adds(&o->creq, ":");
        str_add(&o->creq, v, vl);
        str_adds(&o->creq, "\n");
    }
    str_adds(&o->creq, "\n");
    str_add(&o->creq, names.p, names.n);
    str_adds(&o->creq, "\n");
    str_adds(&o->creq, body_hash);

    ref_sha256_hex(o->creq.p, o->creq.n, creq_hash);
    str_adds(&o->sts, V3 "\n");
    str_adds(&o->sts, creq_hash);
    HMAC(EVP_sha256(), secret, (int)sl, (const unsigned char *)o->sts.p, o->sts.n, md, &mdl);
    CHECK(mdl == 32, "HMAC-SHA256 gave %u bytes", mdl);
    ref_hex(md, mdl, sig);
    str_adds(&o->auth, V3 " Credential=");
    str_adds(&o->auth, key_id);
    str_adds(&o->auth, ",SignedHeaders=");
    str_add(&o->auth, names.p, names.n);
    str_adds(&o->auth, ",Signature=");
    str_adds(&o->auth, sig);
    str_free(&cq);
    str_free(&names);
    free(k);
}

static int is_lower_hex(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* The documented shape, read back line by line (inputs without '\n', NUL, ':' in names). */
static void check_structure(const char *creq, size_t n, const char *method, const char *path,
                            const char *body, size_t bl, const char *auth)
{
    const char *p = creq, *end = creq + n, *line, *eol, *names_start;
    char prev[256] = "", want_hash[65];
    int have_host = 0, have_sha = 0, headers = 0, first = 1;
    struct str names = {0};

#define NEXT_LINE()                                                                        \
    do {                                                                                   \
        line = p;                                                                          \
        eol = memchr(p, '\n', (size_t)(end - p));                                          \
        CHECK(eol != NULL, "canonical request ends early");                               \
        p = eol + 1;                                                                       \
    } while (0)

    NEXT_LINE();
    CHECK((size_t)(eol - line) == strlen(method) && memcmp(line, method, strlen(method)) == 0, "line 1 is not the method");
    NEXT_LINE();
    CHECK((size_t)(eol - line) == strlen(path) && memcmp(line, path, strlen(path)) == 0, "line 2 is not the path");
    NEXT_LINE();
    for (; line < eol; line++) {
        unsigned char c = (unsigned char)*line;
        if (c == '%') {
            CHECK(eol - line > 2 && upper_hex_value((unsigned char)line[1]) >= 0 &&
                  upper_hex_value((unsigned char)line[2]) >= 0, "bad escape in the query line");
            line += 2;
        } else {
            CHECK(is_unreserved(c) || c == '=' || c == '&', "0x%02x in the query line", c);
        }
    }
    str_add(&names, "", 0);
    for (;;) {
        const char *colon;
        size_t nl;
        NEXT_LINE();
        if (line == eol)
            break;
        colon = memchr(line, ':', (size_t)(eol - line));
        CHECK(colon != NULL && colon > line, "header line without a name");
        nl = (size_t)(colon - line);
        CHECK(nl < sizeof prev, "header name too long");
        for (const char *c = line; c < colon; c++)
            CHECK(!(*c >= 'A' && *c <= 'Z'), "upper case in a header name");
        CHECK((nl == 4 && memcmp(line, "host", 4) == 0) || (nl == 12 && memcmp(line, "content-type", 12) == 0) ||
              (nl > 6 && memcmp(line, "x-acs-", 6) == 0), "unsigned header %.*s", (int)nl, line);
        if (!first) { /* strictly ascending by bytes: sorted, and no name twice */
            size_t pl = strlen(prev);
            int c = memcmp(prev, line, pl < nl ? pl : nl);
            CHECK(c < 0 || (c == 0 && pl < nl), "header %.*s after %s", (int)nl, line, prev);
        }
        have_host |= nl == 4 && memcmp(line, "host", 4) == 0;
        have_sha |= nl == 20 && memcmp(line, "x-acs-content-sha256", 20) == 0;
        if (!first)
            str_adds(&names, ";");
        str_add(&names, line, nl);
        memcpy(prev, line, nl);
        prev[nl] = '\0';
        first = 0;
        headers++;
    }
    CHECK(have_host && have_sha, "host or x-acs-content-sha256 not signed");
    NEXT_LINE();
    CHECK((size_t)(eol - line) == names.n && memcmp(line, names.p, names.n) == 0, "signed headers line is not the names");
    ref_sha256_hex(body, bl, want_hash);
    CHECK(end - p == 64 && memcmp(p, want_hash, 64) == 0, "last line is not hex(sha256(body))");
    names_start = strstr(auth, ",SignedHeaders=");
    CHECK(strncmp(auth, V3 " Credential=", strlen(V3 " Credential=")) == 0 && names_start != NULL,
          "Authorization shape: %s", auth);
    names_start += strlen(",SignedHeaders=");
    CHECK(strncmp(names_start, names.p, names.n) == 0 && strncmp(names_start + names.n, ",Signature=", 11) == 0 &&
          strlen(names_start + names.n + 11) == 64 && is_lower_hex(names_start + names.n + 11, 64),
          "Authorization shape: %s", auth);
    (void)headers;
    str_free(&names);
#undef NEXT_LINE
}

/* ---- sign_v3 */

static void fuzz_sign_v3(lua_State *L, struct reader *r)
{
    static const char *const METHODS[] = {"POST", "GET", "PUT", NULL};
    const char *s, *method, *path, *host, *key_id, *secret, *body;
    size_t n, sl, bl, nq = 0, nh = 0, i;
    unsigned count, pick;
    int t, long_name = 0, simple = 1, status;
    struct pair *q = NULL, *h = NULL;
    struct signed_v3 ref = {{0}, {0}, {0}};

    lua_newtable(L);
    t = lua_gettop(L);
    pick = take_byte(r) % 4;
    s = take_string(r, 16, &n);
    if (METHODS[pick])
        lua_pushstring(L, METHODS[pick]);
    else
        lua_pushlstring(L, s, n);
    lua_setfield(L, t, "method");
    s = take_string(r, 64, &n);
    if (take_byte(r) & 1)
        lua_pushstring(L, "iot.cn-shanghai.aliyuncs.com");
    else
        lua_pushlstring(L, s, n);
    lua_setfield(L, t, "host");
    pick = take_byte(r);
    s = take_string(r, 32, &n);
    if (pick & 1) {
        lua_pushlstring(L, s, n);
        lua_setfield(L, t, "path");
    }
    pick = take_byte(r);
    s = take_string(r, 255, &n);
    if (pick & 1) {
        lua_pushlstring(L, s, n);
        lua_setfield(L, t, "body");
    }
    s = take_string(r, 32, &n);
    lua_pushlstring(L, s, n);
    lua_setfield(L, t, "access_key_id");
    s = take_string(r, 48, &n);
    lua_pushlstring(L, s, n);
    lua_setfield(L, t, "access_key_secret");

    count = take_byte(r);
    if (count & 0x80) {
        lua_newtable(L);
        for (count %= 9; count > 0; count--) {
            s = take_string(r, 24, &n);
            lua_pushlstring(L, s, n);
            push_value(L, r);
            lua_rawset(L, -3);
        }
        lua_setfield(L, t, "query");
    }
    count = take_byte(r);
    if (count & 0x80) {
        /* names unique once lower-cased: two spellings of one header have no defined order */
        lua_newtable(L);  /* the headers */
        lua_newtable(L);  /* lower-cased names seen */
        for (count %= 11; count > 0; count--) {
            push_header_name(L, r);
            push_value(L, r);
            lua_pushvalue(L, -2);
            {
                size_t ln;
                const char *name = lua_tolstring(L, -1, &ln);
                char *low = malloc(ln + 1);
                if (low == NULL)
                    abort();
                memcpy(low, name, ln + 1);
                lua_pop(L, 1);
                lower(low, ln);
                lua_pushlstring(L, low, ln);
                free(low);
            }
            lua_pushvalue(L, -1);
            lua_rawget(L, -5);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushboolean(L, 1);
                lua_rawset(L, -5);
                lua_rawset(L, -4);
            } else {
                lua_pop(L, 4);
            }
        }
        lua_pop(L, 1);
        lua_setfield(L, t, "headers");
    }

    /* what the reference reads, as C strings (the C side reads them so) */
    lua_getfield(L, t, "method");
    method = lua_tostring(L, -1);
    lua_getfield(L, t, "host");
    host = lua_tostring(L, -1);
    lua_getfield(L, t, "path");
    path = lua_isnil(L, -1) ? "/" : lua_tostring(L, -1);
    lua_getfield(L, t, "access_key_id");
    key_id = lua_tostring(L, -1);
    lua_getfield(L, t, "access_key_secret");
    secret = lua_tolstring(L, -1, &sl);
    lua_getfield(L, t, "body");
    body = lua_isnil(L, -1) ? "" : lua_tolstring(L, -1, &bl);
    if (lua_isnil(L, -1))
        bl = 0;
    lua_getfield(L, t, "query");
    if (lua_istable(L, -1))
        nq = table_pairs(L, lua_gettop(L), &q);
    lua_getfield(L, t, "headers");
    if (lua_istable(L, -1))
        nh = table_pairs(L, lua_gettop(L), &h);
    lua_pop(L, 2);
    for (i = 0; i < nh; i++) {
        long_name |= h[i].kl >= 128;
        simple &= memchr(h[i].k, '\n', h[i].kl) == NULL && memchr(h[i].k, ':', h[i].kl) == NULL &&
                  memchr(h[i].k, '\0', h[i].kl) == NULL && memchr(h[i].v, '\n', h[i].vl) == NULL;
    }
    simple &= strchr(method, '\n') == NULL && strlen(method) == lua_rawlen(L, t + 1) &&
              strchr(path, '\n') == NULL && strchr(host, '\n') == NULL &&
              strstr(key_id, ",SignedHeaders=") == NULL;

    push_core_function(L, "sign_v3");
    lua_pushvalue(L, t);
    status = lua_pcall(L, 1, 3, 0);
    if (long_name) {
        const char *msg = lua_tostring(L, -1);
        CHECK(status != LUA_OK && msg && strstr(msg, "bad headers: name") != NULL,
              "a header name of 128 bytes or more: %s", status == LUA_OK ? "accepted" : msg);
    } else {
        size_t al, cl, tl;
        const char *auth, *creq, *sts;
        CHECK(status == LUA_OK, "sign_v3 raised: %s", lua_tostring(L, -1));
        auth = lua_tolstring(L, -3, &al);
        creq = lua_tolstring(L, -2, &cl);
        sts = lua_tolstring(L, -1, &tl);
        CHECK(auth && creq && sts, "sign_v3 returned %s, %s, %s", luaL_typename(L, -3), luaL_typename(L, -2),
              luaL_typename(L, -1));
        ref_sign_v3(&ref, method, path, host, body, bl, q, nq, h, nh, key_id, secret, sl);
        CHECK(cl == ref.creq.n && memcmp(creq, ref.creq.p, cl) == 0,
              "canonical request:\n%s\n-- the reference's:\n%s", creq, ref.creq.p);
        CHECK(tl == ref.sts.n && memcmp(sts, ref.sts.p, tl) == 0, "string to sign:\n%s\n-- reference:\n%s", sts, ref.sts.p);
        CHECK(al == ref.auth.n && memcmp(auth, ref.auth.p, al) == 0, "Authorization:\n%s\n-- reference:\n%s", auth, ref.auth.p);
        if (simple)
            check_structure(creq, cl, method, path, body, bl, auth);
        signed_v3_free(&ref);
    }
    pairs_free(q, nq);
    pairs_free(h, nh);
}

/* ---- build_request */

static int hex_value(unsigned char c)
{
    int v = upper_hex_value(c);
    return v;
}

/* Percent-decodes s[0..n) into out; 0 on a malformed escape. */
static int ref_percent_decode(struct str *out, const char *s, size_t n)
{
    size_t i;
    str_add(out, "", 0);
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi, lo;
            unsigned char c;
            if (n - i < 3 || (hi = hex_value((unsigned char)s[i + 1])) < 0 || (lo = hex_value((unsigned char)s[i + 2])) < 0)
                return 0;
            c = (unsigned char)(hi * 16 + lo);
            str_add(out, &c, 1);
            i += 2;
        } else {
            str_add(out, &s[i], 1);
        }
    }
    return 1;
}

static const char *const V1_COMMON[] = {
    "AccessKeyId", "Action", "Format", "SignatureMethod", "SignatureNonce", "SignatureVersion",
    "Timestamp", "Version", "RegionId", "SecurityToken", "Signature", NULL,
};

static int is_common(const char *k, size_t kl)
{
    int i;
    for (i = 0; V1_COMMON[i]; i++)
        if (strlen(V1_COMMON[i]) == kl && memcmp(V1_COMMON[i], k, kl) == 0)
            return 1;
    return 0;
}

/* The pair named name[0..nl) among a[0..n), or NULL. */
static const struct pair *find_pair_l(const struct pair *a, size_t n, const char *name, size_t nl)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (a[i].kl == nl && memcmp(a[i].k, name, nl) == 0)
            return &a[i];
    return NULL;
}

static const struct pair *find_pair(const struct pair *a, size_t n, const char *name)
{
    return find_pair_l(a, n, name, strlen(name));
}

/* Section 2: Base64(HMAC-SHA1(secret "&", method "&%2F&" pe(canonical query))) */
static void ref_sign_v1(struct str *out, const char *method, size_t ml, const char *cqs, size_t cl,
                        const char *secret, size_t sl)
{
    struct str sts = {0}, key = {0};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdl = 0;
    char enc[64];
    str_add(&sts, method, ml);
    str_adds(&sts, "&%2F&");
    ref_percent_encode(&sts, cqs, cl);
    str_add(&key, secret, sl);
    str_adds(&key, "&");
    HMAC(EVP_sha1(), key.p, (int)key.n, (const unsigned char *)sts.p, sts.n, md, &mdl);
    CHECK(mdl == 20, "HMAC-SHA1 gave %u bytes", mdl);
    EVP_EncodeBlock((unsigned char *)enc, md, (int)mdl);
    str_adds(out, enc);
    str_free(&sts);
    str_free(&key);
}

static void check_v1_form(const char *form, size_t fl, struct pair *given, size_t ng, const char *secret,
                          size_t sl, const char *key_id, const char *action, const char *version,
                          const char *token, const char *region)
{
    struct pair *got = NULL;
    size_t ngot = 0, cap = 0, i, start = 0, others;
    const struct pair *sig, *p;
    struct str cqs = {0}, b64 = {0};

    /* split on '&' then '=' and percent-decode both sides */
    for (i = 0; i <= fl; i++) {
        if (i < fl && form[i] != '&')
            continue;
        {
            const char *part = form + start, *eq = memchr(part, '=', i - start);
            struct str k = {0}, v = {0};
            CHECK(eq != NULL, "form part without '=': %.*s", (int)(i - start), part);
            CHECK(ref_percent_decode(&k, part, (size_t)(eq - part)) &&
                  ref_percent_decode(&v, eq + 1, (size_t)(form + i - eq - 1)), "bad escape in the form");
            if (ngot == cap) {
                cap = cap ? cap * 2 : 16;
                got = realloc(got, cap * sizeof *got);
                if (got == NULL)
                    abort();
            }
            got[ngot].k = k.p;
            got[ngot].kl = k.n;
            got[ngot].v = v.p;
            got[ngot].vl = v.n;
            ngot++;
        }
        start = i + 1;
    }
    /* the caller's parameters, each once, with its value */
    for (i = 0; i < ng; i++) {
        p = find_pair_l(got, ngot, given[i].k, given[i].kl);
        CHECK(p != NULL && p->vl == given[i].vl && memcmp(p->v, given[i].v, p->vl) == 0,
              "parameter %s missing or changed", given[i].k);
    }
    others = 0;
    for (i = 0; i < ngot; i++)
        if (is_common(got[i].k, got[i].kl))
            others++;
    CHECK(ngot == ng + others, "%zu parameters in the form, %zu given and %zu common", ngot, ng, others);
#define WANT(name, value)                                                                  \
    do {                                                                                   \
        p = find_pair(got, ngot, name);                                                    \
        CHECK(p != NULL && strlen(value) == p->vl && memcmp(p->v, value, p->vl) == 0,      \
              "%s is not %s", name, value);                                                \
    } while (0)
    WANT("AccessKeyId", key_id);
    WANT("Action", action);
    WANT("Format", "JSON");
    WANT("SignatureMethod", "HMAC-SHA1");
    WANT("SignatureVersion", "1.0");
    WANT("Version", version);
    if (token)
        WANT("SecurityToken", token);
    if (region)
        WANT("RegionId", region);
#undef WANT
    p = find_pair(got, ngot, "SignatureNonce");
    CHECK(p && p->vl == 32 && is_lower_hex(p->v, 32), "SignatureNonce");
    p = find_pair(got, ngot, "Timestamp");
    CHECK(p && p->vl == 20 && p->v[4] == '-' && p->v[10] == 'T' && p->v[19] == 'Z', "Timestamp");

    /* section 2: every parameter but Signature, canonical; POST&%2F&pe(that) */
    sig = find_pair(got, ngot, "Signature");
    CHECK(sig != NULL, "no Signature");
    {
        struct pair *unsigned_ = malloc(ngot * sizeof *unsigned_);
        size_t nu = 0;
        if (unsigned_ == NULL)
            abort();
        for (i = 0; i < ngot; i++)
            if (&got[i] != sig)
                unsigned_[nu++] = got[i];
        ref_canonical_query(&cqs, unsigned_, nu);
        free(unsigned_);
    }
    CHECK(fl > cqs.n && memcmp(form, cqs.p, cqs.n) == 0 && strncmp(form + cqs.n, "&Signature=", 11) == 0,
          "the form is not the canonical query then &Signature=");
    ref_sign_v1(&b64, "POST", 4, cqs.p, cqs.n, secret, sl);
    CHECK(sig->vl == b64.n && memcmp(sig->v, b64.p, b64.n) == 0, "V1 Signature %s, reference %s", sig->v, b64.p);

    str_free(&cqs);
    str_free(&b64);
    pairs_free(got, ngot);
}

static void fuzz_build_request(lua_State *L, struct reader *r)
{
    const char *s, *host, *key_id, *secret, *action, *version, *token = NULL, *region = NULL;
    size_t n, sl, ng, i, ul, bl;
    unsigned count, flags = take_byte(r);
    int v1 = flags & 1, in_body = !(flags & 2), t, params, status;
    struct pair *given = NULL;
    const char *url, *body;

    lua_newtable(L);
    t = lua_gettop(L);
    lua_pushliteral(L, "http://127.0.0.1:8080");
    lua_setfield(L, t, "endpoint");
#define FIELD(name, max)                                                                   \
    do {                                                                                   \
        s = take_string(r, max, &n);                                                       \
        lua_pushlstring(L, s, n);                                                          \
        lua_setfield(L, t, name);                                                          \
    } while (0)
    FIELD("host", 48);
    FIELD("action", 16);
    FIELD("version", 16);
    FIELD("access_key_id", 24);
    FIELD("access_key_secret", 32);
    if (flags & 4)
        FIELD("security_token", 48);
    if (flags & 8)
        FIELD("region_id", 16);
#undef FIELD
    lua_pushstring(L, v1 ? "v1" : "v3");
    lua_setfield(L, t, "signature");
    lua_pushstring(L, in_body ? "body" : "query");
    lua_setfield(L, t, "placement");

    lua_newtable(L);
    params = lua_gettop(L);
    for (count = take_byte(r) % 9; count > 0; count--) {
        s = take_string(r, 24, &n);
        if (is_common(s, n)) /* the Lua layer refuses them; here they would be sent twice */
            continue;
        lua_pushlstring(L, s, n);
        push_value(L, r);
        lua_rawset(L, params);
    }
    lua_setfield(L, t, "params");

    lua_getfield(L, t, "host");
    host = lua_tostring(L, -1);
    lua_getfield(L, t, "access_key_id");
    key_id = lua_tostring(L, -1);
    lua_getfield(L, t, "access_key_secret");
    secret = lua_tolstring(L, -1, &sl);
    lua_getfield(L, t, "action");
    action = lua_tostring(L, -1);
    lua_getfield(L, t, "version");
    version = lua_tostring(L, -1);
    lua_getfield(L, t, "security_token");
    token = lua_tostring(L, -1);
    lua_getfield(L, t, "region_id");
    region = lua_tostring(L, -1);
    lua_getfield(L, t, "params");
    ng = table_pairs(L, lua_gettop(L), &given);

    push_core_function(L, "build_request");
    lua_pushvalue(L, t);
    status = lua_pcall(L, 1, 3, 0);
    CHECK(status == LUA_OK, "build_request raised: %s", lua_tostring(L, -1));
    url = lua_tolstring(L, -3, &ul);
    body = lua_tolstring(L, -1, &bl);
    CHECK(url && lua_istable(L, -2) && body, "build_request returned %s, %s, %s", luaL_typename(L, -3),
          luaL_typename(L, -2), luaL_typename(L, -1));
    CHECK(ul >= 22 && memcmp(url, "http://127.0.0.1:8080/", 22) == 0, "url %s", url);
    CHECK(in_body ? (ul == 22) : (ul > 22 && url[22] == '?'), "url %s", url);
    CHECK(in_body || bl == 0, "a body with the parameters in the query");

    if (v1) {
        const char *form = in_body ? body : url + 23;
        size_t fl = in_body ? bl : ul - 23;
        lua_getfield(L, -2, "Host");
        CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), host) == 0, "V1 Host header");
        lua_pop(L, 1);
        check_v1_form(form, fl, given, ng, secret, sl, key_id, action, version, token, region);
    } else {
        int headers = lua_gettop(L) - 1;
        struct pair *h;
        size_t nh;
        const char *auth;
        struct str cq = {0};
        struct signed_v3 ref = {{0}, {0}, {0}};
        char body_hash[65];
        struct pair *qcopy;

        lua_getfield(L, headers, "authorization");
        auth = lua_tostring(L, -1);
        CHECK(auth != NULL, "no authorization header");
        lua_pushnil(L);
        lua_setfield(L, headers, "authorization");
        nh = table_pairs(L, headers, &h);

        lua_getfield(L, headers, "x-acs-content-sha256");
        ref_sha256_hex(body, bl, body_hash);
        CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), body_hash) == 0, "x-acs-content-sha256");
        lua_pop(L, 1);

        /* the parameters: the body (form) or the query, canonical */
        qcopy = malloc((ng + 1) * sizeof *qcopy);
        if (qcopy == NULL)
            abort();
        for (i = 0; i < ng; i++)
            qcopy[i] = given[i];
        ref_canonical_query(&cq, qcopy, ng);
        if (in_body)
            CHECK(bl == cq.n && memcmp(body, cq.p, bl) == 0, "body is not the canonical form of the parameters");
        else
            CHECK(ul - 23 == cq.n && memcmp(url + 23, cq.p, cq.n) == 0, "query is not the canonical parameters");
        ref_sign_v3(&ref, "POST", "/", host, body, bl, qcopy, in_body ? 0 : ng, h, nh, key_id, secret, sl);
        CHECK(strlen(auth) == ref.auth.n && memcmp(auth, ref.auth.p, ref.auth.n) == 0,
              "build_request's Authorization:\n%s\n-- the reference's:\n%s\n-- over:\n%s", auth, ref.auth.p, ref.creq.p);
        signed_v3_free(&ref);
        str_free(&cq);
        free(qcopy);
        pairs_free(h, nh);
    }
    pairs_free(given, ng);
}

/* The references against the vectors ALIBABA-API.md publishes, once at start-up. */
static void reference_self_test(void)
{
#define P(k, v) {(char *)(k), (char *)(v), sizeof(k) - 1, sizeof(v) - 1}
    struct pair q[] = {
        P("RegionId", "cn-shanghai"),
        P("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
    };
    char h_names[4][32] = {"x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce"};
    struct pair h[4] = {
        {h_names[0], (char *)"RunInstances", 12, 12},
        {h_names[1], (char *)"2014-05-26", 13, 10},
        {h_names[2], (char *)"2023-10-26T10:22:32Z", 10, 20},
        {h_names[3], (char *)"3156853299f313e23d1673dc12e1703d", 21, 32},
    };
    struct pair v1[] = {
        P("AccessKeyId", "testid"),
        P("Action", "DescribeRegions"),
        P("Format", "XML"),
        P("SignatureMethod", "HMAC-SHA1"),
        P("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        P("SignatureVersion", "1.0"),
        P("Timestamp", "2016-02-23T12:46:24Z"),
        P("Version", "2014-05-26"),
    };
#undef P
    struct signed_v3 o = {{0}, {0}, {0}};
    struct str cqs = {0}, sig = {0};
    ref_sign_v3(&o, "POST", "/", "ecs.cn-shanghai.aliyuncs.com", "", 0, q, 2, h, 4, "YourAccessKeyId",
                "YourAccessKeySecret", 19);
    CHECK(strcmp(o.sts.p, V3 "\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259") == 0,
          "reference V3 hash: %s", o.sts.p);
    CHECK(strcmp(o.auth.p, V3 " Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
                 "x-acs-date;x-acs-signature-nonce;x-acs-version,"
                 "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0") == 0,
          "reference V3 Authorization: %s", o.auth.p);
    signed_v3_free(&o);
    ref_canonical_query(&cqs, v1, 8);
    ref_sign_v1(&sig, "GET", 3, cqs.p, cqs.n, "testsecret", 10);
    CHECK(strcmp(sig.p, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=") == 0, "reference V1 GET: %s", sig.p);
    sig.n = 0;
    ref_sign_v1(&sig, "POST", 4, cqs.p, cqs.n, "testsecret", 10);
    CHECK(strcmp(sig.p, "MxbnVAM4w6sft9xjVpe/GCKueuk=") == 0, "reference V1 POST: %s", sig.p);
    str_free(&cqs);
    str_free(&sig);
}

/* sign_v1(method, params, secret) --> signature, string to sign: section 2's, with every
 * parameter but one named Signature. */
static void fuzz_sign_v1(lua_State *L, struct reader *r)
{
    static const char *const METHODS[] = {"POST", "GET", NULL};
    const char *s, *method, *secret, *sig, *sts;
    size_t n, ml, sl, np, i, kept = 0, gl, tl;
    unsigned pick = take_byte(r) % 3, count;
    struct pair *p;
    struct str cqs = {0}, want_sts = {0}, want_sig = {0};
    int status;

    s = take_string(r, 16, &n);
    if (METHODS[pick])
        lua_pushstring(L, METHODS[pick]);
    else
        lua_pushlstring(L, s, n);
    lua_newtable(L);
    for (count = take_byte(r) % 9; count > 0; count--) {
        s = take_string(r, 24, &n);
        if (take_byte(r) % 8 == 0)
            lua_pushliteral(L, "Signature");
        else
            lua_pushlstring(L, s, n);
        push_value(L, r);
        lua_rawset(L, -3);
    }
    s = take_string(r, 48, &n);
    lua_pushlstring(L, s, n);
    method = lua_tolstring(L, 1, &ml);
    secret = lua_tolstring(L, 3, &sl);
    np = table_pairs(L, 2, &p);

    push_core_function(L, "sign_v1");
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    status = lua_pcall(L, 3, 2, 0);
    CHECK(status == LUA_OK, "sign_v1 raised: %s", lua_tostring(L, -1));
    sig = lua_tolstring(L, -2, &gl);
    sts = lua_tolstring(L, -1, &tl);
    CHECK(sig && sts, "sign_v1 returned %s, %s", luaL_typename(L, -2), luaL_typename(L, -1));

    for (i = 0; i < np; i++) { /* Signature is not signed */
        if (p[i].kl == 9 && memcmp(p[i].k, "Signature", 9) == 0) {
            free(p[i].k);
            free(p[i].v);
        } else {
            p[kept++] = p[i];
        }
    }
    ref_canonical_query(&cqs, p, kept);
    str_add(&want_sts, method, ml);
    str_adds(&want_sts, "&%2F&");
    ref_percent_encode(&want_sts, cqs.p, cqs.n);
    CHECK(tl == want_sts.n && memcmp(sts, want_sts.p, tl) == 0, "V1 string to sign:\n%s\n-- reference:\n%s", sts,
          want_sts.p);
    ref_sign_v1(&want_sig, method, ml, cqs.p, cqs.n, secret, sl);
    CHECK(gl == want_sig.n && memcmp(sig, want_sig.p, gl) == 0, "V1 signature %s, reference %s", sig, want_sig.p);
    str_free(&cqs);
    str_free(&want_sts);
    str_free(&want_sig);
    pairs_free(p, kept);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    struct reader r = {data, size};
    unsigned mode = take_byte(&r) % 3;
    if (mode == 1)
        fuzz_build_request(L, &r);
    else if (mode == 2)
        fuzz_sign_v1(L, &r);
    else
        fuzz_sign_v3(L, &r);
    return fuzz_close(L);
}
