/* A pool: many calls in flight on libcurl's multi interface, sharing its kept-alive
 * connections. Lua adds calls and collects completions between transfers; no Lua runs
 * inside one. Finished easy handles are kept for the next calls.
 *
 * The sockets are watched with epoll and driven by curl_multi_socket_action, so each
 * wake-up costs in proportion to the sockets that are ready, not to the calls in flight
 * (curl_multi_perform and poll() visit all of them every time).
 *
 * Over HTTP/1.1 the calls are spread over lanes, a multi handle for each LANE_CONNECTIONS
 * of them: libcurl looks for a connection to reuse by walking every connection its multi
 * handle keeps to the host, so one multi handle with 1000 connections costs each call a
 * walk of 1000. Over HTTP/2 one multi handle multiplexes the calls on few connections. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "transfer.h"

#define EVENTS_PER_WAIT 256
#define LANE_CONNECTIONS 100
/* the lane of the caller's socket in an epoll event's data */
#define WATCH_LANE UINT32_MAX

struct pool;

struct lane {
    struct pool *pool;
    CURLM *multi;
    long long timer_at;           /* when libcurl wants its timeout handled (ms), or -1 */
    long in_flight;
    uint32_t index;
    int acted;                    /* libcurl acted since its messages were last read */
};

struct pool {
    struct lane *lanes;           /* NULL once closed */
    int lane_count;
    int epoll_fd;
    struct rrpc_options options;
    struct rrpc_transfer *active; /* in flight, doubly linked */
    struct rrpc_transfer *idle;   /* ready for reuse, linked by next */
    long in_flight, idle_count, max_idle;
    int watch_fd, watch_ready;    /* a socket of the caller's watched during run, or -1 */
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* libcurl says which events a socket needs; epoll watches for them, and tells the lane. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct lane *lane = userp;
    struct pool *p = lane->pool;
    struct epoll_event ev;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(p->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    ev.data.u64 = (uint64_t)lane->index << 32 | (uint32_t)fd;
    /* libcurl keeps our mark on the sockets epoll already watches (curl_multi_assign;
     * gone with CURL_POLL_REMOVE): a new socket is added, a known one modified, so no
     * epoll_ctl is tried in vain */
    if (socketp == NULL) {
        if (epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
            epoll_ctl(p->epoll_fd, EPOLL_CTL_MOD, fd, &ev);
        curl_multi_assign(lane->multi, fd, lane);
    } else if (epoll_ctl(p->epoll_fd, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) {
        epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
    }
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct lane *lane = userp;
    lane->timer_at = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    return 0;
}

static struct pool *check_pool(lua_State *L)
{
    struct pool *p = luaL_checkudata(L, 1, RRPC_POOL_MT);
    if (p->lanes == NULL)
        luaL_error(L, "attempt to use a closed rrpc pool");
    return p;
}

static void push_idle(struct pool *p, struct rrpc_transfer *t)
{
    t->prev = NULL;
    t->next = p->idle;
    p->idle = t;
    p->idle_count++;
}

static struct rrpc_transfer *pop_idle(struct pool *p)
{
    struct rrpc_transfer *t = p->idle;
    p->idle = t->next;
    p->idle_count--;
    return t;
}

static void link_active(struct pool *p, struct rrpc_transfer *t)
{
    t->prev = NULL;
    t->next = p->active;
    if (p->active != NULL)
        p->active->prev = t;
    p->active = t;
    p->in_flight++;
}

static void unlink_active(struct pool *p, struct rrpc_transfer *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        p->active = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    p->in_flight--;
}

static void free_transfer(struct rrpc_transfer *t)
{
    rrpc_transfer_close(t);
    free(t);
}

/* Takes a transfer out of the flight and keeps it for reuse, or frees it past max_idle. */
static void retire(struct pool *p, struct rrpc_transfer *t)
{
    struct lane *lane = &p->lanes[t->lane];
    curl_multi_remove_handle(lane->multi, t->easy);
    lane->in_flight--;
    rrpc_transfer_done(t);
    unlink_active(p, t);
    push_idle(p, t);
}

static void trim_idle(struct pool *p)
{
    while (p->idle_count > p->max_idle)
        free_transfer(pop_idle(p));
}

/* pool{ max_connections=, and the session's options } */
int l_pool(lua_State *L)
{
    struct pool *p;
    long max_connections, lanes, i;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "max_connections");
    max_connections = (long)lua_tointeger(L, -1); /* 0 when absent */
    luaL_argcheck(L, max_connections >= 1 && max_connections <= 100000, 1,
                  "field 'max_connections' must be an integer in 1..100000");
    lua_pop(L, 1);

    p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->epoll_fd = -1; /* before anything can raise: the __gc closes it when >= 0 */
    p->watch_fd = -1;
    luaL_setmetatable(L, RRPC_POOL_MT);
    rrpc_options_read(L, 1, &p->options);
    p->max_idle = max_connections;
    p->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epoll_fd < 0)
        return luaL_error(L, "cannot create an epoll instance: %s", strerror(errno));
    lanes = p->options.http_version == CURL_HTTP_VERSION_1_1
                ? (max_connections + LANE_CONNECTIONS - 1) / LANE_CONNECTIONS : 1;
    p->lanes = calloc((size_t)lanes, sizeof *p->lanes);
    if (p->lanes == NULL)
        return luaL_error(L, "out of memory");
    for (i = 0; i < lanes; i++) {
        struct lane *lane = &p->lanes[i];
        lane->pool = p;
        lane->index = (uint32_t)i;
        lane->timer_at = -1;
        lane->multi = rrpc_curl_ready() ? curl_multi_init() : NULL;
        if (lane->multi == NULL)
            return luaL_error(L, "cannot create a libcurl multi handle");
        p->lane_count++;
        /* keep as many connections alive as calls may be in flight */
        curl_multi_setopt(lane->multi, CURLMOPT_MAXCONNECTS, (max_connections + lanes - 1) / lanes);
        curl_multi_setopt(lane->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(lane->multi, CURLMOPT_SOCKETDATA, lane);
        curl_multi_setopt(lane->multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(lane->multi, CURLMOPT_TIMERDATA, lane);
    }
    return 1;
}

/* An idle transfer at the head of the idle list, made if there is none. */
static void ensure_idle(lua_State *L, struct pool *p)
{
    struct rrpc_transfer *t;
    const char *failed;
    if (p->idle != NULL)
        return;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        luaL_error(L, "out of memory");
    failed = rrpc_transfer_open(t, &p->options);
    if (failed != NULL) {
        free_transfer(t);
        luaL_error(L, "libcurl refused option '%s'", failed);
    }
    push_idle(p, t);
}

/* The prepared transfer at the head of the idle list joins the flight, in the lane with
 * the fewest calls. */
static int start(lua_State *L, struct pool *p, lua_Integer token)
{
    struct rrpc_transfer *t = pop_idle(p);
    int i, best = 0;
    for (i = 1; i < p->lane_count; i++)
        if (p->lanes[i].in_flight < p->lanes[best].in_flight)
            best = i;
    t->token = token;
    t->lane = best;
    link_active(p, t);
    if (curl_multi_add_handle(p->lanes[best].multi, t->easy) != CURLM_OK) {
        rrpc_transfer_done(t);
        unlink_active(p, t);
        push_idle(p, t);
        return luaL_error(L, "cannot add the call to the libcurl multi handle");
    }
    p->lanes[best].in_flight++;
    return 0;
}

/* pool:add(token, method, url, headers, body, timeout_ms) */
static int pool_add(lua_State *L)
{
    struct pool *p = check_pool(L);
    lua_Integer token = luaL_checkinteger(L, 2);
    lua_settop(L, 7);
    ensure_idle(L, p);
    /* the transfer stays on the idle list while prepare may raise, so it is never lost */
    rrpc_transfer_prepare(L, p->idle, 3, 1);
    return start(L, p, token);
}

/* pool:add_signed(token, signer, action, params, timeout_ms): a POST signed in C, as
 * session:perform_signed */
static int pool_add_signed(lua_State *L)
{
    struct pool *p = check_pool(L);
    lua_Integer token = luaL_checkinteger(L, 2);
    long timeout_ms = (long)luaL_checkinteger(L, 6);
    struct rrpc_signed request;
    luaL_argcheck(L, timeout_ms > 0, 6, "timeout must be positive");
    lua_settop(L, 6);
    ensure_idle(L, p);
    rrpc_sign_with(L, 3, 4, 5, &request);
    rrpc_transfer_prepare_signed(L, p->idle, &request, timeout_ms);
    return start(L, p, token);
}

/* Moves finished transfers into the results array at `results`, four slots each (no
 * table per completion: a batch collects thousands a second); returns how many slots are
 * filled. Only the lanes where libcurl acted can have finished any. */
static int collect(lua_State *L, struct pool *p, int results, int n)
{
    CURLMsg *msg;
    int left, i;
    for (i = 0; i < p->lane_count; i++) {
        struct lane *lane = &p->lanes[i];
        if (!lane->acted)
            continue;
        while ((msg = curl_multi_info_read(lane->multi, &left)) != NULL) {
            struct rrpc_transfer *t = NULL;
            CURLcode rc = msg->data.result;
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
            retire(p, t); /* owned by the pool before any Lua allocation can raise */

            lua_pushinteger(L, t->token);
            lua_rawseti(L, results, ++n);
            if (rrpc_transfer_push_result(L, t, rc, RRPC_HEADERS_OBJECT) == 4) {
                /* nil, code, message, sent: stored as sent, code, message */
                lua_rawseti(L, results, n + 1);
                lua_rawseti(L, results, n + 3);
                lua_rawseti(L, results, n + 2);
                lua_pop(L, 1);
            } else { /* status, headers, body */
                lua_rawseti(L, results, n + 3);
                lua_rawseti(L, results, n + 2);
                lua_rawseti(L, results, n + 1);
            }
            n += 3;
        }
        lane->acted = 0; /* after the loop: a raise above leaves the rest to be read */
    }
    trim_idle(p);
    return n;
}

/* Waits up to wait_ms for a ready socket or libcurl's timer, and lets libcurl act. A
 * signal ends the wait early (epoll_wait is never restarted). */
static void drive(struct pool *p, long long wait_ms)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    int i, ready, running;
    long long now = now_ms();
    for (i = 0; i < p->lane_count; i++) {
        long long at = p->lanes[i].timer_at;
        if (at >= 0 && at - now < wait_ms)
            wait_ms = at - now < 0 ? 0 : at - now;
    }
    ready = epoll_wait(p->epoll_fd, events, EVENTS_PER_WAIT, (int)wait_ms);
    for (i = 0; i < ready; i++) {
        uint32_t lane_index = (uint32_t)(events[i].data.u64 >> 32);
        curl_socket_t fd = (curl_socket_t)(uint32_t)events[i].data.u64;
        struct lane *lane;
        int flags = 0;
        if (lane_index == WATCH_LANE) { /* the caller's, not libcurl's */
            p->watch_ready = 1;
            continue;
        }
        lane = &p->lanes[lane_index];
        if (events[i].events & EPOLLIN)
            flags |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT)
            flags |= CURL_CSELECT_OUT;
        if (events[i].events & (EPOLLERR | EPOLLHUP))
            flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(lane->multi, fd, flags, &running);
        lane->acted = 1;
    }
    now = now_ms();
    for (i = 0; i < p->lane_count; i++) {
        struct lane *lane = &p->lanes[i];
        if (lane->timer_at >= 0 && now >= lane->timer_at) {
            lane->timer_at = -1;
            curl_multi_socket_action(lane->multi, CURL_SOCKET_TIMEOUT, 0, &running);
            lane->acted = 1;
        }
    }
}

/* Watches the caller's socket fd (readable, or writable too) for the length of one run. */
static void watch(struct pool *p, int fd, int write)
{
    struct epoll_event ev;
    p->watch_ready = 0;
    if (fd < 0)
        return;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (write ? EPOLLOUT : 0);
    ev.data.u64 = (uint64_t)WATCH_LANE << 32 | (uint32_t)fd;
    if (epoll_ctl(p->epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0)
        p->watch_fd = fd;
}

static void unwatch(struct pool *p)
{
    if (p->watch_fd >= 0)
        epoll_ctl(p->epoll_fd, EPOLL_CTL_DEL, p->watch_fd, NULL);
    p->watch_fd = -1;
    p->watch_ready = 0;
}

/* pool:run(wait_ms [, fd, write]) --> array of completions, four slots each:
 *   token, status (an integer), headers (rrpc.headers), body
 *   or token, sent (a boolean: whether the request may have left), code, message
 * Drives the transfers; waits up to wait_ms when none has finished yet (also when none
 * is in flight, so it doubles as the batch scheduler's sleep). With fd, it also returns
 * as soon as that socket of the caller's is readable (or writable, with write): a Redis
 * lease in flight (rrpc.quota.redis) is answered while the transfers go on. It returns
 * early too when a watched signal arrives (signal.c), so that the batch can act on it. */
static int pool_run(lua_State *L)
{
    struct pool *p = check_pool(L);
    lua_Integer wait_ms = luaL_optinteger(L, 2, 0);
    lua_Integer watch_fd = luaL_optinteger(L, 3, -1);
    int watch_write = lua_toboolean(L, 4);
    long long until;
    int n, signals = rrpc_signals_arrived();
    luaL_argcheck(L, wait_ms >= 0 && wait_ms <= 600000, 2, "wait must be in 0..600000 ms");
    luaL_argcheck(L, watch_fd >= -1 && watch_fd <= 1 << 30, 3, "a file descriptor expected");
    lua_settop(L, 2);
    lua_newtable(L);
    until = now_ms() + wait_ms;
    watch(p, (int)watch_fd, watch_write);
    drive(p, 0);
    n = collect(L, p, 3, 0);
    while (n == 0 && !p->watch_ready && now_ms() < until && rrpc_signals_arrived() == signals) {
        drive(p, until - now_ms());
        n = collect(L, p, 3, n);
    }
    unwatch(p);
    return 1;
}

/* pool:cancel(token) --> true if that call was in flight (it is dropped) */
static int pool_cancel(lua_State *L)
{
    struct pool *p = check_pool(L);
    lua_Integer token = luaL_checkinteger(L, 2);
    struct rrpc_transfer *t;
    for (t = p->active; t != NULL; t = t->next) {
        if (t->token == token) {
            retire(p, t);
            rrpc_transfer_release(t);
            trim_idle(p);
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    lua_pushboolean(L, 0);
    return 1;
}

static int pool_count(lua_State *L)
{
    struct pool *p = check_pool(L);
    lua_pushinteger(L, p->in_flight);
    return 1;
}

/* Each easy handle leaves the multi before it is cleaned up, then the multi goes. */
static int pool_close(lua_State *L)
{
    struct pool *p = luaL_checkudata(L, 1, RRPC_POOL_MT);
    int i;
    while (p->active != NULL) {
        struct rrpc_transfer *t = p->active;
        curl_multi_remove_handle(p->lanes[t->lane].multi, t->easy);
        unlink_active(p, t);
        free_transfer(t);
    }
    while (p->idle != NULL)
        free_transfer(pop_idle(p));
    for (i = 0; i < p->lane_count; i++)
        curl_multi_cleanup(p->lanes[i].multi);
    free(p->lanes);
    p->lanes = NULL;
    p->lane_count = 0;
    if (p->epoll_fd >= 0) {
        close(p->epoll_fd);
        p->epoll_fd = -1;
    }
    rrpc_options_free(&p->options);
    return 0;
}

static int pool_tostring(lua_State *L)
{
    struct pool *p = luaL_checkudata(L, 1, RRPC_POOL_MT);
    if (p->lanes == NULL)
        lua_pushliteral(L, "rrpc.pool (closed)");
    else
        lua_pushfstring(L, "rrpc.pool (%d in flight)", (int)p->in_flight);
    return 1;
}

static const luaL_Reg pool_methods[] = {
    {"add", pool_add},
    {"add_signed", pool_add_signed},
    {"run", pool_run},
    {"cancel", pool_cancel},
    {"count", pool_count},
    {"close", pool_close},
    {NULL, NULL},
};

const struct rrpc_class rrpc_pool_class = {RRPC_POOL_MT, pool_methods, pool_close, pool_tostring};
