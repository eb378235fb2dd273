/* The guest's host binds shown at their own place (-B /tmp, apptainer's default binds
 * /tmp, /dev, /proc, /sys, $HOME, the cwd...): there a plain path names the same file
 * in the guest as on the host, so the kernel's own answer to the call is the guest's
 * and the call passes through (no Python). "Plain": absolute or relative to a base
 * that is its own guest spelling, no "." or ".." component, no symlink met on the way
 * (the last component's included, checked with openat2 RESOLVE_NO_SYMLINKS: a link's
 * text is a guest path, which the kernel would read as the host's), no /proc magic
 * link, nothing of ours (anchors, cache, the overlay's upper layer), no mount point
 * below it (glue: the guest shows entries the host lacks). Anything else, and any
 * write into a read-only bind (EROFS, with its errno precedence), stays Python's.
 * Python (tracer/guest.py) gives the mount table and says which calls may pass. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    char *dst, *src;
    size_t dlen, slen;
    int flags; /* PC_MOUNT_* */
} guest_mount;

#define PC_MAX_ODD 64

struct pc_mounts {
    guest_mount m[PC_MAX_MOUNTS];
    int n;
    unsigned char plain[PC_MAX_RULES]; /* PC_PLAIN_* per rule */
    /* pc_add_odd_place: appended by Python while the notification thread reads, so an
     * entry is written before the count that shows it; never removed. Past the bound,
     * every place is odd (slower, never wrong). */
    char *odd[PC_MAX_ODD];
    size_t odd_len[PC_MAX_ODD];
    int nodd, odd_full;
};

static struct pc_mounts *mounts_of(pc_tracer *t)
{
    if (!t->mounts)
        t->mounts = calloc(1, sizeof *t->mounts);
    return t->mounts;
}

int pc_add_mount(pc_tracer *t, const char *dst, const char *src, int flags)
{
    struct pc_mounts *g = mounts_of(t);
    if (!g || g->n >= PC_MAX_MOUNTS || !dst || !src || dst[0] != '/' || src[0] != '/')
        return -1;
    guest_mount *m = &g->m[g->n];
    m->dst = strdup(dst);
    m->src = strdup(src);
    if (!m->dst || !m->src) {
        free(m->dst);
        free(m->src);
        return -1;
    }
    /* "/" is kept as the empty prefix, so that "/x" is below it as below any other */
    m->dlen = strcmp(dst, "/") == 0 ? 0 : strlen(dst);
    m->slen = strcmp(src, "/") == 0 ? 0 : strlen(src);
    m->flags = flags;
    g->n++;
    return 0;
}

int pc_set_plain(pc_tracer *t, int rule, int how)
{
    struct pc_mounts *g = mounts_of(t);
    if (!g || rule < 0 || rule >= t->nrules)
        return -1;
    g->plain[rule] = (unsigned char)how;
    return 0;
}

int pc_add_odd_place(pc_tracer *t, const char *host)
{
    struct pc_mounts *g = mounts_of(t);
    if (!g || !host)
        return -1;
    size_t len = strlen(host);
    if (odd_place(t, host, len))
        return 0;
    int n = __atomic_load_n(&g->nodd, __ATOMIC_ACQUIRE);
    char *copy = n < PC_MAX_ODD ? strdup(host) : NULL;
    if (!copy) {
        __atomic_store_n(&g->odd_full, 1, __ATOMIC_RELEASE);
        return 0;
    }
    g->odd[n] = copy;
    g->odd_len[n] = len;
    __atomic_store_n(&g->nodd, n + 1, __ATOMIC_RELEASE);
    return 0;
}

int odd_place(pc_tracer *t, const char *host, size_t len)
{
    const struct pc_mounts *g = t->mounts;
    if (!g)
        return 0;
    if (__atomic_load_n(&g->odd_full, __ATOMIC_ACQUIRE))
        return 1;
    int n = __atomic_load_n(&g->nodd, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (g->odd_len[i] == len && memcmp(g->odd[i], host, len) == 0)
            return 1;
    return 0;
}

void mounts_free(pc_tracer *t)
{
    struct pc_mounts *g = t->mounts;
    if (!g)
        return;
    for (int i = 0; i < g->n; i++) {
        free(g->m[i].dst);
        free(g->m[i].src);
    }
    for (int i = 0; i < g->nodd; i++)
        free(g->odd[i]);
    free(g);
    t->mounts = NULL;
}

/* `path` (absolute, length `len`) is `prefix` (length n, 0 for "/") or below it. */
static int under(const char *path, size_t len, const char *prefix, size_t n)
{
    return len >= n && memcmp(path, prefix, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* mounts.MountTable.mount_of: the mount of the longest destination holding `guest`. */
static const guest_mount *mount_of(const struct pc_mounts *g, const char *guest, size_t len)
{
    const guest_mount *best = NULL;
    for (int i = 0; i < g->n; i++) {
        const guest_mount *m = &g->m[i];
        if (!(m->flags & PC_MOUNT_PRIVATE) && under(guest, len, m->dst, m->dlen) &&
            (!best || m->dlen > best->dlen))
            best = m;
    }
    return best;
}

/* A mount point below `guest` (it lies on the way to one: glue), or at it. */
static int mount_below(const struct pc_mounts *g, const char *guest, size_t len, int or_at)
{
    for (int i = 0; i < g->n; i++) {
        const guest_mount *m = &g->m[i];
        if (m->flags & PC_MOUNT_PRIVATE)
            continue;
        if (m->dlen > len ? under(m->dst, m->dlen, guest, len) : or_at && m->dlen == len &&
                                                                     memcmp(m->dst, guest, len) == 0)
            return 1;
    }
    return 0;
}

/* Below a directory of ours: anchors, the caches, the overlay's upper layer. */
static int ours(pc_tracer *t, const struct pc_mounts *g, const char *host, size_t len)
{
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < t->nprefix[w]; i++)
            if (under(host, len, t->prefixes[w][i], t->prefix_len[w][i]))
                return 1;
    for (int i = 0; i < g->n; i++)
        if ((g->m[i].flags & PC_MOUNT_PRIVATE) && under(host, len, g->m[i].src, g->m[i].slen))
            return 1;
    return 0;
}

/* No "." or ".." component and no empty one ("a//b") but a trailing "/": the mount
 * table's prefixes and the kernel agree on where it leads. */
static int plain_spelling(const char *p)
{
    for (const char *s = p[0] == '/' ? p + 1 : p; *s;) {
        if (s[0] == '/' || (s[0] == '.' && (s[1] == '/' || s[1] == '\0' ||
                                            (s[1] == '.' && (s[2] == '/' || s[2] == '\0')))))
            return 0;
        const char *slash = strchr(s, '/');
        if (!slash)
            break;
        s = slash + 1;
    }
    return 1;
}

/* A host location (a cwd, a descriptor's target, a path below a bind) that the guest
 * spells the same: mounts.MountTable.guest_of gives it back unchanged, through a mount
 * marked PC_MOUNT_PASS (its source is its destination). */
static const guest_mount *own_spelling(pc_tracer *t, const struct pc_mounts *g, const char *host,
                                       size_t len)
{
    if (len == 0 || host[0] != '/' || ours(t, g, host, len))
        return NULL;
    const guest_mount *best = NULL;
    for (int i = 0; i < g->n; i++) {
        const guest_mount *m = &g->m[i];
        if (!(m->flags & PC_MOUNT_PRIVATE) && under(host, len, m->src, m->slen) &&
            (!best || m->slen > best->slen))
            best = m;
    }
    if (!best || !(best->flags & PC_MOUNT_PASS) || mount_of(g, host, len) != best)
        return NULL;
    return best;
}

static int own_dir(pc_tracer *t, const struct pc_mounts *g, const char *host, size_t len)
{
    if (len >= PC_PATH_MAX || (len > 10 && strcmp(host + len - 10, " (deleted)") == 0))
        return 0;
    if (odd_place(t, host, len)) /* some process is there by another guest path */
        return 0;
    return own_spelling(t, g, host, len) && !mount_below(g, host, len, 0);
}

const char *file_bind(pc_tracer *t, const char *path, size_t len)
{
    const struct pc_mounts *g = t->mounts;
    for (int i = 0; g && i < g->n; i++) {
        const guest_mount *m = &g->m[i];
        if ((m->flags & PC_MOUNT_FILE) && m->dlen == len && memcmp(m->dst, path, len) == 0)
            return m->src;
    }
    return NULL;
}

int passthrough_dir(pc_tracer *t, const pc_call *c, const char *host, size_t len)
{
    const struct pc_mounts *g = t->mounts;
    return g && c->rule >= 0 && g->plain[c->rule] == PC_PLAIN_READ && own_dir(t, g, host, len);
}

int passthrough_path(pc_tracer *t, const pc_call *c, const char *path, const char *base,
                     int base_len, int writes)
{
    const struct pc_mounts *g = t->mounts;
    if (!g || c->rule < 0 || !g->plain[c->rule])
        return 0;
    if (g->plain[c->rule] == PC_PLAIN_WRITE)
        writes = 1;
    if (strcmp(path, ".") == 0 && !writes) /* the base itself (a stat of the cwd) */
        path = "";
    else if (!plain_spelling(path))
        return 0;
    char full[PC_PATH_MAX + 1];
    size_t len = strlen(path);
    if (path[0] != '/') {
        if (base_len <= 0 || !own_dir(t, g, base, (size_t)base_len))
            return 0;
        if ((size_t)base_len + 1 + len > PC_PATH_MAX)
            return 0;
        memcpy(full, base, (size_t)base_len);
        full[base_len] = '/';
        memcpy(full + base_len + 1, path, len + 1);
        len += (size_t)base_len + 1; /* "base/" for the base itself: trimmed below */
    } else {
        memcpy(full, path, len + 1);
    }
    while (len > 1 && full[len - 1] == '/') /* "dir/" is the directory, as the kernel says */
        full[--len] = '\0';
    const guest_mount *m = mount_of(g, full, len);
    if (!m || !(m->flags & PC_MOUNT_PASS) || (writes && (m->flags & PC_MOUNT_RO)))
        return 0;
    if (ours(t, g, full, len) || mount_below(g, full, len, writes))
        return 0;
    if (__atomic_load_n(&t->no_openat2, __ATOMIC_RELAXED))
        return 0;
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, full, &how, sizeof how);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    if (errno == ENOSYS)
        __atomic_store_n(&t->no_openat2, 1, __ATOMIC_RELAXED);
    /* missing, or not a directory on the way: the kernel finds the same (and creates
     * what is to be created, with the job's own umask and credentials) */
    return errno == ENOENT || errno == ENOTDIR;
}
