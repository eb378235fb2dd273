/* Finishing a call: a ptrace stop is resumed (its registers edited), a seccomp
 * notification is answered through the listener. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <linux/seccomp.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int pc_notif_reply(pc_tracer *t, uint64_t id, int64_t result)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    if (result < 0)
        resp.error = (int32_t)result;
    else
        resp.val = result;
    return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 ? -errno : 0;
}

int pc_notif_continue(pc_tracer *t, uint64_t id)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 ? -errno : 0;
}

/* Installing a descriptor is a round trip through the program: the kernel wakes it to
 * take the descriptor, then it wakes us, both with a plain complete(), not on the
 * waker's CPU as SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP does for answers. The scheduler
 * then prefers an idle CPU, and waking one costs 20-50 µs where idle CPUs halt (virtual
 * machines). Holding the program and this thread to this CPU for the hand-off keeps
 * both wake-ups here. Measured: holding the program, open+close in a tight loop
 * 75 -> 25 µs; holding us too, an open in workload P (calls spaced out, the other CPU
 * asleep) 62-83 -> 41-50 µs as the program sees it, though the tight loop, where the
 * other CPU is awake and takes half the round trip, goes 25 -> 35 µs. Both masks are
 * back before the answer is sent, so the program never runs with ours. */
static int pin_to_here(pid_t tid, cpu_set_t *saved)
{
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(tid, sizeof *saved, saved) < 0)
        return 0;
    if (!CPU_ISSET(cpu, saved) || CPU_COUNT(saved) == 1)
        return 0;
    cpu_set_t here;
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    return sched_setaffinity(tid, sizeof here, &here) == 0;
}

/* Set in the threads that block every signal (notify.c, spawn.c): their installs need
 * no mask of their own. */
__thread int pc_all_signals_blocked;

/* `fd` installed in the program, as its number `at` if >= 0; `send`: as the call's
 * answer too, in one step that a signal cannot split (-ENOENT if one ended the call).
 * A signal to *us* must not split it either: the kernel marks the call answered before
 * it waits for the program to take the descriptor, and an interrupted wait withdraws
 * the descriptor but not the answer, so the program's call would return 0 (Linux 6.18,
 * seccomp_notify_addfd). The forwarded signals (spawn.c) wait for the moment. */
static int addfd(pc_tracer *t, uint64_t id, int fd, int cloexec, int send, int at)
{
    struct seccomp_notif_addfd add;
    memset(&add, 0, sizeof add);
    add.id = id;
    add.flags = (send ? SECCOMP_ADDFD_FLAG_SEND : 0) | (at >= 0 ? SECCOMP_ADDFD_FLAG_SETFD : 0);
    add.srcfd = (uint32_t)fd;
    add.newfd = at >= 0 ? (uint32_t)at : 0;
    add.newfd_flags = cloexec ? O_CLOEXEC : 0;
    sigset_t all, was;
    int mask = send && !pc_all_signals_blocked;
    if (mask) {
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &was);
    }
    int n = ioctl(t->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    int e = errno;
    if (mask)
        pthread_sigmask(SIG_SETMASK, &was, NULL);
    /* ESRCH: the program left its wait after the install was queued */
    return n >= 0 ? n : e == ESRCH ? -ENOENT : -e;
}

/* A signal to the program between the install and the answer ended its call with the
 * descriptor `n` in it: remembered as a stray (stray.c) for the call made again. `file`
 * is ours if still open, else -1 and `st` what it was: a copy is then taken from the
 * program (which does not know the number), if that number still holds the same file. */
static void left_in(pc_tracer *t, pid_t tid, int n, int file, const struct stat *st,
                    int cloexec)
{
    stray_mark(t, tid);
    if (file >= 0) {
        stray_put(t, tid, n, file, cloexec);
        return;
    }
    struct stat now;
    int copy = pc_getfd(tid, n);
    if (copy >= 0 && fstat(copy, &now) == 0 && now.st_dev == st->st_dev &&
        now.st_ino == st->st_ino)
        stray_put(t, tid, n, copy, cloexec);
    if (copy >= 0)
        close(copy);
}

/* The call answered with `n`, our `fd` installed as it (and closed first if given:
 * then the program's open file is its alone, and a flock it takes ends with its close,
 * not with ours, later). */
static int answer_installed(pc_tracer *t, uint64_t id, pid_t tid, int n, int fd, int give,
                            int cloexec)
{
    struct stat st;
    int known = !give || fstat(fd, &st) == 0;
    if (give)
        close(fd);
    int r = pc_notif_reply(t, id, n);
    if (r == -ENOENT && known)
        left_in(t, tid, n, give ? -1 : fd, &st, cloexec);
    return r < 0 ? r : n;
}

/* The call answered with the stray `n`, which holds the open file of our `fd`: put
 * there again with the answer, in one step, since an answer alone could be lost (the
 * thread is one signals hit: stray.c). The open file replaced is the same one, but the
 * replacement closes it once, and a close drops every POSIX lock the process holds on
 * the file: where it may hold one, the answer is the number alone, as before the
 * marks. If the number cannot be replaced (a lowered RLIMIT_NOFILE, another thread's
 * open reserving it: EBADF, EBUSY, the call still waiting), the descriptor goes in at
 * a new number and the stray stays one. */
static int answer_stray(pc_tracer *t, uint64_t id, pid_t tid, int n, int fd, int give,
                        int cloexec)
{
    struct stat st;
    int locked = fstat(fd, &st) != 0 || stray_posix_locked(tid, st.st_ino);
    /* asked again after reading /proc/locks: another thread of the job may have put
     * its own file at n since (then there is no stray to answer with, and n is not
     * ours to name or replace); the kernel offers no compare-and-replace for what
     * remains */
    int same = pc_same_file(t, tid, n, fd) == 1;
    if (same && locked)
        return answer_installed(t, id, tid, n, fd, give, cloexec);
    int r = addfd(t, id, fd, cloexec, 1, same ? n : -1);
    if (r < 0 && same)
        stray_put(t, tid, n, fd, cloexec);
    if (r < 0 && r != -ENOENT && same)
        r = addfd(t, id, fd, cloexec, 1, -1);
    if (r == -ENOENT)
        stray_mark(t, tid);
    if (give)
        close(fd);
    return r;
}

int pc_notif_addfd(pc_tracer *t, uint64_t id, int fd, int cloexec, int tid, int give)
{
    /* the same thread's call made again after a signal ended it: the descriptor it
     * never learnt of is its answer (`fd` is made a copy of that) */
    int n = tid > 0 ? stray_take(t, tid, fd, cloexec) : -1;
    if (n >= 0)
        return answer_stray(t, id, tid, n, fd, give, cloexec);
    cpu_set_t saved, ours;
    /* a thread signals have hit is not held: its answer would be lost now and then */
    int pinned = tid > 0 && !stray_marked(t, tid) && pin_to_here(tid, &saved);
    if (!pinned) { /* installed and answered at once: a signal cannot come in between */
        n = addfd(t, id, fd, cloexec, 1, -1);
        if (give)
            close(fd);
        if (n == -ENOENT && tid > 0)
            stray_mark(t, tid);
        return n;
    }
    /* this thread too (0: the calling thread); a mask we cannot read stays as it is */
    int self_pinned = pin_to_here(0, &ours);
    /* installed without the answer, so that the program's own mask is back before
     * it runs again; then answered (a wake-up on our CPU, as for any answer) */
    n = addfd(t, id, fd, cloexec, 0, -1);
    if (self_pinned)
        sched_setaffinity(0, sizeof ours, &ours);
    sched_setaffinity(tid, sizeof saved, &saved);
    if (n < 0) {
        if (give)
            close(fd);
        if (n == -ENOENT)
            stray_mark(t, tid);
        return n;
    }
    return answer_installed(t, id, tid, n, fd, give, cloexec);
}

int pc_notif_valid(pc_tracer *t, uint64_t id)
{
    return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

int pc_notifying(pc_tracer *t) { return t->listener >= 0; }

int respond_result(pc_tracer *t, pc_call *c, int64_t result)
{
    if (c->notify)
        return pc_notif_reply(t, c->notif_id, result);
    if (skip_call(c->tid, c->regs, result) < 0)
        return -errno;
    return ptrace(PTRACE_CONT, c->tid, 0, 0) < 0 ? -errno : 0;
}

/* Flags of the program's open that describe the open file itself. */
#define KEEP_FLAGS (O_NONBLOCK | O_NOATIME | O_DIRECT | O_LARGEFILE | O_NOCTTY | O_SYNC | \
                    O_DSYNC | O_DIRECTORY)

int open_backing(pc_tracer *t, const char *path, int flags)
{
    for (int i = 0; i < t->nprefix[1]; i++) {
        size_t n = t->prefix_len[1][i];
        if (strncmp(path, t->prefixes[1][i], n) != 0 || path[n] != '/' || t->prefix_fd[1][i] < 0)
            continue;
        const char *rel = path + n + 1;
        if (!__atomic_load_n(&t->no_openat2, __ATOMIC_RELAXED)) {
            /* a link anywhere below the cache directory is refused, not followed, the
             * last component's too (O_NOFOLLOW is not needed for that, and would show in
             * the program's /proc/self/fdinfo): what the kernel opens is what we made */
            struct open_how how;
            memset(&how, 0, sizeof how);
            how.flags = (uint64_t)(flags | O_CLOEXEC);
            how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
            int fd = (int)syscall(SYS_openat2, t->prefix_fd[1][i], rel, &how, sizeof how);
            if (fd >= 0 || errno != ENOSYS)
                return fd >= 0 ? fd : -errno;
            __atomic_store_n(&t->no_openat2, 1, __ATOMIC_RELAXED);
        }
        /* before Linux 5.6 (ptrace mode): the last component at least (our own code
         * makes the rest without following links, anchors.py, cache.py) */
        int fd = openat(t->prefix_fd[1][i], rel, flags | O_NOFOLLOW | O_CLOEXEC);
        return fd >= 0 ? fd : -errno;
    }
    return -EXDEV;
}

/* Whether a cache file may back a regular file of `size` bytes: a regular file of
 * that size, as Python's lookup requires (anything else is Python's to fetch again or
 * refuse). */
static int fits(int fd, int64_t size)
{
    struct stat s;
    return fstat(fd, &s) == 0 && S_ISREG(s.st_mode) && s.st_size == size;
}

/* A file bind's host source, as the guest's read-only open of its destination: no link
 * followed (the table's source is a realpath; a link put there since is Python's). */
static int open_host(pc_tracer *t, const char *path, int flags)
{
    if (__atomic_load_n(&t->no_openat2, __ATOMIC_RELAXED))
        return -ENOSYS;
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    return fd >= 0 ? fd : -errno;
}

static int is_regular(int fd)
{
    struct stat s;
    return fstat(fd, &s) == 0 && S_ISREG(s.st_mode);
}

/* An open of `target` in place of the program's path. A notification: we open it and
 * install the descriptor (one round trip). A ptrace stop: the path argument points
 * at `target`, written below the stack pointer (two stops). 1 if done. `size` >= 0:
 * a regular file's backing file, served only if it fits (else 0: Python's); OPEN_HOST:
 * a host regular file (a file bind's source). */
int respond_open(pc_tracer *t, pc_call *c, const char *target, int len, uint64_t flags,
                 int64_t size)
{
    int host = size == OPEN_HOST;
    if (c->notify) {
        /* a regular file's: non-blocking in case a fifo was put there since */
        int how = O_RDONLY | (int)(flags & KEEP_FLAGS) | (size != -1 ? O_NONBLOCK : 0);
        int fd = host ? open_host(t, target, how) : open_backing(t, target, how);
        if (fd < 0)
            return 0; /* gone from the cache (or not what we made): let Python see */
        if (size != -1) {
            if (host ? !is_regular(fd) : !fits(fd, size)) {
                close(fd);
                return 0;
            }
            if (!(flags & O_NONBLOCK)) /* the program's own status flags */
                fcntl(fd, F_SETFL, (int)(flags & (O_DIRECT | O_NOATIME)));
        }
        int n = pc_notif_addfd(t, c->notif_id, fd, (flags & O_CLOEXEC) != 0, c->tid, 0);
        if (n >= 0 && size == -1 && !host)
            held_put(t, c->tid, n, fd); /* a directory: later calls need not ask /proc */
        else
            close(fd);
        if (n < 0 && n != -ENOENT) /* ENOENT: the program was interrupted meanwhile */
            pc_notif_reply(t, c->notif_id, n);
        return 1;
    }
    /* a file a quota clean-up evicted since it was kept, one changed since, or a link
     * planted there: Python makes it again (the kernel then opens it by name: a file
     * replaced in between is a race within the cache's own user) */
    int how = O_RDONLY | O_NONBLOCK | (int)(flags & O_DIRECTORY);
    int fd = host ? open_host(t, target, how) : open_backing(t, target, how);
    if (fd < 0)
        return 0;
    int ok = host ? is_regular(fd) : size < 0 || fits(fd, size);
    close(fd);
    if (!ok)
        return 0;
    uint64_t addr = (reg_sp(c->regs) - RED_ZONE - (uint64_t)len - 1) & ~(uint64_t)15;
    if (pc_write(c->tid, addr, target, (size_t)len + 1) != len + 1)
        return 0;
    int arg = c->r->path_arg;
    /* and if the file goes before the kernel opens it, the call is made again */
    return rewrite_args(t, c->tid, c->regs, 1, &arg, &addr, 0, 0, 1) == 0;
}

/* ---- a ptrace stop's call with its arguments rewritten, and its exit stop ---------- */

/* What the kernel would record as AT_EXECFN for this exec, had it not been rewritten:
 * the path as the program gave it (execve; execveat of an absolute path). NULL if the
 * kernel would make it up itself (a descriptor's /dev/fd/N/...). */
static char *given_execfn(pid_t tid, const pc_regs *regs)
{
    long nr = reg_nr(regs);
    int arg = nr == SYS_execve ? 0 : nr == SYS_execveat ? 1 : -1;
    if (arg < 0)
        return NULL;
    char buf[PC_PATH_MAX + 1];
    int n = read_string(tid, get_arg(regs, arg), buf, PC_PATH_MAX);
    if (n <= 0 || (arg == 1 && buf[0] != '/'))
        return NULL;
    return strdup(buf);
}

int rewrite_args(pc_tracer *t, pid_t tid, pc_regs *regs, int narg, const int *args,
                 const uint64_t *values, int report_exit, int is_exec, int reopen)
{
    task_state *s = task_add(t, tid);
    if (!s)
        return -ENOMEM;
    s->saved = *regs;
    s->report_exit = report_exit;
    s->is_exec = is_exec;
    s->reopen = reopen;
    s->at_exit = 0;
    free(s->execfn);
    free(s->exe_logical);
    s->execfn = s->exe_logical = NULL;
    if (is_exec)
        s->execfn = given_execfn(tid, regs);
    for (int i = 0; i < narg; i++)
        set_arg(regs, args[i], values[i]);
    if (set_regs(tid, regs) < 0) {
        int e = errno;
        task_del(t, tid);
        return -e;
    }
    return ptrace(PTRACE_SYSCALL, tid, 0, 0) < 0 ? -errno : 0;
}

/* The registers of the exit stop the task is at: read once there (on_exit_stop). */
static int exit_regs(const task_state *s, pid_t tid, pc_regs *cur)
{
    if (s->at_exit) {
        *cur = s->cur;
        return 0;
    }
    return get_regs(tid, cur);
}

int restart_exit_stop(pc_tracer *t, pid_t tid)
{
    task_state *s = task_find(t, tid);
    pc_regs cur;
    if (!s || s->is_exec || exit_regs(s, tid, &cur) < 0)
        return finish_exit_stop(t, tid, 0, 0);
    restart_call(&cur, &s->saved);
    int rc = set_regs(tid, &cur);
    task_del(t, tid);
    if (rc < 0)
        return -errno;
    return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
}

int finish_exit_stop(pc_tracer *t, pid_t tid, int set_result, int64_t result)
{
    task_state *s = task_find(t, tid);
    pc_regs cur;
    if (!s || exit_regs(s, tid, &cur) < 0) {
        if (s)
            task_del(t, tid);
        return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
    }
    int64_t ret = reg_ret(&cur);
    /* After a successful exec the registers belong to the new program. */
    if (!(s->is_exec && ret == 0)) {
        restore_args(&cur, &s->saved);
        if (set_result && !(ret <= -512 && ret >= -516))
            set_ret(&cur, result);
        set_regs(tid, &cur);
    }
    task_del(t, tid);
    return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
}

int skip_stop(pid_t tid, int64_t result)
{
    pc_regs regs;
    return get_regs(tid, &regs) == 0 && skip_call(tid, &regs, result) == 0 &&
           ptrace(PTRACE_CONT, tid, 0, 0) == 0;
}

/* ---- exec ------------------------------------------------------------------------- */

/* A script's argv as the kernel's `#!` rule makes it: the chain's words, the path as
 * exec was given it (the program's own string), then argv[1:] (the program's own
 * strings), the words and the array written below `top`. Its address, 0 if it cannot
 * be made here (no argv, a long one, memory we cannot write: Python's). */
#define SCRIPT_ARGV_MAX 4096
static uint64_t script_argv(pid_t tid, const pc_regs *regs, uint64_t top, const char *words,
                            int nwords)
{
    uint64_t argv = get_arg(regs, 1), given = get_arg(regs, 0);
    static uint64_t ptrs[SCRIPT_ARGV_MAX + 16]; /* the tracer thread's alone */
    int argc = 0;
    for (;;) { /* the program's argv, up to its NULL */
        uint64_t chunk[64];
        ssize_t n = argv ? pc_read(tid, argv + (uint64_t)argc * 8, chunk, sizeof chunk) : -1;
        if (n < 8)
            return 0;
        int i = 0, end = 0;
        for (; i < n / 8 && !end; i++) {
            if (!chunk[i])
                end = 1;
            else if (argc >= SCRIPT_ARGV_MAX)
                return 0;
            else
                ptrs[nwords + argc++] = chunk[i];
        }
        if (end)
            break;
    }
    if (argc == 0)
        return 0; /* the kernel's own rules for an empty argv: Python's */
    uint64_t at = top;
    const char *w = words;
    for (int i = 0; i < nwords; i++) { /* the words, in order below `top` */
        size_t len = strlen(w) + 1;
        at -= len;
        if (pc_write(tid, at, w, len) != (ssize_t)len)
            return 0;
        ptrs[i] = at;
        w += len;
    }
    ptrs[nwords] = given; /* argv[0] gives way to the path as given */
    ptrs[nwords + argc] = 0;
    size_t bytes = ((size_t)nwords + (size_t)argc + 1) * 8;
    at = (at - bytes) & ~(uint64_t)15;
    return pc_write(tid, at, ptrs, bytes) == (ssize_t)bytes ? at : 0;
}

int respond_exec(pc_tracer *t, pc_call *c, const char *target, const char *logical,
                 const char *words, int nwords)
{
    if (c->notify || !c->regs)
        return 0;
    /* still a regular file of ours that we may exec (a quota clean-up may have taken it,
     * a link may have been planted there): else Python makes it again */
    int fd = open_backing(t, target, O_PATH);
    if (fd < 0)
        return 0;
    struct stat s;
    int ok = fstat(fd, &s) == 0 && S_ISREG(s.st_mode) && s.st_uid == geteuid() &&
             (s.st_mode & S_IXUSR);
    close(fd);
    size_t len = strlen(target);
    char *keep = strdup(logical);
    if (!ok || !keep) {
        free(keep);
        return 0;
    }
    uint64_t addr = (reg_sp(c->regs) - RED_ZONE - (uint64_t)len - 1) & ~(uint64_t)15;
    int args[2] = {c->r->path_arg, 1};
    uint64_t values[2] = {addr, 0};
    if (nwords && !(values[1] = script_argv(c->tid, c->regs, addr, words, nwords))) {
        free(keep);
        return 0;
    }
    if (pc_write(c->tid, addr, target, len + 1) != (ssize_t)len + 1 ||
        rewrite_args(t, c->tid, c->regs, nwords ? 2 : 1, args, values, 0, 1, 0) != 0) {
        free(keep);
        return 0;
    }
    task_state *ts = task_find(t, c->tid);
    if (ts)
        ts->exe_logical = keep;
    else
        free(keep);
    return 1;
}

/* Make `name` the new program's AT_EXECFN (the kernel recorded the path it was given:
 * ours). In place if it fits there; else below the initial stack block (argc, argv,
 * envp, auxv), which moves down to make room, the stack pointer with it: the strings
 * its pointers name stay where they are, so only AT_EXECFN's value changes. The
 * kernel maps the stack well below the initial pointer (setup_arg_pages grows it by
 * 128 KiB), so the room is there. The block is found within a bounded read; a job
 * whose block does not fit in it keeps the host path. */
static void set_execfn(pid_t tid, const char *name)
{
    pc_regs r;
    if (get_regs(tid, &r) < 0)
        return;
    uint64_t words[4096];
    uint64_t sp = reg_sp(&r);
    ssize_t n = pc_read(tid, sp, words, sizeof words);
    if (n < 16)
        return;
    size_t nw = (size_t)n / 8, i = 0, at = 0;
    uint64_t argc = words[i++];
    if (argc >= nw)
        return;
    i += argc + 1; /* argv and its NULL */
    while (i < nw && words[i])
        i++; /* envp */
    for (i++; i + 1 < nw; i += 2) {
        if (words[i] == 31 /* AT_EXECFN */)
            at = i + 1;
        if (words[i] == 0 /* AT_NULL */)
            break;
    }
    if (!at || i + 1 >= nw)
        return;
    size_t block = (i + 2) * 8; /* up to and with AT_NULL's pair */
    char cur[PC_PATH_MAX + 1];
    int have = read_string(tid, words[at], cur, PC_PATH_MAX);
    size_t want = strlen(name);
    if (have >= 0 && want <= (size_t)have) {
        pc_write(tid, words[at], name, want + 1);
        return;
    }
    uint64_t str = (sp - want - 1) & ~(uint64_t)15;
    uint64_t nsp = (str - block) & ~(uint64_t)15; /* the ABI's alignment at entry */
    words[at] = str;
    if (pc_write(tid, str, name, want + 1) != (ssize_t)want + 1 ||
        pc_write(tid, nsp, words, block) != (ssize_t)block)
        return; /* below the stack pointer: nothing the program sees was changed */
    set_sp(&r, nsp);
    set_regs(tid, &r);
}

int exec_done(pc_tracer *t, task_state *s, pid_t tid)
{
    if (s->execfn)
        set_execfn(tid, s->execfn);
    if (!s->exe_logical)
        return 0;
    int kept = 0;
    /* in the order of the exec events, which Python takes in that order too (a task
     * may exec again before Python has seen its first exec) */
    pthread_mutex_lock(&t->execs_lock);
    if (t->nexecs < PC_EXECS_MAX) {
        exec_made *grown = realloc(t->execs, (t->nexecs + 1) * sizeof *grown);
        if (grown) {
            t->execs = grown;
            t->execs[t->nexecs++] = (exec_made){tid, s->exe_logical};
            s->exe_logical = NULL;
            kept = 1;
        }
    }
    pthread_mutex_unlock(&t->execs_lock);
    return kept;
}

int pc_take_exec(pc_tracer *t, pid_t tid, char *buf, int len)
{
    int n = 0;
    pthread_mutex_lock(&t->execs_lock);
    for (size_t i = 0; i < t->nexecs; i++) {
        if (t->execs[i].tid != tid)
            continue;
        size_t l = strlen(t->execs[i].logical);
        if (len > 0 && l < (size_t)len) {
            memcpy(buf, t->execs[i].logical, l + 1);
            n = (int)l;
        }
        free(t->execs[i].logical);
        t->nexecs--;
        memmove(&t->execs[i], &t->execs[i + 1], (t->nexecs - i) * sizeof *t->execs);
        break;
    }
    pthread_mutex_unlock(&t->execs_lock);
    return n;
}

/* For Python: the same rule for the opens it answers itself. */
int pc_open_backing(pc_tracer *t, const char *path, int flags) { return open_backing(t, path, flags); }
