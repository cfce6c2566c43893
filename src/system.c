/* What the host system tells and does: its name (for the User-Agent), a clock that never
 * jumps, and sleeping. */
#include <errno.h>
#include <time.h>
#include <sys/utsname.h>

#include "rrpc.h"

/* platform() --> os name, machine (for the User-Agent) */
int l_platform(lua_State *L)
{
    struct utsname u;
    if (uname(&u) != 0) {
        lua_pushliteral(L, "unknown");
        lua_pushliteral(L, "unknown");
    } else {
        lua_pushstring(L, u.sysname);
        lua_pushstring(L, u.machine);
    }
    return 2;
}

/* monotime() --> seconds of a clock that never jumps (for deadlines and rate limits) */
int l_monotime(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sleep(ms): for retry backoff between synchronous calls */
int l_sleep(lua_State *L)
{
    lua_Number ms = luaL_checknumber(L, 1);
    struct timespec ts;
    luaL_argcheck(L, ms >= 0 && ms <= 3600000, 1, "milliseconds in 0..3600000 expected");
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (lua_Number)ts.tv_sec * 1000) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}
