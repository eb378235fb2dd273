/* parrot-cvmfs supervisor core: the tracer thread, its event loop, and what passes
 * between it and Python.
 *
 * Contract with the Python side (parrot_cvmfs/tracer/supervisor.py):
 *
 * pc_spawn() (spawn.c) starts the job under the tracer thread, which alone may resume
 * the job's tasks (ptrace's rule) and so never waits for Python. It settles on its own:
 *  - new tasks' first stops, fork/vfork/clone/exec events (reported afterwards),
 *    signal-delivery stops (the signal is passed on unchanged) and group stops
 *    (PTRACE_LISTEN: the task stays stopped until SIGCONT);
 *  - calls whose paths cannot concern /cvmfs (examine.c): they run unchanged;
 *  - calls the answer table covers (examine.c): stat, access, readlink and read-only
 *    opens of paths Python answered before, fstat of descriptors it handed out;
 *  - the exit stop of a call whose arguments were rewritten: the original registers
 *    are put back (compiled code may rely on them), the result kept.
 * Everything else is queued for Python as a pc_event, its paths already read (and the
 * base directory of relative ones), by this thread and the notification thread; pc_next()
 * takes the next one. The task waits until Python answers it: pc_resume(), pc_skip() or
 * pc_set_args() for a ptrace stop (commands this thread carries out), pc_notif_*() for a
 * notification, each for the event Python took last (its token, ev.notif_id).
 *
 * A termination signal to the supervisor (spawn.c) ends the waits on a Python that is
 * stuck in work it took before the signal (a download that never ends, a long query):
 * a call still unanswered GIVE_UP_NS after the signal, or after it was made if later,
 * gets EIO from here, with one line; Python's own answer to it is dropped, and the
 * supervisor's network connections are shut down until Python is back (its download
 * fails as a broken transfer, through its own error paths). Calls made once Python took
 * new work wait for it as usual. When no task is left and Python is still busy, its
 * connections are shut down too, and parrot_run leaves LEAVE_NS later at the latest,
 * with the job's status.
 *
 * The consumer of the events may be C instead (csrc/launcher/: a job started from a
 * start plan, before any Python runs): it drops task events (pc_set_quiet) and, at the
 * first event that needs Python, puts it back (pc_unget) and hands the tracer over
 * (pc_adopt_set); Python's Core takes it (pc_adopt_take) and its loop goes on from
 * that event.
 */
#include "core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef PTRACE_LISTEN
#define PTRACE_LISTEN 0x4208
#endif

#define GIVE_UP_NS 250000000LL  /* a fraction of a second: Python normally answers in µs */
#define TICK_MS 50              /* how often, while something may be given up */
#define LEAVE_NS 5000000000LL   /* a few seconds: Python's cleanup after the job's end */
#define QUEUE_MIN 64

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
    t->listener = t->sigchld_fd = t->root_pidfd = -1;
    t->tracer_wake[0] = t->tracer_wake[1] = t->python_wake[0] = t->python_wake[1] = -1;
    t->python_cpu = t->tracer_cpu = -1;
    pthread_rwlock_init(&t->answers_lock, NULL);
    pthread_mutex_init(&t->qlock, NULL);
    pthread_cond_init(&t->spawned, NULL);
    pthread_mutex_init(&t->cmdlock, NULL);
    pthread_mutex_init(&t->execs_lock, NULL);
    held_init(t);
    stray_init(t);
    t->tasks_cap = 1024;
    t->tasks = calloc(t->tasks_cap, sizeof(task_state));
    t->answers_cap = PC_ANSWERS_MIN;
    t->answers = calloc(t->answers_cap, sizeof(answer *));
    t->qcap = QUEUE_MIN;
    t->queue = calloc(t->qcap, sizeof(queued *));
    if (!t->tasks || !t->answers || !t->queue) {
        free(t->tasks);
        free(t->answers);
        free(t->queue);
        free(t);
        return NULL;
    }
    return t;
}

void pc_free(pc_tracer *t)
{
    if (!t)
        return;
    /* A running tracer or notification thread may still use it: the process is about
     * to end, so the tracer is left allocated rather than freed under them. */
    if (t->tracer_started || t->thread_started)
        return;
    pc_table_clear(t);
    mounts_free(t);
    held_free(t);
    stray_free(t);
    for (size_t i = 0; i < t->nexecs; i++)
        free(t->execs[i].logical);
    free(t->execs);
    free(t->answers);
    free(t->late_filter);
    free(t->tasks);
    free(t->queue);
    free(t->cmds);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < t->nprefix[w]; i++) {
            free(t->prefixes[w][i]);
            if (t->prefix_fd[w][i] >= 0)
                close(t->prefix_fd[w][i]);
        }
    free(t);
}

void pc_set_translate(pc_tracer *t, int on)
{
    t->translate = on;
}

int pc_set_late_filter(pc_tracer *t, const void *filter, int filter_len)
{
    free(t->late_filter);
    t->late_filter = NULL;
    t->late_filter_len = 0;
    if (filter_len <= 0)
        return 0;
    t->late_filter = malloc((size_t)filter_len * 8);
    if (!t->late_filter)
        return -ENOMEM;
    memcpy(t->late_filter, filter, (size_t)filter_len * 8);
    t->late_filter_len = filter_len;
    return 0;
}

int pc_add_prefix(pc_tracer *t, int which, const char *prefix)
{
    if (which < 0 || which > 1 || t->nprefix[which] >= PC_MAX_PREFIXES)
        return -1;
    int i = t->nprefix[which]++;
    t->prefixes[which][i] = strdup(prefix);
    t->prefix_len[which][i] = strlen(prefix);
    t->prefix_fd[which][i] = open(prefix, O_PATH | O_DIRECTORY | O_CLOEXEC);
    return 0;
}

#ifndef PC_BUILD_ID
#define PC_BUILD_ID "unknown"
#endif
const char *pc_build_id(void) { return PC_BUILD_ID; }
#ifndef PC_ABI
#define PC_ABI "unknown"
#endif
const char *pc_abi(void) { return PC_ABI; }

static pc_adoption adoption;
static int adoption_set;

void pc_adopt_set(const pc_adoption *a)
{
    adoption = *a;
    adoption_set = 1;
}

int pc_adopt_take(pc_adoption *out)
{
    if (!adoption_set)
        return 0;
    *out = adoption;
    adoption_set = 0;
    return 1;
}

const pc_stats *pc_get_stats(pc_tracer *t) { return &t->stats; }

void pc_get_rule_stats(pc_tracer *t, uint64_t *out)
{
    for (int i = 0; i <= t->nrules; i++)
        for (int k = 0; k < 3; k++)
            out[3 * i + k] =
                __atomic_load_n(&t->by_rule[i < t->nrules ? i : PC_MAX_RULES][k], __ATOMIC_RELAXED);
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
    fill_event(t, ev, &c);
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
    if (get_regs(tid, &s->cur) < 0) {
        task_del(t, tid);
        return 0;
    }
    s->at_exit = 1; /* what settles the stop uses these, here or from Python's command */
    const pc_regs *cur = &s->cur;
    if (s->reopen && reg_ret(cur) == -ENOENT) {
        restart_exit_stop(t, tid); /* the next try finds the file gone, and Python fetches it */
        return 0;
    }
    if (s->report_exit) {
        ev->kind = PC_EV_SYSCALL_EXIT;
        ev->notify = 0;
        ev->tid = tid;
        ev->ret = reg_ret(cur);
        for (int i = 0; i < 6; i++)
            ev->args[i] = get_arg(&s->saved, i);
        return 1; /* Python calls pc_finish_exit() */
    }
    finish_exit_stop(t, tid, 0, 0);
    return 0;
}

/* One wait status; returns an event kind for Python, or 0 if settled here. */
static int on_status(pc_tracer *t, pid_t tid, int status, pc_event *ev)
{
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
        task_del(t, tid);
        if (tid == t->root) {
            t->root_status = status;
            __atomic_store_n(&t->root_done, 1, __ATOMIC_RELEASE);
        }
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
        task_state *s = task_find(t, (pid_t)former);
        int made = 0;
        if (s || (s = task_find(t, tid)) != NULL)
            made = exec_done(t, s, tid);
        task_del(t, (pid_t)former);
        task_del(t, tid);
        /* resumed once the event is queued (on_wait_status): the new program's calls
         * (readlink of /proc/self/exe) come after it */
        ev->kind = PC_EV_EXEC;
        ev->tid = tid;
        ev->other = (pid_t)former;
        ev->aux = made;
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

int pc_exit_code(pc_tracer *t)
{
    if (!__atomic_load_n(&t->root_done, __ATOMIC_ACQUIRE))
        return 0;
    int st = t->root_status;
    return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}

static void run(pc_tracer *t, const command *c)
{
    pc_regs regs;
    t->stops_waiting--;
    switch (c->op) {
    case CMD_RESUME:
        ptrace(PTRACE_CONT, c->tid, 0, 0);
        break;
    case CMD_SKIP:
        skip_stop(c->tid, c->result);
        break;
    case CMD_SET_ARGS:
        if (get_regs(c->tid, &regs) == 0 &&
            rewrite_args(t, c->tid, &regs, c->narg, c->args, c->values, c->report_exit,
                         c->is_exec, 0) < 0)
            skip_stop(c->tid, -EFAULT); /* the new arguments could not be set */
        break;
    case CMD_FINISH_EXIT:
        finish_exit_stop(t, c->tid, c->set_result, c->result);
        break;
    case CMD_RESTART_EXIT:
        restart_exit_stop(t, c->tid);
        break;
    }
}

static int run_commands(pc_tracer *t)
{
    if (!__atomic_load_n(&t->cmds_waiting, __ATOMIC_SEQ_CST))
        return 0;
    pthread_mutex_lock(&t->cmdlock);
    for (size_t i = 0; i < t->ncmds; i++)
        run(t, &t->cmds[i]);
    t->ncmds = 0;
    __atomic_store_n(&t->cmds_waiting, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&t->cmdlock);
    return 1;
}

/* ---- giving up on a stuck Python, once a termination signal came ------------------------ */

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGQUIT: return "SIGQUIT";
    default: return "a signal";
    }
}

/* One line for the user: which call of which process got EIO, and why. */
static void say_given_up(pc_tracer *t, const pc_event *ev)
{
    char line[2 * PC_PATH_MAX + 256];
    const char *path = ev->path_len ? ev->path : ev->base;
    int rel = ev->path_len && ev->path[0] != '/' && ev->base_len;
    int n = snprintf(line, sizeof line,
                     "parrot_run: after %s, gave up waiting for the supervisor: %s%s%s: "
                     "Input/output error (process %d)\n",
                     signal_name(t->signal_name), rel ? ev->base : "", rel ? "/" : "", path,
                     (int)ev->tid);
    if (n > 0 && write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1) < 0) {
    }
}

/* Answer a call Python has not answered: EIO for a call, the kept result for the exit
 * stop of a rewritten one (Python still sees that event, for its bookkeeping). */
static void give_up(pc_tracer *t, const pc_event *ev)
{
    if (!ev->notify)
        t->stops_waiting--;
    if (ev->kind == PC_EV_SYSCALL_EXIT) {
        finish_exit_stop(t, ev->tid, 0, 0);
        return;
    }
    int ok;
    if (ev->notify) {
        ok = pc_notif_reply(t, ev->notif_id, -EIO) == 0;
    } else {
        ok = skip_stop(ev->tid, -EIO);
    }
    if (ok)
        say_given_up(t, ev);
}

/* A transfer that never ends holds Python: shut the supervisor's network connections
 * down (every TCP socket of this process), and its download fails as a broken one. */
static void cut_transfers(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name), domain = 0;
        socklen_t len = sizeof domain;
        struct stat st;
        if (e->d_name[0] != '.' && fd != dirfd(d) && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
            getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
            (domain == AF_INET || domain == AF_INET6))
            shutdown(fd, SHUT_RDWR);
    }
    closedir(d);
}

static int overdue(int64_t since, int64_t from, int64_t now)
{
    return now >= (since > from ? since : from) + GIVE_UP_NS;
}

/* What the tracer thread checks every TICK_MS while a signal came or the job is gone;
 * returns whether to keep checking. */
static int check_stuck(pc_tracer *t)
{
    int64_t now = now_ns(), from = t->signal_at;
    int cut = 0, again = 0;
    pthread_mutex_lock(&t->qlock);
    /* Python still on work it took before the signal: nothing waits for it any more */
    if (from && t->cur.active && t->cur.taken < from) {
        again = 1;
        for (size_t i = 0; i < t->qlen; i++) {
            queued *q = t->queue[(t->qhead + i) % t->qcap];
            int call = q->ev.kind == PC_EV_SYSCALL || q->ev.kind == PC_EV_SYSCALL_EXIT;
            if (call && !q->given_up && overdue(q->since, from, now)) {
                q->given_up = 1;
                give_up(t, &q->ev);
            }
        }
        int call = t->cur.kind == PC_EV_SYSCALL || t->cur.kind == PC_EV_SYSCALL_EXIT;
        if (call && t->cur.answered == ANSWER_NONE && overdue(t->cur.since, from, now)) {
            t->cur.answered = ANSWER_BY_C;
            give_up(t, t->cur.ev);
        }
        cut = now >= from + GIVE_UP_NS;
    }
    /* no task left, and Python busy with something for one of them */
    if (t->gone_at && !t->python_finished) {
        again = 1;
        cut |= t->cur.active;
        if (now >= t->gone_at + LEAVE_NS)
            _exit(pc_exit_code(t)); /* what it does can only be for a job that is gone */
    }
    pthread_mutex_unlock(&t->qlock);
    if (cut)
        cut_transfers();
    return again;
}

/* ---- the tracer thread ------------------------------------------------------------------- */

static void drain(int fd, size_t size)
{
    char buf[sizeof(struct signalfd_siginfo) * 8];
    while (read(fd, buf, sizeof buf / size * size) > 0) {
    }
}

/* Wait for a wait status, a command or a signal; at most TICK_MS while `ticking`. */
static void sleep_until_woken(pc_tracer *t, int ticking)
{
    __atomic_store_n(&t->tracer_sleeping, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&t->cmds_waiting, __ATOMIC_SEQ_CST) &&
        !__atomic_load_n(&t->signal_pending, __ATOMIC_SEQ_CST)) {
        struct pollfd p[2] = {{t->tracer_wake[0], POLLIN, 0}, {t->sigchld_fd, POLLIN, 0}};
        poll(p, t->gone_at ? 1 : 2, ticking ? TICK_MS : -1);
    }
    __atomic_store_n(&t->tracer_sleeping, 0, __ATOMIC_SEQ_CST);
    drain(t->tracer_wake[0], 1);
    drain(t->sigchld_fd, sizeof(struct signalfd_siginfo));
}

/* One wait status: settled here, or handed to Python. */
static void on_wait_status(pc_tracer *t, pid_t tid, int status, pc_event *ev)
{
    if (!on_status(t, tid, status, ev)) {
        t->last_to_python = 0;
        return;
    }
    t->last_to_python = ev->kind == PC_EV_SYSCALL;
    __atomic_store_n(&t->tracer_cpu, sched_getcpu(), __ATOMIC_RELAXED);
    if (ev->kind == PC_EV_SYSCALL || ev->kind == PC_EV_SYSCALL_EXIT) {
        ev->notif_id = ++t->stops_handed; /* the token of Python's answer */
        t->stops_waiting++;
    }
    hand_over(t, ev);
    if (ev->kind == PC_EV_EXEC)
        ptrace(PTRACE_CONT, tid, 0, 0);
}

void tracer_serve(pc_tracer *t)
{
    /* never returns: the thread's end would kill the job (PTRACE_O_EXITKILL) */
    static pc_event event;
    pc_event *ev = &event;
    int ptrace_mode = t->listener < 0, ticking = 0;
    long idle = t->spin; /* no spinning before the job's first stop (it is exec'ing) */
    int64_t next_tick = 0, waiting_since = 0, spin_since = 0;
    for (;;) {
        int busy = run_commands(t);
        int sig = __atomic_load_n(&t->signal_pending, __ATOMIC_RELAXED)
                      ? __atomic_exchange_n(&t->signal_pending, 0, __ATOMIC_SEQ_CST)
                      : 0;
        if (sig) {
            t->signal_name = sig;
            t->signal_at = now_ns();
            ticking = 1;
        }
        if (!t->gone_at) {
            int status;
            pid_t tid = waitpid(-1, &status, __WALL | __WNOTHREAD | WNOHANG);
            if (tid > 0) {
                on_wait_status(t, tid, status, ev);
                busy = 1;
            } else if (tid < 0 && errno == ECHILD) {
                ev->kind = PC_EV_NOCHILD;
                hand_over(t, ev);
                t->gone_at = now_ns();
                ticking = 1;
            }
        }
        if (ticking && now_ns() >= next_tick) {
            ticking = check_stuck(t);
            next_tick = now_ns() + TICK_MS * 1000000LL;
        }
        if (busy) {
            idle = 0;
            waiting_since = spin_since = 0;
            continue;
        }
        if (ptrace_mode && !t->stops_waiting && !ticking && !t->gone_at) {
            /* Python owes us no answer: only the job can give us work. Poll briefly
             * before sleeping (a traced program stops again within microseconds, and a
             * thread asleep in between pays a cross-CPU wake-up on every stop), then
             * sleep in waitpid, whose wake-up comes on the stopping task's CPU. A
             * termination signal meanwhile is taken at the next stop (no call is
             * waiting for Python: there is nothing to give up). */
            if (!t->last_to_python && idle++ < t->spin)
                continue;
            idle = 0;
            int status;
            pid_t tid = waitpid(-1, &status, __WALL | __WNOTHREAD);
            if (tid > 0)
                on_wait_status(t, tid, status, ev);
            continue;
        }
        if (!ptrace_mode && !t->stops_waiting && !ticking && !t->gone_at && !t->last_to_python &&
            t->spin > 0) {
            /* the same poll in notify mode, for a while (each poll scans every task:
             * a count would cost in proportion to them): a process's stops come in
             * bursts (fork, the child's first stop, exec, its end), and the signal
             * that wakes us costs a cross-CPU wake-up each */
            int64_t now = now_ns();
            if (!spin_since)
                spin_since = now;
            if (now < spin_since + NOTIFY_SPIN_NS)
                continue;
        }
        spin_since = 0;
        idle = 0;
        /* Python's answer usually comes within its 50-100 µs of work: look again (for
         * it, and for the job's other tasks) a while before sleeping, as spin_for */
        if (ptrace_mode && t->stops_waiting) {
            int64_t now = now_ns();
            if (!waiting_since)
                waiting_since = now;
            if (now < waiting_since + TRACER_SPIN_NS &&
                sched_getcpu() != __atomic_load_n(&t->python_cpu, __ATOMIC_RELAXED))
                continue;
        }
        sleep_until_woken(t, ticking);
    }
}

