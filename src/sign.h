/* What request.c shares with sign.c: parameter arrays, canonical queries, and the V1 and
 * V3 signatures over them. */
#ifndef RRPC_SIGN_H
#define RRPC_SIGN_H

#include "rrpc.h"

int rrpc_kv_cmp(const void *a, const void *b);
void rrpc_kv_set(struct rrpc_kv *kv, const char *k, const char *v);

/* Reads the string-keyed table at absolute index t into an array with room for `extra`
 * more entries; pushes two values (the array's box and an anchor table). */
struct rrpc_kv *rrpc_collect_params(lua_State *L, int t, const char *what, size_t extra,
                                    size_t *count);

/* The same into the caller's array (room entries, extra kept free), converted numbers left
 * on the stack; 0 when the table does not fit. */
int rrpc_collect_params_into(lua_State *L, int t, const char *what, struct rrpc_kv *a,
                             size_t room, size_t extra, size_t *count);

/* k=v&k=v over a sorted array, percent-encoded, leaving out the parameter `skip`. */
void rrpc_add_canonical_query(struct rrpc_text *t, const struct rrpc_kv *a, size_t n,
                              const char *skip);

/* V1's steps, as spans of the text they were written to, and its signature (Base64 of an
 * HMAC-SHA1). */
struct rrpc_v1_signed {
    struct rrpc_span canonical_query, string_to_sign;
    char signature[29];
};

/* Appends the canonicalized query string and the string to sign to t and signs them. The
 * key: `keyed` (rrpc_hmac_key of secret&), or secret&, when keyed is NULL. Returns 0 when
 * the HMAC fails; a text that could not grow is t->failed. */
int rrpc_sign_v1_text(struct rrpc_text *t, const char *method, size_t ml,
                      const struct rrpc_kv *p, size_t n, const char *secret, size_t sl,
                      EVP_MAC_CTX *keyed, struct rrpc_v1_signed *out);

#define V3_ALGORITHM "ACS3-HMAC-SHA256"

/* V3's steps: the canonical request and the Authorization value as spans of the text,
 * the string to sign (the algorithm, a newline, 64 hex digits) here. */
struct rrpc_v3_signed {
    struct rrpc_span canonical_request, authorization;
    char string_to_sign[sizeof V3_ALGORITHM + 64 + 1];
};

/* cq: the canonical query, a span of t. h: lower-case names, sorted, only the signed ones.
 * Appends the canonical request and the Authorization value to t. The key: `keyed`
 * (rrpc_hmac_key of the secret), or the secret, when keyed is NULL; `hashing`: a SHA-256
 * context to reuse, or NULL. Returns 0 when the HMAC fails; a text that could not grow is
 * t->failed. */
int rrpc_sign_v3_text(struct rrpc_text *t, const char *method, const char *path,
                      struct rrpc_span cq, const struct rrpc_kv *h, size_t nh,
                      const char *body_sha256, const char *key_id, const char *secret,
                      size_t sl, EVP_MAC_CTX *keyed, EVP_MD_CTX *hashing,
                      struct rrpc_v3_signed *out);

/* A string field of the table at t (kept alive by it), its default, or an error. */
const char *rrpc_opt_string(lua_State *L, int t, const char *field, const char *def);
const char *rrpc_req_string(lua_State *L, int t, const char *field);

#endif
