/* Streaming content hashes for the bulk fetcher (digest.c). */
#ifndef PARROT_CVMFS_DIGEST_H
#define PARROT_CVMFS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

enum { PC_DIGEST_SHA1 = 1, PC_DIGEST_SHAKE128 = 3 }; /* the hashes module's Algorithm values */

typedef struct {
    int algorithm;
    uint32_t h[5];    /* SHA-1 state */
    uint64_t s[25];   /* Keccak state */
    unsigned char buf[168];
    size_t fill;
    uint64_t total;
} pc_digest;

int pc_digest_init(pc_digest *d, int algorithm); /* -1: not an algorithm done here */
void pc_digest_update(pc_digest *d, const void *data, size_t len);
void pc_digest_final(pc_digest *d, unsigned char out[20]);

#endif
