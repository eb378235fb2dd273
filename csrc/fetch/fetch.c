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

#define INBUF (64 * 1024)
#define OUTBUF (256 * 1024)
#define MAX_HEADER (16 * 1024)
#define MAX_ERROR_BODY (64 * 1024)

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
    int fd; /* -1: not connected */
    unsigned char in[INBUF];
    size_t start, end; /* unread bytes in `in` */
    unsigned char out[OUTBUF];
    int timeout_ms;
    int64_t low_speed;
    /* the current item's bounds */
    int64_t deadline;                   /* CLOCK_MONOTONIC milliseconds */
    int64_t window_start, window_bytes; /* the low-speed window */
} conn;

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The bounds of the next transfer over `c`. */
static void conn_budget(conn *c, int64_t budget_ms)
{
    int64_t now = now_ms();
    c->deadline = now + (budget_ms > 0 ? budget_ms : c->timeout_ms);
    c->window_start = now;
    c->window_bytes = 0;
}

/* Until `fd` is ready for `events`: 0, or -1 once a timeout or the item's deadline
 * passed first. */
static int conn_wait(const conn *c, int fd, short events)
{
    for (;;) {
        int64_t left = c->deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, left < c->timeout_ms ? (int)left : c->timeout_ms);
        if (rc > 0)
            return 0; /* ready, or an error the next call reports */
        if (rc == 0 || errno != EINTR)
            return -1;
    }
}

/* Counts received bytes; 1 if the transfer is slower than the low-speed rule allows. */
static int conn_too_slow(conn *c, size_t n)
{
    c->window_bytes += (int64_t)n;
    int64_t now = now_ms(), elapsed = now - c->window_start;
    if (c->low_speed <= 0 || elapsed < c->timeout_ms)
        return 0;
    if (c->window_bytes * 1000 < c->low_speed * elapsed)
        return 1;
    c->window_start = now;
    c->window_bytes = 0;
    return 0;
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->start = c->end = 0;
}

/* Connects (the socket stays non-blocking: every wait is a bounded poll). */
static int conn_open(conn *c, const batch *b)
{
    struct addrinfo hints = {0}, *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", b->port);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(b->host, port, &hints, &res) != 0 || !res)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc < 0 && errno == EINPROGRESS) {
            int err = 0;
            socklen_t len = sizeof err;
            rc = conn_wait(c, fd, POLLOUT) == 0 &&
                         getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0
                     ? 0
                     : -1;
        }
        if (rc == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->start = c->end = 0;
    return 0;
}

/* More bytes into the buffer; 0 at end of stream, -1 on error, timeout, a transfer
 * too slow or past its deadline. */
static ssize_t conn_fill(conn *c)
{
    if (c->start == c->end)
        c->start = c->end = 0;
    else if (c->end == INBUF) {
        memmove(c->in, c->in + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->end, INBUF - c->end, 0);
        if (n > 0) {
            c->end += (size_t)n;
            return conn_too_slow(c, (size_t)n) ? -1 : n;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if ((errno != EAGAIN && errno != EWOULDBLOCK) || conn_wait(c, c->fd, POLLIN) != 0)
            return -1;
    }
}

static int send_all(conn *c, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) ||
            conn_wait(c, c->fd, POLLOUT) != 0)
            return -1;
    }
    return 0;
}

typedef struct {
    int status;
    int64_t length; /* -1: not given */
    int chunked;
    int close;
} response;

static int header_is(const char *line, size_t len, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return 0;
    const char *v = line + n + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    *value = v;
    return 1;
}

/* Reads the status line and headers. 0, or -1 (connection problem), -2 (garbage). */
static int read_head(conn *c, response *r)
{
    memset(r, 0, sizeof *r);
    r->length = -1;
    for (;;) {
        unsigned char *head = c->in + c->start;
        size_t avail = c->end - c->start;
        unsigned char *eoh = memmem(head, avail, "\r\n\r\n", 4);
        if (eoh) {
            *eoh = '\0';
            char *line = (char *)head, *nl;
            if (sscanf(line, "HTTP/%*d.%*d %d", &r->status) != 1)
                return -2;
            int http10 = strncmp(line, "HTTP/1.0", 8) == 0;
            r->close = http10;
            while ((nl = strstr(line, "\r\n")) != NULL) {
                line = nl + 2;
                size_t len = strcspn(line, "\r");
                const char *v;
                if (header_is(line, len, "Content-Length", &v))
                    r->length = strtoll(v, NULL, 10);
                else if (header_is(line, len, "Transfer-Encoding", &v))
                    r->chunked = strncasecmp(v, "chunked", 7) == 0;
                else if (header_is(line, len, "Connection", &v))
                    r->close = strncasecmp(v, "close", 5) == 0 ? 1
                               : strncasecmp(v, "keep-alive", 10) == 0 ? 0
                                                                       : r->close;
            }
            c->start += (size_t)(eoh - head) + 4;
            return 0;
        }
        if (avail >= MAX_HEADER)
            return -2;
        if (conn_fill(c) <= 0)
            return -1;
    }
}

/* The body as pieces: calls `sink` for each; 0, -1 (connection), -2 (garbage), or the
 * sink's own negative result. */
typedef int (*sink_fn)(void *ctx, const unsigned char *p, size_t n);

static int read_sized(conn *c, int64_t left, sink_fn sink, void *ctx)
{
    while (left > 0) {
        if (c->start == c->end && conn_fill(c) <= 0)
            return -1;
        size_t n = c->end - c->start;
        if ((int64_t)n > left)
            n = (size_t)left;
        int rc = sink(ctx, c->in + c->start, n);
        c->start += n;
        left -= (int64_t)n;
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int read_line(conn *c, char *out, size_t max)
{
    for (;;) {
        unsigned char *nl = memchr(c->in + c->start, '\n', c->end - c->start);
        if (nl) {
            size_t n = (size_t)(nl - (c->in + c->start));
            if (n >= max)
                return -2;
            memcpy(out, c->in + c->start, n);
            out[n] = '\0';
            c->start += n + 1;
            return 0;
        }
        if (c->end - c->start >= max)
            return -2;
        if (conn_fill(c) <= 0)
            return -1;
    }
}

static int read_body(conn *c, const response *r, sink_fn sink, void *ctx)
{
    if (!r->chunked)
        return r->length >= 0 ? read_sized(c, r->length, sink, ctx) : -2;
    char line[256];
    for (;;) {
        int rc = read_line(c, line, sizeof line);
        if (rc)
            return rc;
        char *end;
        long long size = strtoll(line, &end, 16);
        if (end == line || size < 0)
            return -2;
        if (size == 0) { /* trailers until an empty line */
            do
                if ((rc = read_line(c, line, sizeof line)))
                    return rc;
            while (line[0] != '\r' && line[0] != '\0');
            return 0;
        }
        if ((rc = read_sized(c, size, sink, ctx)))
            return rc;
        if ((rc = read_line(c, line, sizeof line)))
            return rc;
    }
}

static int discard(void *ctx, const unsigned char *p, size_t n)
{
    (void)ctx, (void)p, (void)n;
    return 0;
}

typedef struct {
    conn *c;
    pc_digest digest;
    int verified; /* digest computed (and compared at the end) */
    z_stream z;
    int compressed, inflating_done;
    int fd;
    int64_t stored, limit;          /* inflated bytes: stored, and the most it may be */
    int64_t received, wire_limit;   /* body bytes: received, and the most there may be */
} object_sink;

#define SINK_BAD_DATA -10
#define SINK_LOCAL -11

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
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
        return write_all(s->fd, p, n) ? SINK_LOCAL : 0;
    }
    if (s->inflating_done)
        return n ? SINK_BAD_DATA : 0; /* bytes after the end of the zlib stream */
    s->z.next_in = (unsigned char *)p;
    s->z.avail_in = (unsigned)n;
    while (s->z.avail_in) {
        s->z.next_out = s->c->out;
        s->z.avail_out = OUTBUF;
        int rc = inflate(&s->z, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && s->z.avail_out == 0))
            return SINK_BAD_DATA;
        size_t got = OUTBUF - s->z.avail_out;
        s->stored += (int64_t)got;
        if (s->limit >= 0 && s->stored > s->limit)
            return SINK_BAD_DATA;
        if (got && write_all(s->fd, s->c->out, got))
            return SINK_LOCAL;
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
        s->z.next_out = s->c->out;
        s->z.avail_out = OUTBUF;
        int rc = inflate(&s->z, Z_FINISH);
        size_t got = OUTBUF - s->z.avail_out;
        s->stored += (int64_t)got;
        if (s->limit >= 0 && s->stored > s->limit)
            return SINK_BAD_DATA;
        if (got && write_all(s->fd, s->c->out, got))
            return SINK_LOCAL;
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
        if (!reused && conn_open(c, b) != 0) {
            it->status = PC_FETCH_CONNECT;
            return;
        }
        rc = send_all(c, req, (size_t)len);
        if (rc == 0)
            rc = read_head(c, &r);
        if (rc == 0)
            break;
        conn_close(c);
        if (!reused)
            break;
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
    s.fd = open(it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, it->mode);
    if (s.fd < 0) {
        if (s.compressed)
            inflateEnd(&s.z);
        it->status = PC_FETCH_LOCAL;
        /* the body must still be read (or the connection dropped) */
        conn_close(c);
        return;
    }
    if (b->umask & (mode_t)it->mode)
        fchmod(s.fd, (mode_t)it->mode); /* what the umask took away */
    rc = read_body(c, &r, object_piece, &s);
    if (rc == 0)
        rc = object_finish(&s);
    if (s.compressed)
        inflateEnd(&s.z);
    int closed = close(s.fd);
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
    if (rc == 0 && it->dest && rename(it->tmp, it->dest) != 0)
        rc = SINK_LOCAL;
    if (rc != 0) {
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
    it->status = PC_FETCH_OK;
}

static void *worker(void *arg)
{
    batch *b = arg;
    conn *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    c->fd = -1;
    c->start = c->end = 0;
    c->timeout_ms = b->timeout_ms;
    c->low_speed = b->low_speed;
    for (;;) {
        if (b->progress && __atomic_load_n(&b->progress->stop, __ATOMIC_RELAXED))
            break;
        int i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n)
            break;
        pc_fetch_item *it = &b->items[i];
        fetch_one(c, b, it);
        if (b->progress) {
            __atomic_fetch_add(&b->progress->done, 1, __ATOMIC_RELAXED);
            if (it->status == PC_FETCH_OK)
                __atomic_fetch_add(&b->progress->bytes, it->stored, __ATOMIC_RELAXED);
        }
    }
    conn_close(c);
    free(c);
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
