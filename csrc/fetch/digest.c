/* The content hashes the bulk fetcher verifies as bytes arrive: SHA-1 (FIPS 180-4)
 * and SHAKE-128 (FIPS 202) cut to the 160 bits CernVM-FS uses. RIPEMD-160 objects
 * are left to the Python path (hashlib), which is rare enough not to matter. */
#include "digest.h"

#include <string.h>

/* ---- SHA-1 ------------------------------------------------------------------------ */

static uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(pc_digest *d, const unsigned char *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = d->h[0], b = d->h[1], c = d->h[2], e4 = d->h[3], e = d->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20)
            f = (b & c) | (~b & e4), k = 0x5A827999u;
        else if (i < 40)
            f = b ^ c ^ e4, k = 0x6ED9EBA1u;
        else if (i < 60)
            f = (b & c) | (b & e4) | (c & e4), k = 0x8F1BBCDCu;
        else
            f = b ^ c ^ e4, k = 0xCA62C1D6u;
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = e4;
        e4 = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    d->h[0] += a;
    d->h[1] += b;
    d->h[2] += c;
    d->h[3] += e4;
    d->h[4] += e;
}

/* ---- Keccak-f[1600] for SHAKE-128 --------------------------------------------------- */

static const uint64_t round_constants[24] = {
    0x0000000000000001ull, 0x0000000000008082ull, 0x800000000000808Aull, 0x8000000080008000ull,
    0x000000000000808Bull, 0x0000000080000001ull, 0x8000000080008081ull, 0x8000000000008009ull,
    0x000000000000008Aull, 0x0000000000000088ull, 0x0000000080008009ull, 0x000000008000000Aull,
    0x000000008000808Bull, 0x800000000000008Bull, 0x8000000000008089ull, 0x8000000000008003ull,
    0x8000000000008002ull, 0x8000000000000080ull, 0x000000000000800Aull, 0x800000008000000Aull,
    0x8000000080008081ull, 0x8000000000008080ull, 0x0000000080000001ull, 0x8000000080008008ull,
};

static uint64_t rol64(uint64_t x, int n) { return n ? (x << n) | (x >> (64 - n)) : x; }

/* rotation offsets r[x][y] of the rho step, lanes indexed x + 5y */
static const int rho[25] = {0,  1,  62, 28, 27, 36, 44, 6,  55, 20, 3,  10, 43,
                            25, 39, 41, 45, 15, 21, 8,  18, 2,  61, 56, 14};

static void keccak_f(uint64_t s[25])
{
    for (int round = 0; round < 24; round++) {
        uint64_t c[5], t[25];
        for (int x = 0; x < 5; x++)
            c[x] = s[x] ^ s[x + 5] ^ s[x + 10] ^ s[x + 15] ^ s[x + 20];
        for (int x = 0; x < 5; x++) {
            uint64_t dx = c[(x + 4) % 5] ^ rol64(c[(x + 1) % 5], 1);
            for (int y = 0; y < 25; y += 5)
                s[x + y] ^= dx;
        }
        /* rho and pi: lane (x, y) moves to (y, 2x + 3y) */
        for (int x = 0; x < 5; x++)
            for (int y = 0; y < 5; y++)
                t[y + 5 * ((2 * x + 3 * y) % 5)] = rol64(s[x + 5 * y], rho[x + 5 * y]);
        for (int y = 0; y < 25; y += 5)
            for (int x = 0; x < 5; x++)
                s[x + y] = t[x + y] ^ (~t[(x + 1) % 5 + y] & t[(x + 2) % 5 + y]);
        s[0] ^= round_constants[round];
    }
}

#define SHAKE128_RATE 168

static void shake_absorb_block(pc_digest *d, const unsigned char *p)
{
    for (int i = 0; i < SHAKE128_RATE / 8; i++) {
        uint64_t lane = 0;
        for (int b = 7; b >= 0; b--)
            lane = lane << 8 | p[8 * i + b];
        d->s[i] ^= lane;
    }
    keccak_f(d->s);
}

/* ---- the common interface ------------------------------------------------------------ */

int pc_digest_init(pc_digest *d, int algorithm)
{
    memset(d, 0, sizeof *d);
    d->algorithm = algorithm;
    if (algorithm == PC_DIGEST_SHA1) {
        d->h[0] = 0x67452301u;
        d->h[1] = 0xEFCDAB89u;
        d->h[2] = 0x98BADCFEu;
        d->h[3] = 0x10325476u;
        d->h[4] = 0xC3D2E1F0u;
        return 0;
    }
    return algorithm == PC_DIGEST_SHAKE128 ? 0 : -1;
}

void pc_digest_update(pc_digest *d, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t block = d->algorithm == PC_DIGEST_SHA1 ? 64 : SHAKE128_RATE;
    d->total += len;
    if (d->fill) {
        size_t take = block - d->fill < len ? block - d->fill : len;
        memcpy(d->buf + d->fill, p, take);
        d->fill += take;
        p += take;
        len -= take;
        if (d->fill < block)
            return;
        if (d->algorithm == PC_DIGEST_SHA1)
            sha1_block(d, d->buf);
        else
            shake_absorb_block(d, d->buf);
        d->fill = 0;
    }
    for (; len >= block; p += block, len -= block) {
        if (d->algorithm == PC_DIGEST_SHA1)
            sha1_block(d, p);
        else
            shake_absorb_block(d, p);
    }
    memcpy(d->buf, p, len);
    d->fill = len;
}

void pc_digest_final(pc_digest *d, unsigned char out[20])
{
    if (d->algorithm == PC_DIGEST_SHA1) {
        uint64_t bits = d->total * 8;
        unsigned char pad[72] = {0x80};
        size_t n = (d->fill < 56 ? 56 : 120) - d->fill;
        for (int i = 0; i < 8; i++)
            pad[n + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
        pc_digest_update(d, pad, n + 8);
        for (int i = 0; i < 5; i++)
            for (int b = 0; b < 4; b++)
                out[4 * i + b] = (unsigned char)(d->h[i] >> (24 - 8 * b));
        return;
    }
    /* SHAKE: domain bits 1111, pad10*1, then squeeze 20 bytes (less than one block) */
    memset(d->buf + d->fill, 0, SHAKE128_RATE - d->fill);
    d->buf[d->fill] ^= 0x1F;
    d->buf[SHAKE128_RATE - 1] ^= 0x80;
    shake_absorb_block(d, d->buf);
    for (int i = 0; i < 20; i++)
        out[i] = (unsigned char)(d->s[i / 8] >> (8 * (i % 8)));
}
