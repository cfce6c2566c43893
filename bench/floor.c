/* The libcurl floor: a bare C program that sends the requests rrpc signed (read from a
 * file rrpc wrote: for each request its URL, its header lines, an empty line, its body
 * on one line; each with a nonce of its own, so that the emulator answers each as it
 * answers rrpc) with rrpc's libcurl settings, and does nothing with the answers but keep
 * them. What rrpc costs above this is rrpc's own: the floor signs nothing; it reads the
 * requests before it starts the clock, and copies each into its call slot's buffer as it
 * sends it (a sender holds the request of each call it has in flight).
 *
 *   floor REQUESTS_FILE CALLS CONCURRENCY RECEIVE_BUFFER_BYTES
 *     CONCURRENCY 1: one easy handle, a warm-up call on the first request, then CALLS
 *     sequential calls; more: the multi interface driven by epoll and
 *     curl_multi_socket_action (as rrpc's pool, src/pool.c: libcurl's way that does not
 *     walk every transfer at each event), with rrpc's lanes (a multi handle per 100 calls
 *     in flight), CONCURRENCY in flight, no warm-up.
 *     RECEIVE_BUFFER_BYTES: CURLOPT_BUFFERSIZE, as rrpc sets it.
 *   floor REQUESTS_FILE CALLS CONCURRENCY RECEIVE_BUFFER_BYTES CA_FILE HTTP_VERSION
 *     over HTTPS, as rrpc's ca_file and http_version ("1.1" or "2") make it: the CA file,
 *     one share handle keeping the TLS sessions of every easy handle, and with "2" h2
 *     offered in the handshake, each call waiting to multiplex (CURLOPT_PIPEWAIT) on one
 *     multi handle, as rrpc's pool has it over HTTP/2. With CONCURRENCY above 1 a warm-up
 *     call on an easy handle of its own first, whose session the calls may resume, as
 *     rrpc's bench client makes one.
 * Prints one JSON line: calls, ok (HTTP 200 answers), cpu_s, wall_s, rss_before_kb (after the
 * requests are read and the warm-up call, if any, is made, before the other easy handles
 * exist), peak_rss_kb. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <curl/curl.h>

struct buffer {
    char *data;
    size_t len, cap;
};

struct request {
    char *url, *body;
    size_t body_len;
    struct curl_slist *headers;
};

#define MAX_HEADER_LINES 16

/* A call slot: its easy handle, and the bytes of the request it has in flight (URL, body,
 * header lines, and the list of the lines pointing into them) in a buffer of its own,
 * kept for the slot's next calls, as rrpc's transfers keep theirs: a sender holds a
 * call's request while it is in flight, so its memory is the call's. */
struct call {
    CURL *easy;
    struct buffer request, body, head;
    struct curl_slist lines[MAX_HEADER_LINES];
};

static struct request *requests;
static long request_count, receive_buffer;
/* over HTTPS: the CA file, the share handle of the TLS sessions; the HTTP version asked */
static const char *ca_file;
static CURLSH *tls_sessions;
static long http_version = CURL_HTTP_VERSION_1_1;

/* Appends n bytes to b (an answer's); 0 when out of memory. */
static int append(struct buffer *b, const char *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (b->data == NULL)
            return 0;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 1;
}

static size_t keep(char *p, size_t size, size_t nmemb, void *ud)
{
    size_t n = size * nmemb;
    return append(ud, p, n) ? n : 0;
}

static long memory_kb(const char *field)
{
    char line[256];
    long kb = -1;
    size_t n = strlen(field);
    FILE *f = fopen("/proc/self/status", "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, n) == 0 && line[n] == ':')
            kb = strtol(line + n + 1, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kb;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what, const char *path)
{
    fprintf(stderr, "floor: %s: %s\n", path, what);
    exit(2);
}

static void read_requests(const char *path)
{
    static char line[1 << 20];
    long cap = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail("cannot open", path);
    while (fgets(line, sizeof line, f) != NULL) {
        struct request *r;
        line[strcspn(line, "\r\n")] = '\0';
        if (request_count == cap) {
            cap = cap ? cap * 2 : 1024;
            requests = realloc(requests, (size_t)cap * sizeof *requests);
            if (requests == NULL)
                fail("out of memory", path);
        }
        r = &requests[request_count++];
        memset(r, 0, sizeof *r);
        r->url = strdup(line);
        while (fgets(line, sizeof line, f) != NULL) {
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0] == '\0')
                break;
            r->headers = curl_slist_append(r->headers, line);
        }
        /* as rrpc sends them: no 100-continue, no catch-all Accept, no Accept-Encoding
         * (an answer that comes compressed all the same is still decoded) */
        r->headers = curl_slist_append(r->headers, "Expect:");
        r->headers = curl_slist_append(r->headers, "Accept:");
        r->headers = curl_slist_append(r->headers, "Accept-Encoding:");
        if (fgets(line, sizeof line, f) == NULL)
            fail("a request without a body line", path);
        line[strcspn(line, "\r\n")] = '\0';
        r->body = strdup(line);
        r->body_len = strlen(line);
    }
    fclose(f);
}

/* rrpc's easy-handle settings (src/transfer.c), so that both make the same HTTP */
static void set_up(struct call *c)
{
    CURL *e = curl_easy_init();
    c->easy = e;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, 8L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, receive_buffer);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, http_version);
    if (http_version != CURL_HTTP_VERSION_1_1)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (ca_file != NULL) {
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
        curl_easy_setopt(e, CURLOPT_SHARE, tls_sessions);
    }
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &c->head);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    p[n] = '\0';
    return p + n + 1;
}

/* the next request's bytes copied into the slot's buffer (grown to the size it needs, as
 * rrpc's is), and set on the handle as rrpc sets them per call */
static void aim(struct call *c, const struct request *r)
{
    size_t url_len = strlen(r->url), need = url_len + 1 + r->body_len + 1;
    const struct curl_slist *h;
    char *p, *body;
    int n = 0;
    for (h = r->headers; h != NULL; h = h->next, n++)
        need += strlen(h->data) + 1;
    if (n > MAX_HEADER_LINES)
        fail("too many header lines", "request");
    if (need > c->request.cap) {
        c->request.data = realloc(c->request.data, need);
        if (c->request.data == NULL)
            fail("out of memory", "request");
        c->request.cap = need;
    }
    c->body.len = c->head.len = 0;
    p = put(c->request.data, r->url, url_len);
    body = p;
    p = put(p, r->body, r->body_len);
    for (h = r->headers, n = 0; h != NULL; h = h->next, n++) {
        c->lines[n].data = p;
        c->lines[n].next = h->next != NULL ? &c->lines[n + 1] : NULL;
        p = put(p, h->data, strlen(h->data));
    }
    curl_easy_setopt(c->easy, CURLOPT_URL, c->request.data);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, n > 0 ? c->lines : NULL);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, body);
}

static int answered(CURL *easy, CURLcode code)
{
    long status = 0;
    return code == CURLE_OK && curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
           status == 200;
}

/* Lanes, as rrpc's pool has them over HTTP/1.1: a multi handle for each LANE_CONNECTIONS
 * calls in flight, so that libcurl's walk of a multi handle's connections stays short;
 * all watched by one epoll instance. */
#define LANE_CONNECTIONS 100

struct lane {
    CURLM *multi;
    long long timer_at; /* when libcurl wants its timeout handled (ms), or -1 */
    long index;
};

static int epoll_fd;

static long long now_ms(void)
{
    return (long long)(wall_seconds() * 1000);
}

/* libcurl says which events a socket needs; epoll watches for them. A socket libcurl has
 * not seen before is added, one it has is modified (curl_multi_assign marks it). The
 * event carries the lane and the socket. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct lane *lane = userp;
    struct epoll_event ev;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    ev.data.u64 = ((uint64_t)lane->index << 32) | (uint32_t)fd;
    /* as rrpc's pool (src/pool.c) does: ADD when libcurl has no mark, MOD when it has,
     * and the other should epoll disagree */
    if (socketp == NULL) {
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
            epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
        curl_multi_assign(lane->multi, fd, &epoll_fd);
    } else if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) {
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
    }
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct lane *lane = userp;
    lane->timer_at = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    return 0;
}

int main(int argc, char **argv)
{
    long calls, concurrency, ok = 0, started = 0, i, rss_before, needed, warm_up;
    double cpu, wall;
    struct call *pool, warm;
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: floor REQUESTS_FILE CALLS CONCURRENCY RECEIVE_BUFFER_BYTES [CA_FILE HTTP_VERSION]\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    read_requests(argv[1]);
    calls = strtol(argv[2], NULL, 10);
    concurrency = strtol(argv[3], NULL, 10);
    receive_buffer = strtol(argv[4], NULL, 10);
    if (argc == 7) {
        ca_file = argv[5];
        if (strcmp(argv[6], "2") == 0)
            http_version = CURL_HTTP_VERSION_2TLS;
        else if (strcmp(argv[6], "1.1") != 0)
            fail("HTTP_VERSION is \"1.1\" or \"2\"", argv[6]);
        tls_sessions = curl_share_init();
        curl_share_setopt(tls_sessions, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    }
    /* sequential calls warm up their connection; over HTTPS calls in flight a session */
    warm_up = concurrency == 1 || ca_file != NULL;
    needed = calls + warm_up;
    if (calls < 1 || concurrency < 1 || receive_buffer < 1 || request_count < needed) {
        fprintf(stderr, "floor: %ld calls need %ld requests, %s has %ld\n", calls, needed, argv[1],
                request_count);
        return 2;
    }
    pool = calloc((size_t)concurrency, sizeof *pool);
    if (warm_up) {
        struct call *c = concurrency == 1 ? &pool[0] : &warm;
        memset(&warm, 0, sizeof warm);
        set_up(c);
        aim(c, &requests[started++]);
        curl_easy_perform(c->easy);
    }
    rss_before = memory_kb("VmRSS");
    cpu = cpu_seconds();
    wall = wall_seconds();
    if (concurrency == 1) {
        for (i = 0; i < calls; i++) {
            aim(&pool[0], &requests[started++]);
            if (answered(pool[0].easy, curl_easy_perform(pool[0].easy)))
                ok++;
        }
    } else {
        long lane_count = http_version == CURL_HTTP_VERSION_1_1
                              ? (concurrency + LANE_CONNECTIONS - 1) / LANE_CONNECTIONS : 1, done = 0, l;
        struct lane *lanes = calloc((size_t)lane_count, sizeof *lanes);
        int running;
        epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        for (l = 0; l < lane_count; l++) {
            lanes[l].multi = curl_multi_init();
            lanes[l].timer_at = -1;
            lanes[l].index = l;
            curl_multi_setopt(lanes[l].multi, CURLMOPT_MAXCONNECTS,
                              (concurrency + lane_count - 1) / lane_count); /* as rrpc's pool */
            curl_multi_setopt(lanes[l].multi, CURLMOPT_SOCKETFUNCTION, on_socket);
            curl_multi_setopt(lanes[l].multi, CURLMOPT_SOCKETDATA, &lanes[l]);
            curl_multi_setopt(lanes[l].multi, CURLMOPT_TIMERFUNCTION, on_timer);
            curl_multi_setopt(lanes[l].multi, CURLMOPT_TIMERDATA, &lanes[l]);
        }
        /* call slot i lives in lane i / LANE_CONNECTIONS (over h2, the one lane), its easy
         * handle reused there */
        for (i = 0; i < concurrency && started < needed; i++) {
            set_up(&pool[i]);
            aim(&pool[i], &requests[started++]);
            curl_multi_add_handle(lanes[i / LANE_CONNECTIONS % lane_count].multi, pool[i].easy);
        }
        while (done < calls) {
            struct epoll_event events[256];
            long long soonest = -1, wait;
            int n, left, k;
            CURLMsg *msg;
            for (l = 0; l < lane_count; l++)
                if (lanes[l].timer_at >= 0 && (soonest < 0 || lanes[l].timer_at < soonest))
                    soonest = lanes[l].timer_at;
            wait = soonest < 0 ? 1000 : soonest - now_ms();
            n = epoll_wait(epoll_fd, events, 256, wait < 0 ? 0 : (int)wait);
            for (k = 0; k < n; k++) {
                int flags = ((events[k].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                            ((events[k].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                            ((events[k].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
                struct lane *lane = &lanes[events[k].data.u64 >> 32];
                curl_multi_socket_action(lane->multi, (curl_socket_t)(uint32_t)events[k].data.u64, flags,
                                         &running);
            }
            for (l = 0; l < lane_count; l++) {
                if (lanes[l].timer_at >= 0 && now_ms() >= lanes[l].timer_at) {
                    lanes[l].timer_at = -1;
                    curl_multi_socket_action(lanes[l].multi, CURL_SOCKET_TIMEOUT, 0, &running);
                }
                while ((msg = curl_multi_info_read(lanes[l].multi, &left)) != NULL) {
                    struct call *c;
                    if (msg->msg != CURLMSG_DONE)
                        continue;
                    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
                    if (answered(c->easy, msg->data.result))
                        ok++;
                    done++;
                    curl_multi_remove_handle(lanes[l].multi, c->easy);
                    if (started < needed) {
                        aim(c, &requests[started++]);
                        curl_multi_add_handle(lanes[l].multi, c->easy);
                    }
                }
            }
        }
        for (l = 0; l < lane_count; l++)
            curl_multi_cleanup(lanes[l].multi);
        free(lanes);
    }
    printf("{\"calls\":%ld,\"ok\":%ld,\"cpu_s\":%.6f,\"wall_s\":%.6f,\"rss_before_kb\":%ld,\"peak_rss_kb\":%ld}\n",
           calls, ok, cpu_seconds() - cpu, wall_seconds() - wall, rss_before, memory_kb("VmHWM"));
    return 0;
}
