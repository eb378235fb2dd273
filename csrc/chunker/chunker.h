/* Content-defined chunking with the xor32 rolling checksum of the CernVM-FS
 * server, so that our publisher cuts files at the same offsets as
 * cvmfs_server and produces the same chunk objects for the same bytes. */
#ifndef PARROT_CVMFS_CHUNKER_H
#define PARROT_CVMFS_CHUNKER_H

#include <stddef.h>
#include <stdint.h>

/* cdef: begin */
typedef struct {
    uint64_t min_size, avg_size, max_size;
    uint64_t last_cut; /* absolute offset where the current chunk starts */
    uint64_t pos;      /* absolute offset of the next byte to be fed */
    uint32_t xor32;
    int64_t threshold;
} pc_chunker;

void pc_chunker_init(pc_chunker *c, uint64_t min_size, uint64_t avg_size, uint64_t max_size);

/* Feed the next len bytes of the stream; writes the absolute offsets of the
 * cut marks found into cuts (at most max_cuts; len / min_size + 1 always
 * suffices) and returns how many were written. */
size_t pc_chunker_feed(pc_chunker *c, const uint8_t *buf, size_t len, uint64_t *cuts,
                       size_t max_cuts);
/* cdef: end */

#endif
