/* An experiment (issue 14): an LD_PRELOAD library answering the hottest read-only
 * calls on /cvmfs paths inside the job's own process, from the supervisor's answers,
 * without a system call. Not built by the package nor used by parrot_run:
 * bench/bench_accel.py builds it and measures it.
 *
 * The answers come in a read-only table the supervisor's side fills (accel.h has the
 * layout): a sealed memfd whose number is in PARROT_ACCEL_FD, mapped read-only at
 * load. readlink, stat, lstat, access and realpath of an absolute path found in the
 * table are answered from it; anything else (a miss, a relative path, another call, a
 * table that does not check out) goes to the real function, and so to the seccomp
 * filter, which stays the authority. The table is hostile input like any other: every
 * offset and length is checked against the mapping before it is read. */
#define _GNU_SOURCE
#include "accel.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MOUNT "/cvmfs" /* PC_MOUNT of the core */

static const unsigned char *tab; /* the mapping, NULL when there is none */
static size_t tab_len;
static uint32_t nslots;

__attribute__((constructor)) static void accel_init(void)
{
    const char *v = getenv("PARROT_ACCEL_FD");
    if (!v || !*v)
        return;
    char *end;
    long fd = strtol(v, &end, 10);
    struct stat s;
    if (*end || fd < 0 || fd > INT_MAX || fstat((int)fd, &s) != 0 || !S_ISREG(s.st_mode) ||
        s.st_size < (off_t)ACCEL_HEAD || s.st_size > ((off_t)1 << 30))
        return;
    void *m = mmap(NULL, (size_t)s.st_size, PROT_READ, MAP_SHARED, (int)fd, 0);
    if (m == MAP_FAILED)
        return;
    const unsigned char *p = m;
    uint32_t n;
    memcpy(&n, p + 8, 4);
    if (memcmp(p, ACCEL_MAGIC, 8) != 0 || n == 0 || (n & (n - 1)) != 0 ||
        (uint64_t)ACCEL_HEAD + 4ull * n > (uint64_t)s.st_size) {
        munmap(m, (size_t)s.st_size);
        return;
    }
    tab = p, tab_len = (size_t)s.st_size, nslots = n;
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* One answer, decoded from its record (accel.h). */
typedef struct {
    int32_t err;
    unsigned parts;
    const unsigned char *stat; /* struct stat, if parts & ACCEL_STAT */
    const int8_t *access;      /* 8 errnos by mode, if parts & ACCEL_ACCESS */
    const char *link;          /* the target, if parts & ACCEL_LINK */
    size_t link_len;
} ans;

static int decode(uint32_t off, const char *key, size_t klen, int follow, ans *a)
{
    if (off < ACCEL_HEAD || (size_t)off + 8 > tab_len)
        return 0;
    const unsigned char *r = tab + off;
    size_t rk = (size_t)r[2] | (size_t)r[3] << 8;
    size_t pl = (size_t)r[4] | (size_t)r[5] << 8 | (size_t)r[6] << 16 | (size_t)r[7] << 24;
    if (r[0] != 'A' || r[1] != follow || rk != klen || tab_len - off - 8 < rk ||
        tab_len - off - 8 - rk < pl || pl < 5 || memcmp(r + 8, key, klen) != 0)
        return 0;
    const unsigned char *q = r + 8 + rk, *qend = q + pl;
    memcpy(&a->err, q, 4);
    a->parts = q[4];
    q += 5;
    a->stat = NULL, a->access = NULL, a->link = NULL, a->link_len = 0;
    if (a->parts & ACCEL_STAT) {
        if ((size_t)(qend - q) < sizeof(struct stat))
            return 0;
        a->stat = q, q += sizeof(struct stat);
    }
    if (a->parts & ACCEL_ACCESS) {
        if (qend - q < 8)
            return 0;
        a->access = (const int8_t *)q, q += 8;
    }
    if (a->parts & ACCEL_LINK)
        a->link = (const char *)q, a->link_len = (size_t)(qend - q);
    return 1;
}

/* The answer for `key` (follow: 1 stat, 0 lstat/readlink), or 0. */
static int lookup(const char *key, size_t klen, int follow, ans *a)
{
    if (!tab || klen == 0 || key[0] != '/' || klen > PATH_MAX)
        return 0;
    uint64_t h = fnv1a(key, klen) ^ (uint64_t)follow;
    const unsigned char *slots = tab + ACCEL_HEAD;
    for (uint32_t i = (uint32_t)h & (nslots - 1), probes = 0; probes < nslots;
         i = (i + 1) & (nslots - 1), probes++) {
        uint32_t off;
        memcpy(&off, slots + 4ull * i, 4);
        if (off == 0)
            return 0;
        if (decode(off, key, klen, follow, a))
            return 1;
    }
    return 0;
}

/* stat's answer: the follow record, else the no-follow one of something that is not a
 * link (as the C table does, answers.c answer_for_path). */
static int stat_answer(const char *path, int follow, ans *a)
{
    size_t n = strlen(path);
    if (lookup(path, n, follow, a) && (a->err || a->stat))
        return 1;
    if (!follow || !lookup(path, n, 0, a))
        return 0;
    if (a->err)
        return 1;
    struct stat sb;
    if (!a->stat)
        return 0;
    memcpy(&sb, a->stat, sizeof sb);
    return !S_ISLNK(sb.st_mode);
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, name))

static int answer_stat(const char *path, struct stat *st, int follow, int *rc)
{
    ans a;
    if (!path || !st || !stat_answer(path, follow, &a))
        return 0;
    if (a.err) {
        errno = a.err;
        *rc = -1;
    } else {
        memcpy(st, a.stat, sizeof *st);
        *rc = 0;
    }
    return 1;
}

int stat(const char *restrict path, struct stat *restrict st)
{
    static int (*real)(const char *, struct stat *);
    int rc;
    if (answer_stat(path, st, 1, &rc))
        return rc;
    if (!real)
        real = REAL("stat", int (*)(const char *, struct stat *));
    return real(path, st);
}

int lstat(const char *restrict path, struct stat *restrict st)
{
    static int (*real)(const char *, struct stat *);
    int rc;
    if (answer_stat(path, st, 0, &rc))
        return rc;
    if (!real)
        real = REAL("lstat", int (*)(const char *, struct stat *));
    return real(path, st);
}

ssize_t readlink(const char *restrict path, char *restrict buf, size_t size)
{
    static ssize_t (*real)(const char *, char *, size_t);
    ans a;
    if (path && lookup(path, strlen(path), 0, &a) && (a.err || a.stat || a.link)) {
        if (a.err) {
            errno = a.err;
            return -1;
        }
        if (!a.link || size == 0 || size > SSIZE_MAX) {
            errno = EINVAL;
            return -1;
        }
        size_t n = a.link_len < size ? a.link_len : size;
        memcpy(buf, a.link, n);
        return (ssize_t)n;
    }
    if (!real)
        real = REAL("readlink", ssize_t (*)(const char *, char *, size_t));
    return real(path, buf, size);
}

int access(const char *path, int mode)
{
    static int (*real)(const char *, int);
    ans a;
    if (path && (mode & ~7) == 0 && stat_answer(path, 1, &a) && (a.err || a.access)) {
        int e = a.err ? a.err : a.access[mode & 7];
        if (e) {
            errno = e;
            return -1;
        }
        return 0;
    }
    if (!real)
        real = REAL("access", int (*)(const char *, int));
    return real(path, mode);
}

/* realpath of an absolute path, component by component from the table (glibc's own
 * walk calls its internal readlink, which no preload sees): 1 with the result in
 * `out`, -errno when a component's answer is an error (ENOENT, ENOTDIR: what the real
 * walk's readlink of it reports), 0 when a component is not in the table, which gives
 * the whole call to the real realpath. */
static int resolve(const char *path, char *out)
{
    char rest[PATH_MAX + 1], tmp[PATH_MAX + 1];
    size_t rlen = strlen(path);
    if (rlen == 0 || rlen > PATH_MAX || path[0] != '/')
        return 0;
    memcpy(rest, path, rlen + 1);
    size_t olen = 0, at = 0;
    out[0] = '\0';
    for (int links = 0; at < rlen;) {
        while (at < rlen && rest[at] == '/')
            at++;
        size_t s = at;
        while (at < rlen && rest[at] != '/')
            at++;
        size_t cl = at - s;
        if (cl == 0 || (cl == 1 && rest[s] == '.'))
            continue;
        if (cl == 2 && rest[s] == '.' && rest[s + 1] == '.') {
            while (olen > 0 && out[olen - 1] != '/')
                olen--;
            if (olen > 0)
                olen--;
            out[olen] = '\0';
            continue;
        }
        if (olen + 1 + cl > PATH_MAX)
            return 0;
        size_t before = olen;
        out[olen++] = '/';
        memcpy(out + olen, rest + s, cl);
        olen += cl;
        out[olen] = '\0';
        if (olen == sizeof MOUNT - 1 && memcmp(out, MOUNT, olen) == 0)
            continue; /* the mount point: a directory of ours, never a link */
        ans a;
        if (!lookup(out, olen, 0, &a) || !(a.err || a.stat || a.link))
            return 0;
        if (a.err)
            return a.err > 0 ? -a.err : 0;
        if (!a.link) {
            struct stat sb;
            if (at < rlen && a.stat) {
                memcpy(&sb, a.stat, sizeof sb);
                if (!S_ISDIR(sb.st_mode))
                    return 0; /* ENOTDIR: the real one says so */
            }
            continue;
        }
        if (++links > 40 || a.link_len == 0)
            return 0; /* ELOOP, or an empty target: the real one's */
        size_t tail = rlen - at;
        if (a.link_len + tail > PATH_MAX)
            return 0;
        memcpy(tmp, a.link, a.link_len);
        memcpy(tmp + a.link_len, rest + at, tail);
        rlen = a.link_len + tail;
        tmp[rlen] = '\0';
        memcpy(rest, tmp, rlen + 1);
        at = 0;
        olen = a.link[0] == '/' ? 0 : before;
        out[olen] = '\0';
    }
    if (olen == 0)
        out[olen++] = '/', out[olen] = '\0';
    return 1;
}

char *realpath(const char *restrict path, char *restrict resolved)
{
    static char *(*real)(const char *, char *);
    char out[PATH_MAX + 1];
    int rc = tab && path && strncmp(path, MOUNT "/", sizeof MOUNT) == 0 ? resolve(path, out) : 0;
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    if (rc > 0) {
        if (resolved)
            return strcpy(resolved, out);
        return strdup(out);
    }
    if (!real)
        real = REAL("realpath", char *(*)(const char *, char *));
    return real(path, resolved);
}
