/* A connection to Redis through hiredis's non-blocking low-level API, for rrpc.quota.redis
 * in plain Lua: connect, queue commands, write, read replies, each without blocking, and
 * the socket to watch (a batch's pool waits on it beside its transfers). hiredis does the
 * protocol; Lua does the policy (timeouts, what to send, what a reply means).
 *
 *   conn, err = redis(host, port)    connection started (hiredis resolves the host)
 *   conn:fd()                        the socket
 *   conn:connected()                 true | false (still connecting) | nil, err
 *   conn:append(arg, ...)            one command queued (strings)
 *   conn:write()                     true when all queued bytes are out, false if some wait | nil, err
 *   conn:read()                      "wait" | "reply", value | "error", message | "io", message
 *   conn:wait(ms, write)             true when the socket is ready to read (or write) within ms
 *   conn:close()
 *
 * Replies: integers and strings as Lua values, nil as nil, arrays as tables (an error
 * inside one as { err = message }). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#include <hiredis.h>

#include "rrpc.h"

#define MAX_ARGS 32

struct redis_conn {
    redisContext *c;
};

static struct redis_conn *check_conn(lua_State *L)
{
    struct redis_conn *r = luaL_checkudata(L, 1, RRPC_REDIS_MT);
    if (r->c == NULL)
        luaL_error(L, "attempt to use a closed rrpc.redis connection");
    return r;
}

/* redis(host, port) --> conn | nil, err */
int l_redis(lua_State *L)
{
    const char *host = rrpc_checkstring(L, 1, NULL);
    lua_Integer port = luaL_checkinteger(L, 2);
    struct redis_conn *r;
    luaL_argcheck(L, port >= 1 && port <= 65535, 2, "port in 1..65535 expected");
    r = lua_newuserdatauv(L, sizeof *r, 0);
    r->c = NULL;
    luaL_setmetatable(L, RRPC_REDIS_MT);
    r->c = redisConnectNonBlock(host, (int)port);
    if (r->c == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "cannot allocate a hiredis context");
        return 2;
    }
    if (r->c->err) {
        lua_pushnil(L);
        lua_pushstring(L, r->c->errstr);
        redisFree(r->c);
        r->c = NULL;
        return 2;
    }
    return 1;
}

static int conn_fd(lua_State *L)
{
    lua_pushinteger(L, check_conn(L)->c->fd);
    return 1;
}

static int ready(int fd, int events, int ms)
{
    struct pollfd p;
    int n;
    p.fd = fd;
    p.events = (short)events;
    p.revents = 0;
    do
        n = poll(&p, 1, ms);
    while (n < 0 && errno == EINTR);
    return n > 0 ? p.revents : 0;
}

/* conn:connected() --> true | false | nil, err: the non-blocking connect's outcome */
static int conn_connected(lua_State *L)
{
    struct redis_conn *r = check_conn(L);
    int error = 0;
    socklen_t len = sizeof error;
    if (r->c->flags & REDIS_CONNECTED) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (!ready(r->c->fd, POLLOUT, 0)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (getsockopt(r->c->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
        error = errno;
    if (error != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(error));
        return 2;
    }
    r->c->flags |= REDIS_CONNECTED;
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:append(arg, ...): one command into hiredis's output buffer */
static int conn_append(lua_State *L)
{
    struct redis_conn *r = check_conn(L);
    const char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    int i, argc = lua_gettop(L) - 1;
    luaL_argcheck(L, argc >= 1 && argc <= MAX_ARGS, 2, "1..32 command arguments expected");
    for (i = 0; i < argc; i++)
        argv[i] = rrpc_checkstring(L, i + 2, &lens[i]);
    if (redisAppendCommandArgv(r->c, argc, argv, lens) != REDIS_OK)
        return luaL_error(L, "hiredis cannot queue the command: %s", r->c->errstr);
    return 0;
}

/* conn:write() --> true (all out) | false (more to write when writable) | nil, err.
 * A peer that has gone would raise SIGPIPE: it is blocked around the write and a
 * SIGPIPE that the write caused is taken back, so the process is never killed by it. */
static int conn_write(lua_State *L)
{
    struct redis_conn *r = check_conn(L);
    sigset_t pipe_set, old, pending;
    int done = 0, rc, was_pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigprocmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pending);
    was_pending = sigismember(&pending, SIGPIPE);
    rc = redisBufferWrite(r->c, &done);
    if (!was_pending) {
        struct timespec zero = {0, 0};
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE))
            sigtimedwait(&pipe_set, NULL, &zero);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (rc != REDIS_OK) {
        lua_pushnil(L);
        lua_pushstring(L, r->c->errstr);
        return 2;
    }
    lua_pushboolean(L, done);
    return 1;
}

static void push_reply(lua_State *L, const redisReply *reply, int depth)
{
    size_t i;
    switch (reply->type) {
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)reply->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, reply->str, reply->len);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, reply->str, reply->len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_REPLY_ARRAY:
        luaL_checkstack(L, 4, "Redis reply nested too deeply");
        lua_createtable(L, (int)reply->elements, 0);
        for (i = 0; i < reply->elements; i++) {
            if (depth < 8)
                push_reply(L, reply->element[i], depth + 1);
            else
                lua_pushnil(L);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default: /* REDIS_REPLY_NIL */
        lua_pushnil(L);
    }
}

/* conn:read() --> "wait" | "reply", value | "error", message | "io", message
 * Reads what the socket holds without blocking, then the next whole reply, if any. */
static int conn_read(lua_State *L)
{
    struct redis_conn *r = check_conn(L);
    void *reply = NULL;
    if (redisGetReplyFromReader(r->c, &reply) == REDIS_OK && reply == NULL) {
        if (ready(r->c->fd, POLLIN, 0) && redisBufferRead(r->c) != REDIS_OK)
            goto io_error;
        if (redisGetReplyFromReader(r->c, &reply) != REDIS_OK)
            goto io_error;
    } else if (r->c->err) {
        goto io_error;
    }
    if (reply == NULL) {
        lua_pushliteral(L, "wait");
        return 1;
    }
    if (((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
        lua_pushliteral(L, "error");
        lua_pushlstring(L, ((redisReply *)reply)->str, ((redisReply *)reply)->len);
    } else {
        lua_pushliteral(L, "reply");
        push_reply(L, reply, 0);
    }
    freeReplyObject(reply);
    return 2;
io_error:
    lua_pushliteral(L, "io");
    lua_pushstring(L, r->c->errstr[0] ? r->c->errstr : "connection error");
    return 2;
}

/* conn:wait(ms, write) --> whether the socket became readable (or writable) within ms */
static int conn_wait(lua_State *L)
{
    struct redis_conn *r = check_conn(L);
    lua_Integer ms = luaL_checkinteger(L, 2);
    int events = POLLIN | (lua_toboolean(L, 3) ? POLLOUT : 0);
    luaL_argcheck(L, ms >= 0 && ms <= 600000, 2, "wait must be in 0..600000 ms");
    lua_pushboolean(L, ready(r->c->fd, events, (int)ms) != 0);
    return 1;
}

static int conn_close(lua_State *L)
{
    struct redis_conn *r = luaL_checkudata(L, 1, RRPC_REDIS_MT);
    if (r->c != NULL) {
        redisFree(r->c);
        r->c = NULL;
    }
    return 0;
}

static int conn_tostring(lua_State *L)
{
    struct redis_conn *r = luaL_checkudata(L, 1, RRPC_REDIS_MT);
    if (r->c == NULL)
        lua_pushliteral(L, "rrpc.redis (closed)");
    else
        lua_pushfstring(L, "rrpc.redis (fd %d)", r->c->fd);
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"fd", conn_fd},
    {"connected", conn_connected},
    {"append", conn_append},
    {"write", conn_write},
    {"read", conn_read},
    {"wait", conn_wait},
    {"close", conn_close},
    {NULL, NULL},
};

const struct rrpc_class rrpc_redis_class = {RRPC_REDIS_MT, conn_methods, conn_close, conn_tostring};
