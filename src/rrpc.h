/* Shared declarations of rrpc.core's C files. */
#ifndef RRPC_H
#define RRPC_H

#include <stddef.h>
#include <string.h>
#include <openssl/types.h>
#include "compat.h"
#include "class.h"

#define RRPC_VERSION "0.1.0"
#define RRPC_SESSION_MT "rrpc.session"
#define RRPC_POOL_MT "rrpc.pool"
#define RRPC_BUDGET_MT "rrpc.budget"
#define RRPC_REDIS_MT "rrpc.redis"
#define RRPC_TLS_SESSIONS_MT "rrpc.tls_sessions"
#define RRPC_SIGNER_MT "rrpc.signer"
#define RRPC_HEADERS_MT "rrpc.headers"

/* A string parameter or header, borrowed from a Lua string kept alive on the stack. */
struct rrpc_kv {
    const char *k, *v;
    size_t kl, vl;
};

/* Like luaL_checklstring, without turning numbers into strings. */
static inline const char *rrpc_checkstring(lua_State *L, int i, size_t *n)
{
    if (lua_type(L, i) != LUA_TSTRING)
        luaL_argerror(L, i, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, i)));
    return lua_tolstring(L, i, n);
}

/* codec.c */
/* A text in C memory, grown as it is written and kept for the next (a signer's requests),
 * so that signing makes no Lua string it throws away. A write that cannot grow it sets
 * `failed`, and nothing written after means anything: the caller checks once, at the end.
 * Freed (and its old blocks) cleansed: it holds security tokens. */
struct rrpc_text {
    char *data;
    size_t len, cap;
    int failed;
};
/* Part of a text, by offset: it stays valid as the text grows. */
struct rrpc_span {
    size_t at, len;
};
/* Gives a text (zeroed) its first block, 0 when it cannot: a text in use always has one,
 * so that its data plus an offset is defined even while it is empty. */
int rrpc_text_open(struct rrpc_text *t);
int rrpc_text_reserve(struct rrpc_text *t, size_t more); /* 0: failed */
/* inline: signing writes many short pieces, most of them into room the text already has */
static inline void rrpc_text_add(struct rrpc_text *t, const char *s, size_t n)
{
    if (n > 0 && (n <= t->cap - t->len || rrpc_text_reserve(t, n))) {
        memcpy(t->data + t->len, s, n);
        t->len += n;
    }
}
static inline void rrpc_text_add_string(struct rrpc_text *t, const char *s)
{
    rrpc_text_add(t, s, strlen(s));
}
static inline void rrpc_text_add_char(struct rrpc_text *t, char c)
{
    if (t->len < t->cap || rrpc_text_reserve(t, 1))
        t->data[t->len++] = c;
}
/* The part of t from `at` to its end. */
static inline struct rrpc_span rrpc_text_since(const struct rrpc_text *t, size_t at)
{
    struct rrpc_span part;
    part.at = at;
    part.len = t->len - at;
    return part;
}
/* Appends a part of t to t (the room made first: growing moves the part). */
static inline void rrpc_text_add_span(struct rrpc_text *t, struct rrpc_span part)
{
    if (rrpc_text_reserve(t, part.len))
        rrpc_text_add(t, t->data + part.at, part.len);
}
void rrpc_text_percent_encode(struct rrpc_text *t, const char *s, size_t n);
void rrpc_text_free(struct rrpc_text *t);
/* A text for one call of a Lua function: a userdata, freed by the GC whatever is raised. */
struct rrpc_text *rrpc_push_text(lua_State *L);
void rrpc_push_b64encode(lua_State *L, const unsigned char *s, size_t n);
int rrpc_push_b64decode(lua_State *L, const char *s, size_t n);
void rrpc_hex(const unsigned char *in, size_t n, char *out);
void rrpc_sha256_hex(EVP_MD_CTX *ctx, const char *s, size_t n, char out[65]);
int l_percent_encode(lua_State *L);
int l_b64encode(lua_State *L);
int l_b64decode(lua_State *L);

/* digest.c: 1 on success */
#define RRPC_HMAC_SHA1 0
#define RRPC_HMAC_SHA256 1
/* ctx: from rrpc_sha256_context (EVP_MD_CTX_free frees it), reused digest after digest;
 * or NULL */
int rrpc_sha256(EVP_MD_CTX *ctx, const void *data, size_t n, unsigned char out[32]);
EVP_MD_CTX *rrpc_sha256_context(void);
int rrpc_hmac(int digest, const void *key, size_t key_len, const void *data, size_t n,
              unsigned char *out, size_t *out_len);
/* a context keyed once, for many HMACs (EVP_MAC_CTX_free frees it), or NULL */
EVP_MAC_CTX *rrpc_hmac_key(int digest, const void *key, size_t key_len);
int rrpc_hmac_keyed(EVP_MAC_CTX *ctx, const void *data, size_t n, unsigned char *out,
                    size_t *out_len);

/* sign.c */
int l_sign_v1(lua_State *L);
int l_sign_v3(lua_State *L);

/* request.c */
/* A signed request: the headers it sends (V3: eight signed ones and Authorization), its
 * URL and body; the strings live in the signer's text (until its next request), on the
 * Lua stack, or in the buffers here. */
#define RRPC_SIGNED_HEADERS 9
struct rrpc_signed {
    const char *url, *body;
    size_t url_len, body_len, nh;
    struct rrpc_kv headers[RRPC_SIGNED_HEADERS];
    char nonce[33], timestamp[21], body_sha[65];
};
/* Signs action with params (a table) using the signer at stack index signer, with a
 * fresh nonce and the time, into the signer's text; pushes only the text of number
 * parameters. */
void rrpc_sign_with(lua_State *L, int signer, int action, int params, struct rrpc_signed *out);
extern const struct rrpc_class rrpc_signer_class;
int l_signer(lua_State *L);
int l_build_request(lua_State *L);
int l_nonce(lua_State *L);
int l_timestamp(lua_State *L);

/* budget.c: budget(limit_bytes) --> a budget for option `response_budget` */
extern const struct rrpc_class rrpc_budget_class;
int l_budget(lua_State *L);

/* tls_sessions.c: tls_sessions() --> TLS sessions for option `tls_sessions` */
extern const struct rrpc_class rrpc_tls_sessions_class;
int l_tls_sessions(lua_State *L);

/* url.c */
int l_parse_url(lua_State *L);

/* headers.c: a response's header block (lower-cased in place by the table form) pushed as
 * a table, or as an rrpc.headers object indexed by lower-case name (pairs() on 5.2+) */
void rrpc_push_header_table(lua_State *L, char *block, size_t len);
void rrpc_push_header_object(lua_State *L, const char *block, size_t len);
void rrpc_register_headers(lua_State *L);

/* session.c */
extern const struct rrpc_class rrpc_session_class;
int l_session(lua_State *L);

/* pool.c */
extern const struct rrpc_class rrpc_pool_class;
int l_pool(lua_State *L);

/* redis.c: redis(host, port) --> a non-blocking connection (hiredis) */
extern const struct rrpc_class rrpc_redis_class;
int l_redis(lua_State *L);

/* response.c */
int rrpc_find_member_number(const char *s, size_t n, const char *key,
                            size_t *start, size_t *len);
void rrpc_push_decode_response(lua_State *L);
int l_is_int64_digits(lua_State *L);

/* signal.c: deferred signals; rrpc_signals_arrived() counts every arrival */
int rrpc_signals_arrived(void);
int l_watch_signals(lua_State *L);
int l_unwatch_signals(lua_State *L);
int l_take_signals(lua_State *L);
int l_wait_signals(lua_State *L);
int l_signal_number(lua_State *L);

/* system.c */
int l_platform(lua_State *L);
int l_monotime(lua_State *L);
int l_sleep(lua_State *L);

#endif
