/* Deciding whether a call concerns /cvmfs, and answering it from the answer table.
 * The same code serves ptrace stops and seccomp notifications (pc_call). */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int has_prefix(pc_tracer *t, int which, const char *s)
{
    for (int i = 0; i < t->nprefix[which]; i++) {
        size_t n = t->prefix_len[which][i];
        if (strncmp(s, t->prefixes[which][i], n) == 0 && (s[n] == '/' || s[n] == '\0'))
            return 1;
    }
    return 0;
}

/* 1 if some component of `path` is exactly `name`. */
static int has_component(const char *path, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = path; (p = strstr(p, name)) != NULL; p += n)
        if ((p == path || p[-1] == '/') && (p[n] == '\0' || p[n] == '/'))
            return 1;
    return 0;
}

/* A path that may go through a /proc magic link, however it is spelled ("/proc/self/
 * fd/3", "//proc/...", "proc/self/cwd" from "/", "../../proc"...): a component "proc"
 * with a magic name after it, or /dev's fd and std* (handlers/procfs.py may_name_proc: Python
 * resolves them from where the link leads). */
static int may_name_proc(const char *p)
{
    if (has_component(p, "proc"))
        return strstr(p, "/exe") || strstr(p, "/cwd") || strstr(p, "/fd/") ||
               strstr(p, "/root") || strstr(p, "/map_files");
    return has_component(p, "dev") &&
           (has_component(p, "fd") || has_component(p, "stdin") ||
            has_component(p, "stdout") || has_component(p, "stderr"));
}

/* Any spelling of /cvmfs has a component "cvmfs" ("/cvmfs/..", "../../cvmfs",
 * "/proc/self/root/cvmfs"); anchor directories are listed as prefixes. */
static int path_concerns(pc_tracer *t, const pc_rule *r, const char *path)
{
    if (has_component(path, "cvmfs"))
        return 1;
    if (r->proc_sensitive && may_name_proc(path))
        return 1;
    return path[0] == '/' && has_prefix(t, 0, path);
}

/* A relative path's base: an anchor, or where relative names reach magic links. */
static int base_concerns(pc_tracer *t, const pc_rule *r, const char *base)
{
    if (has_prefix(t, 0, base))
        return 1;
    return r->proc_sensitive && (strncmp(base, "/proc", 5) == 0 || strcmp(base, "/dev") == 0 ||
                                 strcmp(base, "/dev/fd") == 0);
}

/* __O_TMPFILE includes O_DIRECTORY, so only its own bit counts here */
#define O_TMPFILE_BIT 020000000
#define O_WRITE_BITS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE_BIT)

/* In a guest namespace: a path the kernel resolves as the guest would (passthrough.c),
 * for a call that leaves it as it is or may change it (an open's write flags, access
 * asking W_OK). /proc magic links are the guest's whichever rule asks. */
static int guest_passes(pc_tracer *t, const pc_call *c, const char *path, const char *base,
                        int base_len)
{
    const pc_rule *r = c->r;
    if (may_name_proc(path))
        return 0;
    int writes = 0;
    if (r->fast == PC_FAST_OPEN && r->flags_arg >= 0)
        writes = (c->args[r->flags_arg] & O_WRITE_BITS) != 0;
    else if (r->fast == PC_FAST_ACCESS && r->mode_arg >= 0)
        writes = (c->args[r->mode_arg] & W_OK) != 0;
    return passthrough_path(t, c, path, base, base_len, writes);
}

/* What the job's descriptor `fd` is: a held one's name (held.c) without /proc when it
 * is one C installed, else readlink of /proc/<tid>/fd/<fd>. `primary`: the call's first
 * descriptor argument, whose kind and our copy are noted in the call. */
static int fd_name(pc_tracer *t, pc_call *c, long fd, char *out, size_t max, int primary)
{
    int ours = -1;
    if (fd < 0 || fd > INT32_MAX)
        return proc_link(c->tid, NULL, fd, out, max);
    int n = held_name(t, c->tid, (int)fd, out, max, &ours);
    if (n <= 0) {
        n = proc_link(c->tid, NULL, fd, out, max);
        /* only a name in the cache can be one of ours (the anchors, the objects); moved
         * on the notification thread only, which alone puts and so closes held ones */
        if (n <= 0 || !c->notify || !has_prefix(t, 1, out) ||
            !held_renamed(t, c->tid, (int)fd, out, n, &ours))
            return n;
    }
    if (primary) {
        c->base_dir = 1;
        c->held_ours = c->notify ? ours + 1 : 0;
    }
    return n;
}

/* One path argument (and, if it is relative, its base). 1 if it concerns us. */
static int examine_path(pc_tracer *t, pc_call *c, int dirfd_arg, int path_arg, char *path,
                        int *path_len, int *path_err, char *base, int *base_len, int *empty_path,
                        int primary)
{
    const pc_rule *r = c->r;
    *base_len = 0;
    *empty_path = 0;
    uint64_t addr = c->args[path_arg];
    long dirfd = dirfd_arg >= 0 ? (long)(int)c->args[dirfd_arg] : AT_FDCWD;
    int has_empty = r->empty_flag && r->flags_arg >= 0 && (c->args[r->flags_arg] & r->empty_flag);
    int null_fd = addr == 0 && (has_empty || r->bare_fd == PC_BARE_NULL);
    if (r->bare_fd == PC_BARE_EMPTY || null_fd)
        has_empty = 1; /* "" (or NULL) names the dirfd itself */
    int n = null_fd ? 0 : read_string(c->tid, addr, path, PC_PATH_MAX);
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
                                  : fd_name(t, c, dirfd, base, PC_PATH_MAX, primary);
        if (m < 0)
            return 0;
        *base_len = m;
        /* in a guest namespace, a change through a descriptor of the read-only root
         * (futimens, fchownat/fchmodat2 with AT_EMPTY_PATH): as for PC_KIND_FD */
        return has_prefix(t, 1, base) || (t->translate && r->fast == PC_FAST_NONE);
    }
    if (path[0] == '/') {
        if (path_concerns(t, r, path))
            return 1;
        return t->translate && !guest_passes(t, c, path, NULL, 0);
    }
    /* relative: Python needs the base whenever the call concerns us */
    int m = dirfd == AT_FDCWD ? proc_link(c->tid, "cwd", -1, base, PC_PATH_MAX)
                              : fd_name(t, c, dirfd, base, PC_PATH_MAX, primary);
    if (m < 0)
        return 0; /* a bad dirfd: the kernel's EBADF/ENOTDIR is right */
    *base_len = m;
    if (path_concerns(t, r, path) || base_concerns(t, r, base))
        return 1;
    return t->translate && !guest_passes(t, c, path, base, m);
}

/* A Unix socket's address at `addr` of `len` bytes: its path (not an abstract name,
 * not unnamed) as a path argument would be; the kernel reports a bad address itself. */
static int examine_sockaddr(pc_tracer *t, pc_call *c, pc_event *ev, uint64_t addr, uint64_t len)
{
    const pc_rule *r = c->r;
    unsigned char sa[2 + 108];
    if (len <= 2 || len > sizeof sa)
        return 0;
    if (pc_read(c->tid, addr, sa, (size_t)len) != (ssize_t)len)
        return 0;
    uint16_t family;
    memcpy(&family, sa, 2);
    if (family != 1 /* AF_UNIX */ || sa[2] == 0)
        return 0;
    size_t n = strnlen((const char *)sa + 2, (size_t)len - 2);
    memcpy(ev->path, sa + 2, n);
    ev->path[n] = '\0';
    ev->path_len = (int)n;
    if (ev->path[0] == '/')
        return t->translate || path_concerns(t, r, ev->path);
    int m = proc_link(c->tid, "cwd", -1, ev->base, PC_PATH_MAX);
    if (m < 0)
        return 0;
    ev->base_len = m;
    return t->translate || path_concerns(t, r, ev->path) || base_concerns(t, r, ev->base);
}

/* struct msghdr's first fields: msg_name, msg_namelen (64-bit ABIs) */
typedef struct {
    uint64_t name;
    uint32_t namelen;
} msg_head;

static int read_msg_head(const pc_call *c, uint64_t at, msg_head *m)
{
    unsigned char raw[12];
    if (pc_read(c->tid, at, raw, sizeof raw) != (ssize_t)sizeof raw)
        return -1;
    memcpy(&m->name, raw, 8);
    memcpy(&m->namelen, raw + 8, 4);
    return 0;
}

/* Whether descriptor `fd` of the task is an AF_UNIX socket (a copy, asked and closed). */
static int is_unix_socket(const pc_call *c, long fd)
{
    if (fd < 0)
        return 0;
    int ours = pc_getfd(c->tid, (int)fd);
    if (ours < 0)
        return 0;
    int domain = -1;
    socklen_t n = sizeof domain;
    int unix_socket = getsockopt(ours, SOL_SOCKET, SO_DOMAIN, &domain, &n) == 0 && domain == 1;
    close(ours);
    return unix_socket;
}

/* An address the kernel returns (accept, recvfrom, recvmsg): a buffer on a Unix socket. */
static int examine_sockfrom(pc_call *c)
{
    const pc_rule *r = c->r;
    uint64_t addr = c->args[r->out_arg];
    if (r->size_arg < 0) { /* recvmsg: the struct msghdr says */
        msg_head m;
        if (!addr || read_msg_head(c, addr, &m) < 0)
            return 0;
        addr = m.namelen ? m.name : 0;
    } else if (!c->args[r->size_arg])
        addr = 0;
    return addr && is_unix_socket(c, (long)(int)c->args[r->path_arg]);
}

#define KEY_UNKNOWN (-2) /* ev->key not composed yet */

/* HOT PATH: runs for every intercepted call with a rule (both modes): reads its
 * paths and decides whether it concerns /cvmfs; keep it free of allocation and locks */
int examine_call(pc_tracer *t, pc_call *c, pc_event *ev)
{
    const pc_rule *r = c->r;
    ev->path_len = ev->path2_len = ev->base_len = ev->base2_len = 0;
    ev->path_err = ev->path2_err = ev->empty_path = 0;
    ev->key_len = KEY_UNKNOWN;
    ev->path[0] = ev->path2[0] = ev->base[0] = ev->base2[0] = ev->key[0] = '\0';
    if (r->fast == PC_FAST_UNHOLD) {
        if (c->notify) /* the thread that alone closes held descriptors */
            held_drop(t, c->tid, (int)c->args[r->path_arg]);
        return 0; /* the kernel's */
    }
    switch (r->kind) {
    case PC_KIND_PATH:
        return examine_path(t, c, r->dirfd_arg, r->path_arg, ev->path, &ev->path_len,
                            &ev->path_err, ev->base, &ev->base_len, &ev->empty_path, 1);
    case PC_KIND_PATH2: {
        int e2;
        int a = examine_path(t, c, r->dirfd_arg, r->path_arg, ev->path, &ev->path_len,
                             &ev->path_err, ev->base, &ev->base_len, &ev->empty_path, 1);
        int b = examine_path(t, c, r->dirfd2_arg, r->path2_arg, ev->path2, &ev->path2_len,
                             &ev->path2_err, ev->base2, &ev->base2_len, &e2, 0);
        return a || b;
    }
    case PC_KIND_FD: {
        long fd = (long)(int)c->args[r->path_arg];
        int m = fd >= 0 ? fd_name(t, c, fd, ev->base, PC_PATH_MAX, 1) : -1;
        if (m <= 0)
            return 0;
        ev->base_len = m;
        /* in a guest namespace, a directory may show mount points it does not hold
         * (glue), and a descriptor of the read-only root must not change it (fchmod,
         * fchown, fsetxattr...: the rare calls with no fast answer) */
        if (has_prefix(t, 1, ev->base))
            return 1;
        /* a host directory at its own place with no mount point below lists as the
         * kernel lists it */
        if (r->fast == PC_FAST_GETDENTS && passthrough_dir(t, c, ev->base, (size_t)m))
            return 0;
        return t->translate && (r->fast == PC_FAST_GETDENTS || r->fast == PC_FAST_NONE);
    }
    case PC_KIND_CWD: {
        int m = proc_link(c->tid, "cwd", -1, ev->base, PC_PATH_MAX);
        if (m <= 0)
            return 0;
        ev->base_len = m;
        if (has_prefix(t, 0, ev->base))
            return 1;
        return t->translate && !passthrough_dir(t, c, ev->base, (size_t)m);
    }
    case PC_KIND_SOCKADDR:
        return examine_sockaddr(t, c, ev, c->args[r->path_arg], c->args[r->size_arg]);
    case PC_KIND_SOCKMSG: {
        msg_head m;
        if (!t->translate || read_msg_head(c, c->args[r->path_arg], &m) < 0 || !m.name)
            return 0;
        return examine_sockaddr(t, c, ev, m.name, m.namelen);
    }
    case PC_KIND_SOCKFROM:
        return t->translate && examine_sockfrom(c);
    case PC_KIND_SOCKNAME: /* only a Unix socket's name is a path (not a network one's) */
        return t->translate && is_unix_socket(c, (long)(int)c->args[r->path_arg]);
    default:
        return 0;
    }
}

/* Replay a read-only open Python performed before: the same backing file. */
/* HOT PATH: a read-only open answered from the table, per such call */
static int fast_open(pc_tracer *t, pc_call *c, const char *path, int len)
{
    uint64_t flags = c->args[c->r->flags_arg];
    if (flags & (O_WRITE_BITS | O_PATH))
        return 0;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_for_path(t, !(flags & O_NOFOLLOW), path, (size_t)len, PC_FAST_OPEN);
    int err = 0, done = 0;
    char target[PC_PATH_MAX + 1];
    int tlen = 0;
    int64_t size = -1;
    if (a) {
        if (a->err)
            err = a->err;
        else if (a->open_target && (flags & O_DIRECTORY) && !a->open_is_dir)
            err = ENOTDIR;
        else if (a->open_target && a->open_len <= PC_PATH_MAX) {
            tlen = a->open_len;
            memcpy(target, a->open_target, (size_t)tlen + 1);
            if (!a->open_is_dir) {
                /* the size the file must have: Python's stat answer for the backing file */
                answer *b = answer_find(t, 'F', target, (size_t)tlen);
                if (b && b->has_stat) {
                    struct stat sb;
                    memcpy(&sb, b->stat, sizeof sb);
                    size = sb.st_size;
                } else {
                    tlen = 0; /* nothing to check it against: Python answers */
                }
            }
            if (tlen && !a->open_is_dir) /* a plain store under the read lock: any writer wins */
                __atomic_store_n(&a->served, 1, __ATOMIC_RELAXED);
        }
    }
    pthread_rwlock_unlock(&t->answers_lock);
    if (err)
        done = respond_result(t, c, -err) == 0;
    else if (tlen)
        done = respond_open(t, c, target, tlen, flags, size);
    else if (t->translate && path[0] == '/' && !(flags & O_DIRECTORY)) {
        /* a file bind's destination (a guest's /etc/localtime): its host source */
        const char *src = file_bind(t, path, (size_t)len);
        if (src)
            done = respond_open(t, c, src, (int)strlen(src), flags, OPEN_HOST);
    }
    return done;
}

/* An execve Python planned before (handlers/execve.py keeps the recipe when it is a
 * function of the revision): the same file exec'd in place of the program, or the
 * errno Python failed it with (a shell or execvp trying each PATH directory in /cvmfs
 * gets its ENOENT here). C judges nothing itself: the rules are Python's. */
static int fast_exec(pc_tracer *t, pc_call *c, const char *path, int len)
{
    /* before Python runs too (a planned start): the logical program waits for it in
     * the execs list (queue.c quiet_task_event) */
    if (c->notify)
        return 0;
    char target[PC_PATH_MAX + 1], logical[PC_PATH_MAX + 1], words[PC_EXEC_WORDS_MAX];
    int found = 0, nwords = 0, err = 0;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_for_path(t, 1, path, (size_t)len, PC_FAST_EXEC);
    if (a && a->exec_err) {
        err = a->exec_err; /* Python's verdict (handlers/execve.py), replayed */
    } else if (a && a->exec_target) {
        snprintf(target, sizeof target, "%s", a->exec_target);
        snprintf(logical, sizeof logical, "%s", a->exec_logical);
        nwords = a->exec_nwords;
        if (nwords)
            memcpy(words, a->exec_words, (size_t)a->exec_words_len);
        found = 1;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    if (err)
        return respond_result(t, c, -err) == 0;
    return found && respond_exec(t, c, target, logical, words, nwords);
}

/* getcwd in a directory anchor: the spelling Python gave before (its /cvmfs path, or
 * in a guest namespace its guest path), with the kernel's ERANGE and result (the
 * length with the NUL). */
static int fast_getcwd(pc_tracer *t, pc_call *c, const char *anchor, int len)
{
    const pc_rule *r = c->r;
    uint64_t size = c->args[r->size_arg];
    int64_t result = 0;
    int found = 0;
    if (t->translate && odd_place(t, anchor, (size_t)len))
        return 0; /* the spelling taught is the first place's */
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_find(t, 'F', anchor, (size_t)len);
    if (a && a->cwd) {
        found = 1;
        size_t n = strlen(a->cwd) + 1;
        if (size < n)
            result = -ERANGE;
        else if (pc_write(c->tid, c->args[r->out_arg], a->cwd, n) != (ssize_t)n)
            result = -EFAULT;
        else
            result = (int64_t)n;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    return found && respond_result(t, c, result) == 0;
}

/* getxattr's answer from a path's attribute records (pc_table_put_xattrs): 1 and
 * *value and *vlen if the name has a value, 0 if it has none (ENODATA), -1 if Python
 * must answer. */
static int xattr_value(const answer *a, const char *name, const unsigned char **value,
                       size_t *vlen)
{
    size_t nlen = strlen(name);
    int python = 0; /* a prefix record covers the name */
    for (size_t p = 0; p + 2 <= a->xattrs_len;) {
        size_t kl = (size_t)a->xattrs[p] | (size_t)a->xattrs[p + 1] << 8;
        if (p + 2 + kl + 4 > a->xattrs_len)
            return -1;
        const unsigned char *k = a->xattrs + p + 2;
        uint32_t vl;
        memcpy(&vl, k + kl, 4);
        const unsigned char *v = k + kl + 4;
        int marker = vl >= PC_XATTR_PREFIX;
        if (!marker && v + vl > a->xattrs + a->xattrs_len)
            return -1;
        if (vl == PC_XATTR_PREFIX && kl <= nlen && memcmp(k, name, kl) == 0)
            python = 1;
        else if (kl == nlen && memcmp(k, name, nlen) == 0) {
            if (vl == PC_XATTR_PYTHON)
                return -1;
            *value = v;
            *vlen = vl;
            return 1;
        }
        p += 2 + kl + 4 + (marker ? 0 : vl);
    }
    return python ? -1 : 0;
}

/* `key` is the absolute path of a path call, or the target of a descriptor. */
/* HOT PATH: a metadata call answered from the table (stat, access, readlink,
 * xattrs), per such call: one read lock, one hash lookup, one write to the program */
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
    char name[256];
    if (r->fast == PC_FAST_GETXATTR) {
        int nl = read_string(c->tid, c->args[r->attr_arg], name, sizeof name - 1);
        if (nl <= 0)
            return 0; /* EFAULT, ERANGE, ...: Python says which */
    }
    const unsigned char *out = NULL; /* what to copy to the program's buffer */
    unsigned char statx_buf[256];
    size_t n = 0;
    int64_t result = 0;
    int found = 0, done = 0;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = by_fd ? answer_find(t, 'F', key, (size_t)len)
                      : answer_for_path(t, follow, key, (size_t)len, r->fast);
    if (a) {
        found = 1;
        int64_t size = r->size_arg >= 0 ? (int64_t)c->args[r->size_arg] : 0;
        switch (r->fast) {
        case PC_FAST_ACCESS:
            if (a->has_access)
                result = -(int64_t)a->access[c->args[r->mode_arg] & 7];
            else
                found = 0;
            break;
        case PC_FAST_STAT:
        case PC_FAST_STATX: {
            int x = r->fast == PC_FAST_STATX;
            if (a->has_answer && a->err) {
                result = -(int64_t)a->err;
            } else if (a->has_stat) {
                n = x ? sizeof statx_buf : sizeof a->stat;
                out = a->stat;
                if (x) {
                    struct stat sb;
                    memcpy(&sb, a->stat, sizeof sb);
                    statx_of_stat(&sb, statx_buf);
                    out = statx_buf;
                }
            } else {
                found = 0;
            }
            break;
        }
        case PC_FAST_READLINK:
            if (!a->has_answer) {
                found = 0;
            } else if (a->err) {
                result = -(int64_t)a->err;
            } else if (!a->is_link || size <= 0) {
                result = -EINVAL;
            } else {
                n = (size_t)(a->link_len < size ? a->link_len : size);
                out = (const unsigned char *)a->link;
                result = (int64_t)n;
            }
            break;
        case PC_FAST_STATFS: {
            /* the file system's figures are taught once per repository, by st_dev */
            answer *fs = NULL;
            if (!(a->has_answer && a->err) && a->has_stat) {
                struct stat sb;
                char sk[48];
                memcpy(&sb, a->stat, sizeof sb);
                int kl = statfs_key(sb.st_dev, sk, sizeof sk);
                fs = answer_find(t, 'F', sk, (size_t)kl);
            }
            if (a->has_answer && a->err)
                result = -(int64_t)a->err;
            else if (fs && fs->statfs)
                out = fs->statfs, n = sizeof(struct statfs);
            else
                found = 0;
            break;
        }
        case PC_FAST_GETXATTR:
        case PC_FAST_LISTXATTR: {
            const unsigned char *v = NULL;
            size_t vl = 0;
            int have = 0;
            if (a->has_answer && a->err) {
                result = -(int64_t)a->err;
                break;
            }
            if (r->fast == PC_FAST_LISTXATTR) {
                have = a->xnames != NULL ? 1 : -1;
                v = a->xnames;
                vl = a->xnames_len;
            } else {
                have = a->xattrs != NULL ? xattr_value(a, name, &v, &vl) : -1;
            }
            if (have < 0)
                found = 0;
            else if (have == 0)
                result = -ENODATA;
            else if (size == 0)
                result = (int64_t)vl; /* the size the caller needs */
            else if ((size_t)size < vl)
                result = -ERANGE;
            else
                out = v, n = vl, result = (int64_t)vl;
            break;
        }
        default:
            found = 0;
        }
        /* written under the lock: `out` points into the table */
        if (found && n && pc_write(c->tid, c->args[r->out_arg], out, n) != (ssize_t)n)
            result = -EFAULT;
    }
    pthread_rwlock_unlock(&t->answers_lock);
    if (found)
        done = respond_result(t, c, result) == 0;
    return done;
}

/* A guest's relative path: its own key space, the anchor and the path after a byte no
 * absolute path starts with. Python's walk of a relative path starts from the anchor's
 * guest name (guest.py cwd_of), but that name walked from "/" may lead elsewhere (a
 * link or a file among its components, a bind over it), so neither its /cvmfs nor its
 * guest spelling may share an absolute path's answer. */
static int guest_relative_key(const pc_event *ev, char *key)
{
    size_t klen = 1 + (size_t)ev->base_len + 1 + (size_t)ev->path_len;
    if (klen > PC_PATH_MAX)
        return -1;
    key[0] = PC_RELATIVE_KEY;
    memcpy(key + 1, ev->base, (size_t)ev->base_len);
    key[1 + ev->base_len] = '/';
    memcpy(key + 2 + ev->base_len, ev->path, (size_t)ev->path_len + 1);
    return (int)klen;
}

/* The key of a path relative to a directory anchor (the cwd or a dirfd inside
 * /cvmfs): the same string as the absolute path would be, since an anchor stands for
 * its directory with every symlink above it already resolved. Anchors are named
 * <anchors>/<fqrn>@<root hash>/<path> (anchors.py): the key drops the "@<root hash>".
 * In a guest namespace the /cvmfs spelling is not the walk's (a ".." leaves a bind for
 * its guest parent, a bind below the directory hides what lies there): see
 * guest_relative_key. -1 if there is none. */
static int relative_key(pc_tracer *t, const pc_call *c, const pc_event *ev, char *key)
{
    if (t->nprefix[0] < 1 || ev->base_len == 0)
        return -1;
    const char *anchors = t->prefixes[0][0];
    size_t alen = t->prefix_len[0][0];
    if (strncmp(ev->base, anchors, alen) != 0 || (ev->base[alen] != '/' && ev->base[alen] != '\0'))
        return -1;
    /* a cwd removed meanwhile reads "<anchor> (deleted)": no key (the walk is Python's) */
    static const char deleted[] = " (deleted)";
    size_t dlen = sizeof deleted - 1;
    if ((size_t)ev->base_len >= dlen && memcmp(ev->base + ev->base_len - dlen, deleted, dlen) == 0)
        return -1;
    const char *rest = ev->base + alen; /* "" or "/fqrn@hash[/path]" */
    size_t rlen = (size_t)ev->base_len - alen;
    const char *at = NULL, *slash = NULL;
    if (rlen > 0) {
        slash = memchr(rest + 1, '/', rlen - 1);
        at = memchr(rest + 1, '@', (size_t)((slash ? slash : rest + rlen) - (rest + 1)));
        if (!at)
            return -1; /* not an anchor of ours */
    }
    if (c->r->dirfd_arg >= 0 && (int)c->args[c->r->dirfd_arg] != AT_FDCWD) {
        struct stat st; /* a dirfd may be an anchor of a symlink or fifo: ENOTDIR, Python's */
        if (!c->base_dir && (lstat(ev->base, &st) != 0 || !S_ISDIR(st.st_mode)))
            return -1;
    }
    if (t->translate) /* what is relative to an odd place depends on its spelling */
        return odd_place(t, ev->base, (size_t)ev->base_len) ? -1 : guest_relative_key(ev, key);
    size_t head = at ? (size_t)(at - rest) : 0;         /* "/fqrn" */
    size_t tail = slash ? (size_t)(rest + rlen - slash) : 0; /* "/path" */
    size_t mlen = sizeof PC_MOUNT - 1;
    size_t klen = mlen + head + tail + 1 + (size_t)ev->path_len;
    if (klen > PC_PATH_MAX)
        return -1;
    char *k = key;
    memcpy(k, PC_MOUNT, mlen);
    k += mlen;
    memcpy(k, rest, head);
    k += head;
    if (tail)
        memcpy(k, slash, tail);
    k += tail;
    *k++ = '/';
    memcpy(k, ev->path, (size_t)ev->path_len + 1);
    return (int)klen;
}

/* The answer table's key of the call's path into ev->key, composed once per call (the
 * fast path and Python's handlers use the same): its length, -1 if it has none. */
static int event_key(pc_tracer *t, const pc_call *c, pc_event *ev)
{
    if (ev->key_len != KEY_UNKNOWN)
        return ev->key_len;
    if (ev->empty_path || ev->path_len <= 0)
        ev->key_len = -1;
    else if (ev->path[0] == '/') {
        memcpy(ev->key, ev->path, (size_t)ev->path_len + 1);
        ev->key_len = ev->path_len;
    } else
        ev->key_len = relative_key(t, c, ev, ev->key);
    if (ev->key_len < 0)
        ev->key[0] = '\0';
    return ev->key_len;
}

/* getdents64 on a descriptor of a directory anchor whose listing Python taught us.
 * The descriptor's own file position is the cursor (the index of the next record),
 * moved through a copy of the descriptor so that lseek/rewinddir keep working. */
static int fast_getdents(pc_tracer *t, pc_call *c, const char *anchor, int len)
{
    const pc_rule *r = c->r;
    int fd = (int)c->args[r->path_arg];
    uint64_t count = c->args[r->size_arg] & 0xFFFFFFFFu;
    pthread_rwlock_rdlock(&t->answers_lock);
    answer *a = answer_find(t, 'F', anchor, (size_t)len);
    if (!a || !a->dents) {
        pthread_rwlock_unlock(&t->answers_lock);
        return 0;
    }
    /* a held descriptor is the same file as the job's (one file position) */
    int held = c->held_ours > 0, ours = held ? c->held_ours - 1 : pc_getfd(c->tid, fd);
    if (ours < 0) {
        pthread_rwlock_unlock(&t->answers_lock);
        return 0;
    }
    off_t pos = lseek(ours, 0, SEEK_CUR);
    size_t start = 0, end, index = 0;
    while (start < a->dents_len && (off_t)index < pos) { /* skip to record `pos` */
        start += *(uint16_t *)(a->dents + start + 16);
        index++;
    }
    for (end = start; end < a->dents_len; index++) {
        size_t reclen = *(uint16_t *)(a->dents + end + 16);
        if (end + reclen - start > count)
            break;
        end += reclen;
    }
    int64_t result = (int64_t)(end - start);
    if (pos < 0)
        result = -EINVAL;
    else if (end == start && start < a->dents_len)
        result = -EINVAL; /* the buffer cannot hold one record */
    else if (end > start && pc_write(c->tid, c->args[r->out_arg], a->dents + start, end - start) !=
                                (ssize_t)(end - start))
        result = -EFAULT;
    else if (end > start)
        lseek(ours, (off_t)index, SEEK_SET);
    pthread_rwlock_unlock(&t->answers_lock);
    if (!held)
        close(ours);
    return respond_result(t, c, result) == 0;
}

/* ---- the tracer thread's work: one wait status at a time --------------------------------- */

void fill_event(pc_tracer *t, pc_event *ev, const pc_call *c)
{
    event_key(t, c, ev);
    ev->kind = PC_EV_SYSCALL;
    ev->notify = c->notify;
    ev->notif_id = c->notif_id;
    ev->tid = c->tid;
    ev->rule = c->rule;
    ev->nr = c->nr;
    for (int i = 0; i < 6; i++)
        ev->args[i] = c->args[i];
    ev->sp = c->regs ? reg_sp(c->regs) - RED_ZONE : 0;
}

/* HOT PATH: runs for every call examine_call kept: the answer table first, Python
 * only if it has nothing */
int fast_answer(pc_tracer *t, pc_call *c, pc_event *ev)
{
    const pc_rule *r = c->r;
    if (r->fast == PC_FAST_NONE)
        return 0;
    if (r->fast == PC_FAST_GETDENTS)
        return ev->base_len > 0 && fast_getdents(t, c, ev->base, ev->base_len);
    if (r->fast == PC_FAST_GETCWD)
        return ev->base_len > 0 && fast_getcwd(t, c, ev->base, ev->base_len);
    if (r->kind == PC_KIND_FD || ev->empty_path)
        return r->fast != PC_FAST_OPEN && ev->base_len > 0 && ev->base[0] == '/' &&
               table_answer(t, c, ev->base, ev->base_len, 1);
    if (r->kind != PC_KIND_PATH || ev->path_len == 0)
        return 0;
    const char *key = ev->path;
    int len = ev->path_len;
    if (ev->path[0] != '/') {
        if ((len = event_key(t, c, ev)) < 0)
            return 0;
        key = ev->key;
    }
    if (r->fast == PC_FAST_OPEN)
        return fast_open(t, c, key, len);
    if (r->fast == PC_FAST_EXEC)
        return fast_exec(t, c, key, len);
    return table_answer(t, c, key, len, 0);
}
