/* Deciding whether a call concerns /cvmfs, and answering it from the answer table.
 * The same code serves ptrace stops and seccomp notifications (pc_call). */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

static int has_prefix(pc_tracer *t, int which, const char *s)
{
    for (int i = 0; i < t->nprefix[which]; i++) {
        size_t n = t->prefix_len[which][i];
        if (strncmp(s, t->prefixes[which][i], n) == 0 && (s[n] == '/' || s[n] == '\0'))
            return 1;
    }
    return 0;
}

static int is_proc_magic(const char *p)
{
    if (strncmp(p, "/dev/fd/", 8) == 0 || strncmp(p, "/dev/std", 8) == 0)
        return 1;
    if (strncmp(p, "/proc/", 6) != 0)
        return 0;
    return strstr(p, "/exe") || strstr(p, "/cwd") || strstr(p, "/fd/") || strstr(p, "/root") ||
           strstr(p, "/map_files");
}

/* Any spelling of /cvmfs contains "cvmfs" ("/cvmfs/..", "../../cvmfs",
 * "/proc/self/root/cvmfs"); anchor directories are listed as prefixes. */
static int path_concerns(pc_tracer *t, const pc_rule *r, const char *path)
{
    if (strstr(path, "cvmfs"))
        return 1;
    if (path[0] == '/')
        return has_prefix(t, 0, path) || (r->proc_sensitive && is_proc_magic(path));
    return 0;
}

static int base_concerns(pc_tracer *t, const pc_rule *r, const char *base)
{
    return has_prefix(t, 0, base) || (r->proc_sensitive && strncmp(base, "/proc", 5) == 0);
}

/* One path argument (and, if it is relative, its base). 1 if it concerns us. */
static int examine_path(pc_tracer *t, const pc_call *c, int dirfd_arg, int path_arg, char *path,
                        int *path_len, int *path_err, char *base, int *base_len, int *empty_path)
{
    const pc_rule *r = c->r;
    *base_len = 0;
    *empty_path = 0;
    uint64_t addr = c->args[path_arg];
    long dirfd = dirfd_arg >= 0 ? (long)(int)c->args[dirfd_arg] : AT_FDCWD;
    int has_empty = r->empty_flag && r->flags_arg >= 0 && (c->args[r->flags_arg] & r->empty_flag);
    int n = (addr == 0 && has_empty) ? 0 : read_string(c->tid, addr, path, PC_PATH_MAX);
    if (n < 0) {
        *path_err = n;
        *path_len = 0;
        path[0] = '\0';
        return 0; /* the kernel reports EFAULT or ENAMETOOLONG */
    }
    *path_err = 0;
    *path_len = n;
    if (n == 0) {
        if (!has_empty)
            return 0; /* "" is ENOENT, from the kernel */
        *empty_path = 1;
        int m = dirfd == AT_FDCWD ? proc_link(c->tid, "cwd", -1, base, PC_PATH_MAX)
                                  : proc_link(c->tid, NULL, dirfd, base, PC_PATH_MAX);
        if (m < 0)
            return 0;
        *base_len = m;
        return has_prefix(t, 1, base);
    }
    if (path[0] == '/')
        return path_concerns(t, r, path);
    /* relative: Python needs the base whenever the call concerns us */
    int m = dirfd == AT_FDCWD ? proc_link(c->tid, "cwd", -1, base, PC_PATH_MAX)
                              : proc_link(c->tid, NULL, dirfd, base, PC_PATH_MAX);
    if (m < 0)
        return 0; /* a bad dirfd: the kernel's EBADF/ENOTDIR is right */
    *base_len = m;
    return path_concerns(t, r, path) || base_concerns(t, r, base);
}

int examine_call(pc_tracer *t, pc_call *c, pc_event *ev)
{
    const pc_rule *r = c->r;
    ev->path_len = ev->path2_len = ev->base_len = ev->base2_len = 0;
    ev->path_err = ev->path2_err = ev->empty_path = 0;
    ev->path[0] = ev->path2[0] = ev->base[0] = ev->base2[0] = '\0';
    switch (r->kind) {
    case PC_KIND_PATH:
        return examine_path(t, c, r->dirfd_arg, r->path_arg, ev->path, &ev->path_len,
                            &ev->path_err, ev->base, &ev->base_len, &ev->empty_path);
    case PC_KIND_PATH2: {
        int e2;
        int a = examine_path(t, c, r->dirfd_arg, r->path_arg, ev->path, &ev->path_len,
                             &ev->path_err, ev->base, &ev->base_len, &ev->empty_path);
        int b = examine_path(t, c, r->dirfd2_arg, r->path2_arg, ev->path2, &ev->path2_len,
                             &ev->path2_err, ev->base2, &ev->base2_len, &e2);
        return a || b;
    }
    case PC_KIND_FD: {
        long fd = (long)(int)c->args[r->path_arg];
        int m = fd >= 0 ? proc_link(c->tid, NULL, fd, ev->base, PC_PATH_MAX) : -1;
        if (m <= 0)
            return 0;
        ev->base_len = m;
        return has_prefix(t, 1, ev->base);
    }
    case PC_KIND_CWD: {
        int m = proc_link(c->tid, "cwd", -1, ev->base, PC_PATH_MAX);
        if (m <= 0)
            return 0;
        ev->base_len = m;
        return has_prefix(t, 0, ev->base);
    }
    default:
        return 1;
    }
}

#define O_WRITE_BITS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | __O_TMPFILE)

/* Replay a read-only open Python performed before: the same backing file. */
static int fast_open(pc_tracer *t, pc_call *c, const char *path, int len)
{
    uint64_t flags = c->args[c->r->flags_arg];
    if (flags & (O_WRITE_BITS | O_PATH))
        return 0;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_find(t, (flags & O_NOFOLLOW) ? 'N' : 'F', path, (size_t)len);
    int err = 0, done = 0;
    char target[PC_PATH_MAX + 1];
    int tlen = 0;
    if (a) {
        if (a->err)
            err = a->err;
        else if (a->open_target && (flags & O_DIRECTORY) && !a->open_is_dir)
            err = ENOTDIR;
        else if (a->open_target && a->open_len <= PC_PATH_MAX) {
            tlen = a->open_len;
            memcpy(target, a->open_target, (size_t)tlen + 1);
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    if (err)
        done = respond_result(t, c, -err) == 0;
    else if (tlen)
        done = respond_open(t, c, target, tlen, flags);
    return done;
}

/* `key` is the absolute path of a path call, or the target of a descriptor. */
static int table_answer(pc_tracer *t, pc_call *c, const char *key, int len, int by_fd)
{
    const pc_rule *r = c->r;
    int follow = r->follow_default;
    if (r->flags_arg >= 0 && r->nofollow_flag && (c->args[r->flags_arg] & r->nofollow_flag))
        follow = 0;
    if (r->fast == PC_FAST_READLINK)
        follow = 0;
    if (by_fd)
        follow = 1;
    unsigned char buf[256];
    size_t n = 0;
    int64_t result = 0;
    int found = 0;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_find(t, follow ? 'F' : 'N', key, (size_t)len);
    if (a) {
        found = 1;
        if (r->fast == PC_FAST_ACCESS) {
            if (a->has_access)
                result = -(int64_t)a->access[c->args[r->mode_arg] & 7];
            else
                found = 0;
        } else if (a->err) {
            result = -(int64_t)a->err;
        } else if (r->fast == PC_FAST_STAT || r->fast == PC_FAST_STATX) {
            int x = r->fast == PC_FAST_STATX;
            if (x ? a->has_statx : a->has_stat) {
                n = x ? sizeof a->statx : sizeof a->stat;
                memcpy(buf, x ? a->statx : a->stat, n);
            } else {
                found = 0;
            }
        } else if (r->fast == PC_FAST_READLINK) {
            int64_t size = (int64_t)c->args[r->size_arg];
            if (!a->is_link || size <= 0) {
                result = -EINVAL;
            } else {
                n = (size_t)(a->link_len < size ? a->link_len : size);
                if (n > sizeof buf)
                    found = 0; /* long targets: Python */
                else
                    memcpy(buf, a->link, n);
                result = (int64_t)n;
            }
        } else {
            found = 0;
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    if (!found)
        return 0;
    if (n && pc_write(c->tid, c->args[r->out_arg], buf, n) != (ssize_t)n)
        result = -EFAULT;
    return respond_result(t, c, result) == 0;
}

int fast_answer(pc_tracer *t, pc_call *c, pc_event *ev)
{
    const pc_rule *r = c->r;
    if (r->fast == PC_FAST_NONE)
        return 0;
    if (r->kind == PC_KIND_FD || ev->empty_path)
        return r->fast != PC_FAST_OPEN && ev->base_len > 0 && ev->base[0] == '/' &&
               table_answer(t, c, ev->base, ev->base_len, 1);
    if (r->kind != PC_KIND_PATH || ev->base_len != 0 || ev->path[0] != '/')
        return 0;
    if (r->fast == PC_FAST_OPEN)
        return fast_open(t, c, ev->path, ev->path_len);
    return table_answer(t, c, ev->path, ev->path_len, 0);
}
