#include "chunker.h"

/* The checksum depends only on the last 32 bytes: the server starts hashing
 * 32 bytes before the minimal chunk size and looks for a cut from there on. */
#define XOR32_WINDOW 32
#define MAGIC_NUMBER 2147483647LL /* UINT32_MAX / 2 */

void pc_chunker_init(pc_chunker *c, uint64_t min_size, uint64_t avg_size, uint64_t max_size)
{
    c->min_size = min_size;
    c->avg_size = avg_size;
    c->max_size = max_size;
    c->last_cut = 0;
    c->pos = 0;
    c->xor32 = 0;
    c->threshold = avg_size ? (int64_t)(UINT32_MAX / avg_size) : 0;
}

size_t pc_chunker_feed(pc_chunker *c, const uint8_t *buf, size_t len, uint64_t *cuts,
                       size_t max_cuts)
{
    size_t ncuts = 0;
    uint64_t end = c->pos + len;
    while (c->pos < end) {
        uint64_t hash_from = c->last_cut + c->min_size - XOR32_WINDOW;
        uint64_t check_from = c->last_cut + c->min_size;
        uint64_t hard_cut = c->last_cut + c->max_size;
        uint64_t p = c->pos;
        if (p < hash_from) { /* bytes that cannot influence the next cut */
            p = hash_from < end ? hash_from : end;
            c->pos = p;
            continue;
        }
        uint32_t x = c->xor32;
        uint64_t stop = check_from < end ? check_from : end;
        for (; p < stop; p++)
            x = (x << 1) ^ buf[p - (end - len)];
        stop = hard_cut < end ? hard_cut : end;
        int cut = 0;
        for (; p < stop; p++) {
            x = (x << 1) ^ buf[p - (end - len)];
            int64_t d = (int64_t)x - MAGIC_NUMBER;
            if ((d < 0 ? -d : d) < c->threshold) {
                cut = 1;
                break;
            }
        }
        if (!cut && p == hard_cut)
            cut = 1; /* reached the maximal chunk size: hard cut before byte p */
        if (cut) {
            if (ncuts < max_cuts)
                cuts[ncuts++] = p;
            c->last_cut = p;
            c->xor32 = 0;
            /* byte p starts the new chunk and lies before its hash window */
            c->pos = p;
            continue;
        }
        c->xor32 = x;
        c->pos = p;
    }
    return ncuts;
}
