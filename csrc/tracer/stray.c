/* Stray descriptors: ones we installed in a job whose answer never reached it.
 *
 * Where the hand-off holds the job to our CPU (respond.c), a descriptor is installed
 * first (ADDFD) and the call answered second, so that the job's own CPU mask is back
 * before it runs. A signal in between ends the job's wait: the answer finds no call,
 * and the descriptor stays in the job, which never learns its number. The job then
 * makes its call again (SA_RESTART, or its own retry after EINTR, as Python's and most
 * libraries' do). Under a timer firing every 50 µs that left thousands of descriptors
 * in 1,800 opens, and the job ran out of them.
 *
 * So a stray is remembered (our copy of its open file, kept), and the same thread's
 * next open that would install the same file is answered with the stray's number
 * instead of a new one, if it is still the very file (kcmp), unread (offset 0), with
 * the same status and close-on-exec flags: then it is what a fresh open would have
 * given. A job that gives up after EINTR, or execs first, keeps its stray; a table
 * entry is let go when the number no longer holds our file or the table is full.
 *
 * An answer can also be lost without our knowing: when the signal woke the job just
 * before our answer came, the kernel accepts the answer and the job still leaves its
 * wait as interrupted (seccomp_do_user_notification returns the wait's error whatever
 * the state; Linux 6.18). Only an install and answer made in one step
 * (SECCOMP_ADDFD_FLAG_SEND) cannot be split so. So a thread once seen interrupted is
 * marked, and from then on its installs, and every answer with a stray's number, are
 * made in one step, on whichever CPU the kernel wakes it: a job that signals hit pays
 * the slower hand-off, one that they never hit keeps the fast one. What remains is an
 * answer lost before the thread's first interruption was seen (one run under a 50 µs
 * timer, before the marks: 1 silent loss against about 700 interruptions seen).
 *
 * The other cure, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, keeps signals out of the
 * wait altogether, and so makes a job stuck on a hung download deaf to all but SIGKILL
 * until its deadline. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

void stray_init(pc_tracer *t)
{
    pthread_mutex_init(&t->stray_lock, NULL);
    for (int i = 0; i < PC_STRAYS; i++)
        t->strays[i].ours = -1;
}

static void forget(pc_tracer *t, stray_fd *s)
{
    close(s->ours);
    s->ours = -1;
    __atomic_fetch_sub(&t->nstrays, 1, __ATOMIC_RELAXED);
}

void stray_free(pc_tracer *t)
{
    for (int i = 0; i < PC_STRAYS; i++)
        if (t->strays[i].ours >= 0)
            forget(t, &t->strays[i]);
}

void stray_put(pc_tracer *t, pid_t tid, int fd, int file, int cloexec)
{
    if (t->no_kcmp) /* it could never be told from a file the job put at its number */
        return;
    int ours = fcntl(file, F_DUPFD_CLOEXEC, 0);
    if (ours < 0)
        return;
    pthread_mutex_lock(&t->stray_lock);
    stray_fd *slot = NULL;
    for (int i = 0; i < PC_STRAYS; i++) {
        stray_fd *s = &t->strays[i];
        if (s->ours >= 0 && s->tid == tid && s->fd == fd) /* its number, taken again */
            forget(t, s);
        if (s->ours < 0) { /* a free slot, else the least recently put */
            if (!slot || slot->ours >= 0)
                slot = s;
        } else if (!slot || (slot->ours >= 0 && s->used < slot->used)) {
            slot = s;
        }
    }
    if (slot->ours >= 0) /* the oldest goes: its job keeps the descriptor */
        forget(t, slot);
    *slot = (stray_fd){.ours = ours, .fd = fd, .tid = tid, .cloexec = cloexec,
                       .used = ++t->stray_clock};
    __atomic_fetch_add(&t->nstrays, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&t->stray_lock);
}

/* whether the stray is what installing `file` anew would give */
static int same_as_new(pc_tracer *t, const stray_fd *s, int file, int cloexec,
                       const struct stat *st)
{
    struct stat was;
    return s->cloexec == cloexec && fstat(s->ours, &was) == 0 && was.st_dev == st->st_dev &&
           was.st_ino == st->st_ino && fcntl(s->ours, F_GETFL) == fcntl(file, F_GETFL) &&
           lseek(s->ours, 0, SEEK_CUR) == 0 && pc_same_file(t, s->tid, s->fd, s->ours) == 1;
}

int stray_take(pc_tracer *t, pid_t tid, int file, int cloexec)
{
    if (!__atomic_load_n(&t->nstrays, __ATOMIC_RELAXED))
        return -1;
    struct stat st;
    if (fstat(file, &st) < 0)
        return -1;
    int n = -1;
    pthread_mutex_lock(&t->stray_lock);
    for (int i = 0; i < PC_STRAYS && n < 0; i++) {
        stray_fd *s = &t->strays[i];
        if (s->ours < 0 || s->tid != tid)
            continue;
        if (pc_same_file(t, tid, s->fd, s->ours) != 1) { /* closed or gone: no stray */
            forget(t, s);
            continue;
        }
        if (same_as_new(t, s, file, cloexec, &st) && dup2(s->ours, file) == file) {
            n = s->fd;
            forget(t, s);
        }
    }
    pthread_mutex_unlock(&t->stray_lock);
    return n;
}

void stray_mark(pc_tracer *t, pid_t tid)
{
    if (stray_marked(t, tid))
        return;
    pthread_mutex_lock(&t->stray_lock); /* the oldest mark goes: it only costs speed */
    unsigned i = t->next_interrupted++ % PC_INTERRUPTED;
    __atomic_store_n(&t->interrupted[i], tid, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&t->stray_lock);
}

int stray_marked(pc_tracer *t, pid_t tid)
{
    for (int i = 0; i < PC_INTERRUPTED; i++)
        if (__atomic_load_n(&t->interrupted[i], __ATOMIC_RELAXED) == tid)
            return 1;
    return 0;
}

/* A POSIX lock belongs to the process and the inode, not to a descriptor: closing any
 * descriptor of the file drops it. /proc/locks names the holder's thread group (in our
 * pid namespace) and the inode; the device is not compared (st_dev and the superblock's
 * differ on btrfs and overlayfs), so a lock on another file with the same inode number
 * counts too: that answer is then the number alone, which a signal can lose (as before
 * the marks), rare enough. The scan is bounded. */
int stray_posix_locked(pid_t tid, ino_t ino)
{
    pid_t tgid = tgid_of(tid);
    FILE *f = tgid > 0 ? fopen("/proc/locks", "re") : NULL;
    if (!f)
        return 1;
    char line[256];
    int locked = 0, lines = 0;
    while (!locked) {
        if (!fgets(line, sizeof line, f))
            break;
        if (++lines > 100000) { /* a lock table this big: not worth reading on */
            locked = 1;
            break;
        }
        const char *p = strstr(line, "POSIX ");
        int pid;
        unsigned long long inode;
        if (p && sscanf(p, "POSIX %*s %*s %d %*x:%*x:%llu", &pid, &inode) == 2 &&
            pid == tgid && inode == (unsigned long long)ino)
            locked = 1;
    }
    fclose(f);
    return locked;
}
