/* Starting the job, and the signals sent to the supervisor.
 *
 * pc_spawn() (the caller's thread) starts the tracer thread, which forks the job and
 * seizes it (spawn_job): ptrace lets only the thread that seized a task resume it, and
 * that thread must never wait for Python, which may be stuck in a download for minutes
 * while the job's tasks need their signals delivered (tracer.c). The child sets
 * NO_NEW_PRIVS and waits on a pipe; the tracer thread seizes it (PTRACE_SEIZE with
 * EXITKILL, TRACESECCOMP and fork/vfork/clone/exec tracing), then the child installs the
 * seccomp filter Python generated from the system-call table and execs. In notification
 * mode the filter also returns SECCOMP_RET_USER_NOTIF for the frequent calls: the child
 * passes the listener up over a socket (and to the reaper, below), and a thread of ours
 * serves it (notify.c). Every other call runs at native speed. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernel.h"

/* What pc_spawn asks of the tracer thread, and what comes back. */
typedef struct {
    const char *file;
    char *const *argv, *const *envp;
    const void *filter;
    int filter_len, notify;
    int reaper;     /* the reaper's socket, or -1 */
    int done;       /* under qlock, with `spawned` signalled */
    pid_t pid;      /* -1: failed, see err */
    int report_fd;
    char err[256];
} spawn_request;

static int send_fd(int sock, int fd)
{
    char buf[CMSG_SPACE(sizeof(int))];
    char c = 'l';
    struct iovec io = {&c, 1};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    memset(buf, 0, sizeof buf);
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = buf;
    m.msg_controllen = sizeof buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    return sendmsg(sock, &m, 0) < 0 ? -1 : 0;
}

static int recv_fd(int sock)
{
    char buf[CMSG_SPACE(sizeof(int))];
    char c;
    struct iovec io = {&c, 1};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &io;
    m.msg_iovlen = 1;
    m.msg_control = buf;
    m.msg_controllen = sizeof buf;
    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) <= 0)
        return -1;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    if (!h || h->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(h), sizeof fd);
    return fd;
}

/* ---- the reaper: the listener outlives us until the job is dead ------------------------
 *
 * When the last descriptor of a seccomp listener closes, the kernel answers every
 * pending and every later notification of the job with ENOSYS. A supervisor killed
 * with SIGKILL closes its files before the kernel sends the job the SIGKILL that
 * PTRACE_O_EXITKILL promises (do_exit closes files before it releases tracees), and in
 * between the job's calls fail with "Function not implemented" (thousands of them in
 * a few milliseconds of an open loop). So a tiny process of ours holds another
 * descriptor of the listener: it leaves once the supervisor has exited completely
 * (its pidfd turns readable only after every thread has released its tracees, each
 * then with SIGKILL pending, so no call of the job can return again), or once no task
 * uses the filter any more (the listener hangs up). Until then an unanswered call
 * just waits, and dies with its task. It is a child of the caller's thread: the
 * tracer thread waits for its own children and tracees only (__WNOTHREAD). */

static void reaper_main(int pidfd, int sock)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    prctl(PR_SET_NAME, "parrot_reaper", 0, 0, 0);
    /* nothing of ours is kept open (pipes of the caller, cache files), nor the cwd */
    int lo = pidfd < sock ? pidfd : sock, hi = pidfd < sock ? sock : pidfd;
    if (lo > 0)
        syscall(SYS_close_range, 0, lo - 1, 0);
    if (hi > lo + 1)
        syscall(SYS_close_range, lo + 1, hi - 1, 0);
    syscall(SYS_close_range, hi + 1, ~0U, 0);
    if (chdir("/") < 0) {
    }
    int listener = recv_fd(sock); /* from the job, before it runs: see spawn_job */
    close(sock);
    if (listener >= 0) {
        /* events 0: woken by the hang-up only, not by every notification */
        struct pollfd p[2] = {{pidfd, POLLIN, 0}, {listener, 0, 0}};
        while (poll(p, 2, -1) < 0 && errno == EINTR) {
        }
    }
    _exit(0);
}

/* The socket the job sends the listener to the reaper on, or -1 without a reaper. */
static int start_reaper(void)
{
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    int s[2];
    if (pidfd < 0)
        return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) < 0) {
        close(pidfd);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0)
        reaper_main(pidfd, s[1]);
    close(pidfd);
    close(s[1]);
    if (pid < 0) {
        close(s[0]);
        return -1;
    }
    return s[0];
}

/* ---- spawning -------------------------------------------------------------------------- */

static void fail(spawn_request *r, const char *what, int e)
{
    snprintf(r->err, sizeof r->err, "%s: %s", what, strerror(e));
    r->pid = -1;
}

/* The child: it runs until exec only; a failure is reported over `report`. */
static void child_main(pc_tracer *t, spawn_request *r, int go, int report, int sock)
{
    char c;
    int stage = 0, e = 0;
    /* the tracer thread blocks every signal; the job gets the caller's mask. Python
     * ignores SIGPIPE and SIGXFSZ for itself; the job gets the defaults, as subprocess's
     * restore_signals gives them (an ignored disposition survives exec) */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigprocmask(SIG_SETMASK, &t->saved_mask, NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        stage = 1;
        e = errno;
    } else if (read(go, &c, 1) != 1) {
        _exit(127); /* the supervisor could not trace us and said so */
    } else {
        struct sock_fprog prog = {(unsigned short)r->filter_len, (struct sock_filter *)r->filter};
        long l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                         r->notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
        if (l < 0) {
            stage = 2;
            e = errno;
        } else {
            if (r->notify) {
                /* the reaper's copy first: in flight in its socket, it already keeps
                 * the listener open */
                if (r->reaper >= 0)
                    send_fd(r->reaper, (int)l);
                send_fd(sock, (int)l);
                close((int)l);
            }
            close(sock);
            if (t->late_filter_len > 0) { /* after the hand-over: it stops sendmsg */
                struct sock_fprog late = {(unsigned short)t->late_filter_len,
                                          (struct sock_filter *)t->late_filter};
                l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &late);
            }
            if (l < 0) {
                stage = 2;
                e = errno;
            } else {
                execvpe(r->file, r->argv, r->envp);
                stage = 3;
                e = errno;
            }
        }
    }
    int msg[2] = {stage, e};
    if (write(report, msg, sizeof msg) < 0) {
    }
    _exit(127);
}

static void forward_signals(pc_tracer *t);

/* Fork the job, seize it, take the listener. 0, or -1 (r->err). */
static int start_job(pc_tracer *t, spawn_request *r)
{
    int go[2], report[2], sock[2];
    r->pid = -1;
    /* orphaned grandchildren are reparented to us, and stay traced */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(report, O_CLOEXEC) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) < 0) {
        fail(r, "pipe", errno);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fail(r, "fork", errno);
        return -1;
    }
    if (pid == 0) {
        close(go[1]);
        close(report[0]);
        close(sock[0]);
        child_main(t, r, go[0], report[1], sock[1]);
    }
    close(go[0]);
    close(report[1]);
    close(sock[1]);
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
                PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP |
                PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SEIZE, pid, 0, (void *)opts) < 0) {
        int e = errno;
        close(go[1]);
        close(report[0]);
        close(sock[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        snprintf(r->err, sizeof r->err, "ptrace:%d", e);
        return -1;
    }
    t->root = pid;
    /* signals to the job go through a pidfd: no reused pid ever gets one */
    t->root_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    /* before the job runs (it keeps the dispositions it was forked with): a signal sent
     * to us once the job has shown any sign of life reaches it, never our defaults */
    forward_signals(t);
    if (write(go[1], "g", 1) != 1) {
    }
    close(go[1]);
    if (r->notify) {
        /* the child sends the listener before exec (or fails, and the socket closes) */
        int listener = recv_fd(sock[0]);
        if (listener >= 0) {
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0);
            if (notify_start(t, listener) < 0)
                close(listener);
        }
    }
    close(sock[0]);
    /* The report pipe closes at exec, or carries why the child failed before it. The
     * child's own execve is a traced call, so Python reads this once the loop runs. */
    r->report_fd = report[0];
    r->pid = pid;
    return 0;
}

/* The supervisor's soft limit of descriptors raised towards its hard limit, once the job
 * was forked with the limits it was given (its children inherit the job's): what the
 * supervisor holds is bounded anyway (open catalogs: database.py), this is a margin for
 * a job started under a low soft limit. */
#define NOFILE_WANTED 8192

static void raise_nofile(void)
{
    struct rlimit l;
    if (getrlimit(RLIMIT_NOFILE, &l) != 0 || l.rlim_cur >= NOFILE_WANTED ||
        l.rlim_cur >= l.rlim_max)
        return;
    l.rlim_cur = l.rlim_max < NOFILE_WANTED ? l.rlim_max : NOFILE_WANTED;
    setrlimit(RLIMIT_NOFILE, &l);
}

/* In the tracer thread, for pc_spawn, which waits until `done`. */
static int spawn_job(pc_tracer *t)
{
    spawn_request *r = t->spawning;
    int rc = start_job(t, r);
    pthread_mutex_lock(&t->qlock);
    r->done = 1; /* pc_spawn returns: r is gone */
    pthread_cond_broadcast(&t->spawned);
    pthread_mutex_unlock(&t->qlock);
    return rc;
}

/* The tracer thread: it starts the job, then serves it (tracer.c) until the end. */
static void *tracer_main(void *arg)
{
    pc_tracer *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* the handlers run in Python's threads */
    pc_all_signals_blocked = 1;
    if (spawn_job(t) == 0)
        tracer_serve(t);
    return NULL;
}

pid_t pc_spawn(pc_tracer *t, const char *file, char *const argv[], char *const envp[],
               const void *filter, int filter_len, int notify, int *report_fd, char *err,
               int errlen)
{
    spawn_request r;
    memset(&r, 0, sizeof r);
    r.file = file;
    r.argv = argv;
    r.envp = envp;
    r.filter = filter;
    r.filter_len = filter_len;
    r.notify = notify;
    /* SIGCHLD is waited for through a signalfd, so no thread may take it: blocked here,
     * in every thread started from now on (the tracer's, Python's) */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, &t->saved_mask);
    t->sigchld_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (t->sigchld_fd < 0 || pipe2(t->tracer_wake, O_CLOEXEC | O_NONBLOCK) < 0 ||
        pipe2(t->python_wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, (size_t)errlen, "signalfd: %s", strerror(errno));
        return -1;
    }
    r.reaper = notify ? start_reaper() : -1;
    t->spawning = &r;
    int rc = start_detached(&t->tracer, tracer_main, t);
    if (rc != 0) {
        if (r.reaper >= 0)
            close(r.reaper);
        snprintf(err, (size_t)errlen, "pthread_create: %s", strerror(rc));
        return -1;
    }
    t->tracer_started = 1;
    pthread_mutex_lock(&t->qlock);
    while (!r.done)
        pthread_cond_wait(&t->spawned, &t->qlock);
    pthread_mutex_unlock(&t->qlock);
    t->spawning = NULL;
    raise_nofile(); /* the job is forked: its limits are its own */
    if (r.reaper >= 0)
        close(r.reaper); /* the job has sent it its copy, or failed */
    if (r.pid < 0) {
        snprintf(err, (size_t)errlen, "%s", r.err);
        return -1;
    }
    *report_fd = r.report_fd;
    return r.pid;
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

/* ---- signals to the supervisor ----------------------------------------------------------
 *
 * They are forwarded to the job's root from a C handler, whatever Python is doing:
 * except those the kernel itself sent (a terminal's Ctrl-C and Ctrl-\, a hang-up),
 * which reach the job from the kernel as they reach us (it shares our process group).
 * A termination signal also tells the tracer thread that the job's calls must not wait
 * for a supervisor stuck in a transfer any more (give_up in tracer.c). */

static pc_tracer *volatile signalled;

static int terminating(int sig)
{
    return sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT;
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    int e = errno;
    pc_tracer *t = signalled;
    if (si->si_code != SI_KERNEL) {
        if (t->root_pidfd >= 0)
            syscall(SYS_pidfd_send_signal, t->root_pidfd, sig, NULL, 0);
        else if (!__atomic_load_n(&t->root_done, __ATOMIC_ACQUIRE))
            kill(t->root, sig);
    }
    if (terminating(sig)) {
        __atomic_store_n(&t->signal_pending, sig, __ATOMIC_SEQ_CST);
        wake_tracer(t);
    }
    errno = e;
}

/* From a C handler: TERM, INT, HUP, QUIT, USR1, USR2 and ALRM to the job's root (not
 * those the kernel sent the whole process group: a terminal's); after TERM, INT, HUP
 * or QUIT, calls stop waiting for a stuck Python. Installed by start_job, after the
 * fork and before the job runs. */
static void forward_signals(pc_tracer *t)
{
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM};
    signalled = t;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        struct sigaction old;
        /* a signal the user had ignored (nohup, `&` in a script) stays ignored, here and
         * in the job (set after the fork: the job keeps the dispositions it was given) */
        if (sigaction(forwarded[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(forwarded[i], &sa, NULL);
    }
}
