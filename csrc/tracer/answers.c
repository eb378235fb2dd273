/* The answer table: results Python computed for a path (or for a descriptor's
 * target), replayed by C for identical calls. Python writes, the fast paths read
 * (the notification thread among them), under a read-write lock. */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static answer *find_hashed(pc_tracer *t, char follow, const char *path, size_t len,
                           uint64_t base)
{
    uint64_t h = base ^ (uint64_t)follow;
    for (size_t i = h & (t->answers_cap - 1);; i = (i + 1) & (t->answers_cap - 1)) {
        answer *a = t->answers[i];
        if (!a)
            return NULL;
        if (a->hash == h && a->key[0] == follow && strncmp(a->key + 1, path, len) == 0 &&
            a->key[len + 1] == '\0')
            return a;
    }
}

/* whether an answer can answer a call of kind `fast` (PC_FAST_*) */
static int answers(const answer *a, int fast)
{
    if (a->has_answer && a->err)
        return 1;
    switch (fast) {
    case PC_FAST_STAT:
    case PC_FAST_STATX:
        return a->has_stat;
    case PC_FAST_ACCESS:
        return a->has_access;
    case PC_FAST_READLINK:
        return a->has_answer;
    case PC_FAST_GETXATTR:
        return a->xattrs != NULL;
    case PC_FAST_LISTXATTR:
        return a->xnames != NULL;
    case PC_FAST_OPEN:
        return a->open_target != NULL;
    case PC_FAST_STATFS:
        return a->has_stat; /* with the 'S' record of its st_dev (examine.c) */
    case PC_FAST_EXEC: /* a recipe, or the errno it fails with (examine.c fast_exec) */
        return a->exec_target != NULL || a->exec_err;
    case PC_FAST_GETCWD:
        return a->cwd != NULL;
    default:
        return 1;
    }
}

answer *answer_find(pc_tracer *t, char follow, const char *path, size_t len)
{
    return find_hashed(t, follow, path, len, fnv1a(path, len));
}

answer *answer_for_path(pc_tracer *t, int follow, const char *path, size_t len, int fast)
{
    uint64_t base = fnv1a(path, len); /* hashed once for both lookups */
    answer *a = find_hashed(t, follow ? 'F' : 'N', path, len, base);
    if (!follow || (a && answers(a, fast)))
        return a;
    answer *n = find_hashed(t, 'N', path, len, base);
    return n && n->nolink && answers(n, fast) ? n : a;
}

/* roughly what an answer holds (its allocations), for the table's bound */
static size_t answer_bytes(const answer *a)
{
    return sizeof *a + 32 + strlen(a->key) + (size_t)a->link_len + (size_t)a->open_len +
           a->dents_len + a->xattrs_len + a->xnames_len;
}

static void free_answer(answer *a)
{
    free(a->key);
    free(a->link);
    free(a->open_target);
    free(a->exec_target);
    free(a->exec_logical);
    free(a->exec_words);
    free(a->cwd);
    free(a->statfs);
    free(a->dents);
    free(a->xattrs);
    free(a->xnames);
    free(a);
}

static void clear_locked(pc_tracer *t)
{
    for (size_t i = 0; i < t->answers_cap; i++)
        if (t->answers[i])
            free_answer(t->answers[i]);
    memset(t->answers, 0, t->answers_cap * sizeof(answer *));
    t->answers_used = 0;
    t->answers_bytes = 0;
}

void pc_table_clear(pc_tracer *t)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    clear_locked(t);
    pthread_rwlock_unlock(&t->answers_lock);
}


size_t pc_table_take_served(pc_tracer *t, char *buf, size_t len)
{
    size_t used = 0;
    pthread_rwlock_wrlock(&t->answers_lock);
    for (size_t i = 0; i < t->answers_cap; i++) {
        answer *a = t->answers[i];
        if (!a || !a->served || !a->open_target)
            continue;
        size_t n = (size_t)a->open_len + 1;
        if (used + n > len)
            break; /* the rest stay marked for the next call */
        memcpy(buf + used, a->open_target, n);
        used += n;
        a->served = 0;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return used;
}

/* Twice the slots (open addressing stays under half full); 0 on success. */
static int grow_locked(pc_tracer *t)
{
    size_t cap = t->answers_cap * 2;
    answer **slots = calloc(cap, sizeof(answer *));
    if (!slots)
        return -1;
    for (size_t i = 0; i < t->answers_cap; i++) {
        answer *a = t->answers[i];
        if (!a)
            continue;
        size_t j = a->hash & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = a;
    }
    free(t->answers);
    t->answers = slots;
    t->answers_cap = cap;
    return 0;
}

static answer *slot_locked(pc_tracer *t, const char *key, int follow)
{
    size_t len = strlen(key);
    char f = follow ? 'F' : 'N';
    answer *a = answer_find(t, f, key, len);
    if (a)
        return a;
    if (((t->answers_used + 1) * 2 > t->answers_cap &&
         (t->answers_cap >= PC_ANSWERS_MAX || grow_locked(t) != 0)) ||
        t->answers_bytes > PC_ANSWERS_BYTES)
        clear_locked(t); /* a cache: start over rather than grow without bound */
    a = calloc(1, sizeof *a);
    if (!a || !(a->key = malloc(len + 2))) {
        free(a);
        return NULL;
    }
    a->key[0] = f;
    memcpy(a->key + 1, key, len + 1);
    a->hash = fnv1a(key, len) ^ (uint64_t)f;
    size_t i = a->hash & (t->answers_cap - 1);
    while (t->answers[i])
        i = (i + 1) & (t->answers_cap - 1);
    t->answers[i] = a;
    t->answers_used++;
    t->answers_bytes += answer_bytes(a);
    return a;
}

int pc_table_put_open(pc_tracer *t, const char *key, int follow, const char *target, int is_dir)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, follow);
    int rc = -1;
    if (a) {
        free(a->open_target);
        t->answers_bytes += strlen(target) - (size_t)a->open_len;
        a->open_len = (int)strlen(target);
        a->open_target = strdup(target);
        a->open_is_dir = is_dir;
        rc = a->open_target ? 0 : -1;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

/* Forget an answer's exec recipe (its memory no longer counted). */
static void drop_recipe_locked(pc_tracer *t, answer *a)
{
    if (a->exec_target)
        t->answers_bytes -=
            strlen(a->exec_target) + strlen(a->exec_logical) + (size_t)a->exec_words_len;
    free(a->exec_target);
    free(a->exec_logical);
    free(a->exec_words);
    a->exec_target = a->exec_logical = a->exec_words = NULL;
    a->exec_words_len = a->exec_nwords = 0;
}

/* An execve's recipe: `target` exec'd in place of the program named `key` (followed),
 * `logical` what /proc/self/exe shows then, and for a script the `nwords` words
 * (`wlen` bytes, each NUL-terminated) its `#!` chain puts before its path in argv; or
 * with `target` NULL, the errno `err` an execve of it fails with (Python's verdict:
 * C replays it, never derives one). Either replaces the other. */
static int put_exec(pc_tracer *t, const char *key, const char *target, const char *logical,
                    const char *words, int wlen, int nwords, int err)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, 1);
    int rc = -1;
    if (a && !target) {
        drop_recipe_locked(t, a);
        a->exec_err = err;
        rc = 0;
    } else if (a) {
        char *x = strdup(target), *l = strdup(logical);
        char *w = nwords ? malloc((size_t)wlen) : NULL;
        if (x && l && (w || !nwords)) {
            if (w)
                memcpy(w, words, (size_t)wlen);
            drop_recipe_locked(t, a);
            a->exec_target = x;
            a->exec_logical = l;
            a->exec_words = w;
            a->exec_words_len = nwords ? wlen : 0;
            a->exec_nwords = nwords;
            a->exec_err = 0;
            t->answers_bytes += strlen(x) + strlen(l) + (size_t)a->exec_words_len;
            rc = 0;
        } else {
            free(x);
            free(l);
            free(w);
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

/* getcwd's answer in the directory whose anchor is `key`. */
static int put_cwd(pc_tracer *t, const char *key, const char *cwd)
{
    char *copy = strdup(cwd);
    if (!copy)
        return -1;
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, 1);
    if (a) {
        if (a->cwd)
            t->answers_bytes -= strlen(a->cwd);
        free(a->cwd);
        a->cwd = copy;
        t->answers_bytes += strlen(copy);
    } else {
        free(copy);
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return a ? 0 : -1;
}

/* An 'S' record: what statfs answers for the repository whose files have the st_dev in
 * the key (statfs_key) */
static int put_statfs(pc_tracer *t, const char *key, const void *buf)
{
    unsigned char *copy = malloc(sizeof(struct statfs));
    if (!copy)
        return -1;
    memcpy(copy, buf, sizeof(struct statfs));
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, 1);
    if (a) {
        if (!a->statfs)
            t->answers_bytes += sizeof(struct statfs);
        free(a->statfs);
        a->statfs = copy;
    } else {
        free(copy);
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return a ? 0 : -1;
}

int statfs_key(dev_t dev, char *out, size_t len)
{
    return snprintf(out, len, "statfs:%llu", (unsigned long long)dev);
}

/* The struct statx that structs.pack_statx makes for the same attributes: answers keep
 * only the struct stat (memo files and the table half their size), this derives it. */
void statx_of_stat(const struct stat *s, unsigned char out[256])
{
    struct statx x;
    memset(&x, 0, sizeof x);
    x.stx_mask = STATX_BASIC_STATS;
    x.stx_blksize = (uint32_t)s->st_blksize;
    x.stx_nlink = (uint32_t)s->st_nlink;
    x.stx_uid = s->st_uid;
    x.stx_gid = s->st_gid;
    x.stx_mode = (uint16_t)s->st_mode;
    x.stx_ino = s->st_ino;
    x.stx_size = (uint64_t)s->st_size;
    x.stx_blocks = (uint64_t)s->st_blocks;
    x.stx_mtime.tv_sec = s->st_mtim.tv_sec;
    x.stx_mtime.tv_nsec = (uint32_t)s->st_mtim.tv_nsec;
    x.stx_atime = x.stx_mtime; /* cvmfs reports one time for all three */
    x.stx_ctime = x.stx_mtime;
    x.stx_rdev_major = major(s->st_rdev);
    x.stx_rdev_minor = minor(s->st_rdev);
    x.stx_dev_major = major(s->st_dev);
    x.stx_dev_minor = minor(s->st_dev);
    memset(out, 0, 256);
    memcpy(out, &x, sizeof x < 256 ? sizeof x : 256);
}

/* Records saved by memo.py (the format is described there). Returns how many were
 * loaded; a truncated or malformed tail is ignored. */
static int table_load(pc_tracer *t, const void *blob, size_t len)
{
    const unsigned char *p = blob, *end = p + len;
    int n = 0;
    char key[PC_PATH_MAX + 1];
    while (end - p >= 8) {
        unsigned kind = p[0], follow = p[1];
        size_t klen = (size_t)p[2] | (size_t)p[3] << 8;
        size_t plen = (size_t)p[4] | (size_t)p[5] << 8 | (size_t)p[6] << 16 | (size_t)p[7] << 24;
        const unsigned char *k = p + 8, *pay = k + klen;
        if ((size_t)(end - k) < klen || (size_t)(end - pay) < plen || klen > PC_PATH_MAX)
            break;
        memcpy(key, k, klen);
        key[klen] = '\0';
        p = pay + plen;
        if (kind == 'A' && plen >= 5) {
            int32_t err;
            memcpy(&err, pay, 4);
            unsigned parts = pay[4];
            size_t need = 5 + (parts & 1 ? sizeof(struct stat) : 0) + (parts & 4 ? 8 : 0);
            if (plen < need || (parts & 2))
                continue;
            const unsigned char *q = pay + 5;
            const void *st = NULL;
            const int8_t *acc = NULL;
            if (parts & 1)
                st = q, q += sizeof(struct stat);
            if (parts & 4)
                acc = (const int8_t *)q, q += 8;
            const char *link = parts & 8 ? (const char *)q : NULL;
            pc_table_put(t, key, follow, err, st, acc, link, (int)(pay + plen - q));
        } else if (kind == 'O' && plen >= 2) {
            char target[PC_PATH_MAX + 1];
            size_t tlen = plen - 1 > PC_PATH_MAX ? PC_PATH_MAX : plen - 1;
            memcpy(target, pay + 1, tlen);
            target[tlen] = '\0';
            pc_table_put_open(t, key, follow, target, pay[0]);
        } else if (kind == 'E' && plen == 5 && pay[0] == '\0') {
            int32_t err; /* payload = NUL err:i32: the exec fails */
            memcpy(&err, pay + 1, 4);
            if (err <= 0 || err >= 4096)
                continue;
            put_exec(t, key, NULL, NULL, NULL, 0, 0, err);
        } else if (kind == 'E' && plen >= 3 && plen <= 2 * PC_PATH_MAX + PC_EXEC_WORDS_MAX) {
            /* payload = target NUL logical [NUL word]... (no NUL after the last) */
            char all[2 * PC_PATH_MAX + PC_EXEC_WORDS_MAX + 2];
            memcpy(all, pay, plen);
            all[plen] = '\0';
            size_t tl = strnlen(all, plen);
            if (tl == 0 || tl >= plen - 1 || tl > PC_PATH_MAX || all[0] != '/')
                continue;
            const char *logical = all + tl + 1;
            size_t ll = strnlen(logical, plen - tl - 1);
            if (ll == 0 || ll > PC_PATH_MAX)
                continue;
            const char *words = logical + ll + 1; /* past the end if there are none */
            size_t used = tl + 1 + ll; /* the bytes before the words' NUL */
            int wlen = used < plen ? (int)(plen - used - 1) + 1 : 0, nwords = 0, bad = 0;
            for (int i = 0; i < wlen; i++) /* each word nonempty, NUL-terminated */
                if (words[i] == '\0') {
                    bad |= i == 0 || words[i - 1] == '\0';
                    nwords++;
                }
            if (bad || wlen > PC_EXEC_WORDS_MAX || nwords > 8)
                continue;
            put_exec(t, key, all, logical, words, wlen, nwords, 0);
        } else if (kind == 'C' && plen >= 1 && plen <= PC_PATH_MAX && pay[0] == '/') {
            char cwd[PC_PATH_MAX + 1];
            memcpy(cwd, pay, plen);
            cwd[plen] = '\0';
            if (strlen(cwd) != plen)
                continue;
            put_cwd(t, key, cwd);
        } else if (kind == 'S' && plen == sizeof(struct statfs)) {
            put_statfs(t, key, pay);
        } else if (kind == 'D') {
            pc_table_put_dents(t, key, pay, plen);
        } else if (kind == 'X') {
            pc_table_put_xattrs(t, key, follow, pay, plen);
        } else {
            continue;
        }
        n++;
    }
    return n;
}

/* Replace *field with a copy of data (a non-NULL pointer even when empty). */
static int set_blob(pc_tracer *t, unsigned char **field, size_t *flen, const void *data,
                    size_t len)
{
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        return -1;
    memcpy(copy, data, len);
    free(*field);
    t->answers_bytes += len - *flen;
    *field = copy;
    *flen = len;
    return 0;
}

/* Set one blob of the answer for (key, follow): which one by its offset in `answer`. */
static int put_blob(pc_tracer *t, const char *key, int follow, size_t field, size_t flen,
                    const void *data, size_t len)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, follow);
    int rc = a ? set_blob(t, (unsigned char **)((char *)a + field), (size_t *)((char *)a + flen),
                          data, len)
               : -1;
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

int pc_table_put_xattrs(pc_tracer *t, const char *key, int follow, const void *blob, size_t len)
{
    return put_blob(t, key, follow, offsetof(answer, xattrs), offsetof(answer, xattrs_len), blob,
                    len);
}

int pc_table_put_xnames(pc_tracer *t, const char *key, int follow, const void *names, size_t len)
{
    return put_blob(t, key, follow, offsetof(answer, xnames), offsetof(answer, xnames_len), names,
                    len);
}

/* Whether a listing's linux_dirent64 records are what a kernel could return (kept
 * answers are files of the cache: a record of length 0 would make fast_getdents loop,
 * a name with a '/' reach a program): each within the blob, 8-aligned, its name
 * NUL-terminated inside it, 1..255 bytes without '/', "." and ".." first and only. */
static int dents_valid(const unsigned char *p, size_t len)
{
    size_t at = 0;
    for (int i = 0; at < len; i++) {
        if (len - at < 20)
            return 0;
        uint16_t reclen;
        memcpy(&reclen, p + at + 16, 2);
        if (reclen < 20 || reclen % 8 || reclen > len - at)
            return 0;
        const char *name = (const char *)p + at + 19;
        size_t n = strnlen(name, reclen - 19);
        if (n == 0 || n == reclen - 19u || n > 255 || memchr(name, '/', n))
            return 0;
        int dots = (n == 1 && name[0] == '.') || (n == 2 && name[0] == '.' && name[1] == '.');
        if (dots != (i < 2) || (i < 2 && (int)n != i + 1))
            return 0;
        at += reclen;
    }
    return 1;
}

int pc_table_put_dents(pc_tracer *t, const char *key, const void *records, size_t len)
{
    if (!dents_valid(records, len))
        return -1; /* Python answers from the catalog */
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, 1);
    int rc = a ? set_blob(t, &a->dents, &a->dents_len, records, len) : -1;
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

int pc_table_put(pc_tracer *t, const char *key, int follow, int err, const void *stat_buf,
                 const int8_t *access_err, const char *link, int link_len)
{
    pthread_rwlock_wrlock(&t->answers_lock);
    answer *a = slot_locked(t, key, follow);
    int rc = -1;
    if (a) {
        a->has_answer = 1;
        a->err = err;
        a->has_stat = stat_buf != NULL;
        a->has_access = access_err != NULL;
        if (stat_buf)
            memcpy(a->stat, stat_buf, sizeof a->stat);
        if (access_err)
            memcpy(a->access, access_err, sizeof a->access);
        struct stat sb;
        memcpy(&sb, a->stat, sizeof sb);
        a->nolink = !follow && (err != 0 || (stat_buf && !S_ISLNK(sb.st_mode)));
        t->answers_bytes -= (size_t)a->link_len;
        free(a->link);
        a->link = NULL;
        a->link_len = 0;
        a->is_link = link != NULL;
        rc = 0;
        if (link) {
            a->link = malloc((size_t)link_len + 1);
            if (a->link) {
                memcpy(a->link, link, (size_t)link_len);
                a->link_len = link_len;
                t->answers_bytes += (size_t)link_len;
            } else {
                a->is_link = 0;
                rc = -1;
            }
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return rc;
}

int pc_table_load(pc_tracer *t, const void *records, size_t len)
{
    return table_load(t, records, len);
}

int pc_table_load_fd(pc_tracer *t, int fd, uint64_t offset)
{
    /* mapped and populated in one call: reading a ~1 MB file into a fresh buffer
     * page-faults it in one page at a time, which is slow under virtualization */
    struct stat s;
    if (fstat(fd, &s) < 0 || s.st_size <= 0 || (uint64_t)s.st_size <= offset)
        return -1;
    void *m = mmap(NULL, (size_t)s.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED)
        return -1;
    int n = table_load(t, (const char *)m + offset, (size_t)s.st_size - offset);
    munmap(m, (size_t)s.st_size);
    return n;
}
