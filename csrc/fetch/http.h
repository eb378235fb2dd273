/* HTTP/1.1 for the bulk fetcher (http.c): one kept-alive connection per thread, every
 * wait a poll bounded by the item's budget and the low-speed rule; a response's head,
 * then its body (sized, chunked or up to the close) handed to a sink. */
#ifndef PARROT_CVMFS_HTTP_H
#define PARROT_CVMFS_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define INBUF (64 * 1024)
#define OUTBUF (256 * 1024)
#define MAX_HEADER (16 * 1024)
#define MAX_ERROR_BODY (64 * 1024)

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

typedef struct {
    int status;
    int64_t length; /* -1: not given */
    int chunked;
    int close;
} response;

/* takes the bytes of a body as they come: 0, or a negative code that stops the read */
typedef int (*sink_fn)(void *ctx, const unsigned char *p, size_t n);

/* the item's budget starts now: its deadline, and a fresh low-speed window */
void conn_budget(conn *c, int64_t budget_ms);
void conn_close(conn *c);
/* connect (the socket stays non-blocking): 0, or -1 */
int conn_open(conn *c, const char *host, int port);
/* the request: 0, or -1 (the connection is then unusable) */
int send_all(conn *c, const char *p, size_t n);
/* a response's status line and headers: 0, or -1 for a broken or overlong head */
int read_head(conn *c, response *r);
/* its body into `sink`: 0, -1 for a broken transfer, or the sink's own code */
int read_body(conn *c, const response *r, sink_fn sink, void *ctx);
/* a sink that drops what it is given (the body of an error response) */
int discard(void *ctx, const unsigned char *p, size_t n);

#endif
