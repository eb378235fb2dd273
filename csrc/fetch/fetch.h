/* The bulk fetcher (fetch.c): many objects from one HTTP server or proxy, verified
 * and stored by C threads; failures are reported per item for the Python
 * downloader to retry with its fail-over rules. Every item is bounded: its body by
 * `wire_limit` and `limit`, its whole transfer (connecting and headers included) by
 * `budget_ms` and the low-speed rule. */
#ifndef PARROT_CVMFS_FETCH_H
#define PARROT_CVMFS_FETCH_H

#include <stdint.h>

/* cdef: begin */
enum {
    PC_FETCH_OK = 0,
    PC_FETCH_PRESENT = 1,     /* `dest` existed already */
    PC_FETCH_NOT_TRIED = 2,   /* the batch was stopped first */
    PC_FETCH_CONNECT = 3,     /* cannot connect */
    PC_FETCH_NETWORK = 4,     /* connection lost, timed out, too slow or past its budget */
    PC_FETCH_HTTP = 5,        /* a status other than 200 (in http_status) */
    PC_FETCH_BAD_DATA = 6,    /* wrong digest or size, longer than it can be, broken zlib or HTTP */
    PC_FETCH_LOCAL = 7,       /* cannot write the file */
    PC_FETCH_UNSUPPORTED = 8, /* a hash algorithm not done in C, or an overlong request */
};

#define PC_FETCH_UNVERIFIED -1

typedef struct {
    const char *request; /* the request target: a path, or an absolute URL via a proxy */
    const char *tmp;     /* written (created exclusively), then renamed to... */
    const char *dest;    /* ...this, once digest and size are right (NULL: left at tmp) */
    int fd;              /* tmp NULL: written into this open file instead, from... */
    int64_t offset;      /* ...this offset on (a chunk into its assembled file) */
    int algorithm;       /* PC_DIGEST_*, or PC_FETCH_UNVERIFIED (a file that the caller
                          * checks itself, such as a signed manifest) */
    unsigned char digest[20];
    int compressed;      /* zlib: inflate before storing */
    int64_t size;        /* exact stored size, -1 if unknown */
    int64_t limit;       /* the most bytes it may store (the size, when known) */
    int64_t wire_limit;  /* the most body bytes it may arrive as */
    int64_t budget_ms;   /* its whole transfer, from connecting to the last byte */
    int mode;            /* of the stored file */
    int status;          /* out: PC_FETCH_* */
    int http_status;     /* out */
    int64_t stored;      /* out: bytes stored */
    int64_t received;    /* out: body bytes received */
} pc_fetch_item;

typedef struct {
    int64_t done;  /* items finished (any status) */
    int64_t bytes; /* bytes stored */
    int stop;      /* set to stop taking new items */
} pc_fetch_progress;

/* What this process's fetchers did, counted since it started (atomically; read by
 * the client's download counters). */
typedef struct {
    int64_t objects;     /* stored (PC_FETCH_OK) */
    int64_t bytes;       /* stored bytes of those */
    int64_t connects;    /* connections opened */
    int64_t reuses;      /* requests answered over a kept-alive connection */
    int64_t active;      /* transfers in progress now */
} pc_fetch_counters;

void pc_fetch_counters_get(pc_fetch_counters *out);
/* Close the idle kept-alive connections (the next fetch connects afresh). */
void pc_fetch_pool_clear(void);

/* Fetch items[0..n) over connections to host:port with `nthreads` threads; returns
 * when all are settled (or `progress->stop` was set). 0, or -1 if no thread ran.
 * Connections are taken from, and given back to, a bounded pool of idle kept-alive
 * connections shared by every batch of the process (keyed by host and port), so
 * that objects fetched one by one on demand do not each pay a connection.
 * `timeout_ms` bounds each wait; a transfer must receive at least `low_speed_limit`
 * bytes per second over every `timeout_ms` (0: no such rule). */
int pc_fetch_batch(const char *host, int port, const char *host_header, pc_fetch_item *items,
                   int n, int nthreads, int timeout_ms, int64_t low_speed_limit,
                   pc_fetch_progress *progress);
/* cdef: end */

#endif
