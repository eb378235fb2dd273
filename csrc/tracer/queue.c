/* What passes between the C threads and Python: the queue of events for Python
 * (pc_next), whose answers to notifications it claims first (pc_claim), and its
 * answers to ptrace stops, posted as commands for the tracer thread to carry out
 * (pc_resume, pc_skip, pc_set_args, ...; the tracer thread runs them, tracer.c). */
#include "core.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wait up to `ns` for `*flag` to turn non-zero; whether it did. Only while the thread
 * that sets it runs on another CPU (`other`): a waiter sharing its CPU would only keep
 * it from running, and a wake-up on the same CPU is cheap anyway. */
static int spin_for(const int *flag, const int *other, int64_t ns)
{
    int64_t until = now_ns() + ns;
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        if (sched_getcpu() == __atomic_load_n(other, __ATOMIC_RELAXED) || now_ns() >= until)
            return 0;
    }
    return 1;
}

/* ---- events for Python ------------------------------------------------------------------ */

static size_t event_size(int kind)
{
    return kind == PC_EV_SYSCALL ? sizeof(pc_event) : offsetof(pc_event, path);
}

static void copy_string(char *dst, const char *src, int len)
{
    size_t n = len > 0 ? (size_t)(len < PC_PATH_MAX ? len : PC_PATH_MAX) : 0;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The header, and of the paths what they hold (16 KB less to copy, twice per call). */
static void copy_event(pc_event *dst, const pc_event *src)
{
    memcpy(dst, src, offsetof(pc_event, path));
    if (src->kind != PC_EV_SYSCALL)
        return;
    copy_string(dst->path, src->path, src->path_len);
    copy_string(dst->path2, src->path2, src->path2_len);
    copy_string(dst->base, src->base, src->base_len);
    copy_string(dst->base2, src->base2, src->base2_len);
    copy_string(dst->key, src->key, src->key_len);
}

/* Room for one more event in the ring (t->qlock held): doubled when full; -1 if no
 * memory. */
static int room_locked(pc_tracer *t)
{
    if (t->qlen < t->qcap)
        return 0;
    queued **grown = calloc(t->qcap * 2, sizeof *grown);
    if (!grown)
        return -1;
    for (size_t i = 0; i < t->qlen; i++)
        grown[i] = t->queue[(t->qhead + i) % t->qcap];
    free(t->queue);
    t->queue = grown;
    t->qhead = 0;
    t->qcap *= 2;
    return 0;
}

pid_t tgid_of(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    FILE *f = fopen(path, "re");
    pid_t tgid = 0;
    if (!f)
        return 0;
    while (fgets(buf, sizeof buf, f))
        if (strncmp(buf, "Tgid:", 5) == 0) {
            tgid = (pid_t)atoi(buf + 5);
            break;
        }
    fclose(f);
    return tgid;
}

/* Drop the logical programs kept for `tid` (all, or all but the newest). */
static void drop_execs_locked(pc_tracer *t, pid_t tid, int keep_newest)
{
    int kept = !keep_newest;
    for (size_t i = t->nexecs; i-- > 0;) {
        if (t->execs[i].tid != tid)
            continue;
        if (!kept) {
            kept = 1;
            continue;
        }
        free(t->execs[i].logical);
        t->nexecs--;
        memmove(&t->execs[i], &t->execs[i + 1], (t->nexecs - i) * sizeof *t->execs);
    }
}

/* While no Python runs (a planned start), the task events it would have taken keep
 * what /proc/PID/exe is to show: the execs list holds, per process, the logical
 * program of the exec C made last (exec_done appends them), a fork inherits its
 * parent's, another exec or the process's end drops it. Python takes them all when it
 * adopts the run (pc_take_quiet_exes). */
static int quiet_task_event(pc_tracer *t, const pc_event *ev)
{
    pid_t child_tgid = 0, parent_tgid = 0;
    if (ev->kind == PC_EV_NEWTASK) { /* read before the lock: /proc may be slow */
        child_tgid = tgid_of(ev->other);
        parent_tgid = tgid_of(ev->tid);
    }
    /* whether C made this exec (read at its event, not from /proc afterwards: the task
     * runs on and may have exec'd again) */
    int ours = ev->kind == PC_EV_EXEC && ev->aux;
    pthread_mutex_lock(&t->execs_lock);
    /* asked again under the lock pc_set_quiet takes: an event is either in the list
     * the adopting Python takes next, or queued for it, never lost in between */
    if (!__atomic_load_n(&t->quiet, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&t->execs_lock);
        return 0;
    }
    if (ev->kind == PC_EV_EXEC && ev->tid == t->root)
        __atomic_store_n(&t->quiet_exec, 1, __ATOMIC_RELEASE);
    if (ev->kind == PC_EV_EXEC) {
        if (ev->other != ev->tid)
            drop_execs_locked(t, ev->other, 0);
        drop_execs_locked(t, ev->tid, ours);
    } else if (ev->kind == PC_EV_EXIT) {
        drop_execs_locked(t, ev->tid, 0);
    } else if (child_tgid == ev->other && parent_tgid > 0 && t->nexecs < PC_EXECS_MAX) {
        for (size_t i = t->nexecs; i-- > 0;)
            if (t->execs[i].tid == parent_tgid) {
                char *l = strdup(t->execs[i].logical);
                exec_made *grown = l ? realloc(t->execs, (t->nexecs + 1) * sizeof *grown) : NULL;
                if (grown) {
                    t->execs = grown;
                    t->execs[t->nexecs++] = (exec_made){ev->other, l};
                } else {
                    free(l);
                }
                break;
            }
    }
    pthread_mutex_unlock(&t->execs_lock);
    return 1;
}

size_t pc_take_quiet_exes(pc_tracer *t, char *buf, size_t len)
{
    size_t at = 0;
    pthread_mutex_lock(&t->execs_lock);
    while (t->nexecs > 0) {
        exec_made *e = &t->execs[t->nexecs - 1];
        int n = snprintf(buf + at, len - at, "%d:%s", (int)e->tid, e->logical);
        if (n < 0 || (size_t)n + 1 > len - at)
            break;
        at += (size_t)n + 1;
        free(e->logical);
        t->nexecs--;
    }
    pthread_mutex_unlock(&t->execs_lock);
    return at;
}

/* Queue an event for Python (the tracer and notification threads). */
void hand_over(pc_tracer *t, const pc_event *ev)
{
    if (__atomic_load_n(&t->quiet, __ATOMIC_ACQUIRE) &&
        (ev->kind == PC_EV_NEWTASK || ev->kind == PC_EV_EXEC || ev->kind == PC_EV_EXIT) &&
        quiet_task_event(t, ev))
        return; /* no Python to take it: the handlers read what they need from /proc */
    size_t n = event_size(ev->kind);
    queued *q = malloc(offsetof(queued, ev) + n);
    if (!q)
        return; /* the task waits; a termination signal still ends the wait */
    q->since = now_ns();
    q->given_up = 0;
    copy_event(&q->ev, ev);
    pthread_mutex_lock(&t->qlock);
    if (room_locked(t) != 0) {
        pthread_mutex_unlock(&t->qlock);
        free(q);
        return;
    }
    t->queue[(t->qhead + t->qlen) % t->qcap] = q;
    t->qlen++;
    __atomic_store_n(&t->qwaiting, (int)t->qlen, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&t->qlock);
    /* a pipe: its wake-up is a synchronous one (the waker is about to wait) */
    if (__atomic_load_n(&t->python_sleeping, __ATOMIC_SEQ_CST) &&
        write(t->python_wake[1], "e", 1) < 0) {
    }
}

int pc_next(pc_tracer *t, pc_event *ev)
{
    pthread_mutex_lock(&t->qlock);
    t->cur.active = 0; /* Python is done with the last one */
    for (;;) {
        if (t->qlen == 0) {
            pthread_mutex_unlock(&t->qlock);
            /* ptrace mode, after an answer: the program's next call is microseconds away */
            if (t->python_posted && t->listener < 0)
                spin_for(&t->qwaiting, &t->tracer_cpu, PYTHON_SPIN_NS);
            t->python_posted = 0;
            __atomic_store_n(&t->python_sleeping, 1, __ATOMIC_SEQ_CST);
            if (!__atomic_load_n(&t->qwaiting, __ATOMIC_SEQ_CST)) {
                struct pollfd p = {t->python_wake[0], POLLIN, 0};
                poll(&p, 1, -1);
            }
            __atomic_store_n(&t->python_sleeping, 0, __ATOMIC_SEQ_CST);
            char buf[64];
            while (read(t->python_wake[0], buf, sizeof buf) > 0) {
            }
            pthread_mutex_lock(&t->qlock);
            continue;
        }
        queued *q = t->queue[t->qhead];
        t->qhead = (t->qhead + 1) % t->qcap;
        t->qlen--;
        __atomic_store_n(&t->qwaiting, (int)t->qlen, __ATOMIC_RELEASE);
        if (q->given_up && q->ev.kind == PC_EV_SYSCALL) {
            free(q); /* answered here meanwhile: nothing left for Python */
            continue;
        }
        copy_event(ev, &q->ev);
        current c = {.active = 1, .kind = ev->kind, .notify = ev->notify, .tid = ev->tid,
                     .token = ev->notif_id, .since = q->since, .taken = now_ns(),
                     .answered = q->given_up ? ANSWER_BY_C : ANSWER_NONE, .ev = ev};
        t->cur = c;
        if (ev->kind == PC_EV_NOCHILD)
            t->python_finished = 1;
        pthread_mutex_unlock(&t->qlock);
        free(q);
        return ev->kind;
    }
}

int pc_set_quiet(pc_tracer *t, int on)
{
    pthread_mutex_lock(&t->execs_lock); /* after any event quiet_task_event is taking */
    __atomic_store_n(&t->quiet, on, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->execs_lock);
    return __atomic_load_n(&t->quiet_exec, __ATOMIC_ACQUIRE);
}

/* The launcher took an event that needs Python: it goes back first in the queue, with
 * its time (a termination signal's give-up counts from when the call was made). */
int pc_unget(pc_tracer *t)
{
    pthread_mutex_lock(&t->qlock);
    if (!t->cur.active) {
        pthread_mutex_unlock(&t->qlock);
        return -1;
    }
    size_t n = event_size(t->cur.kind);
    queued *q = malloc(offsetof(queued, ev) + n);
    if (!q) {
        pthread_mutex_unlock(&t->qlock);
        return -1;
    }
    q->since = t->cur.since;
    q->given_up = t->cur.answered == ANSWER_BY_C;
    copy_event(&q->ev, t->cur.ev);
    if (room_locked(t) != 0) {
        pthread_mutex_unlock(&t->qlock);
        free(q);
        return -1;
    }
    t->qhead = (t->qhead + t->qcap - 1) % t->qcap;
    t->queue[t->qhead] = q;
    t->qlen++;
    __atomic_store_n(&t->qwaiting, (int)t->qlen, __ATOMIC_SEQ_CST);
    if (q->ev.kind == PC_EV_NOCHILD)
        t->python_finished = 0; /* the one who takes it next finishes */
    t->cur.active = 0;
    pthread_mutex_unlock(&t->qlock);
    return 0;
}

/* The current event, if `token` names it, is Python's to answer: 0 if C answered it
 * already (`once`: or Python did). */
static int claim(pc_tracer *t, int notify, uint64_t token, int once)
{
    int ok = 1;
    pthread_mutex_lock(&t->qlock);
    if (t->cur.active && t->cur.notify == notify && t->cur.token == token) {
        if (t->cur.answered == ANSWER_BY_C || (once && t->cur.answered == ANSWER_BY_PYTHON))
            ok = 0;
        else
            t->cur.answered = ANSWER_BY_PYTHON;
    } else if (!notify) {
        ok = 0; /* a ptrace stop is only ever answered while current */
    }
    pthread_mutex_unlock(&t->qlock);
    return ok;
}

int pc_claim(pc_tracer *t, uint64_t token) { return claim(t, 1, token, 0); }

int pc_given_up(pc_tracer *t)
{
    pthread_mutex_lock(&t->qlock);
    int r = t->cur.active && t->cur.answered == ANSWER_BY_C;
    pthread_mutex_unlock(&t->qlock);
    return r;
}

/* ---- Python's answers to ptrace stops, carried out by the tracer thread ------------------ */

void wake_tracer(pc_tracer *t)
{
    if (write(t->tracer_wake[1], "w", 1) < 0) {
    } /* async-signal-safe: the signal handler calls it */
}

/* One command per stop: the tracer thread counts the stops that wait for one. */
static int post(pc_tracer *t, uint64_t token, const command *c)
{
    pthread_mutex_lock(&t->cmdlock);
    if (t->ncmds == t->cmds_cap) {
        size_t cap = t->cmds_cap ? t->cmds_cap * 2 : 16;
        command *grown = realloc(t->cmds, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&t->cmdlock);
            return -ENOMEM;
        }
        t->cmds = grown;
        t->cmds_cap = cap;
    }
    if (!claim(t, 0, token, 1)) {
        pthread_mutex_unlock(&t->cmdlock);
        return -ESRCH; /* given up meanwhile: C answered it */
    }
    t->cmds[t->ncmds++] = *c;
    t->python_posted = 1;
    __atomic_store_n(&t->python_cpu, sched_getcpu(), __ATOMIC_RELAXED);
    __atomic_store_n(&t->cmds_waiting, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&t->cmdlock);
    if (__atomic_load_n(&t->tracer_sleeping, __ATOMIC_SEQ_CST))
        wake_tracer(t);
    return 0;
}

int pc_resume(pc_tracer *t, pid_t tid, uint64_t token)
{
    command c = {.op = CMD_RESUME, .tid = tid};
    return post(t, token, &c);
}

int pc_skip(pc_tracer *t, pid_t tid, uint64_t token, int64_t result)
{
    command c = {.op = CMD_SKIP, .tid = tid, .result = result};
    return post(t, token, &c);
}

/* Point arguments at data Python wrote below the stack pointer (past the red zone),
 * run the call, and restore the original registers at its exit stop. */
int pc_set_args(pc_tracer *t, pid_t tid, uint64_t token, int narg, const int *args,
                const uint64_t *values, int report_exit, int is_exec)
{
    if (narg < 0 || narg > 6)
        return -EINVAL;
    command c = {.op = CMD_SET_ARGS, .tid = tid, .narg = narg, .report_exit = report_exit,
                 .is_exec = is_exec};
    memcpy(c.args, args, sizeof(int) * (size_t)narg);
    memcpy(c.values, values, sizeof(uint64_t) * (size_t)narg);
    return post(t, token, &c);
}

int pc_finish_exit(pc_tracer *t, pid_t tid, uint64_t token, int set_result, int64_t result)
{
    command c = {.op = CMD_FINISH_EXIT, .tid = tid, .set_result = set_result, .result = result};
    return post(t, token, &c);
}

int pc_restart_exit(pc_tracer *t, pid_t tid, uint64_t token)
{
    command c = {.op = CMD_RESTART_EXIT, .tid = tid};
    return post(t, token, &c);
}
