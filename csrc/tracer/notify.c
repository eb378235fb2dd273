/* The notification thread: it blocks in SECCOMP_IOCTL_NOTIF_RECV, which with
 * SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP hands the CPU straight from the program to us
 * and back (no cross-CPU wake-ups), decides in C what it can, and queues the rest
 * for Python, which answers through pc_notif_*(). It never touches ptrace: that
 * belongs to the tracer thread, which seized the job. */
#include "core.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Built with -DPC_NOTIFY_PROFILE (CFLAGS=-DPC_NOTIFY_PROFILE pip install -e .), the
 * loop times the phases of each call it answers (examine: reading the path from the
 * task; ID_VALID; answer: the table lookup, the copy into the task and the SEND, which
 * with SYNC_WAKE_UP runs the task on this CPU until its next stop) and prints the means
 * to stderr when the listener goes. Measured here (statloop readlink, ~4.6 us a call):
 * examine ~0.8 us, ID_VALID ~0.24 us, answer ~3 us. */
#ifdef PC_NOTIFY_PROFILE
#include <stdio.h>
#include <time.h>
enum { PH_EXAMINE, PH_VALID, PH_ANSWER, PH_N };
static double ph_ns[PH_N];
static long ph_calls;
static double ph_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}
#define PH_MARK(v) double v = ph_now()
#define PH_ADD(ph, a, b) (ph_ns[ph] += (b) - (a))
static void ph_report(void)
{
    if (ph_calls)
        fprintf(stderr, "notify profile: %ld fast answers, per call: examine %.0f ns, ID_VALID %.0f ns, answer %.0f ns\n",
                ph_calls, ph_ns[PH_EXAMINE] / ph_calls, ph_ns[PH_VALID] / ph_calls, ph_ns[PH_ANSWER] / ph_calls);
}
#else
#define PH_MARK(v)
#define PH_ADD(ph, a, b)
#define ph_report()
#endif

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#else
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#endif

static void *notify_main(void *arg)
{
    pc_tracer *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pc_all_signals_blocked = 1;
    struct seccomp_notif_sizes sizes = {0};
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0)
        sizes.seccomp_notif = sizeof(struct seccomp_notif);
    size_t rsize = sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif
                                                                       : sizeof(struct seccomp_notif);
    struct seccomp_notif *req = calloc(1, rsize);
    pc_event *ev = calloc(1, sizeof *ev);
    if (!req || !ev)
        return NULL;
    for (;;) {
        memset(req, 0, rsize);
        if (ioctl(t->listener, SECCOMP_IOCTL_NOTIF_RECV, req) < 0) {
            if (errno == EINTR)
                continue;
            if (errno != ENOENT)
                break; /* the listener is gone */
            /* ENOENT: the caller was interrupted before we took its call, or no task
             * uses the filter any more, after which RECV returns at once, forever (it
             * spun a CPU through the supervisor's teardown, ~50 ms after a stat loop).
             * The listener reports the second as a hang-up. */
            struct pollfd p = {t->listener, POLLIN, 0};
            while (poll(&p, 1, -1) < 0 && errno == EINTR) {
            }
            if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
                break;
            continue;
        }
        pc_call c;
        memset(&c, 0, sizeof c);
        c.tid = (pid_t)req->pid;
        c.nr = req->data.nr;
        c.notify = 1;
        c.notif_id = req->id;
        for (int i = 0; i < 6; i++)
            c.args[i] = req->data.args[i];
        int ri = (c.nr >= 0 && c.nr < 1024 && req->data.arch == NATIVE_ARCH) ? t->rule_of_nr[c.nr] : -1;
        STAT_ADD(t, stops);
        if (ri < 0) {
            pc_notif_continue(t, c.notif_id);
            PASSED(t, ri);
            continue;
        }
        c.rule = ri;
        c.r = &t->rules[ri];
        PH_MARK(p0);
        if (!examine_call(t, &c, ev)) {
            pc_notif_continue(t, c.notif_id);
            PASSED(t, ri);
            continue;
        }
        /* what we read may belong to a task that died meanwhile (and a reused pid) */
        PH_MARK(p1);
        if (!pc_notif_valid(t, c.notif_id))
            continue;
        PH_MARK(p2);
        if (fast_answer(t, &c, ev)) {
            PH_MARK(p3);
            PH_ADD(PH_EXAMINE, p0, p1);
            PH_ADD(PH_VALID, p1, p2);
            PH_ADD(PH_ANSWER, p2, p3);
#ifdef PC_NOTIFY_PROFILE
            ph_calls++;
#endif
            ANSWERED(t, ri);
            continue;
        }
        TO_PYTHON(t, ri);
        fill_event(t, ev, &c);
        hand_over(t, ev);
    }
    ph_report();
    free(req);
    free(ev);
    return NULL;
}

int notify_start(pc_tracer *t, int listener)
{
    t->listener = listener;
    int rc = start_detached(&t->thread, notify_main, t);
    if (rc != 0) {
        t->listener = -1;
        return -rc;
    }
    t->thread_started = 1;
    return 0;
}
