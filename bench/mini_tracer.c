/* The baseline of bench_syscalls.py: the least a supervisor can do to answer stat()
 * itself. A seccomp filter stops the program only on newfstatat/stat; at each stop
 * the tracer reads the path, writes a canned struct stat for /cvmfs paths (others
 * run natively) and makes 0 the call's result. One stop per call, nothing else.
 *
 *   mini_tracer [--poll N] -- CMD ARGS...   ptrace: SECCOMP_RET_TRACE, one stop
 *                                           (--poll: waitpid WNOHANG N times first)
 *   mini_tracer --notify -- CMD ARGS...     seccomp user notifications with
 *                                           SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
 *
 * x86_64 only, like the measurements it serves. */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../csrc/tracer/kernel.h"

static struct stat canned;

/* The path argument of the call, read from the program; 1 if it names /cvmfs. */
static int is_cvmfs(pid_t pid, unsigned long addr)
{
    char path[8];
    struct iovec l = {path, sizeof path}, r = {(void *)addr, sizeof path};
    return process_vm_readv(pid, &l, 1, &r, 1, 0) == (ssize_t)sizeof path &&
           strncmp(path, "/cvmfs/", 7) == 0;
}

static int answer(pid_t pid, unsigned long buf)
{
    struct iovec l = {&canned, sizeof canned}, r = {(void *)buf, sizeof canned};
    return process_vm_writev(pid, &l, 1, &r, 1, 0) == (ssize_t)sizeof canned ? 0 : -1;
}

static void send_fd(int sock, int fd)
{
    char ctl[CMSG_SPACE(sizeof(int))] = {0}, c = 'x';
    struct iovec io = {&c, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) < 0)
        _exit(126);
}

static int recv_fd(int sock)
{
    char ctl[CMSG_SPACE(sizeof(int))], c;
    struct iovec io = {&c, 1};
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) <= 0 || !CMSG_FIRSTHDR(&m))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

/* The filter of the program: stat and newfstatat get `action`, the rest runs. */
static struct sock_fprog stat_filter(unsigned action)
{
    static struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_newfstatat, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_stat, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    f[4].k = action;
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    return prog;
}

static int run_notify(char **cmd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_fprog prog = stat_filter(SECCOMP_RET_USER_NOTIF);
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        int l = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                             SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
        if (l < 0)
            _exit(126);
        send_fd(sv[0], l);
        close(l);
        execvp(cmd[0], cmd);
        _exit(127);
    }
    int l = recv_fd(sv[1]);
    if (l < 0)
        return 1;
    ioctl(l, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0);
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    for (;;) {
        memset(&req, 0, sizeof req);
        if (ioctl(l, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
            break; /* the program is gone */
        int at = req.data.nr == SYS_newfstatat;
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (is_cvmfs(req.pid, req.data.args[at ? 1 : 0]))
            resp.error = answer(req.pid, req.data.args[at ? 2 : 1]) ? -14 : 0;
        else
            resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(l, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_ptrace(char **cmd, long poll)
{
    int go[2];
    if (pipe(go) < 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_fprog prog = stat_filter(SECCOMP_RET_TRACE);
        char c;
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (read(go[0], &c, 1) != 1)
            _exit(127);
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
            _exit(126);
        execvp(cmd[0], cmd);
        _exit(127);
    }
    ptrace(PTRACE_SEIZE, pid, 0, (void *)(PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL));
    if (write(go[1], "g", 1) != 1)
        return 1;
    int status;
    for (;;) {
        pid_t t = -1;
        for (long k = 0; k < poll && t <= 0; k++)
            t = waitpid(-1, &status, __WALL | WNOHANG);
        if (t <= 0)
            t = waitpid(-1, &status, __WALL);
        if (t < 0)
            break;
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (t == pid)
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            continue;
        }
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
            struct user_regs_struct r;
            ptrace(PTRACE_GETREGS, t, 0, &r);
            int at = r.orig_rax == SYS_newfstatat;
            if (is_cvmfs(t, at ? r.rsi : r.rdi)) {
                r.rax = answer(t, at ? r.rdx : r.rsi) ? (unsigned long)-14 : 0;
                r.orig_rax = (unsigned long)-1; /* skip the call */
                ptrace(PTRACE_SETREGS, t, 0, &r);
            }
            ptrace(PTRACE_CONT, t, 0, 0);
        } else {
            int sig = WIFSTOPPED(status) ? WSTOPSIG(status) : 0;
            ptrace(PTRACE_CONT, t, 0, (void *)(long)(sig == SIGTRAP ? 0 : sig));
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    long poll = 0;
    int notify = 0, i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--poll") && i + 1 < argc)
            poll = atol(argv[++i]);
        else if (!strcmp(argv[i], "--notify"))
            notify = 1;
        else if (!strcmp(argv[i], "--")) {
            i++;
            break;
        } else
            break;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: mini_tracer [--poll N | --notify] -- CMD ARGS...\n");
        return 2;
    }
    canned.st_mode = S_IFREG | 0644;
    canned.st_size = 1234;
    canned.st_nlink = 1;
    return notify ? run_notify(argv + i) : run_ptrace(argv + i, poll);
}
