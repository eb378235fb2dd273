/* The bulk fetcher: many objects from one HTTP server (or through one proxy), by a
 * few threads that each keep one connection alive. Each body is hashed as it
 * arrives, inflated, written to a temporary file and renamed into place only when
 * its digest and size are right. Used by preloads, where per-object work in Python
 * would be the bottleneck; whatever fails here (a dead server, a bad object, an
 * algorithm not done in C) is reported per item and retried by the Python
 * downloader, which knows every host, proxy and fail-over rule. Plain http:// only.
 *
 * Nothing a server sends is trusted to end: each item has a budget (a deadline for its
 * whole transfer, connecting and headers included) and every wait is a poll bounded by
 * the timeout and what is left of it; the low-speed rule (at least `low_speed` bytes per
 * second over every timeout) applies from the request on; and a body is refused the
 * moment it is longer than the item can be (`wire_limit` received, `limit` stored). */
#define _GNU_SOURCE
#include "fetch.h"

#include "digest.h"
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>


static pc_fetch_counters totals;

void pc_fetch_counters_get(pc_fetch_counters *out)
{
    out->objects = __atomic_load_n(&totals.objects, __ATOMIC_RELAXED);
    out->bytes = __atomic_load_n(&totals.bytes, __ATOMIC_RELAXED);
    out->connects = __atomic_load_n(&totals.connects, __ATOMIC_RELAXED);
    out->reuses = __atomic_load_n(&totals.reuses, __ATOMIC_RELAXED);
    out->active = __atomic_load_n(&totals.active, __ATOMIC_RELAXED);
}

/* The idle kept-alive connections: few (each holds its buffers), the oldest evicted. */
#define POOL_MAX 8
#define POOL_HOST 256

typedef struct {
    conn *c;
    char host[POOL_HOST];
    int port;
} pooled;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pooled pool[POOL_MAX];
static int pool_n;

/* A connection that the server closed (or that holds bytes nobody asked for) while
 * idle: readable before any request. */
static int conn_stale(const conn *c)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    return c->end != c->start || poll(&p, 1, 0) != 0;
}

/* An idle connection to host:port from the pool, or a new unconnected one (NULL if
 * out of memory). */
static conn *conn_take(const char *host, int port)
{
    for (;;) {
        conn *c = NULL;
        pthread_mutex_lock(&pool_lock);
        for (int i = pool_n - 1; i >= 0; i--)
            if (pool[i].port == port && strcmp(pool[i].host, host) == 0) {
                c = pool[i].c;
                memmove(&pool[i], &pool[i + 1], (size_t)(pool_n - i - 1) * sizeof *pool);
                pool_n--;
                break;
            }
        pthread_mutex_unlock(&pool_lock);
        if (!c)
            break;
        if (!conn_stale(c))
            return c;
        conn_close(c);
        free(c);
    }
    conn *c = malloc(sizeof *c);
    if (c) {
        c->fd = -1;
        c->start = c->end = 0;
    }
    return c;
}

/* Back to the pool if it is still connected (the oldest idle one makes room). */
static void conn_give(conn *c, const char *host, int port)
{
    conn *evicted = NULL;
    if (c->fd >= 0 && strlen(host) < POOL_HOST) {
        pthread_mutex_lock(&pool_lock);
        if (pool_n == POOL_MAX) {
            evicted = pool[0].c;
            memmove(&pool[0], &pool[1], (size_t)(POOL_MAX - 1) * sizeof *pool);
            pool_n--;
        }
        pool[pool_n].c = c;
        strcpy(pool[pool_n].host, host);
        pool[pool_n].port = port;
        pool_n++;
        pthread_mutex_unlock(&pool_lock);
        c = evicted;
    }
    if (c) {
        conn_close(c);
        free(c);
    }
}

void pc_fetch_pool_clear(void)
{
    pthread_mutex_lock(&pool_lock);
    int n = pool_n;
    pooled taken[POOL_MAX];
    memcpy(taken, pool, (size_t)n * sizeof *pool);
    pool_n = 0;
    pthread_mutex_unlock(&pool_lock);
    for (int i = 0; i < n; i++) {
        conn_close(taken[i].c);
        free(taken[i].c);
    }
}

typedef struct {
    const char *host;
    int port;
    const char *host_header;
    int timeout_ms;
    int64_t low_speed; /* bytes per second; 0: no low-speed rule */
    pc_fetch_item *items;
    int n;
    int next; /* atomically taken */
    pc_fetch_progress *progress;
    mode_t umask;
} batch;


typedef struct {
    conn *c;
    pc_digest digest;
    int verified; /* digest computed (and compared at the end) */
    z_stream z;
    int compressed, inflating_done;
    int fd;
    int64_t pos;                    /* where the next bytes go in fd; -1: appended */
    int64_t stored, limit;          /* inflated bytes: stored, and the most it may be */
    int64_t received, wire_limit;   /* body bytes: received, and the most there may be */
} object_sink;

#define SINK_BAD_DATA -10
#define SINK_LOCAL -11

static int write_all(int fd, int64_t *pos, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = *pos < 0 ? write(fd, p, n) : pwrite(fd, p, n, (off_t)*pos);
        if (k > 0 && *pos >= 0)
            *pos += k;
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One inflate() into the output buffer, stored: 0, or SINK_*. Feeding data
 * (Z_NO_FLUSH), a zlib error is bad data before anything is stored; finishing
 * (Z_FINISH), the caller judges *rc once what came out is stored. */
static int inflate_some(object_sink *s, int flush, int *rc, size_t *got)
{
    s->z.next_out = s->c->out;
    s->z.avail_out = OUTBUF;
    *rc = inflate(&s->z, flush);
    if (flush == Z_NO_FLUSH && *rc != Z_OK && *rc != Z_STREAM_END &&
        !(*rc == Z_BUF_ERROR && s->z.avail_out == 0))
        return SINK_BAD_DATA;
    *got = OUTBUF - s->z.avail_out;
    s->stored += (int64_t)*got;
    if (s->limit >= 0 && s->stored > s->limit)
        return SINK_BAD_DATA;
    if (*got && write_all(s->fd, &s->pos, s->c->out, *got))
        return SINK_LOCAL;
    return 0;
}

static int object_piece(void *ctx, const unsigned char *p, size_t n)
{
    object_sink *s = ctx;
    s->received += (int64_t)n;
    if (s->received > s->wire_limit)
        return SINK_BAD_DATA; /* longer than the object can be: stop reading now */
    if (s->verified)
        pc_digest_update(&s->digest, p, n);
    if (!s->compressed) {
        s->stored += (int64_t)n;
        if (s->limit >= 0 && s->stored > s->limit)
            return SINK_BAD_DATA;
        return write_all(s->fd, &s->pos, p, n) ? SINK_LOCAL : 0;
    }
    if (s->inflating_done)
        return n ? SINK_BAD_DATA : 0; /* bytes after the end of the zlib stream */
    s->z.next_in = (unsigned char *)p;
    s->z.avail_in = (unsigned)n;
    while (s->z.avail_in) {
        int rc;
        size_t got;
        int bad = inflate_some(s, Z_NO_FLUSH, &rc, &got);
        if (bad)
            return bad;
        if (rc == Z_STREAM_END) {
            s->inflating_done = 1;
            return s->z.avail_in ? SINK_BAD_DATA : 0;
        }
    }
    return 0;
}

/* Flush what zlib still holds (nothing for a well-formed stream ended by its data). */
static int object_finish(object_sink *s)
{
    if (!s->compressed || s->inflating_done)
        return 0;
    for (;;) {
        s->z.next_in = NULL;
        s->z.avail_in = 0;
        int rc;
        size_t got;
        int bad = inflate_some(s, Z_FINISH, &rc, &got);
        if (bad)
            return bad;
        if (rc == Z_STREAM_END)
            return 0;
        if (rc != Z_OK && !(rc == Z_BUF_ERROR && got))
            return SINK_BAD_DATA;
    }
}

/* One object over the connection (opened or reused). */
static void fetch_one(conn *c, const batch *b, pc_fetch_item *it)
{
    struct stat st;
    /* already there: a regular file of the right size (the cache's rule, cache.py) */
    if (it->dest && lstat(it->dest, &st) == 0 && S_ISREG(st.st_mode) &&
        (it->size < 0 || st.st_size == it->size)) {
        it->status = PC_FETCH_PRESENT;
        it->stored = st.st_size;
        return;
    }
    int verified = it->algorithm != PC_FETCH_UNVERIFIED;
    pc_digest probe;
    if (verified && pc_digest_init(&probe, it->algorithm) != 0) {
        it->status = PC_FETCH_UNSUPPORTED;
        return;
    }
    char req[4096 + 512];
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: parrot-cvmfs\r\n"
                       "Connection: keep-alive\r\n\r\n",
                       it->request, b->host_header);
    if (len <= 0 || (size_t)len >= sizeof req) {
        it->status = PC_FETCH_UNSUPPORTED;
        return;
    }
    response r;
    int attempt, rc = -1;
    conn_budget(c, it->budget_ms);
    for (attempt = 0; attempt < 2; attempt++) { /* a kept-alive connection may have closed */
        int reused = c->fd >= 0;
        if (!reused) {
            if (conn_open(c, b->host, b->port) != 0) {
                it->status = PC_FETCH_CONNECT;
                return;
            }
            __atomic_fetch_add(&totals.connects, 1, __ATOMIC_RELAXED);
        }
        rc = send_all(c, req, (size_t)len);
        if (rc == 0)
            rc = read_head(c, &r);
        if (rc == 0) {
            if (reused)
                __atomic_fetch_add(&totals.reuses, 1, __ATOMIC_RELAXED);
            break;
        }
        conn_close(c);
        if (!reused || rc == -2)
            break; /* garbage is the server's answer, not a closed connection */
    }
    if (rc != 0) {
        it->status = rc == -2 ? PC_FETCH_BAD_DATA : PC_FETCH_NETWORK;
        return;
    }
    it->http_status = r.status;
    if (r.status != 200) {
        /* a short error page is read to keep the connection; anything else closes it */
        if (r.chunked || r.length < 0 || r.length > MAX_ERROR_BODY ||
            read_body(c, &r, discard, NULL) != 0 || r.close)
            conn_close(c);
        it->status = PC_FETCH_HTTP;
        return;
    }
    if (r.length > it->wire_limit) { /* announced longer than it can be: not read at all */
        conn_close(c);
        it->status = PC_FETCH_BAD_DATA;
        return;
    }
    object_sink s;
    memset(&s, 0, sizeof s);
    s.c = c;
    s.compressed = it->compressed;
    s.limit = it->limit >= 0 ? it->limit : it->size;
    s.wire_limit = it->wire_limit;
    s.verified = verified;
    if (verified)
        pc_digest_init(&s.digest, it->algorithm);
    if (s.compressed && inflateInit(&s.z) != Z_OK) {
        it->status = PC_FETCH_LOCAL;
        return;
    }
    s.pos = -1;
    if (!it->tmp) { /* into the caller's file, which it discards unless all went well */
        s.fd = it->fd;
        s.pos = it->offset;
    } else
        s.fd = open(it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, it->mode);
    if (s.fd < 0) {
        if (s.compressed)
            inflateEnd(&s.z);
        it->status = PC_FETCH_LOCAL;
        /* the body must still be read (or the connection dropped) */
        conn_close(c);
        return;
    }
    if (it->tmp && (b->umask & (mode_t)it->mode))
        fchmod(s.fd, (mode_t)it->mode); /* what the umask took away */
    rc = read_body(c, &r, object_piece, &s);
    if (rc == 0)
        rc = object_finish(&s);
    if (s.compressed)
        inflateEnd(&s.z);
    int closed = it->tmp ? close(s.fd) : 0;
    unsigned char got[20];
    if (verified)
        pc_digest_final(&s.digest, got);
    if (rc == 0 && closed != 0)
        rc = SINK_LOCAL;
    if (rc == 0 && verified && memcmp(got, it->digest, 20) != 0)
        rc = SINK_BAD_DATA;
    if (rc == 0 && verified && it->size >= 0 && s.stored != it->size)
        rc = SINK_BAD_DATA;
    if (rc == 0 && s.compressed && !s.inflating_done)
        rc = SINK_BAD_DATA;
    if (rc == 0 && it->tmp && it->dest && rename(it->tmp, it->dest) != 0)
        rc = SINK_LOCAL;
    if (rc != 0) {
        if (it->tmp)
            unlink(it->tmp);
        if (rc == -1 || rc == -2 || rc == SINK_BAD_DATA)
            conn_close(c); /* the rest of the body is unknown: start afresh */
        it->status = rc == SINK_LOCAL ? PC_FETCH_LOCAL
                     : rc == -1       ? PC_FETCH_NETWORK
                                      : PC_FETCH_BAD_DATA;
        return;
    }
    if (r.close)
        conn_close(c);
    it->stored = s.stored;
    it->received = s.received;
    it->status = PC_FETCH_OK;
}

static void *worker(void *arg)
{
    batch *b = arg;
    conn *c = conn_take(b->host, b->port);
    if (!c)
        return NULL;
    c->timeout_ms = b->timeout_ms;
    c->low_speed = b->low_speed;
    for (;;) {
        if (b->progress && __atomic_load_n(&b->progress->stop, __ATOMIC_RELAXED))
            break;
        int i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n)
            break;
        pc_fetch_item *it = &b->items[i];
        __atomic_fetch_add(&totals.active, 1, __ATOMIC_RELAXED);
        fetch_one(c, b, it);
        __atomic_fetch_sub(&totals.active, 1, __ATOMIC_RELAXED);
        if (it->status == PC_FETCH_OK) {
            __atomic_fetch_add(&totals.objects, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&totals.bytes, it->stored, __ATOMIC_RELAXED);
        }
        if (b->progress) {
            __atomic_fetch_add(&b->progress->done, 1, __ATOMIC_RELAXED);
            if (it->status == PC_FETCH_OK)
                __atomic_fetch_add(&b->progress->bytes, it->stored, __ATOMIC_RELAXED);
        }
    }
    conn_give(c, b->host, b->port);
    return NULL;
}

/* The umask without setting it (umask(2) would race with the process's other threads). */
static mode_t current_umask(void)
{
    char buf[2048];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return 022;
    buf[n] = '\0';
    const char *u = strstr(buf, "\nUmask:");
    return u ? (mode_t)strtol(u + 7, NULL, 8) : 022;
}

int pc_fetch_batch(const char *host, int port, const char *host_header, pc_fetch_item *items,
                   int n, int nthreads, int timeout_ms, int64_t low_speed_limit,
                   pc_fetch_progress *progress)
{
    mode_t mask = current_umask();
    batch b = {host,  port, host_header, timeout_ms > 0 ? timeout_ms : 10000, low_speed_limit,
               items, n,    0,           progress,                            mask};
    for (int i = 0; i < n; i++)
        items[i].status = PC_FETCH_NOT_TRIED;
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > n)
        nthreads = n > 0 ? n : 1;
    if (nthreads == 1) { /* one object on demand: no thread to start */
        worker(&b);
        return 0;
    }
    pthread_t *t = calloc((size_t)nthreads, sizeof *t);
    if (!t)
        return -1;
    int started = 0;
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, &b) == 0)
            started++;
        else
            break;
    if (started == 0)
        worker(&b);
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    free(t);
    return 0;
}
