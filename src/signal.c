/* Signals a program handles itself, deferred: the handler only counts the arrival and
 * remembers its order (sig_atomic_t), and Lua asks what arrived when it is ready to act
 * on it. Nothing is written, allocated or unwound inside the handler, so an interrupted
 * write is resumed where it was (SA_RESTART) and a line of output is never torn. Waits
 * that the kernel does not restart (epoll_wait, nanosleep) return early: the pool and
 * wait_signals notice what arrived. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "rrpc.h"

/* The arrivals not yet taken that are remembered in order; beyond these, only counted. */
#define RING 64

static const struct {
    const char *name;
    int number;
} NAMES[] = {
    {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
};
#define NAME_COUNT (sizeof NAMES / sizeof NAMES[0])

static volatile sig_atomic_t arrived;    /* how many arrived in all */
static volatile sig_atomic_t ring[RING]; /* ring[i % RING]: the signal of arrival i */
static volatile sig_atomic_t force_after; /* 0, or the arrival that ends the process */
static volatile sig_atomic_t taken;      /* how many Lua has been told about */
static struct sigaction previous[NAME_COUNT];
static int watching[NAME_COUNT];

static void on_signal(int sig)
{
    sig_atomic_t n = arrived;
    ring[n % RING] = sig;
    arrived = n + 1;
    if (force_after > 0 && n + 1 - taken >= force_after) {
        /* the program did not get to notice: end it the default way */
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

int rrpc_signals_arrived(void)
{
    return (int)arrived;
}

static int name_index(lua_State *L, int arg, const char *name)
{
    size_t i;
    for (i = 0; i < NAME_COUNT; i++)
        if (strcmp(NAMES[i].name, name) == 0)
            return (int)i;
    return luaL_argerror(L, arg, lua_pushfstring(L, "no signal '%s' (INT, TERM, HUP, QUIT, USR1, USR2)", name));
}

static const char *name_of(int sig)
{
    size_t i;
    for (i = 0; i < NAME_COUNT; i++)
        if (NAMES[i].number == sig)
            return NAMES[i].name;
    return "?";
}

static void restore(size_t i)
{
    if (watching[i]) {
        sigaction(NAMES[i].number, &previous[i], NULL);
        watching[i] = 0;
    }
}

/* watch_signals({ "INT", "TERM", ... }, force_after) -- from now on these signals only
 * count (a fresh start: what arrived before is forgotten); force_after > 0: that many
 * arrivals not taken end the process as the signal would have. Signals watched before
 * and not named now get their previous handling back. */
int l_watch_signals(lua_State *L)
{
    int want[NAME_COUNT] = {0};
    lua_Integer force = luaL_optinteger(L, 2, 0);
    size_t i, n;
    struct sigaction sa;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argcheck(L, force >= 0 && force <= 1000, 2, "must be in 0..1000");
    n = lua_rawlen(L, 1);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, (int)i);
        want[name_index(L, 1, rrpc_checkstring(L, -1, NULL))] = 1;
        lua_pop(L, 1);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < NAME_COUNT; i++)
        if (want[i])
            sigaddset(&sa.sa_mask, NAMES[i].number); /* one handler at a time */
    for (i = 0; i < NAME_COUNT; i++) {
        if (!want[i]) {
            restore(i);
        } else if (watching[i]) {
            sigaction(NAMES[i].number, &sa, NULL);
        } else if (sigaction(NAMES[i].number, &sa, &previous[i]) == 0) {
            watching[i] = 1;
        } else {
            return luaL_error(L, "cannot watch SIG%s: %s", NAMES[i].name, strerror(errno));
        }
    }
    force_after = (sig_atomic_t)force;
    taken = arrived;
    return 0;
}

/* unwatch_signals() -- every watched signal gets its previous handling back */
int l_unwatch_signals(lua_State *L)
{
    size_t i;
    (void)L;
    for (i = 0; i < NAME_COUNT; i++)
        restore(i);
    force_after = 0;
    return 0;
}

/* take_signals() --> { "INT", "TERM", ... }: what arrived since last asked, in order (the
 * oldest of more than 64 are left out) */
int l_take_signals(lua_State *L)
{
    sig_atomic_t now = arrived, from = taken;
    int k = 0;
    if (now - from > RING)
        from = now - RING;
    lua_createtable(L, (int)(now - from), 0);
    for (; from < now; from++) {
        lua_pushstring(L, name_of(ring[from % RING]));
        lua_rawseti(L, -2, ++k);
    }
    taken = now;
    return 1;
}

/* wait_signals(ms) --> true if a signal arrived that was not taken yet (at once, or
 * during the wait), false when the time was up */
int l_wait_signals(lua_State *L)
{
    lua_Number ms = luaL_checknumber(L, 1);
    struct timespec ts;
    luaL_argcheck(L, ms >= 0 && ms <= 3600000, 1, "milliseconds in 0..3600000 expected");
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (lua_Number)ts.tv_sec * 1000) * 1e6);
    while (arrived == taken && nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    lua_pushboolean(L, arrived != taken);
    return 1;
}

/* signal_number("INT") --> 2 */
int l_signal_number(lua_State *L)
{
    lua_pushinteger(L, NAMES[name_index(L, 1, rrpc_checkstring(L, 1, NULL))].number);
    return 1;
}
