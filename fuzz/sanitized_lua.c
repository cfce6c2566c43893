/* A Lua 5.4 interpreter with AddressSanitizer and UBSan linked in, for `make check-memory`.
 *
 * Why not /usr/bin/lua5.4 with LD_PRELOAD=libclang_rt.asan: the specs start nginx, curl,
 * make, luarocks and shells through io.popen/os.execute, and every one of them would
 * inherit LD_PRELOAD (and LeakSanitizer's verdict on nginx is not ours to give). With the
 * runtime linked into this executable nothing is preloaded: the children are the normal
 * programs, and ASAN_OPTIONS in their environment means nothing to them. A spec that runs
 * a Lua child with `arg[-1]` (spec 12) gets this interpreter again, sanitized too.
 *
 * It is Debian's liblua5.4 (the same Lua as /usr/bin/lua5.4) behind a small main():
 *   sanitized_lua [-e code] [script [args]]   (no script: standard input)
 * with `arg` and `...` as lua.c sets them, LUA_INIT_5_4 / LUA_INIT, a traceback on error,
 * and lua_close() at the end so that every finalizer runs before LeakSanitizer looks.
 * (busted ends with os.exit(code, true), which closes the state as well.)
 *
 * The sanitizers' defaults are compiled in (below), so they also hold in a child started
 * with `env -i`; ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS add to them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

const char *__asan_default_options(void);
const char *__ubsan_default_options(void);

/* halt_on_error: the first report ends the process with a failure the suite sees.
 * detect_leaks: LeakSanitizer at exit, after lua_close. */
const char *__asan_default_options(void)
{
    return "detect_leaks=1:halt_on_error=1:strict_string_checks=1:"
           "check_initialization_order=1:detect_stack_use_after_return=1";
}

const char *__ubsan_default_options(void)
{
    return "print_stacktrace=1:halt_on_error=1";
}

/* lua_close() unloads the C modules (dlclose) before LeakSanitizer runs at exit, which
 * would leave a leak's stack as "<unknown module>". Keeping them mapped keeps the report
 * readable: liblua's call binds to this definition, which does nothing. */
int dlclose(void *handle);
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int report(lua_State *L, const char *progname, int status)
{
    if (status != LUA_OK) {
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

static int docall(lua_State *L, int nargs)
{
    int status, base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    return status;
}

static int dostring(lua_State *L, const char *progname, const char *code, const char *name)
{
    int status = luaL_loadbuffer(L, code, strlen(code), name);
    if (status == LUA_OK)
        status = docall(L, 0);
    return report(L, progname, status);
}

static int run_init(lua_State *L, const char *progname)
{
    const char *name = "=LUA_INIT_5_4", *init = getenv(name + 1);
    if (init == NULL) {
        name = "=LUA_INIT";
        init = getenv(name + 1);
    }
    if (init == NULL)
        return LUA_OK;
    if (init[0] == '@') {
        int status = luaL_loadfile(L, init + 1);
        if (status == LUA_OK)
            status = docall(L, 0);
        return report(L, progname, status);
    }
    return dostring(L, progname, init, name);
}

/* argv[script] is arg[0]; what precedes it gets negative indices, as lua.c does. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script)
{
    int i;
    lua_createtable(L, argc - script - 1, script + 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

int main(int argc, char **argv)
{
    const char *progname = argc > 0 ? argv[0] : "sanitized_lua";
    int script = 1, status, i;
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create a Lua state\n", progname);
        return 1;
    }
    luaL_openlibs(L);
    /* -e chunks first, in order; the first other argument is the script */
    while (script < argc && strcmp(argv[script], "-e") == 0 && script + 1 < argc)
        script += 2;
    if (script < argc && strcmp(argv[script], "--") == 0)
        script++;
    create_arg_table(L, argv, argc, script < argc ? script : argc - 1);
    status = run_init(L, progname);
    for (i = 1; status == LUA_OK && i < script; i += 2)
        if (strcmp(argv[i], "-e") == 0)
            status = dostring(L, progname, argv[i + 1], "=(command line)");
    if (status == LUA_OK && (script < argc || script == 1)) {
        const char *file = script < argc ? argv[script] : NULL;
        if (file != NULL && strcmp(file, "-") == 0)
            file = NULL;
        status = luaL_loadfile(L, file);
        if (status == LUA_OK) {
            int n = 0;
            for (i = script + 1; i < argc; i++, n++)
                lua_pushstring(L, argv[i]);
            status = docall(L, n);
        }
        report(L, progname, status);
    }
    lua_close(L);
    return status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
