/* SHA-256 and HMAC with OpenSSL's algorithms fetched once per process: the one-shot
 * SHA256() and HMAC() of OpenSSL 3 look each algorithm up again on every call, a fifth
 * of what signing a request costs. The fetched algorithms are immutable and shared;
 * each HMAC gets a context of its own (a copy of a prepared one), so nothing mutable is
 * shared between calls. They are fetched once (pthread_once: Lua states in several
 * threads may sign at the same time) and given back when the module is unloaded
 * (lua_close dlcloses it), so nothing is left behind. */
#include <pthread.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "rrpc.h"

static EVP_MD *sha256;
static EVP_MAC *hmac;
static EVP_MAC_CTX *prepared[2]; /* HMAC-SHA1, HMAC-SHA256: the digest set, no key yet */

static const char *DIGEST_NAMES[2] = {"SHA1", "SHA256"};

static pthread_once_t fetched = PTHREAD_ONCE_INIT;
static int usable;

static void fetch(void)
{
    int i;
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    for (i = 0; i < 2 && hmac != NULL; i++) {
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)DIGEST_NAMES[i], 0);
        params[1] = OSSL_PARAM_construct_end();
        prepared[i] = EVP_MAC_CTX_new(hmac);
        if (prepared[i] == NULL || !EVP_MAC_CTX_set_params(prepared[i], params))
            return;
    }
    usable = sha256 != NULL && hmac != NULL;
}

__attribute__((destructor)) static void release(void)
{
    EVP_MAC_CTX_free(prepared[0]);
    EVP_MAC_CTX_free(prepared[1]);
    EVP_MAC_free(hmac);
    EVP_MD_free(sha256);
}

static int ready(void)
{
    return pthread_once(&fetched, fetch) == 0 && usable;
}

/* ctx: a context kept for many digests (rrpc_sha256_context), so that a digest makes only
 * OpenSSL's state for it again, not the context too; or NULL, for one of its own */
int rrpc_sha256(EVP_MD_CTX *ctx, const void *data, size_t n, unsigned char out[32])
{
    unsigned int len = 0;
    if (!ready())
        return 0;
    if (ctx == NULL)
        return EVP_Digest(data, n, out, &len, sha256, NULL) && len == 32;
    return EVP_DigestInit_ex2(ctx, sha256, NULL) && EVP_DigestUpdate(ctx, data, n) &&
           EVP_DigestFinal_ex(ctx, out, &len) && len == 32;
}

EVP_MD_CTX *rrpc_sha256_context(void)
{
    return ready() ? EVP_MD_CTX_new() : NULL;
}

/* digest: RRPC_HMAC_SHA1 or RRPC_HMAC_SHA256; out has room for EVP_MAX_MD_SIZE */
int rrpc_hmac(int digest, const void *key, size_t key_len, const void *data, size_t n,
              unsigned char *out, size_t *out_len)
{
    EVP_MAC_CTX *ctx;
    int ok;
    if (!ready())
        return 0;
    ctx = EVP_MAC_CTX_dup(prepared[digest]);
    /* an empty key is a valid HMAC key; OpenSSL wants a non-NULL pointer for it */
    ok = ctx != NULL && EVP_MAC_init(ctx, key_len ? key : (const void *)"", key_len, NULL) &&
         EVP_MAC_update(ctx, data, n) && EVP_MAC_final(ctx, out, out_len, EVP_MAX_MD_SIZE);
    EVP_MAC_CTX_free(ctx);
    return ok;
}

/* A context keyed once (a signer's secret, for as long as the credentials last), so each
 * signature skips the key's setup: two SHA-256 blocks and OpenSSL's parameter parsing. */
EVP_MAC_CTX *rrpc_hmac_key(int digest, const void *key, size_t key_len)
{
    EVP_MAC_CTX *ctx = ready() ? EVP_MAC_CTX_dup(prepared[digest]) : NULL;
    if (ctx != NULL && !EVP_MAC_init(ctx, key_len ? key : (const void *)"", key_len, NULL)) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* An HMAC under a keyed context: EVP_MAC_init without a key starts again from it. */
int rrpc_hmac_keyed(EVP_MAC_CTX *ctx, const void *data, size_t n, unsigned char *out,
                    size_t *out_len)
{
    return EVP_MAC_init(ctx, NULL, 0, NULL) && EVP_MAC_update(ctx, data, n) &&
           EVP_MAC_final(ctx, out, out_len, EVP_MAX_MD_SIZE);
}
