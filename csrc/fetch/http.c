/* HTTP for the bulk fetcher: see http.h. */
#define _GNU_SOURCE
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

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The bounds of the next transfer over `c`. */
void conn_budget(conn *c, int64_t budget_ms)
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

void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->start = c->end = 0;
}

/* Connects (the socket stays non-blocking: every wait is a bounded poll). */
int conn_open(conn *c, const char *host, int port)
{
    struct addrinfo hints = {0}, *res = NULL;
    char portname[16];
    snprintf(portname, sizeof portname, "%d", port);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, portname, &hints, &res) != 0 || !res)
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

int send_all(conn *c, const char *p, size_t n)
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
int read_head(conn *c, response *r)
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

int read_body(conn *c, const response *r, sink_fn sink, void *ctx)
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

int discard(void *ctx, const unsigned char *p, size_t n)
{
    (void)ctx, (void)p, (void)n;
    return 0;
}
