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
        if (!examine_call(t, &c, ev)) {
            pc_notif_continue(t, c.notif_id);
            PASSED(t, ri);
            continue;
        }
        /* what we read may belong to a task that died meanwhile (and a reused pid) */
        if (!pc_notif_valid(t, c.notif_id))
            continue;
        if (fast_answer(t, &c, ev)) {
            ANSWERED(t, ri);
            continue;
        }
        TO_PYTHON(t, ri);
        fill_event(t, ev, &c);
        hand_over(t, ev);
    }
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
