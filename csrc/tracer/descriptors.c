/* What a task's descriptor names: the link /proc/TID/fd/N, remembered for the
 * descriptors of our anchors.
 *
 * A program walking /cvmfs (find, ls -R, os.scandir, fts) names its directories by
 * descriptor at nearly every call (fstat, fstatat and openat relative to it,
 * getdents64), and reading the link costs ~3.3 µs here: the kernel composes the path
 * each time. kcmp(KCMP_FILE) of the task's descriptor against a copy we hold costs
 * ~0.9 µs and says whether it is still the same open file; the copy keeps that file
 * alive, so its identity cannot pass to another. The copy also serves getdents64's
 * cursor, which would otherwise take pidfd_open, pidfd_getfd and two closes a call.
 *
 * Only directories under the anchors prefix are kept: an anchor of ours keeps one name
 * for the run, and holding it open changes nothing a program can see (a copy of a pipe
 * or of a host file would: EOF would never come, space would not be freed). One cache
 * for each thread that examines calls (the notification thread, the tracer thread),
 * so it takes no lock. */
#include "core.h"

#include <errno.h>
#include <linux/kcmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FD_SLOTS 64 /* a power of two; per thread, so at most 2 * FD_SLOTS copies held */

struct pc_fd_slot {
    pid_t tid;  /* the task that showed it (another sharing its table misses) */
    int fd;     /* the task's number for it */
    int ours;   /* our copy; -1: an empty slot */
    int len;
    char path[PC_PATH_MAX + 1];
};

static pc_fd_slot *slots_of(pc_tracer *t, const pc_call *c)
{
    pc_fd_slot **s = &t->fd_slots[c->notify ? 1 : 0];
    if (!*s && !t->fd_cache_off) {
        *s = calloc(FD_SLOTS, sizeof **s);
        for (int i = 0; *s && i < FD_SLOTS; i++)
            (*s)[i].ours = -1;
    }
    return *s;
}

static pc_fd_slot *slot_for(pc_fd_slot *s, pid_t tid, long fd)
{
    return &s[((unsigned)tid * 2654435761u + (unsigned)fd) & (FD_SLOTS - 1)];
}

static void empty(pc_fd_slot *e)
{
    if (e->ours >= 0)
        close(e->ours);
    e->ours = -1;
}

/* whether the task's `fd` is still the open file of our copy in `e` */
static int still_same(pc_tracer *t, pc_fd_slot *e, pid_t tid, long fd)
{
    if (e->ours < 0 || e->tid != tid || e->fd != fd)
        return 0;
    long r = syscall(SYS_kcmp, t->self_pid, tid, KCMP_FILE, e->ours, fd);
    /* no kcmp in this kernel, or not for us (a security module): every call reads the
     * link, as it would without the cache, rather than refilling a slot each time */
    if (r < 0 && (errno == ENOSYS || errno == EPERM || errno == EACCES))
        t->fd_cache_off = 1;
    if (r != 0)
        empty(e);
    return r == 0;
}

static int is_anchor(pc_tracer *t, const char *path, int len)
{
    if (t->nprefix[0] < 1)
        return 0;
    size_t alen = t->prefix_len[0][0];
    static const char deleted[] = " (deleted)";
    size_t dlen = sizeof deleted - 1;
    return (size_t)len > alen && strncmp(path, t->prefixes[0][0], alen) == 0 &&
           path[alen] == '/' &&
           !((size_t)len >= dlen && memcmp(path + len - dlen, deleted, dlen) == 0);
}

int fd_link(pc_tracer *t, const pc_call *c, long fd, char *out, size_t max, int *dir)
{
    *dir = 0;
    if (fd < 0)
        return -1;
    pc_fd_slot *s = t->fd_cache_off ? NULL : slots_of(t, c);
    pc_fd_slot *e = s ? slot_for(s, c->tid, fd) : NULL;
    if (e && still_same(t, e, c->tid, fd) && (size_t)e->len < max) {
        memcpy(out, e->path, (size_t)e->len + 1);
        *dir = 1;
        return e->len;
    }
    int n = proc_link(c->tid, NULL, fd, out, max);
    if (n <= 0 || !e || t->fd_cache_off || n > PC_PATH_MAX || !is_anchor(t, out, n))
        return n;
    int ours = pc_getfd(c->tid, (int)fd);
    if (ours < 0)
        return n;
    /* the copy is the directory the link names (taken after it: the task's other
     * threads may have put another file at that number between the two) */
    struct stat st, named;
    if (fstat(ours, &st) != 0 || !S_ISDIR(st.st_mode) || lstat(out, &named) != 0 ||
        st.st_dev != named.st_dev || st.st_ino != named.st_ino) {
        close(ours); /* or an anchor of a symlink or fifo: left to the link */
        return n;
    }
    empty(e);
    e->tid = c->tid;
    e->fd = (int)fd;
    e->ours = ours;
    e->len = n;
    memcpy(e->path, out, (size_t)n + 1);
    *dir = 1;
    return n;
}

int fd_copy(pc_tracer *t, const pc_call *c, int fd, int *borrowed)
{
    pc_fd_slot *s = t->fd_cache_off ? NULL : t->fd_slots[c->notify ? 1 : 0];
    pc_fd_slot *e = s ? slot_for(s, c->tid, fd) : NULL;
    /* fd_link checked it in this same call: the task is stopped in it */
    *borrowed = e && e->ours >= 0 && e->tid == c->tid && e->fd == fd;
    return *borrowed ? e->ours : pc_getfd(c->tid, fd);
}

void fd_cache_free(pc_tracer *t)
{
    for (int w = 0; w < 2; w++) {
        if (!t->fd_slots[w])
            continue;
        for (int i = 0; i < FD_SLOTS; i++)
            empty(&t->fd_slots[w][i]);
        free(t->fd_slots[w]);
        t->fd_slots[w] = NULL;
    }
}
