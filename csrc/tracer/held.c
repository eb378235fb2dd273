/* Held descriptors: the directories C installed in a job (an open answered from the
 * table, notify mode), kept open here so that a later call naming the job's descriptor
 * (getdents64, fstat, an openat or fstatat relative to it) learns what it is without
 * asking /proc.
 *
 * Before, each such call cost a readlink of /proc/<tid>/fd/<fd> (a walk of /proc and the
 * path's d_path), getdents64 also a pidfd_open, a pidfd_getfd and two closes, and a
 * relative call an lstat of the anchor: `find` over a published tree made 9 of our
 * system calls per call it stopped. Now one kcmp(KCMP_FILE) says whether the job's
 * descriptor is still the very file we installed (the same struct file: ADDFD installs
 * ours, a dup or a fork shares it); if it is, its name and kind are what we read once
 * when we installed it, and our descriptor shares its file position. Anything else (a
 * descriptor the job opened itself, one it closed and reused, kcmp refused): /proc, as
 * before. A descriptor is only ever taken for what it is, never for its number.
 *
 * What holding changes, and how it is kept from showing:
 *  - a lock of the open file (flock, OFD locks) would outlive the job's close: the job's
 *    flock and open-file fcntl locks stop (syscalls.py FAST_UNHOLD) and the copy is let
 *    go first (held_drop); where kcmp cannot tell, nothing is held at all;
 *  - regular files are never held (quota.py counts open files; leases; evicted space);
 *  - the name is the anchor's when we opened it: an anchor moved aside later (anchors.py
 *    finds it was not what we made) still stands for the /cvmfs directory it was opened
 *    as, where /proc would name its new place. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"

#ifndef SYS_kcmp /* headers older than the call */
#if defined(__x86_64__)
#define SYS_kcmp 312
#else
#define SYS_kcmp 272 /* aarch64's generic table */
#endif
#endif
#define KCMP_FILE 0

int pc_same_file(pc_tracer *t, pid_t tid, int fd, int ours)
{
    long r = syscall(SYS_kcmp, (long)t->held_self, (long)tid, KCMP_FILE, (long)ours, (long)fd);
    if (r < 0)
        return -errno;
    return r == 0;
}

void held_init(pc_tracer *t)
{
    pthread_mutex_init(&t->held_lock, NULL);
    t->held_self = getpid(); /* the supervisor never forks to go on (spawn.c execs) */
    for (int i = 0; i < PC_HELD; i++)
        t->held[i].ours = -1;
    /* nothing is held where kcmp cannot say what a copy is the same as (no kcmp, or a
     * seccomp profile refusing it, as container runtimes' do): a copy we could not
     * drop at the job's flock would keep its lock after its close */
    int probe = open("/", O_PATH | O_CLOEXEC);
    if (probe < 0 || pc_same_file(t, t->held_self, probe, probe) != 1)
        t->no_kcmp = 1;
    if (probe >= 0)
        close(probe);
}

/* A slot let go (t->held_lock held, or none left to race: held_free). */
static void forget(held_fd *h)
{
    close(h->ours);
    free(h->name);
    h->ours = -1;
    h->name = NULL;
}

void held_free(pc_tracer *t)
{
    for (int i = 0; i < PC_HELD; i++)
        if (t->held[i].ours >= 0)
            forget(&t->held[i]);
}

/* The PC_HELD_WAYS slots where descriptor number `fd` may be held. */
static held_fd *set_of(pc_tracer *t, int fd)
{
    return &t->held[(fd % (PC_HELD / PC_HELD_WAYS)) * PC_HELD_WAYS];
}

/* Where (tid, fd) goes (t->held_lock held), emptied: the same task's slot of that
 * number is stale (its number was free for the new one), else a free slot, else the
 * least recently used. */
static held_fd *slot_for(pc_tracer *t, pid_t tid, int fd)
{
    held_fd *set = set_of(t, fd), *slot = NULL;
    for (int i = 0; i < PC_HELD_WAYS && !slot; i++)
        if (set[i].ours >= 0 && set[i].fd == fd && set[i].tid == tid)
            slot = &set[i];
    for (int i = 0; i < PC_HELD_WAYS && !slot; i++)
        if (set[i].ours < 0)
            slot = &set[i];
    if (!slot) {
        slot = &set[0];
        for (int i = 1; i < PC_HELD_WAYS; i++)
            if (set[i].used < slot->used)
                slot = &set[i];
    }
    if (slot->ours >= 0)
        forget(slot);
    return slot;
}

void held_put(pc_tracer *t, pid_t tid, int fd, int ours)
{
    /* directories only: a regular file held would look in use to the cache's quota
     * (quota.py counts open files), keep an evicted object's space, and make a lease
     * on another open of it fail (its read count); a directory's descriptor is what
     * relative calls and getdents64 name again and again */
    struct stat st;
    /* its name as the kernel shows it, exactly what a readlink of the job's would say */
    char link[64], name[PC_PATH_MAX + 1];
    snprintf(link, sizeof link, "/proc/self/fd/%d", ours);
    ssize_t n = -1;
    if (fd >= 0 && !__atomic_load_n(&t->no_kcmp, __ATOMIC_RELAXED) && fstat(ours, &st) == 0 &&
        S_ISDIR(st.st_mode))
        n = readlink(link, name, sizeof name);
    char *copy = n > 0 && (size_t)n < sizeof name ? strndup(name, (size_t)n) : NULL;
    if (!copy) {
        close(ours);
        return;
    }
    pthread_mutex_lock(&t->held_lock);
    held_fd *slot = slot_for(t, tid, fd);
    *slot = (held_fd){.ours = ours, .fd = fd, .tid = tid, .name = copy, .name_len = (int)n,
                      .used = ++t->held_clock};
    pthread_mutex_unlock(&t->held_lock);
}

int held_name(pc_tracer *t, pid_t tid, int fd, char *out, size_t max, int *ours)
{
    if (fd < 0 || __atomic_load_n(&t->no_kcmp, __ATOMIC_RELAXED))
        return -1;
    int found = -1;
    pthread_mutex_lock(&t->held_lock);
    held_fd *set = set_of(t, fd);
    for (int i = 0; i < PC_HELD_WAYS && found < 0; i++) {
        held_fd *h = &set[i];
        /* another file now, or a task kcmp may not look at (/proc may): not this one */
        if (h->ours < 0 || h->fd != fd || (size_t)h->name_len >= max ||
            pc_same_file(t, tid, fd, h->ours) != 1)
            continue;
        memcpy(out, h->name, (size_t)h->name_len + 1);
        *ours = h->ours; /* valid on the notification thread, which alone closes them */
        h->used = ++t->held_clock;
        found = h->name_len;
    }
    pthread_mutex_unlock(&t->held_lock);
    return found;
}

int held_renamed(pc_tracer *t, pid_t tid, int fd, const char *name, int len, int *ours)
{
    if (fd < 0 || len <= 0 || __atomic_load_n(&t->no_kcmp, __ATOMIC_RELAXED))
        return 0;
    int found = 0;
    pthread_mutex_lock(&t->held_lock);
    for (int i = 0; i < PC_HELD && !found; i++) {
        held_fd *h = &t->held[i];
        if (h->ours < 0 || h->name_len != len || memcmp(h->name, name, (size_t)len) != 0 ||
            pc_same_file(t, tid, fd, h->ours) != 1)
            continue;
        held_fd moved = *h;
        h->ours = -1; /* moved, not let go */
        h->name = NULL;
        held_fd *slot = slot_for(t, tid, fd);
        moved.fd = fd;
        moved.tid = tid;
        moved.used = ++t->held_clock;
        *slot = moved;
        *ours = moved.ours;
        found = 1;
    }
    pthread_mutex_unlock(&t->held_lock);
    return found;
}

void held_drop(pc_tracer *t, pid_t tid, int fd)
{
    if (fd < 0 || __atomic_load_n(&t->no_kcmp, __ATOMIC_RELAXED))
        return;
    pthread_mutex_lock(&t->held_lock);
    /* under any number: the job may lock a dup of what we installed; all of them when
     * kcmp may not look at this task (an undumpable one); a bad descriptor or a task
     * gone locks nothing */
    int same[PC_HELD], all = 0;
    for (int i = 0; i < PC_HELD; i++) {
        same[i] = t->held[i].ours >= 0 ? pc_same_file(t, tid, fd, t->held[i].ours) : 0;
        if (same[i] < 0 && same[i] != -EBADF && same[i] != -ESRCH) {
            all = 1;
            break;
        }
    }
    for (int i = 0; i < PC_HELD; i++)
        if (t->held[i].ours >= 0 && (all || same[i] == 1))
            forget(&t->held[i]);
    pthread_mutex_unlock(&t->held_lock);
}
