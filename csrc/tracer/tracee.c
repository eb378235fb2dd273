/* A traced program's registers, memory and /proc links. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__x86_64__)
int get_regs(pid_t tid, pc_regs *r) { return (int)ptrace(PTRACE_GETREGS, tid, 0, r); }
int set_regs(pid_t tid, const pc_regs *r) { return (int)ptrace(PTRACE_SETREGS, tid, 0, r); }
long reg_nr(const pc_regs *r) { return (long)r->orig_rax; }
int64_t reg_ret(const pc_regs *r) { return (int64_t)r->rax; }
uint64_t reg_sp(const pc_regs *r) { return r->rsp; }
void set_sp(pc_regs *r, uint64_t v) { r->rsp = v; }
uint64_t get_arg(const pc_regs *r, int i)
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
void set_arg(pc_regs *r, int i, uint64_t v)
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
void set_ret(pc_regs *r, int64_t v) { r->rax = (uint64_t)v; }
int skip_call(pid_t tid, pc_regs *r, int64_t result)
{
    r->orig_rax = (uint64_t)-1;
    r->rax = (uint64_t)result;
    return set_regs(tid, r);
}
void restore_args(pc_regs *cur, const pc_regs *saved)
{
    int64_t ret = reg_ret(cur);
    uint64_t orig = cur->orig_rax;
    *cur = *saved;
    cur->rax = (uint64_t)ret;
    cur->orig_rax = orig;
}
void restart_call(pc_regs *cur, const pc_regs *saved)
{
    *cur = *saved;
    cur->rax = saved->orig_rax; /* the number `syscall` reads */
    cur->rip -= 2;              /* back over the syscall instruction */
}
#elif defined(__aarch64__)
#include <elf.h>
#ifndef NT_ARM_SYSTEM_CALL
#define NT_ARM_SYSTEM_CALL 0x404
#endif
int get_regs(pid_t tid, pc_regs *r)
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
int set_regs(pid_t tid, const pc_regs *r)
{
    struct iovec io = {(void *)&r->r, sizeof r->r};
    return (int)ptrace(PTRACE_SETREGSET, tid, (void *)NT_PRSTATUS, &io);
}
long reg_nr(const pc_regs *r) { return r->nr; }
int64_t reg_ret(const pc_regs *r) { return (int64_t)r->r.regs[0]; }
uint64_t reg_sp(const pc_regs *r) { return r->r.sp; }
void set_sp(pc_regs *r, uint64_t v) { r->r.sp = v; }
uint64_t get_arg(const pc_regs *r, int i) { return r->r.regs[i]; }
void set_arg(pc_regs *r, int i, uint64_t v) { r->r.regs[i] = v; }
void set_ret(pc_regs *r, int64_t v) { r->r.regs[0] = (uint64_t)v; }
int skip_call(pid_t tid, pc_regs *r, int64_t result)
{
    int nr = -1;
    struct iovec io = {&nr, sizeof nr};
    if (ptrace(PTRACE_SETREGSET, tid, (void *)NT_ARM_SYSTEM_CALL, &io) < 0)
        return -1;
    r->r.regs[0] = (uint64_t)result;
    return set_regs(tid, r);
}
void restore_args(pc_regs *cur, const pc_regs *saved)
{
    int64_t ret = reg_ret(cur);
    long nr = cur->nr;
    *cur = *saved;
    cur->r.regs[0] = (uint64_t)ret;
    cur->nr = nr;
}
void restart_call(pc_regs *cur, const pc_regs *saved)
{
    *cur = *saved; /* x0 and x8 (the number) as they were */
    cur->r.pc -= 4; /* back over svc */
}
#endif

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
    /* /proc/<tid>/mem may write where process_vm_writev may not */
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
int read_string(pid_t tid, uint64_t addr, char *buf, size_t max)
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

/* readlink of /proc/<tid>/<what> (or fd/<fd>); returns the length or -1 */
int proc_link(pid_t tid, const char *what, long fd, char *out, size_t max)
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

static pid_t thread_group_of(pid_t tid)
{
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/status", tid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *t = strstr(buf, "\nTgid:");
    return t ? (pid_t)atoi(t + 6) : -1;
}

int pc_getfd(pid_t tid, int fd)
{
    /* PIDFD_THREAD (= O_EXCL, 6.9) so that any thread will do; older kernels refuse
     * the flag, and then only a thread-group leader can be named */
    int pidfd = (int)syscall(434 /* pidfd_open */, tid, O_EXCL);
    if (pidfd < 0 && errno == EINVAL) {
        pidfd = (int)syscall(434, tid, 0);
        pid_t tgid = pidfd < 0 ? thread_group_of(tid) : -1;
        if (tgid > 0 && tgid != tid) /* its threads share the descriptor table */
            pidfd = (int)syscall(434, tgid, 0);
    }
    if (pidfd < 0)
        return -errno;
    int ours = (int)syscall(438 /* pidfd_getfd */, pidfd, fd, 0);
    int e = errno;
    close(pidfd);
    return ours < 0 ? -e : ours;
}
