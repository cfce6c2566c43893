/* The libcurl floor: a bare C program that sends the same request bytes as rrpc (read
 * from a file rrpc wrote: the URL, its header lines, an empty line, the body) with the
 * same libcurl settings, and does nothing with the answers but keep them. What rrpc costs
 * above this is rrpc's own.
 *
 *   floor REQUEST_FILE CALLS CONCURRENCY   (CONCURRENCY 1: one easy handle, sequential;
 *                                           more: the multi interface, that many in flight)
 * Prints one JSON line: calls, ok (HTTP answers), cpu_s, wall_s, rss_before_kb, peak_rss_kb. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <curl/curl.h>

struct buffer {
    char *data;
    size_t len, cap;
};

struct call {
    CURL *easy;
    struct buffer body, head;
};

static size_t keep(char *p, size_t size, size_t nmemb, void *ud)
{
    struct buffer *b = ud;
    size_t n = size * nmemb;
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
    return n;
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

static char *url, *body;
static size_t body_len;
static struct curl_slist *headers;

static void read_request(const char *path)
{
    static char line[65536];
    FILE *f = fopen(path, "rb");
    size_t n;
    if (f == NULL || fgets(line, sizeof line, f) == NULL) {
        fprintf(stderr, "floor: cannot read %s\n", path);
        exit(2);
    }
    line[strcspn(line, "\r\n")] = '\0';
    url = strdup(line);
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0')
            break;
        headers = curl_slist_append(headers, line);
    }
    /* as rrpc sends them: no 100-continue, no catch-all Accept */
    headers = curl_slist_append(headers, "Expect:");
    headers = curl_slist_append(headers, "Accept:");
    body = malloc(1 << 20);
    n = fread(body, 1, 1 << 20, f);
    body_len = n;
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
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &c->head);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
}

int main(int argc, char **argv)
{
    long calls, concurrency, ok = 0, started = 0, i, rss_before;
    double cpu, wall;
    struct call *pool;
    if (argc != 4) {
        fprintf(stderr, "usage: floor REQUEST_FILE CALLS CONCURRENCY\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    read_request(argv[1]);
    calls = strtol(argv[2], NULL, 10);
    concurrency = strtol(argv[3], NULL, 10);
    pool = calloc((size_t)concurrency, sizeof *pool);
    for (i = 0; i < concurrency; i++)
        set_up(&pool[i]);
    /* warm up: the connection, as rrpc's bench does */
    curl_easy_perform(pool[0].easy);
    pool[0].body.len = pool[0].head.len = 0;
    rss_before = memory_kb("VmRSS");
    cpu = cpu_seconds();
    wall = wall_seconds();
    if (concurrency == 1) {
        for (i = 0; i < calls; i++) {
            long status = 0;
            pool[0].body.len = pool[0].head.len = 0;
            if (curl_easy_perform(pool[0].easy) == CURLE_OK &&
                curl_easy_getinfo(pool[0].easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status > 0)
                ok++;
        }
    } else {
        CURLM *multi = curl_multi_init();
        long done = 0;
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, concurrency);
        for (i = 0; i < concurrency && started < calls; i++, started++)
            curl_multi_add_handle(multi, pool[i].easy);
        while (done < calls) {
            int running, left;
            CURLMsg *msg;
            curl_multi_perform(multi, &running);
            while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
                struct call *c;
                long status = 0;
                if (msg->msg != CURLMSG_DONE)
                    continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
                if (msg->data.result == CURLE_OK &&
                    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status > 0)
                    ok++;
                done++;
                curl_multi_remove_handle(multi, c->easy);
                c->body.len = c->head.len = 0;
                if (started < calls) {
                    curl_multi_add_handle(multi, c->easy);
                    started++;
                }
            }
            if (done < calls)
                curl_multi_poll(multi, NULL, 0, 100, NULL);
        }
        curl_multi_cleanup(multi);
    }
    printf("{\"calls\":%ld,\"ok\":%ld,\"cpu_s\":%.6f,\"wall_s\":%.6f,\"rss_before_kb\":%ld,\"peak_rss_kb\":%ld}\n",
           calls, ok, cpu_seconds() - cpu, wall_seconds() - wall, rss_before, memory_kb("VmHWM"));
    return 0;
}
