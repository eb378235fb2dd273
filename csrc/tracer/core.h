/* Internals of the supervisor core shared by its C files (not part of the API). */
#ifndef PARROT_CVMFS_CORE_H
#define PARROT_CVMFS_CORE_H

#define _GNU_SOURCE
#include "tracer.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/user.h>

/* ---- registers (tracee.c) ------------------------------------------------------------ */

#if defined(__x86_64__)
typedef struct user_regs_struct pc_regs;
#define RED_ZONE 128
#elif defined(__aarch64__)
#include <asm/ptrace.h>
typedef struct {
    struct user_pt_regs r;
    long nr;
} pc_regs;
#define RED_ZONE 0
#else
#error "parrot-cvmfs supports x86_64 (and aarch64)"
#endif

int get_regs(pid_t tid, pc_regs *r);
int set_regs(pid_t tid, const pc_regs *r);
long reg_nr(const pc_regs *r);
int64_t reg_ret(const pc_regs *r);
uint64_t reg_sp(const pc_regs *r);
void set_sp(pc_regs *r, uint64_t v);
uint64_t get_arg(const pc_regs *r, int i);
void set_arg(pc_regs *r, int i, uint64_t v);
void set_ret(pc_regs *r, int64_t v);
/* at a seccomp stop: do not run the call, make `result` its result (no exit stop) */
int skip_call(pid_t tid, pc_regs *r, int64_t result);
/* at an exit stop: the saved argument registers back, the result kept */
void restore_args(pc_regs *cur, const pc_regs *saved);
/* at an exit stop: the registers of the call's entry, set to make the same call again */
void restart_call(pc_regs *cur, const pc_regs *saved);

int read_string(pid_t tid, uint64_t addr, char *buf, size_t max);
int proc_link(pid_t tid, const char *what, long fd, char *out, size_t max);

/* ---- a call being decided: from a ptrace stop or a seccomp notification --------------- */

typedef struct {
    pid_t tid;
    int nr;
    int rule;
    const pc_rule *r;
    uint64_t args[6];
    int notify;        /* 1: a seccomp user notification, 0: a ptrace stop */
    uint64_t notif_id;
    pc_regs *regs;     /* ptrace stops only */
    /* from the held descriptors (held.c), for the call's first descriptor argument */
    int base_dir;   /* 1: a held directory (held.c); 0: unknown */
    int held_ours;  /* our descriptor of the same file, plus one (0: none); notify only */
} pc_call;

/* ---- the answer table (answers.c) ---------------------------------------------------- */

typedef struct {
    uint64_t hash;
    char *key; /* "F/path" or "N/path" */
    int err;
    /* err, stat... below were set by pc_table_put; an 'N' answer with `nolink` (the
     * path's last component is no symlink, or it fails before it) holds for 'F' too */
    unsigned char has_answer, has_stat, has_access, is_link, nolink;
    unsigned char open_is_dir;
    unsigned char served; /* an open was answered from it since pc_table_take_served */
    unsigned char stat[sizeof(struct stat)]; /* 144 bytes on x86_64, 128 on aarch64; the
                                              * struct statx is derived from it */
    int8_t access[8];
    char *link;
    int link_len;
    char *open_target; /* backing file of a read-only open, if Python allowed one */
    int open_len;
    char *exec_target;  /* an execve's recipe ('E' records): the file exec'd in its place, */
    char *exec_logical; /* and what /proc/self/exe is to show; for a script, */
    char *exec_words;   /* the words its `#!` chain puts before its path in argv (each */
    int exec_words_len; /* NUL-terminated; PC_EXEC_WORDS_MAX bytes at most), and their */
    int exec_nwords;    /* number (0: a program exec'd with its own argv) */
    int exec_err;       /* or the errno an execve of it fails with (no recipe then) */
    char *cwd;          /* getcwd's answer in this directory (an anchor): 'C' records */
    unsigned char *statfs; /* an 'S' record: the struct statfs of one file system (memo.py) */
    unsigned char *dents; /* a directory's linux_dirent64 records, '.' and '..' first */
    size_t dents_len;
    unsigned char *xattrs; /* see pc_table_put_xattrs; NULL: not known */
    size_t xattrs_len;
    unsigned char *xnames; /* listxattr's answer; NULL: not known */
    size_t xnames_len;
} answer;

/* callers hold t->answers_lock (read) */
answer *answer_find(pc_tracer *t, char follow, const char *path, size_t len);
/* the key of the 'S' record for file system `dev` (memo.py statfs_record makes the same) */
int statfs_key(dev_t dev, char *out, size_t len);
/* the answer of a path call of kind `fast` (PC_FAST_*): the 'F' one, or for `follow`,
 * where that has not what the call needs, an 'N' one that holds for both (nolink) */
answer *answer_for_path(pc_tracer *t, int follow, const char *path, size_t len, int fast);
/* the struct statx that structs.pack_statx makes for the attributes of a struct stat */
void statx_of_stat(const struct stat *s, unsigned char out[256]);

/* ---- per-task state of a rewritten call in flight (tasks.c) ---------------------------- */

typedef struct {
    pid_t tid; /* 0: empty slot */
    int report_exit;
    int is_exec;
    int reopen; /* an open C pointed at a cache file: made again if the file is gone */
    pc_regs saved;
    int at_exit; /* `cur` holds the registers of its exit stop, read once there */
    pc_regs cur;
    char *execfn;      /* an exec: the program's path as it gave it (AT_EXECFN), */
    char *exe_logical; /* and for one C made, what /proc/self/exe is to show */
} task_state;

/* ---- what passes between the threads (tracer.c) ---------------------------------------- */

/* An event waiting for Python. */
typedef struct {
    int64_t since; /* CLOCK_MONOTONIC ns: handed over */
    int given_up;  /* C answered the call itself meanwhile (see give_up in tracer.c) */
    pc_event ev;   /* allocated only up to `path` for the kinds that carry no paths */
} queued;

/* The event Python took last, until it asks for the next one. */
typedef struct {
    int active;
    int kind, notify;
    pid_t tid;
    uint64_t token;         /* ev.notif_id: a notification's id, or a ptrace stop's number */
    int64_t since, taken;   /* CLOCK_MONOTONIC ns */
    int answered;           /* ANSWER_* */
    const pc_event *ev;     /* Python's copy */
} current;

enum { ANSWER_NONE = 0, ANSWER_BY_C = 1, ANSWER_BY_PYTHON = 2 };

/* How Python settles a ptrace stop; carried out by the tracer thread (the only one
 * ptrace lets resume the job's tasks). */
enum { CMD_RESUME = 1, CMD_SKIP, CMD_SET_ARGS, CMD_FINISH_EXIT, CMD_RESTART_EXIT };

typedef struct {
    int op;
    pid_t tid;
    int narg;
    int args[6];
    uint64_t values[6];
    int report_exit, is_exec, set_result;
    int64_t result;
} command;

/* An exec C made, until Python takes its logical program (pc_take_exec); Python takes
 * one at each exec event, so few wait (a bound in case none does). */
#define PC_EXECS_MAX 4096
typedef struct {
    pid_t tid;
    char *logical;
} exec_made;

/* ---- the tracer --------------------------------------------------------------------- */

#define PC_MOUNT "/cvmfs"
/* the first byte of a guest's relative keys (examine.c guest_relative_key): no absolute
 * path's */
#define PC_RELATIVE_KEY '\001'
#define PC_ANSWERS_MIN (1 << 12)
#define PC_ANSWERS_MAX (1 << 21) /* slots; then the table starts over */
#define PC_ANSWERS_BYTES (96u << 20) /* memory; then the table starts over too */

/* a descriptor C installed in the job, held (held.c) */
typedef struct {
    int ours; /* -1: a free slot */
    int fd;   /* its number in the job, when installed */
    pid_t tid;
    int name_len;
    char *name; /* what readlink of it says */
    uint64_t used;
} held_fd;
#define PC_HELD 64
#define PC_HELD_WAYS 4

/* a descriptor installed in a job whose answer a signal kept from it (stray.c) */
typedef struct {
    int ours; /* our copy of its open file; -1: a free slot */
    int fd;   /* its number in the job */
    pid_t tid;
    int cloexec;
    uint64_t used;
} stray_fd;
#define PC_STRAYS 8
#define PC_INTERRUPTED 64 /* threads remembered as ones signals interrupt */

struct pc_tracer {
    pc_rule rules[PC_MAX_RULES];
    int nrules;
    int16_t rule_of_nr[1024];
    char *prefixes[2][PC_MAX_PREFIXES];
    size_t prefix_len[2][PC_MAX_PREFIXES];
    int prefix_fd[2][PC_MAX_PREFIXES]; /* O_PATH descriptors of the prefix directories */
    int nprefix[2];
    int no_openat2; /* the kernel has no openat2 (before 5.6) */
    int translate;  /* pc_set_translate: every path is the guest's, to be translated */
    void *late_filter; /* pc_set_late_filter: installed by the job after the hand-over */
    int late_filter_len;
    struct pc_mounts *mounts; /* pc_add_mount, pc_set_plain (passthrough.c); NULL: none */
    pthread_mutex_t execs_lock; /* execs: filled by the tracer thread, taken by Python */
    exec_made *execs;
    size_t nexecs;
    /* ptrace side: touched by the tracer thread only */
    task_state *tasks;
    size_t tasks_cap, tasks_used;
    long spin;
    uint64_t stops_handed; /* numbers of ptrace stops handed to Python */
    long stops_waiting;    /* of them, not answered yet */
    /* shared with the notification thread */
    pthread_rwlock_t answers_lock;
    answer **answers; /* open addressing, NULL: empty slot */
    size_t answers_cap, answers_used;
    size_t answers_bytes; /* what the answers hold, roughly (their allocations) */
    pc_stats stats; /* updated with atomic adds */
    uint64_t by_rule[PC_MAX_RULES + 1][3]; /* see pc_get_rule_stats; atomic adds */
    /* the tracer thread (spawn.c starts it, tracer.c runs it) */
    pthread_t tracer;
    int tracer_started;
    void *spawning;      /* spawn.c's request, while pc_spawn waits for the thread */
    int tracer_wake[2];  /* pipe: a command from Python, or a signal to the supervisor */
    int tracer_sleeping; /* it waits in poll: whoever gives it work writes tracer_wake */
    int python_wake[2];  /* pipe: an event for Python (see hand_over) */
    int python_sleeping;
    int python_posted;   /* Python answered a ptrace stop since it last took an event */
    int last_to_python;  /* tracer thread: the last stop went to Python */
    int python_cpu, tracer_cpu; /* where each thread ran last (see spin_for) */
    int sigchld_fd;      /* signalfd for SIGCHLD: a traced task changed state */
    sigset_t saved_mask; /* the caller's signal mask, the job's */
    pthread_mutex_t cmdlock;
    command *cmds;
    size_t ncmds, cmds_cap;
    int cmds_waiting; /* atomic: commands wait (read without the lock) */
    /* the job */
    pid_t root;
    int root_pidfd;  /* -1: signals go to the pid, while the root is not reaped */
    int root_status; /* wait status, once root_done */
    int root_done;
    /* termination signals (see spawn.c forward_signals and give_up) */
    int signal_pending;    /* set by the handler, taken by the tracer thread */
    int signal_name;       /* the last one */
    int64_t signal_at;     /* CLOCK_MONOTONIC ns */
    int64_t gone_at;       /* no task left, NOCHILD queued */
    int python_finished;   /* Python took NOCHILD */
    /* notification mode */
    int listener;   /* seccomp listener fd, -1 in ptrace-only mode */
    pthread_t thread;
    int thread_started;
    /* events for Python: a ring that grows (each task has one stopped call at most) */
    pthread_mutex_t qlock;
    pthread_cond_t spawned; /* with qlock: the tracer thread has started the job */
    queued **queue;
    size_t qcap, qhead, qlen;
    int qwaiting; /* atomic copy of qlen, read without the lock */
    current cur;
    int quiet;      /* pc_set_quiet: task events are dropped */
    int quiet_exec; /* the root exec'd while quiet */
    /* descriptors C installed (held.c): put by the notification thread only */
    pthread_mutex_t held_lock;
    held_fd held[PC_HELD];
    uint64_t held_clock;
    pid_t held_self;
    int no_kcmp; /* the kernel has no kcmp: /proc always */
    /* descriptors a signal kept the job from learning (stray.c) */
    pthread_mutex_t stray_lock;
    stray_fd strays[PC_STRAYS];
    uint64_t stray_clock;
    int nstrays; /* atomic: read without the lock */
    pid_t interrupted[PC_INTERRUPTED]; /* atomic reads; written under stray_lock */
    unsigned next_interrupted;
};

#define STAT_ADD(t, field) __atomic_fetch_add(&(t)->stats.field, 1, __ATOMIC_RELAXED)
/* How a stopped call ended, counted against its rule (calls with no rule: the last row). */
#define OUTCOME(t, ri, col)                                                                \
    __atomic_fetch_add(&(t)->by_rule[(ri) >= 0 ? (ri) : PC_MAX_RULES][col], 1, __ATOMIC_RELAXED)
#define PASSED(t, ri) OUTCOME(t, ri, 0)
#define ANSWERED(t, ri) OUTCOME(t, ri, 1)
#define TO_PYTHON(t, ri) OUTCOME(t, ri, 2)

/* How long one thread waits for the other before it sleeps, in ptrace mode, where the
 * tracer thread and Python's take turns at every call handled in Python: a thread
 * woken on an idle CPU costs 20-50 us where idle CPUs halt (virtual machines), twice
 * per call. Only while the two run on different CPUs (see spin_for); yielding instead
 * cost 3 ms a call where another process shared the CPU (it took whole time slices). */
#define PYTHON_SPIN_NS 50000LL
#define TRACER_SPIN_NS 150000LL
#define NOTIFY_SPIN_NS 200000LL /* notify mode: the next ptrace stop (tracer.c) */

/* examine.c: whether a call concerns us (fills the event's paths), the fast path, and
 * the event for Python of a call it leaves */
void held_init(pc_tracer *t);
void held_free(pc_tracer *t);
/* `ours` (taken: held or closed) was installed in task `tid` as its descriptor `fd` */
void held_put(pc_tracer *t, pid_t tid, int fd, int ours);
/* what task `tid`'s descriptor `fd` is, if it is one we hold (a directory): its name's
 * length (the name into `out`) and our descriptor of it; -1 if not held */
int held_name(pc_tracer *t, pid_t tid, int fd, char *out, size_t max, int *ours);
/* task `tid`'s `fd`, named `name` by /proc, is a held file under another number (a dup:
 * fts moves each directory's descriptor up): held under this one now; 1 if so */
int held_renamed(pc_tracer *t, pid_t tid, int fd, const char *name, int len, int *ours);
/* task `tid` locks its `fd` (flock, an open-file lock or lease): our copy of that file
 * is let go, so that the job's close releases the lock as it would natively */
void held_drop(pc_tracer *t, pid_t tid, int fd);
/* whether task `tid`'s descriptor `fd` is the open file of our `ours`: 1, 0 or -errno */
int pc_same_file(pc_tracer *t, pid_t tid, int fd, int ours);
void stray_init(pc_tracer *t);
void stray_free(pc_tracer *t);
/* `file` was installed in task `tid` as its `fd`, but the answer did not reach it */
void stray_put(pc_tracer *t, pid_t tid, int fd, int file, int cloexec);
/* the number of a stray of task `tid` that installing `file` would duplicate, `file`
 * made a copy of its open file; -1 if none */
int stray_take(pc_tracer *t, pid_t tid, int file, int cloexec);
/* task `tid` had a call of ours ended by a signal: its installs are made atomically */
void stray_mark(pc_tracer *t, pid_t tid);
int stray_marked(pc_tracer *t, pid_t tid);
/* whether the process of `tid` may hold a POSIX lock on inode `ino` (/proc/locks; 1
 * when it cannot be told) */
int stray_posix_locked(pid_t tid, ino_t ino);
/* the thread group of a task (/proc), 0 if it is gone */
pid_t tgid_of(pid_t tid);
/* set by a thread that blocks every signal for its whole life */
extern __thread int pc_all_signals_blocked;
int examine_call(pc_tracer *t, pc_call *c, pc_event *ev);
int fast_answer(pc_tracer *t, pc_call *c, pc_event *ev);
void fill_event(pc_tracer *t, pc_event *ev, const pc_call *c);

/* respond.c: every way of finishing a call, whichever way it arrived */
int respond_result(pc_tracer *t, pc_call *c, int64_t result);
/* `size`: what the backing file of a regular file must hold (its kept stat answer);
 * -1 for a directory's anchor; OPEN_HOST: `target` is a host regular file (a file bind's
 * source), opened following no link */
#define OPEN_HOST (-2)
int respond_open(pc_tracer *t, pc_call *c, const char *target, int len, uint64_t flags,
                 int64_t size);
/* open a file of our cache (anchor, object, alias) following no link below the cache
 * directory it is in, the last component included; -errno (-EXDEV if `path` is in none
 * of them) */
int open_backing(pc_tracer *t, const char *path, int flags);
/* reopen: an open pointed at a cache file, made again if the file goes before the
 * kernel opens it (see tracer.c on_exit_stop) */
int rewrite_args(pc_tracer *t, pid_t tid, pc_regs *regs, int narg, const int *args,
                 const uint64_t *values, int report_exit, int is_exec, int reopen);
/* at the exit stop of a rewritten call: its registers back (and `result`), or the call
 * made again; at a seccomp stop: the call skipped with `result` (1 if done) */
int finish_exit_stop(pc_tracer *t, pid_t tid, int set_result, int64_t result);
int restart_exit_stop(pc_tracer *t, pid_t tid);
int skip_stop(pid_t tid, int64_t result);
/* an execve from a kept recipe (a ptrace stop): `target` exec'd in place of the path
 * (if it is still a program of ours), `logical` kept for /proc/self/exe; 1 if done */
#define PC_EXEC_WORDS_MAX 1024 /* a `#!` line is 256 bytes at most (BINPRM_BUF_SIZE) */
int respond_exec(pc_tracer *t, pc_call *c, const char *target, const char *logical,
                 const char *words, int nwords);
/* at the exec event: AT_EXECFN made the path the program gave, and the logical program
 * of an exec C made kept for Python (1: kept); the task's state is then dropped */
int exec_done(pc_tracer *t, task_state *s, pid_t tid);

/* tasks.c: the state of rewritten calls in flight, per task */
task_state *task_find(pc_tracer *t, pid_t tid);
task_state *task_add(pc_tracer *t, pid_t tid);
void task_del(pc_tracer *t, pid_t tid);

/* queue.c: the events for Python (any thread), waking the tracer thread */
void hand_over(pc_tracer *t, const pc_event *ev);
void wake_tracer(pc_tracer *t);
int64_t now_ns(void);

/* tracer.c: the tracer thread's loop, once the job runs */
void tracer_serve(pc_tracer *t);

/* Start a detached thread: 0, or the error number of pthread_create. */
static inline int start_detached(pthread_t *thread, void *(*main)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(thread, &attr, main, arg);
    pthread_attr_destroy(&attr);
    return rc;
}

/* passthrough.c: paths below a host bind shown at its own place, where the kernel's
 * answer is the guest's (1: the call passes through). `writes`: the call may change
 * what the path names. */
int passthrough_path(pc_tracer *t, const pc_call *c, const char *path, const char *base,
                     int base_len, int writes);
/* The host source of the file bind whose destination is exactly `path` (PC_MOUNT_FILE),
 * or NULL. */
const char *file_bind(pc_tracer *t, const char *path, size_t len);
/* a host location (cwd, a descriptor's target) the guest spells the same, with no
 * mount point below it */
int passthrough_dir(pc_tracer *t, const pc_call *c, const char *host, size_t len);
/* A place pc_add_odd_place named: its spellings are per process, Python's. */
int odd_place(pc_tracer *t, const char *host, size_t len);
void mounts_free(pc_tracer *t);

/* notify.c */
int notify_start(pc_tracer *t, int listener);

#endif
