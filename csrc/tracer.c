/* parrot-cvmfs supervisor core.
 *
 * Contract with the Python side (parrot_cvmfs/tracer/supervisor.py):
 *
 * pc_spawn() forks the job. The child sets NO_NEW_PRIVS and waits on a pipe; the
 * parent seizes it (PTRACE_SEIZE with EXITKILL, TRACESECCOMP, fork/vfork/clone/exec
 * tracing), then the child installs the seccomp filter that Python generated from
 * the system-call table and execs. Every traced call therefore arrives here as a
 * seccomp stop; every other call runs at native speed.
 *
 * pc_next() runs the wait loop and settles on its own, without entering Python:
 *  - new tasks' first stops, fork/vfork/clone/exec events (reported afterwards),
 *    signal-delivery stops (the signal is passed on unchanged) and group stops
 *    (PTRACE_LISTEN, so the task stays stopped until SIGCONT);
 *  - seccomp stops whose paths cannot concern /cvmfs: an absolute path without
 *    "cvmfs" in it, a relative path whose base (cwd or dirfd) is not an anchor
 *    directory, an fd that does not refer into our cache: the task is resumed;
 *  - stat/lstat/newfstatat/statx/access/faccessat/readlink of an absolute path that
 *    Python answered before: the answer is replayed from the answer table (one stop);
 *    fstat (and AT_EMPTY_PATH stats) of a descriptor on a file Python handed out,
 *    keyed by the descriptor's target; a read-only open of a path Python opened
 *    before: the path is pointed at the same backing file (two stops);
 *  - the exit stop of a call whose arguments were rewritten: the original
 *    registers are put back (compiled code may rely on them), the result kept.
 * Everything else is returned to Python as a pc_event with the call's arguments and
 * its paths already read (and, for relative paths, the base directory). The task
 * stays stopped until Python calls pc_resume(), pc_skip() or pc_rewrite().
 *
 * Registers are architecture-specific and confined to the section below; the rest
 * works on syscall numbers and argument indexes given by the rule table.
 */
#define _GNU_SOURCE
#include "tracer.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef PTRACE_O_EXITKILL
#define PTRACE_O_EXITKILL (1 << 20)
#endif
#ifndef PTRACE_LISTEN
#define PTRACE_LISTEN 0x4208
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* ---- architecture --------------------------------------------------------------- */

#if defined(__x86_64__)
typedef struct user_regs_struct pc_regs;
#define RED_ZONE 128

static int get_regs(pid_t tid, pc_regs *r) { return (int)ptrace(PTRACE_GETREGS, tid, 0, r); }
static int set_regs(pid_t tid, const pc_regs *r) { return (int)ptrace(PTRACE_SETREGS, tid, 0, r); }
static long reg_nr(const pc_regs *r) { return (long)r->orig_rax; }
static int64_t reg_ret(const pc_regs *r) { return (int64_t)r->rax; }
static uint64_t reg_sp(const pc_regs *r) { return r->rsp; }
static uint64_t get_arg(const pc_regs *r, int i)
{
    switch (i) {
    case 0: return r->rdi;
    case 1: return r->rsi;
    case 2: return r->rdx;
    case 3: return r->r10;
    case 4: return r->r8;
    default: return r->r9;
    }
}
static void set_arg(pc_regs *r, int i, uint64_t v)
{
    switch (i) {
    case 0: r->rdi = v; break;
    case 1: r->rsi = v; break;
    case 2: r->rdx = v; break;
    case 3: r->r10 = v; break;
    case 4: r->r8 = v; break;
    default: r->r9 = v; break;
    }
}
static void set_ret(pc_regs *r, int64_t v) { r->rax = (uint64_t)v; }
/* Skip the call at a seccomp stop: no syscall runs, the result stands, no exit stop. */
static int skip_call(pid_t tid, pc_regs *r, int64_t result)
{
    r->orig_rax = (uint64_t)-1;
    r->rax = (uint64_t)result;
    return set_regs(tid, r);
}
/* Restore the argument registers at an exit stop, keeping the result. */
static void restore_args(pc_regs *cur, const pc_regs *saved)
{
    int64_t ret = reg_ret(cur);
    uint64_t orig = cur->orig_rax;
    *cur = *saved;
    cur->rax = (uint64_t)ret;
    cur->orig_rax = orig;
}
#elif defined(__aarch64__)
#include <elf.h>
#include <linux/ptrace.h>
typedef struct {
    struct user_pt_regs r;
    long nr;
} pc_regs;
#define RED_ZONE 0
#ifndef NT_ARM_SYSTEM_CALL
#define NT_ARM_SYSTEM_CALL 0x404
#endif
static int get_regs(pid_t tid, pc_regs *r)
{
    struct iovec io = {&r->r, sizeof r->r};
    if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_PRSTATUS, &io) < 0)
        return -1;
    int nr = 0;
    struct iovec io2 = {&nr, sizeof nr};
    if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_ARM_SYSTEM_CALL, &io2) < 0)
        return -1;
    r->nr = nr;
    return 0;
}
static int set_regs(pid_t tid, const pc_regs *r)
{
    struct iovec io = {(void *)&r->r, sizeof r->r};
    return (int)ptrace(PTRACE_SETREGSET, tid, (void *)NT_PRSTATUS, &io);
}
static long reg_nr(const pc_regs *r) { return r->nr; }
static int64_t reg_ret(const pc_regs *r) { return (int64_t)r->r.regs[0]; }
static uint64_t reg_sp(const pc_regs *r) { return r->r.sp; }
static uint64_t get_arg(const pc_regs *r, int i) { return r->r.regs[i]; }
static void set_arg(pc_regs *r, int i, uint64_t v) { r->r.regs[i] = v; }
static void set_ret(pc_regs *r, int64_t v) { r->r.regs[0] = (uint64_t)v; }
static int skip_call(pid_t tid, pc_regs *r, int64_t result)
{
    int nr = -1;
    struct iovec io = {&nr, sizeof nr};
    if (ptrace(PTRACE_SETREGSET, tid, (void *)NT_ARM_SYSTEM_CALL, &io) < 0)
        return -1;
    r->r.regs[0] = (uint64_t)result;
    return set_regs(tid, r);
}
static void restore_args(pc_regs *cur, const pc_regs *saved)
{
    int64_t ret = reg_ret(cur);
    long nr = cur->nr;
    *cur = *saved;
    cur->r.regs[0] = (uint64_t)ret;
    cur->nr = nr;
}
#else
#error "parrot-cvmfs supports x86_64 (and aarch64)"
#endif

/* ---- tracer state ----------------------------------------------------------------- */

typedef struct {
    pid_t tid; /* 0: empty slot */
    int report_exit;
    int is_exec;
    pc_regs saved;
} task_state;

typedef struct {
    char *key; /* "F/path" or "N/path"; NULL: empty slot */
    int err;
    int has_stat, has_statx, has_access, is_link;
    unsigned char stat[144];
    unsigned char statx[256];
    int8_t access[8];
    char *link;
    int link_len;
    char *open_target; /* backing file of a read-only open, if Python allowed one */
    int open_len;
    int open_is_dir;
} answer;

struct pc_tracer {
    pc_rule rules[PC_MAX_RULES];
    int nrules;
    int16_t rule_of_nr[1024];
    char *prefixes[2][PC_MAX_PREFIXES];
    size_t prefix_len[2][PC_MAX_PREFIXES];
    int nprefix[2];
    task_state *tasks;
    size_t tasks_cap, tasks_used;
    answer *answers;
    size_t answers_cap, answers_used;
    pc_stats stats;
    int ntasks;
    long spin; /* waitpid polls before blocking */
};

pc_tracer *pc_new(const pc_rule *rules, int nrules)
{
    if (nrules > PC_MAX_RULES)
        return NULL;
    pc_tracer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    memcpy(t->rules, rules, sizeof(pc_rule) * (size_t)nrules);
    t->nrules = nrules;
    for (int i = 0; i < 1024; i++)
        t->rule_of_nr[i] = -1;
    for (int i = 0; i < nrules; i++)
        if (rules[i].nr >= 0 && rules[i].nr < 1024)
            t->rule_of_nr[rules[i].nr] = (int16_t)i;
    const char *spin = getenv("PARROT_CVMFS_SPIN");
    t->spin = spin ? atol(spin) : 500;
    t->tasks_cap = 1024;
    t->tasks = calloc(t->tasks_cap, sizeof(task_state));
    t->answers_cap = 1 << 16;
    t->answers = calloc(t->answers_cap, sizeof(answer));
    if (!t->tasks || !t->answers) {
        pc_free(t);
        return NULL;
    }
    return t;
}

void pc_free(pc_tracer *t)
{
    if (!t)
        return;
    pc_table_clear(t);
    free(t->answers);
    free(t->tasks);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < t->nprefix[w]; i++)
            free(t->prefixes[w][i]);
    free(t);
}

int pc_add_prefix(pc_tracer *t, int which, const char *prefix)
{
    if (which < 0 || which > 1 || t->nprefix[which] >= PC_MAX_PREFIXES)
        return -1;
    int i = t->nprefix[which]++;
    t->prefixes[which][i] = strdup(prefix);
    t->prefix_len[which][i] = strlen(prefix);
    return 0;
}

const pc_stats *pc_get_stats(pc_tracer *t) { return &t->stats; }
int pc_ntasks(pc_tracer *t) { return t->ntasks; }

/* Per-task state exists only while a rewritten call is in flight: open addressing
 * keyed by tid, backward-shift deletion. */
static size_t tslot(pc_tracer *t, pid_t tid) { return ((size_t)tid * 2654435761u) & (t->tasks_cap - 1); }

static task_state *task_find(pc_tracer *t, pid_t tid)
{
    for (size_t i = tslot(t, tid);; i = (i + 1) & (t->tasks_cap - 1)) {
        if (t->tasks[i].tid == tid)
            return &t->tasks[i];
        if (t->tasks[i].tid == 0)
            return NULL;
    }
}

static task_state *task_add(pc_tracer *t, pid_t tid)
{
    task_state *s = task_find(t, tid);
    if (s)
        return s;
    if ((t->tasks_used + 1) * 2 > t->tasks_cap) {
        size_t old = t->tasks_cap;
        task_state *o = t->tasks;
        task_state *n = calloc(old * 2, sizeof *n);
        if (!n)
            return NULL;
        t->tasks = n;
        t->tasks_cap = old * 2;
        t->tasks_used = 0;
        for (size_t i = 0; i < old; i++)
            if (o[i].tid) {
                task_state *d = task_add(t, o[i].tid);
                *d = o[i];
            }
        free(o);
    }
    size_t i = tslot(t, tid);
    while (t->tasks[i].tid)
        i = (i + 1) & (t->tasks_cap - 1);
    memset(&t->tasks[i], 0, sizeof t->tasks[i]);
    t->tasks[i].tid = tid;
    t->tasks_used++;
    return &t->tasks[i];
}

static void task_del(pc_tracer *t, pid_t tid)
{
    size_t mask = t->tasks_cap - 1;
    size_t i = tslot(t, tid);
    while (t->tasks[i].tid != tid) {
        if (t->tasks[i].tid == 0)
            return;
        i = (i + 1) & mask;
    }
    t->tasks[i].tid = 0;
    t->tasks_used--;
    for (size_t j = (i + 1) & mask; t->tasks[j].tid; j = (j + 1) & mask) {
        size_t home = tslot(t, t->tasks[j].tid);
        /* move j back to i if i lies cyclically in [home, j) */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->tasks[i] = t->tasks[j];
            t->tasks[j].tid = 0;
            i = j;
        }
    }
}

/* ---- the answer table ---------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static answer *answer_find(pc_tracer *t, char follow, const char *path, size_t len)
{
    uint64_t h = fnv1a(path, len) ^ (uint64_t)follow;
    for (size_t i = h & (t->answers_cap - 1);; i = (i + 1) & (t->answers_cap - 1)) {
        answer *a = &t->answers[i];
        if (!a->key)
            return NULL;
        if (a->key[0] == follow && strncmp(a->key + 1, path, len) == 0 && a->key[len + 1] == '\0')
            return a;
    }
}

void pc_table_clear(pc_tracer *t)
{
    for (size_t i = 0; i < t->answers_cap; i++) {
        free(t->answers[i].key);
        free(t->answers[i].link);
        free(t->answers[i].open_target);
    }
    memset(t->answers, 0, t->answers_cap * sizeof(answer));
    t->answers_used = 0;
}

int pc_table_size(pc_tracer *t) { return (int)t->answers_used; }

static answer *answer_slot(pc_tracer *t, const char *key, int follow)
{
    size_t len = strlen(key);
    char f = follow ? 'F' : 'N';
    if ((t->answers_used + 1) * 2 > t->answers_cap)
        pc_table_clear(t); /* a cache: start over rather than grow without bound */
    answer *a = answer_find(t, f, key, len);
    if (!a) {
        uint64_t h = fnv1a(key, len) ^ (uint64_t)f;
        size_t i = h & (t->answers_cap - 1);
        while (t->answers[i].key)
            i = (i + 1) & (t->answers_cap - 1);
        a = &t->answers[i];
        a->key = malloc(len + 2);
        if (!a->key)
            return NULL;
        a->key[0] = f;
        memcpy(a->key + 1, key, len + 1);
        t->answers_used++;
    }
    return a;
}

int pc_table_put_open(pc_tracer *t, const char *key, int follow, const char *target, int is_dir)
{
    answer *a = answer_slot(t, key, follow);
    if (!a)
        return -1;
    free(a->open_target);
    a->open_len = (int)strlen(target);
    a->open_target = strdup(target);
    a->open_is_dir = is_dir;
    return a->open_target ? 0 : -1;
}

int pc_table_put(pc_tracer *t, const char *key, int follow, int err, const void *stat_buf,
                 const void *statx_buf, const int8_t *access_err, const char *link, int link_len)
{
    answer *a = answer_slot(t, key, follow);
    if (!a)
        return -1;
    a->err = err;
    a->has_stat = stat_buf != NULL;
    a->has_statx = statx_buf != NULL;
    a->has_access = access_err != NULL;
    if (stat_buf)
        memcpy(a->stat, stat_buf, sizeof a->stat);
    if (statx_buf)
        memcpy(a->statx, statx_buf, sizeof a->statx);
    if (access_err)
        memcpy(a->access, access_err, sizeof a->access);
    free(a->link);
    a->link = NULL;
    a->is_link = link != NULL;
    if (link) {
        a->link = malloc((size_t)link_len + 1);
        if (!a->link)
            return -1;
        memcpy(a->link, link, (size_t)link_len);
        a->link_len = link_len;
    }
    return 0;
}

/* ---- tracee memory ------------------------------------------------------------------ */

ssize_t pc_read(pid_t tid, uint64_t addr, void *buf, size_t len)
{
    struct iovec l = {buf, len}, r = {(void *)addr, len};
    return process_vm_readv(tid, &l, 1, &r, 1, 0);
}

ssize_t pc_write(pid_t tid, uint64_t addr, const void *buf, size_t len)
{
    struct iovec l = {(void *)buf, len}, r = {(void *)addr, len};
    ssize_t n = process_vm_writev(tid, &l, 1, &r, 1, 0);
    if (n == (ssize_t)len)
        return n;
    /* fall back to /proc/<tid>/mem, which may write where process_vm_writev may not */
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/mem", tid);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = pwrite(fd, buf, len, (off_t)addr);
    close(fd);
    return n;
}

/* A NUL-terminated string, read page by page. Returns its length or -errno. */
static int read_string(pid_t tid, uint64_t addr, char *buf, size_t max)
{
    if (addr == 0)
        return -EFAULT;
    size_t got = 0;
    while (got < max) {
        size_t page_left = 4096 - ((addr + got) & 4095);
        size_t want = page_left < max - got ? page_left : max - got;
        ssize_t n = pc_read(tid, addr + got, buf + got, want);
        if (n <= 0)
            return -EFAULT;
        char *z = memchr(buf + got, 0, (size_t)n);
        if (z)
            return (int)(z - buf);
        got += (size_t)n;
    }
    buf[max] = '\0';
    return -ENAMETOOLONG;
}

/* readlink of /proc/<tid>/<what>; returns length or -1 */
static int proc_link(pid_t tid, const char *what, long fd, char *out, size_t max)
{
    char p[96];
    if (fd >= 0)
        snprintf(p, sizeof p, "/proc/%d/fd/%ld", tid, fd);
    else
        snprintf(p, sizeof p, "/proc/%d/%s", tid, what);
    ssize_t n = readlink(p, out, max);
    if (n < 0 || (size_t)n >= max)
        return -1;
    out[n] = '\0';
    return (int)n;
}

int pc_getfd(pid_t tid, int fd)
{
    int pidfd = (int)syscall(SYS_pidfd_open, tid, 0);
    if (pidfd < 0)
        return -errno;
    int ours = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    int e = errno;
    close(pidfd);
    return ours < 0 ? -e : ours;
}

/* ---- deciding whether a call concerns us --------------------------------------------- */

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

/* Paths that may name something under /cvmfs or an anchor directory. Any spelling
 * of /cvmfs contains "cvmfs" ("/cvmfs/..", "../../cvmfs", "/proc/self/root/cvmfs"). */
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

/* Reads one path argument (and, if relative, its base). Returns 1 if it concerns us. */
static int examine_path(pc_tracer *t, const pc_rule *r, pid_t tid, const pc_regs *regs,
                        int dirfd_arg, int path_arg, char *path, int *path_len, int *path_err,
                        char *base, int *base_len, int *empty_path)
{
    *base_len = 0;
    *empty_path = 0;
    uint64_t addr = get_arg(regs, path_arg);
    long dirfd = dirfd_arg >= 0 ? (long)(int)get_arg(regs, dirfd_arg) : AT_FDCWD;
    int n;
    if (addr == 0 && r->empty_flag && r->flags_arg >= 0 && (get_arg(regs, r->flags_arg) & r->empty_flag))
        n = 0; /* NULL with AT_EMPTY_PATH: allowed since Linux 6.11 */
    else
        n = read_string(tid, addr, path, PC_PATH_MAX);
    if (n < 0) {
        *path_err = n;
        *path_len = 0;
        path[0] = '\0';
        return 0; /* let the kernel report EFAULT or ENAMETOOLONG */
    }
    *path_err = 0;
    *path_len = n;
    if (n == 0) {
        if (!(r->empty_flag && r->flags_arg >= 0 && (get_arg(regs, r->flags_arg) & r->empty_flag)))
            return 0; /* "" is ENOENT, from the kernel */
        *empty_path = 1;
        int m = dirfd == AT_FDCWD ? proc_link(tid, "cwd", -1, base, PC_PATH_MAX)
                                  : proc_link(tid, NULL, dirfd, base, PC_PATH_MAX);
        if (m < 0)
            return 0;
        *base_len = m;
        return has_prefix(t, 1, base);
    }
    if (path[0] == '/')
        return path_concerns(t, r, path);
    /* relative: Python needs the base whenever the call concerns us */
    int m = dirfd == AT_FDCWD ? proc_link(tid, "cwd", -1, base, PC_PATH_MAX)
                              : proc_link(tid, NULL, dirfd, base, PC_PATH_MAX);
    if (m < 0)
        return 0; /* a bad dirfd: the kernel's EBADF/ENOTDIR is right */
    *base_len = m;
    return path_concerns(t, r, path) || base_concerns(t, r, base);
}

/* ---- answering from the table ------------------------------------------------------------ */

static int rewrite_args(pc_tracer *t, pid_t tid, pc_regs *regs, int narg, const int *args,
                        const uint64_t *values, int report_exit, int is_exec);

#define O_WRITE_BITS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | __O_TMPFILE)

/* Replay a read-only open Python performed before: same backing file, two stops. */
static int fast_open(pc_tracer *t, const pc_rule *r, pid_t tid, pc_regs *regs, const char *path,
                     int len)
{
    uint64_t flags = get_arg(regs, r->flags_arg);
    if (flags & (O_WRITE_BITS | O_PATH))
        return 0;
    answer *a = answer_find(t, (flags & O_NOFOLLOW) ? 'N' : 'F', path, (size_t)len);
    if (!a)
        return 0;
    if (a->err) {
        if (skip_call(tid, regs, -(int64_t)a->err) == 0)
            ptrace(PTRACE_CONT, tid, 0, 0);
        return 1;
    }
    if (!a->open_target)
        return 0;
    if ((flags & O_DIRECTORY) && !a->open_is_dir) {
        if (skip_call(tid, regs, -ENOTDIR) == 0)
            ptrace(PTRACE_CONT, tid, 0, 0);
        return 1;
    }
    uint64_t addr = (reg_sp(regs) - RED_ZONE - (uint64_t)a->open_len - 1) & ~(uint64_t)15;
    if (pc_write(tid, addr, a->open_target, (size_t)a->open_len + 1) != a->open_len + 1)
        return 0;
    int arg = r->path_arg;
    return rewrite_args(t, tid, regs, 1, &arg, &addr, 0, 0) == 0;
}

/* `path` is the absolute path of a path call, or the target of a descriptor. */
static int fast_answer(pc_tracer *t, const pc_rule *r, pid_t tid, pc_regs *regs, const char *path,
                       int len, int by_fd)
{
    if (r->fast == PC_FAST_NONE || path[0] != '/')
        return 0;
    if (r->fast == PC_FAST_OPEN)
        return by_fd ? 0 : fast_open(t, r, tid, regs, path, len);
    int follow = r->follow_default;
    if (r->flags_arg >= 0) {
        uint64_t fl = get_arg(regs, r->flags_arg);
        if (r->nofollow_flag && (fl & r->nofollow_flag))
            follow = 0;
    }
    if (r->fast == PC_FAST_READLINK)
        follow = 0;
    if (by_fd)
        follow = 1;
    answer *a = answer_find(t, follow ? 'F' : 'N', path, (size_t)len);
    if (!a)
        return 0;
    int64_t result = 0;
    if (r->fast == PC_FAST_ACCESS) {
        if (!a->has_access)
            return 0;
        result = -(int64_t)a->access[get_arg(regs, r->mode_arg) & 7];
    } else if (a->err) {
        result = -(int64_t)a->err;
    } else if (r->fast == PC_FAST_STAT || r->fast == PC_FAST_STATX) {
        int x = r->fast == PC_FAST_STATX;
        if (x ? !a->has_statx : !a->has_stat)
            return 0;
        size_t n = x ? sizeof a->statx : sizeof a->stat;
        if (pc_write(tid, get_arg(regs, r->out_arg), x ? a->statx : a->stat, n) != (ssize_t)n)
            result = -EFAULT;
    } else if (r->fast == PC_FAST_READLINK) {
        if (!a->is_link) {
            result = -EINVAL;
        } else {
            int64_t size = (int64_t)get_arg(regs, r->size_arg);
            if (size <= 0) {
                result = -EINVAL;
            } else {
                size_t n = (size_t)(a->link_len < size ? a->link_len : size);
                result = pc_write(tid, get_arg(regs, r->out_arg), a->link, n) == (ssize_t)n
                             ? (int64_t)n : -EFAULT;
            }
        }
    } else {
        return 0;
    }
    if (skip_call(tid, regs, result) < 0)
        return errno == ESRCH ? 1 : 0;
    ptrace(PTRACE_CONT, tid, 0, 0);
    return 1;
}

/* ---- spawning ------------------------------------------------------------------------------ */

pid_t pc_spawn(pc_tracer *t, const char *file, char *const argv[], char *const envp[],
               const void *filter, int filter_len, int *report_fd, char *err, int errlen)
{
    int go[2], report[2];
    /* orphaned grandchildren are reparented to us, and stay traced */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(report, O_CLOEXEC) < 0) {
        snprintf(err, (size_t)errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, (size_t)errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(go[1]);
        close(report[0]);
        char c;
        int stage = 0, e = 0;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
            stage = 1;
            e = errno;
        } else if (read(go[0], &c, 1) != 1) {
            _exit(127); /* the supervisor could not trace us and said so */
        } else {
            struct sock_fprog prog = {(unsigned short)filter_len, (struct sock_filter *)filter};
            if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0 &&
                prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
                stage = 2;
                e = errno;
            } else {
                execvpe(file, argv, envp);
                stage = 3;
                e = errno;
            }
        }
        int msg[2] = {stage, e};
        if (write(report[1], msg, sizeof msg) < 0) {
        }
        _exit(127);
    }
    close(go[0]);
    close(report[1]);
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
                PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP |
                PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SEIZE, pid, 0, (void *)opts) < 0) {
        int e = errno;
        close(go[1]);
        close(report[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        snprintf(err, (size_t)errlen, "ptrace:%d", e);
        return -1;
    }
    t->ntasks = 1;
    if (write(go[1], "g", 1) != 1) {
    }
    close(go[1]);
    /* The report pipe closes at exec, or carries why the child failed before it. The
     * child's own execve is a traced call, so Python reads this once the loop runs. */
    *report_fd = report[0];
    return pid;
}

int pc_spawn_failure(int report_fd, char *err, int errlen)
{
    int msg[2];
    ssize_t n = read(report_fd, msg, sizeof msg);
    if (n != (ssize_t)sizeof msg)
        return 0;
    snprintf(err, (size_t)errlen, "%s:%d",
             msg[0] == 1 ? "no_new_privs" : msg[0] == 2 ? "seccomp" : "exec", msg[1]);
    return 1;
}

/* ---- the event loop ------------------------------------------------------------------------- */

static void fill_args(pc_event *ev, const pc_regs *regs)
{
    for (int i = 0; i < 6; i++)
        ev->args[i] = get_arg(regs, i);
}

static int on_seccomp_stop(pc_tracer *t, pid_t tid, pc_event *ev)
{
    pc_regs regs;
    t->stats.stops++;
    if (get_regs(tid, &regs) < 0)
        return 0; /* gone (SIGKILL): its exit will be reported */
    long nr = reg_nr(&regs);
    int ri = (nr >= 0 && nr < 1024) ? t->rule_of_nr[nr] : -1;
    if (ri < 0) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        t->stats.passed_in_c++;
        return 0;
    }
    const pc_rule *r = &t->rules[ri];
    int interesting = 0;
    ev->path_len = ev->path2_len = ev->base_len = ev->base2_len = 0;
    ev->path_err = ev->path2_err = ev->empty_path = 0;
    ev->path[0] = ev->path2[0] = ev->base[0] = ev->base2[0] = '\0';
    switch (r->kind) {
    case PC_KIND_PATH:
        interesting = examine_path(t, r, tid, &regs, r->dirfd_arg, r->path_arg, ev->path,
                                   &ev->path_len, &ev->path_err, ev->base, &ev->base_len,
                                   &ev->empty_path);
        break;
    case PC_KIND_PATH2: {
        int e2;
        interesting = examine_path(t, r, tid, &regs, r->dirfd_arg, r->path_arg, ev->path,
                                   &ev->path_len, &ev->path_err, ev->base, &ev->base_len,
                                   &ev->empty_path);
        interesting |= examine_path(t, r, tid, &regs, r->dirfd2_arg, r->path2_arg, ev->path2,
                                    &ev->path2_len, &ev->path2_err, ev->base2, &ev->base2_len,
                                    &e2);
        break;
    }
    case PC_KIND_FD: {
        long fd = (long)(int)get_arg(&regs, r->path_arg);
        int m = fd >= 0 ? proc_link(tid, NULL, fd, ev->base, PC_PATH_MAX) : -1;
        if (m > 0) {
            ev->base_len = m;
            interesting = has_prefix(t, 1, ev->base);
        }
        break;
    }
    case PC_KIND_CWD: {
        int m = proc_link(tid, "cwd", -1, ev->base, PC_PATH_MAX);
        if (m > 0) {
            ev->base_len = m;
            interesting = has_prefix(t, 0, ev->base);
        }
        break;
    }
    default:
        interesting = 1;
    }
    if (!interesting) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        t->stats.passed_in_c++;
        return 0;
    }
    int fast = 0;
    if (r->kind == PC_KIND_FD || ev->empty_path)
        fast = ev->base_len > 0 && fast_answer(t, r, tid, &regs, ev->base, ev->base_len, 1);
    else if (r->kind == PC_KIND_PATH && ev->base_len == 0)
        fast = fast_answer(t, r, tid, &regs, ev->path, ev->path_len, 0);
    if (fast) {
        t->stats.answered_in_c++;
        return 0;
    }
    t->stats.to_python++;
    ev->kind = PC_EV_SYSCALL;
    ev->tid = tid;
    ev->rule = ri;
    ev->nr = (int)nr;
    fill_args(ev, &regs);
    ev->sp = reg_sp(&regs) - RED_ZONE;
    return 1;
}

/* The exit stop of a rewritten call: put the original arguments back. */
static int on_exit_stop(pc_tracer *t, pid_t tid, pc_event *ev)
{
    t->stats.exit_stops++;
    task_state *s = task_find(t, tid);
    if (!s) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        return 0;
    }
    pc_regs cur;
    if (get_regs(tid, &cur) < 0) {
        task_del(t, tid);
        return 0;
    }
    int64_t ret = reg_ret(&cur);
    if (s->report_exit) {
        ev->kind = PC_EV_SYSCALL_EXIT;
        ev->tid = tid;
        ev->ret = ret;
        fill_args(ev, &s->saved);
        return 1; /* Python calls pc_finish_exit() */
    }
    pc_finish_exit(t, tid, 0, 0);
    return 0;
}

int pc_finish_exit(pc_tracer *t, pid_t tid, int set_result, int64_t result)
{
    task_state *s = task_find(t, tid);
    pc_regs cur;
    if (!s || get_regs(tid, &cur) < 0) {
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

/* Poll briefly before sleeping: a traced program stops again within microseconds,
 * and a supervisor that sleeps in between pays a cross-CPU wake-up on every stop. */
static pid_t wait_event(pc_tracer *t, int *status)
{
    for (long i = 0; i < t->spin; i++) {
        pid_t tid = waitpid(-1, status, __WALL | WNOHANG);
        if (tid != 0)
            return tid;
    }
    return waitpid(-1, status, __WALL);
}

int pc_next(pc_tracer *t, pc_event *ev)
{
    for (;;) {
        int status;
        pid_t tid = wait_event(t, &status);
        if (tid < 0) {
            if (errno == EINTR) {
                ev->kind = PC_EV_INTERRUPTED;
                return ev->kind;
            }
            ev->kind = PC_EV_NOCHILD;
            return ev->kind;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            task_del(t, tid);
            t->ntasks--;
            ev->kind = PC_EV_EXIT;
            ev->tid = tid;
            ev->status = status;
            return ev->kind;
        }
        if (!WIFSTOPPED(status))
            continue;
        int sig = WSTOPSIG(status);
        int event = (status >> 16) & 0xff;
        if (sig == (SIGTRAP | 0x80)) {
            if (on_exit_stop(t, tid, ev))
                return ev->kind;
            continue;
        }
        if (sig == SIGTRAP && event == PTRACE_EVENT_SECCOMP) {
            if (on_seccomp_stop(t, tid, ev))
                return ev->kind;
            continue;
        }
        if (sig == SIGTRAP && (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK ||
                               event == PTRACE_EVENT_CLONE)) {
            unsigned long child = 0;
            ptrace(PTRACE_GETEVENTMSG, tid, 0, &child);
            ptrace(PTRACE_CONT, tid, 0, 0);
            t->ntasks++;
            t->stats.tasks++;
            ev->kind = PC_EV_NEWTASK;
            ev->tid = tid;
            ev->other = (pid_t)child;
            ev->aux = event;
            return ev->kind;
        }
        if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
            unsigned long former = 0;
            ptrace(PTRACE_GETEVENTMSG, tid, 0, &former);
            /* The exec succeeded: the rewritten call is over (the registers now belong
             * to the new program; its exit stop is not requested). Drop its state, also
             * when a non-leader thread exec'd and now carries the leader's pid. */
            task_del(t, (pid_t)former);
            task_del(t, tid);
            ptrace(PTRACE_CONT, tid, 0, 0);
            ev->kind = PC_EV_EXEC;
            ev->tid = tid;
            ev->other = (pid_t)former;
            return ev->kind;
        }
        if (event == PTRACE_EVENT_STOP) {
            if (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU)
                ptrace(PTRACE_LISTEN, tid, 0, 0); /* group stop: stay stopped, see SIGCONT */
            else
                ptrace(PTRACE_CONT, tid, 0, 0); /* a new task's first stop */
            continue;
        }
        if (sig == SIGTRAP && event != 0) {
            ptrace(PTRACE_CONT, tid, 0, 0);
            continue;
        }
        /* a signal-delivery stop: deliver the signal unchanged (a rewritten call has
         * always reached its exit stop before a signal is delivered) */
        t->stats.signals++;
        ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig);
    }
}

int pc_resume(pc_tracer *t, pid_t tid)
{
    (void)t;
    return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
}

int pc_skip(pc_tracer *t, pid_t tid, int64_t result)
{
    (void)t;
    pc_regs regs;
    if (get_regs(tid, &regs) < 0 || skip_call(tid, &regs, result) < 0)
        return -errno;
    return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
}

static int rewrite_args(pc_tracer *t, pid_t tid, pc_regs *regs, int narg, const int *args,
                        const uint64_t *values, int report_exit, int is_exec)
{
    task_state *s = task_add(t, tid);
    if (!s)
        return -ENOMEM;
    s->saved = *regs;
    s->report_exit = report_exit;
    s->is_exec = is_exec;
    for (int i = 0; i < narg; i++)
        set_arg(regs, args[i], values[i]);
    if (set_regs(tid, regs) < 0) {
        int e = errno;
        task_del(t, tid);
        return -e;
    }
    return ptrace(PTRACE_SYSCALL, tid, 0, 0) < 0 ? -errno : 0;
}

/* Point arguments at data Python wrote below the stack pointer (past the red zone),
 * run the call, and restore the original registers at its exit stop. */
int pc_set_args(pc_tracer *t, pid_t tid, int narg, const int *args, const uint64_t *values,
                int report_exit, int is_exec)
{
    pc_regs regs;
    if (get_regs(tid, &regs) < 0)
        return -errno;
    return rewrite_args(t, tid, &regs, narg, args, values, report_exit, is_exec);
}
