/* One HTTP exchange on a libcurl easy handle, shared by the session (one call at a
 * time) and the pool (many in flight on the multi interface). */
#ifndef RRPC_TRANSFER_H
#define RRPC_TRANSFER_H

#include <curl/curl.h>

#include "rrpc.h"

struct rrpc_buffer {
    char *data;
    size_t len, cap;
};

/* The bytes of answers held in memory by every transfer that shares it (a client's
 * session and pool), against a limit. Counted by reference: the Lua budget object, the
 * session and the pool each hold one, so it outlives whichever is collected first. */
struct rrpc_budget {
    size_t limit, held;
    int refs;
};

/* A libcurl share handle of TLS sessions (tls_sessions.c), counted by reference like the
 * budget. */
struct rrpc_tls_sessions {
    CURLSH *share;
    int refs;
};

/* The GOAWAYs an owner's (a session's or a pool's) h2 connections received lately, each
 * known by the connection's local port: libcurl tells only one of the connection's
 * transfers about it, and every stream above its last stream id was refused. */
#define RRPC_GOAWAYS 8
struct rrpc_goaways {
    long port[RRPC_GOAWAYS], last_stream[RRPC_GOAWAYS];
    int next;
};

/* Connection settings, copied out of the Lua options table. */
#define RRPC_USER_AGENT_PREFIX "User-Agent: "

struct rrpc_options {
    long connect_ms, idle_s, receive_buffer;
    long http_version;           /* CURL_HTTP_VERSION_1_1 or _2TLS */
    size_t max_response;
    int verify;
    char *ca_file, *ca_path, *proxy, *no_proxy;
    char *user_agent_line; /* RRPC_USER_AGENT_PREFIX and the user agent, or NULL */
    struct rrpc_budget *budget;
    struct rrpc_tls_sessions *tls_sessions; /* or NULL: each handle keeps its own */
    struct rrpc_goaways *goaways; /* with http_version "2" */
};

struct rrpc_transfer {
    CURL *easy;
    struct curl_slist *headers;  /* a request of rrpc_transfer_prepare's */
    /* a request of rrpc_transfer_prepare_signed's: its URL, body and header lines in one
     * buffer, kept from call to call, and the list that points into it */
    struct rrpc_buffer request;
    struct curl_slist lines[RRPC_SIGNED_HEADERS + 5]; /* + the User-Agent and UNSENT */
    /* the length of the URL libcurl has, when it is the one at the start of `request`
     * (the last signed request's), or 0: a signer's next URL is most often the same, and
     * setting it makes libcurl copy it again */
    size_t signed_url_len;
    struct rrpc_buffer body, head;
    const struct rrpc_options *options;
    int too_large, over_budget;
    int requests_started;        /* times libcurl began to write this call's request */
    long local_port;             /* of the connection its request was first written on */
    long h2_stream;              /* that request's HTTP/2 stream id, or 0 (HTTP/1.1) */
    int refused;                 /* the server refused that stream before processing it */
    size_t budgeted;             /* bytes of this call's answer counted in the budget */
    lua_Integer token;           /* the pool's name for this call */
    int lane;                    /* the pool's multi handle for this call */
    struct rrpc_transfer *next;  /* the pool's lists */
    struct rrpc_transfer *prev;
    char error[CURL_ERROR_SIZE];
};

/* Initialises libcurl once per process; returns 0 when it cannot. */
int rrpc_curl_ready(void);

/* options.c */
void rrpc_options_read(lua_State *L, int t, struct rrpc_options *o);
void rrpc_options_free(struct rrpc_options *o);

/* budget.c: pushes a new budget object; drops one reference */
struct rrpc_budget *rrpc_push_budget(lua_State *L, lua_Number limit);
void rrpc_budget_release(struct rrpc_budget *b);

/* tls_sessions.c: drops one reference */
void rrpc_tls_sessions_release(struct rrpc_tls_sessions *s);

/* Creates the easy handle. Returns NULL, or what failed: the name of the option libcurl
 * refused, or "libcurl" when it cannot make a handle. */
const char *rrpc_transfer_open(struct rrpc_transfer *t, const struct rrpc_options *o);
void rrpc_transfer_close(struct rrpc_transfer *t);

/* Reads (method, url, headers, body, timeout_ms) at stack index first..first+4 and sets
 * the request up. `copy_body`: libcurl keeps its own copy (for transfers that outlive the
 * Lua call). Raises on bad arguments before anything is allocated. */
void rrpc_transfer_prepare(lua_State *L, struct rrpc_transfer *t, int first, int copy_body);

/* Sets a signed request up (rrpc_sign_with), copied into the transfer's own buffer: no
 * allocation once the buffer has grown to size. Raises when it cannot. */
void rrpc_transfer_prepare_signed(lua_State *L, struct rrpc_transfer *t, const struct rrpc_signed *s,
                                  long timeout_ms);

/* Drops what the call holds of an answer (a cancelled call), releasing its budget. */
void rrpc_transfer_release(struct rrpc_transfer *t);

/* After the transfer: frees the request headers, keeps the response for pushing. */
void rrpc_transfer_done(struct rrpc_transfer *t);

/* How a result's headers are pushed: a table, as session:perform's callers are given them
 * (a credential provider's fetch among them), or an rrpc.headers object for the calls to
 * the platform, which only the library reads. */
enum rrpc_headers_form { RRPC_HEADERS_TABLE, RRPC_HEADERS_OBJECT };

/* Pushes status, headers, body (returns 3) -- or nil, code, message, sent (returns 4). */
int rrpc_transfer_push_result(lua_State *L, struct rrpc_transfer *t, CURLcode rc,
                              enum rrpc_headers_form headers);

#endif
