/* What the libFuzzer targets share: a Lua 5.4 state with rrpc.core loaded (the real
 * luaopen_rrpc_core, linked in from src/), a way to run C code protected, a property check
 * that aborts (libFuzzer then keeps the input as a crash), and small reference routines
 * written from /work/shared/reference/ALIBABA-API.md, independent of src/. */
#ifndef RRPC_FUZZ_H
#define RRPC_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "rrpc.h"

int luaopen_rrpc_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken property: say which and abort, so that libFuzzer saves the input. */
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "\nproperty violated (%s:%d): %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static lua_CFunction fuzz_luaopen_cjson;

/* A fresh state per input, closed by fuzz_close: every input starts alike, and what an
 * input allocates is freed by its end, so that libFuzzer's per-input leak check only runs
 * (and LeakSanitizer only speaks) when something really was not freed. rrpc.core is the
 * real luaopen_rrpc_core; its module table is at registry["fuzz.core"]. Only the base and
 * package libraries, and cjson preloaded: a state costs about 0.1 ms under ASan. */
static inline lua_State *fuzz_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        abort();
    luaL_requiref(L, "_G", luaopen_base, 1);
    luaL_requiref(L, LUA_LOADLIBNAME, luaopen_package, 1);
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, fuzz_luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_settop(L, 0);
    luaL_requiref(L, "rrpc.core", luaopen_rrpc_core, 0);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    lua_settop(L, 0);
    return L;
}

static inline int fuzz_close(lua_State *L)
{
    lua_close(L);
#ifdef FUZZ_SELF_TEST
    FUZZ_SELF_TEST(); /* a target's known-answer tests of its references */
#endif
    return 0;
}

/* Loads Debian's lua-cjson for Lua 5.4 once for the whole run (where Lua 5.4 would find
 * it), for fuzz_state to preload. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    lua_State *L = luaL_newstate();
    const char *path;
    void *lib;
    (void)argc;
    (void)argv;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchpath");
    lua_pushliteral(L, "cjson");
    lua_getfield(L, -3, "cpath");
    lua_call(L, 2, 1);
    path = lua_tostring(L, -1);
    lib = path ? dlopen(path, RTLD_NOW | RTLD_GLOBAL) : NULL;
    if (lib != NULL)
        *(void **)&fuzz_luaopen_cjson = dlsym(lib, "luaopen_cjson");
    if (fuzz_luaopen_cjson == NULL) {
        fprintf(stderr, "fuzz: cannot load lua-cjson for Lua 5.4 (%s)\n", path ? dlerror() : "cjson.so not found");
        exit(1);
    }
    lua_close(L);
#ifdef FUZZ_SELF_TEST
    FUZZ_SELF_TEST(); /* a target's known-answer tests of its references */
#endif
    return 0;
}

/* Pushes rrpc.core[name]. */
static inline void push_core_function(lua_State *L, const char *name)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    CHECK(lua_isfunction(L, -1), "rrpc.core.%s is missing", name);
}

/* Runs f(ud) as a protected C function: results stay on the stack; returns the status. */
static inline int run_protected(lua_State *L, lua_CFunction f, void *ud, int nresults)
{
    lua_pushcfunction(L, f);
    lua_pushlightuserdata(L, ud);
    return lua_pcall(L, 1, nresults, 0);
}

static inline int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

static inline int upper_hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A growable byte string for the references. */
struct str {
    char *p;
    size_t n, cap;
};

static inline void str_add(struct str *s, const void *p, size_t n)
{
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + n + 1)
            cap *= 2;
        s->p = realloc(s->p, cap);
        if (s->p == NULL)
            abort();
        s->cap = cap;
    }
    if (n > 0)
        memcpy(s->p + s->n, p, n);
    s->n += n;
    s->p[s->n] = '\0';
}

static inline void str_adds(struct str *s, const char *z)
{
    str_add(s, z, strlen(z));
}

static inline void str_free(struct str *s)
{
    free(s->p);
    s->p = NULL;
    s->n = s->cap = 0;
}

/* ALIBABA-API.md section 2: unreserved bytes stay, every other byte is %XY, upper-case. */
static inline void ref_percent_encode(struct str *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    str_add(out, "", 0);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            str_add(out, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            str_add(out, e, 3);
        }
    }
}

static inline void ref_hex(const unsigned char *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static inline void ref_sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(p, n, md);
    ref_hex(md, sizeof md, out);
}

/* Whether the n bytes at hay contain the m bytes at needle. */
static inline int contains(const char *hay, size_t n, const char *needle, size_t m)
{
    size_t i;
    if (m == 0)
        return 1;
    for (i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

/* Reads fuzz input as a stream of small decisions and strings. */
struct reader {
    const uint8_t *p;
    size_t n;
};

static inline unsigned take_byte(struct reader *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

/* A string of at most `max` bytes: a length byte, then the bytes (fewer at the end). */
static inline const char *take_string(struct reader *r, size_t max, size_t *len)
{
    size_t n = take_byte(r);
    const char *s = (const char *)r->p;
    if (max < 255)
        n %= max + 1;
    if (n > r->n)
        n = r->n;
    r->p += n;
    r->n -= n;
    *len = n;
    return s;
}

#endif
