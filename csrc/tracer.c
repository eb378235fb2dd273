/* parrot-cvmfs supervisor core: spawning the job and the event loop.
 *
 * Contract with the Python side (parrot_cvmfs/tracer/supervisor.py):
 *
 * pc_spawn() forks the job. The child sets NO_NEW_PRIVS and waits on a pipe; the
 * parent seizes it (PTRACE_SEIZE with EXITKILL, TRACESECCOMP and fork/vfork/clone/
 * exec tracing), then the child installs the seccomp filter Python generated from
 * the system-call table and execs. In notification mode the filter also returns
 * SECCOMP_RET_USER_NOTIF for the frequent calls: the child passes the listener up
 * over a socket, and a thread of ours serves it (notify.c). Every other call runs
 * at native speed.
 *
 * pc_next() runs the loop and settles on its own, without entering Python:
 *  - new tasks' first stops, fork/vfork/clone/exec events (reported afterwards),
 *    signal-delivery stops (the signal is passed on unchanged) and group stops
 *    (PTRACE_LISTEN: the task stays stopped until SIGCONT);
 *  - calls whose paths cannot concern /cvmfs (examine.c): they run unchanged;
 *  - calls the answer table covers (examine.c): stat, access, readlink and read-only
 *    opens of paths Python answered before, fstat of descriptors it handed out;
 *  - the exit stop of a call whose arguments were rewritten: the original registers
 *    are put back (compiled code may rely on them), the result kept.
 * Everything else comes back as a pc_event, its paths already read (and the base
 * directory of relative ones). The task waits until Python answers it: pc_resume(),
 * pc_skip() or pc_set_args() for a ptrace stop, pc_notif_*() for a notification.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef PTRACE_O_EXITKILL
#define PTRACE_O_EXITKILL (1 << 20)
#endif
#ifndef PTRACE_LISTEN
#define PTRACE_LISTEN 0x4208
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

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
    t->listener = t->wake_fd = t->sigchld_fd = -1;
    pthread_rwlock_init(&t->answers_lock, NULL);
    pthread_mutex_init(&t->qlock, NULL);
    pthread_cond_init(&t->qspace, NULL);
    t->tasks_cap = 1024;
    t->tasks = calloc(t->tasks_cap, sizeof(task_state));
    t->answers_cap = PC_ANSWERS_MIN;
    t->answers = calloc(t->answers_cap, sizeof(answer *));
    if (!t->tasks || !t->answers) {
        free(t->tasks);
        free(t->answers);
        free(t);
        return NULL;
    }
    return t;
}

void pc_free(pc_tracer *t)
{
    if (!t)
        return;
    /* A running notification thread may still hold the listener: the process is about
     * to end, so the tracer is left allocated rather than freed under it. */
    if (t->thread_started)
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

void pc_get_rule_stats(pc_tracer *t, uint64_t *out)
{
    for (int i = 0; i <= t->nrules; i++)
        for (int k = 0; k < 3; k++)
            out[3 * i + k] =
                __atomic_load_n(&t->by_rule[i < t->nrules ? i : PC_MAX_RULES][k], __ATOMIC_RELAXED);
}
int pc_ntasks(pc_tracer *t) { return t->ntasks; }

/* ---- per-task state of rewritten calls: open addressing, backward-shift deletion --- */

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
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->tasks[i] = t->tasks[j];
            t->tasks[j].tid = 0;
            i = j;
        }
    }
}

/* ---- spawning ------------------------------------------------------------------------ */

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
 * just waits, and dies with its task. It is forked twice before we become a child
 * subreaper, so that it is not our child (we wait for all of ours) and init reaps it. */

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
    int listener = recv_fd(sock); /* from the job, before it runs: see pc_spawn */
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
    pid_t mid = fork();
    if (mid == 0) {
        if (fork() == 0)
            reaper_main(pidfd, s[1]);
        _exit(0);
    }
    close(pidfd);
    close(s[1]);
    if (mid < 0 || waitpid(mid, NULL, 0) < 0) {
        close(s[0]);
        return -1;
    }
    return s[0];
}

pid_t pc_spawn(pc_tracer *t, const char *file, char *const argv[], char *const envp[],
               const void *filter, int filter_len, int notify, int *report_fd, char *err,
               int errlen)
{
    int go[2], report[2], sock[2];
    int reaper = notify ? start_reaper() : -1;
    /* orphaned grandchildren are reparented to us, and stay traced */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(report, O_CLOEXEC) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) < 0) {
        snprintf(err, (size_t)errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, (size_t)errlen, "fork: %s", strerror(errno));
        if (reaper >= 0)
            close(reaper);
        return -1;
    }
    if (pid == 0) {
        close(go[1]);
        close(report[0]);
        close(sock[0]);
        char c;
        int stage = 0, e = 0;
        /* Python ignores SIGPIPE and SIGXFSZ for itself; the job gets the defaults, as
         * subprocess's restore_signals gives them (an ignored disposition survives exec) */
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
            stage = 1;
            e = errno;
        } else if (read(go[0], &c, 1) != 1) {
            _exit(127); /* the supervisor could not trace us and said so */
        } else {
            struct sock_fprog prog = {(unsigned short)filter_len, (struct sock_filter *)filter};
            long l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                             notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
            if (l < 0) {
                stage = 2;
                e = errno;
            } else {
                if (notify) {
                    /* the reaper's copy first: in flight in its socket, it already
                     * keeps the listener open */
                    if (reaper >= 0)
                        send_fd(reaper, (int)l);
                    send_fd(sock[1], (int)l);
                    close((int)l);
                }
                close(sock[1]);
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
    close(sock[1]);
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
                PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP |
                PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SEIZE, pid, 0, (void *)opts) < 0) {
        int e = errno;
        close(go[1]);
        close(report[0]);
        close(sock[0]);
        if (reaper >= 0)
            close(reaper);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        snprintf(err, (size_t)errlen, "ptrace:%d", e);
        return -1;
    }
    t->ntasks = 1;
    if (notify) {
        /* SIGCHLD is waited for through a signalfd, next to the notification queue */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        pthread_sigmask(SIG_BLOCK, &chld, &t->saved_mask);
        t->sigchld_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
        t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    if (write(go[1], "g", 1) != 1) {
    }
    close(go[1]);
    if (notify) {
        /* the child sends the listener before exec (or fails, and the socket closes) */
        int listener = recv_fd(sock[0]);
        if (reaper >= 0)
            close(reaper); /* the job has sent it its copy, or failed */
        if (listener >= 0) {
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0);
            if (notify_start(t, listener) < 0)
                close(listener);
        }
    }
    close(sock[0]);
    /* The report pipe closes at exec, or carries why the child failed before it. The
     * child's own execve is a traced call, so Python reads this once the loop runs. */
    *report_fd = report[0];
    return pid;
}

static volatile pid_t forward_to;

static void forward_signal(int sig)
{
    int e = errno;
    kill(forward_to, sig);
    errno = e;
}

void pc_forward_signals(int pid)
{
    static const int forwarded[] = {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM};
    forward_to = pid;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
        struct sigaction old;
        /* a signal the user had ignored (nohup) stays ignored, here and in the job */
        if (sigaction(forwarded[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = forward_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(forwarded[i], &sa, NULL);
    }
    /* the job gets these from the terminal itself; set after the fork, so the job
     * keeps the dispositions it was given */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
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

/* ---- the event loop ---------------------------------------------------------------------- */

void fill_event(pc_event *ev, const pc_call *c)
{
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

static int on_seccomp_stop(pc_tracer *t, pid_t tid, pc_event *ev)
{
    pc_regs regs;
    STAT_ADD(t, stops);
    if (get_regs(tid, &regs) < 0)
        return 0; /* gone (SIGKILL): its exit will be reported */
    pc_call c;
    memset(&c, 0, sizeof c);
    c.tid = tid;
    c.nr = (int)reg_nr(&regs);
    c.regs = &regs;
    for (int i = 0; i < 6; i++)
        c.args[i] = get_arg(&regs, i);
    int ri = (c.nr >= 0 && c.nr < 1024) ? t->rule_of_nr[c.nr] : -1;
    if (ri < 0) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        PASSED(t, ri);
        return 0;
    }
    c.rule = ri;
    c.r = &t->rules[ri];
    if (!examine_call(t, &c, ev)) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        PASSED(t, ri);
        return 0;
    }
    if (fast_answer(t, &c, ev)) {
        ANSWERED(t, ri);
        return 0;
    }
    TO_PYTHON(t, ri);
    fill_event(ev, &c);
    return 1;
}

/* The exit stop of a rewritten call: put the original arguments back. */
static int on_exit_stop(pc_tracer *t, pid_t tid, pc_event *ev)
{
    STAT_ADD(t, exit_stops);
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
    if (s->reopen && reg_ret(&cur) == -ENOENT) {
        pc_restart_exit(t, tid); /* the next try finds the file gone, and Python fetches it */
        return 0;
    }
    if (s->report_exit) {
        ev->kind = PC_EV_SYSCALL_EXIT;
        ev->notify = 0;
        ev->tid = tid;
        ev->ret = reg_ret(&cur);
        for (int i = 0; i < 6; i++)
            ev->args[i] = get_arg(&s->saved, i);
        return 1; /* Python calls pc_finish_exit() */
    }
    pc_finish_exit(t, tid, 0, 0);
    return 0;
}

int pc_restart_exit(pc_tracer *t, pid_t tid)
{
    task_state *s = task_find(t, tid);
    pc_regs cur;
    if (!s || s->is_exec || get_regs(tid, &cur) < 0)
        return pc_finish_exit(t, tid, 0, 0);
    restart_call(&cur, &s->saved);
    int rc = set_regs(tid, &cur);
    task_del(t, tid);
    if (rc < 0)
        return -errno;
    return ptrace(PTRACE_CONT, tid, 0, 0) < 0 ? -errno : 0;
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

/* One wait status; returns an event kind for Python, or 0 if settled here. */
static int on_status(pc_tracer *t, pid_t tid, int status, pc_event *ev)
{
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
        task_del(t, tid);
        t->ntasks--;
        ev->kind = PC_EV_EXIT;
        ev->tid = tid;
        ev->status = status;
        return ev->kind;
    }
    if (!WIFSTOPPED(status))
        return 0;
    int sig = WSTOPSIG(status);
    int event = (status >> 16) & 0xff;
    if (sig == (SIGTRAP | 0x80))
        return on_exit_stop(t, tid, ev) ? ev->kind : 0;
    if (sig == SIGTRAP && event == PTRACE_EVENT_SECCOMP)
        return on_seccomp_stop(t, tid, ev) ? ev->kind : 0;
    if (sig == SIGTRAP && (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK ||
                           event == PTRACE_EVENT_CLONE)) {
        unsigned long child = 0;
        ptrace(PTRACE_GETEVENTMSG, tid, 0, &child);
        ptrace(PTRACE_CONT, tid, 0, 0);
        t->ntasks++;
        STAT_ADD(t, tasks);
        ev->kind = PC_EV_NEWTASK;
        ev->tid = tid;
        ev->other = (pid_t)child;
        ev->aux = event;
        return ev->kind;
    }
    if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
        unsigned long former = 0;
        ptrace(PTRACE_GETEVENTMSG, tid, 0, &former);
        /* The exec succeeded: the rewritten call is over (the registers now belong to
         * the new program; its exit stop is not requested). Drop its state, also when
         * a non-leader thread exec'd and now carries the leader's pid. */
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
        return 0;
    }
    if (sig == SIGTRAP && event != 0) {
        ptrace(PTRACE_CONT, tid, 0, 0);
        return 0;
    }
    /* a signal-delivery stop: deliver the signal unchanged (a rewritten call has
     * always reached its exit stop before a signal is delivered) */
    STAT_ADD(t, signals);
    ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig);
    return 0;
}

int pc_next(pc_tracer *t, pc_event *ev)
{
    for (;;) {
        if (queue_pop(t, ev))
            return ev->kind;
        int status;
        pid_t tid;
        if (t->listener >= 0) {
            /* notification mode: ptrace events arrive as SIGCHLD on a signalfd */
            tid = waitpid(-1, &status, __WALL | WNOHANG);
            if (tid == 0) {
                struct pollfd p[2] = {{t->wake_fd, POLLIN, 0}, {t->sigchld_fd, POLLIN, 0}};
                if (poll(p, 2, -1) < 0 && errno == EINTR) {
                    ev->kind = PC_EV_INTERRUPTED;
                    return ev->kind;
                }
                uint64_t v;
                struct signalfd_siginfo si;
                if (p[0].revents && read(t->wake_fd, &v, sizeof v) < 0) {
                }
                while (p[1].revents && read(t->sigchld_fd, &si, sizeof si) == sizeof si) {
                }
                continue;
            }
        } else {
            /* Poll briefly before sleeping: a traced program stops again within
             * microseconds, and a supervisor asleep in between pays a cross-CPU wake-up
             * on every stop. */
            tid = 0;
            for (long i = 0; i < t->spin && tid == 0; i++)
                tid = waitpid(-1, &status, __WALL | WNOHANG);
            if (tid == 0)
                tid = waitpid(-1, &status, __WALL);
        }
        if (tid < 0) {
            if (errno == EINTR) {
                ev->kind = PC_EV_INTERRUPTED;
                return ev->kind;
            }
            ev->kind = PC_EV_NOCHILD;
            return ev->kind;
        }
        int k = on_status(t, tid, status, ev);
        if (k)
            return k;
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
    return rewrite_args(t, tid, &regs, narg, args, values, report_exit, is_exec, 0);
}
