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
void rrpc_add_canonical_query(luaL_Buffer *b, const struct rrpc_kv *a, size_t n,
                              const char *skip);

/* Pushes the canonicalized query string, the string to sign and the signature. The key:
 * `keyed` (rrpc_hmac_key of secret&), or secret&, when keyed is NULL. */
void rrpc_push_v1(lua_State *L, const char *method, size_t ml, const struct rrpc_kv *p,
                  size_t n, const char *secret, size_t sl, EVP_MAC_CTX *keyed);

/* h: lower-case names, sorted, only the signed ones. Pushes the canonical request, the
 * string to sign and the Authorization value. The key: `keyed` (rrpc_hmac_key of the
 * secret), or the secret, when keyed is NULL; `hashing`: a SHA-256 context to reuse, or
 * NULL. */
void rrpc_push_v3(lua_State *L, const char *method, const char *path, const char *cq,
                  size_t cql, const struct rrpc_kv *h, size_t nh, const char *body_sha256,
                  const char *key_id, const char *secret, size_t sl, EVP_MAC_CTX *keyed,
                  EVP_MD_CTX *hashing);

/* A string field of the table at t (kept alive by it), its default, or an error. */
const char *rrpc_opt_string(lua_State *L, int t, const char *field, const char *def);
const char *rrpc_req_string(lua_State *L, int t, const char *field);

#endif
