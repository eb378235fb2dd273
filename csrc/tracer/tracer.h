/* parrot-cvmfs supervisor core: the event loop and the per-call fast path.
 * See tracer.c for the contract with the Python side.
 *
 * Calls between the files go one way (no file calls one that calls it back):
 *   spawn.c   -> tracer.c, notify.c, queue.c     (starting the job and the threads)
 *   tracer.c  -> examine.c, respond.c, queue.c, tasks.c, answers.c, tracee.c
 *   notify.c  -> examine.c, respond.c, queue.c   (the notification thread's loop)
 *   examine.c -> respond.c, answers.c, tracee.c  (whether a call is ours; the fast path)
 *   respond.c -> tasks.c, tracee.c               (every way of finishing a call)
 *   queue.c, answers.c, tasks.c, tracee.c, passthrough.c call no other file (events
 *   for Python and its answers; the answer table; rewritten calls in flight; a task's
 *   memory and registers; the guest's host binds).
 *
 * The part between the cdef markers is what build_core.py hands to cffi: plain
 * declarations, enums and `#define NAME <literal>` only. */
#ifndef PARROT_CVMFS_TRACER_H
#define PARROT_CVMFS_TRACER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* cdef: begin */
#define PC_PATH_MAX 4096
#define PC_MAX_RULES 128
#define PC_MAX_PREFIXES 8

/* How a traced system call takes its arguments (rule kinds). */
enum {
    PC_KIND_PATH = 1,   /* [dirfd,] path: interesting if the path may be under /cvmfs */
    PC_KIND_PATH2 = 2,  /* two paths (rename, link): interesting if either may be */
    PC_KIND_FD = 3,     /* fd: interesting if it refers to something in our cache */
    PC_KIND_CWD = 4,    /* getcwd: interesting if the cwd is an anchor directory */
    PC_KIND_SOCKADDR = 5, /* bind: a struct sockaddr_un at `path_arg` of `size_arg` bytes,
                           * interesting as its path would be */
    PC_KIND_SOCKNAME = 6, /* getsockname/getpeername on fd `path_arg`: interesting in a
                           * guest namespace only (pc_set_translate) and on an AF_UNIX
                           * socket, whose addresses are shown in guest terms */
    PC_KIND_SOCKMSG = 7,  /* sendmsg: the msg_name of the struct msghdr at `path_arg`,
                           * interesting as a PC_KIND_SOCKADDR address */
    PC_KIND_SOCKFROM = 8, /* accept, accept4, recvfrom, recvmsg on fd `path_arg`: an
                           * address the kernel fills at `out_arg` (its socklen_t at
                           * `size_arg`; size_arg -1: out_arg is a struct msghdr holding
                           * both), interesting in a guest namespace only, for a buffer
                           * given on an AF_UNIX socket */
};

/* What the C-side answer table can answer for a rule. */
enum {
    PC_FAST_NONE = 0,
    PC_FAST_STAT = 1,     /* struct stat at arg `out_arg` */
    PC_FAST_STATX = 2,    /* struct statx at arg `out_arg` */
    PC_FAST_ACCESS = 3,   /* mode at arg `mode_arg` */
    PC_FAST_READLINK = 4, /* buffer at `out_arg`, size at `size_arg` */
    PC_FAST_OPEN = 5,     /* read-only open: the path is pointed at the backing file */
    PC_FAST_GETDENTS = 6, /* getdents64 of a directory anchor: buffer `out_arg`, size `size_arg` */
    PC_FAST_GETXATTR = 7, /* name at `attr_arg`, value buffer `out_arg`, size `size_arg` */
    PC_FAST_LISTXATTR = 8, /* buffer `out_arg`, size `size_arg` */
    PC_FAST_STATFS = 9,    /* a path's error only (ENOENT, ENOTDIR...): what statfs
                            * reports of a file system is Python's (the cache's usage) */
    PC_FAST_EXEC = 10,     /* execve of a program whose recipe Python kept: the file to
                            * exec in its place (ptrace stops; see pc_take_exec), or
                            * the errno Python failed it with */
    PC_FAST_GETCWD = 11,   /* getcwd in an anchor: its spelling Python taught ('C'
                            * records), buffer `out_arg`, size `size_arg` */
    PC_FAST_UNHOLD = 12,   /* flock, open-file fcntl locks: a held copy of the file is
                            * let go (held.c), the kernel runs the call */
};

typedef struct {
    int nr;
    int kind;
    int dirfd_arg;      /* -1: AT_FDCWD */
    int path_arg;       /* path, or the fd for PC_KIND_FD */
    int dirfd2_arg;
    int path2_arg;
    int flags_arg;      /* -1: none */
    uint64_t empty_flag;    /* flag bit meaning "AT_EMPTY_PATH" (0: none) */
    uint64_t nofollow_flag; /* flag bit meaning "do not follow the last link" */
    uint64_t follow_flag;   /* flag bit meaning "follow the last link" (linkat) */
    int follow_default; /* follow the last link when no flag says otherwise */
    int proc_sensitive; /* /proc/<pid>/{exe,cwd,fd} paths concern us (readlink, stat) */
    int fast;           /* PC_FAST_* */
    int out_arg;
    int mode_arg;
    int size_arg;
    int attr_arg;       /* an extended attribute's name */
    int bare_fd;        /* PC_BARE_*: a path that names the dirfd without AT_EMPTY_PATH */
} pc_rule;

/* Paths that name the dirfd itself without AT_EMPTY_PATH. */
enum {
    PC_BARE_EMPTY = 1, /* "" (readlinkat, Linux 2.6.39) */
    PC_BARE_NULL = 2,  /* NULL (utimensat: futimens) */
};

/* Events handed to Python by pc_next(). */
enum {
    PC_EV_SYSCALL = 1,      /* a seccomp stop C did not settle; the task waits for Python */
    PC_EV_SYSCALL_EXIT = 2, /* exit of a rewritten call whose exit Python asked to see */
    PC_EV_NEWTASK = 3,      /* fork/vfork/clone: tid (parent), other (child), aux (kind) */
    PC_EV_EXEC = 4,         /* a successful exec: tid, other (the former tid), aux (1: C
                             * made it from a kept recipe and holds its program's name) */
    PC_EV_EXIT = 5,         /* a task is gone: tid, status (wait status) */
    PC_EV_NOCHILD = 6,      /* nothing left to trace */
};

typedef struct {
    int kind;
    int notify;         /* PC_EV_SYSCALL only: 1 if it came as a seccomp notification */
    uint64_t notif_id;  /* the notification's id, or the ptrace stop's number */
    pid_t tid;
    pid_t other;
    int aux;
    int rule;           /* index into the rules table */
    int nr;
    uint64_t args[6];
    uint64_t sp;        /* scratch space for rewritten arguments starts below this */
    int64_t ret;        /* PC_EV_SYSCALL_EXIT: the call's result */
    int status;
    int path_err;       /* 0, or -errno reading the path (e.g. -EFAULT) */
    int path2_err;
    int path_len;
    int path2_len;
    int base_len;       /* 0: the path is absolute or the base is irrelevant */
    int base2_len;
    int empty_path;     /* the call uses AT_EMPTY_PATH on its dirfd */
    int key_len;        /* PC_EV_SYSCALL: the answer table's key of `path`, -1 if none */
    char path[PC_PATH_MAX + 1];
    char path2[PC_PATH_MAX + 1];
    char base[PC_PATH_MAX + 1];  /* cwd or dirfd target for a relative path, or the fd target */
    char base2[PC_PATH_MAX + 1];
    /* the path as the table keys it: itself when absolute; for a path relative to a
     * directory anchor, its /cvmfs spelling (examine.c relative_key) */
    char key[PC_PATH_MAX + 1];
} pc_event;

typedef struct {
    uint64_t stops;         /* seccomp stops */
    uint64_t exit_stops;
    uint64_t signals;
    uint64_t tasks;
} pc_stats;

typedef struct pc_tracer pc_tracer;

pc_tracer *pc_new(const pc_rule *rules, int nrules);
void pc_free(pc_tracer *t);
int pc_add_prefix(pc_tracer *t, int which, const char *prefix); /* 0: paths, 1: fd targets */
/* A guest namespace (--root, binds): every path of a path call, the cwd of getcwd and
 * every listing concern Python (or the answer table), not only /cvmfs spellings. */
void pc_set_translate(pc_tracer *t, int on);
/* A second seccomp program the job installs after handing over the listener (the rows
 * that stop sendmsg and the like: the hand-over is a sendmsg itself); copied. */
int pc_set_late_filter(pc_tracer *t, const void *filter, int filter_len);
/* The guest's mount table (passthrough.c), for paths the kernel may resolve itself:
 * each mount's guest destination and host (or /cvmfs) source. */
#define PC_MAX_MOUNTS 256
#define PC_MOUNT_PASS 1    /* a host directory at its own place: the kernel's answers hold */
#define PC_MOUNT_RO 2      /* read-only: writes are Python's (EROFS) */
#define PC_MOUNT_PRIVATE 4 /* `src` only: a host directory of ours (the overlay's upper
                            * layer), never passed through */
#define PC_MOUNT_FILE 8    /* a host regular file shown elsewhere (/etc/localtime, bound
                            * from the zoneinfo it links to): a read-only open of exactly
                            * `dst` opens `src` */
int pc_add_mount(pc_tracer *t, const char *dst, const char *src, int flags);
/* Which calls may pass through on such a path (per rule; default none): */
#define PC_PLAIN_READ 1  /* reads only (an open without write flags, access without W_OK) */
#define PC_PLAIN_WRITE 2 /* may change it: only on a writable mount */
int pc_set_plain(pc_tracer *t, int rule, int how);
/* A place (a host directory or an anchor, as the kernel names a cwd or dirfd there) that
 * a process entered by another of its guest paths than the first (a directory the guest
 * shows at two places): getcwd there and what is relative to it are Python's, which
 * knows each process's spelling, never a kept answer's or the kernel's. */
int pc_add_odd_place(pc_tracer *t, const char *host);
/* Start the job under the tracer thread (see tracer.c and spawn.c). */
pid_t pc_spawn(pc_tracer *t, const char *file, char *const argv[], char *const envp[],
               const void *filter, int filter_len, int notify, int *report_fd, char *err,
               int errlen);
int pc_spawn_failure(int report_fd, char *err, int errlen);
/* The next event for Python (it waits); Python is done with the one before. */
int pc_next(pc_tracer *t, pc_event *ev);
/* Answers to the ptrace stop Python took last (`token`: its ev.notif_id), carried out by
 * the tracer thread; -ESRCH if C answered it meanwhile (see give_up in tracer.c). */
int pc_resume(pc_tracer *t, pid_t tid, uint64_t token);
int pc_skip(pc_tracer *t, pid_t tid, uint64_t token, int64_t result);
int pc_set_args(pc_tracer *t, pid_t tid, uint64_t token, int narg, const int *args,
                const uint64_t *values, int report_exit, int is_exec);
int pc_finish_exit(pc_tracer *t, pid_t tid, uint64_t token, int set_result, int64_t result);
/* At the exit stop of a rewritten call: make the program run the call again, with its
 * own arguments (a new seccomp stop decides it afresh). */
int pc_restart_exit(pc_tracer *t, pid_t tid, uint64_t token);
/* Before Python answers a notification it took (`token`: its id): 0 if C already has. */
int pc_claim(pc_tracer *t, uint64_t token);
/* Whether C answered the event Python took last (it said so in one line). */
int pc_given_up(pc_tracer *t);
/* parrot_run's exit status: the root's (128+N if signal N killed it), 0 before its end. */
int pc_exit_code(pc_tracer *t);
int pc_notif_reply(pc_tracer *t, uint64_t id, int64_t result);
int pc_notif_continue(pc_tracer *t, uint64_t id);
/* `fd` installed in the program as the call's result (its number, or -errno); `give`:
 * ours is closed before the program runs on (the caller must not close it) */
int pc_notif_addfd(pc_tracer *t, uint64_t id, int fd, int cloexec, int tid, int give);
int pc_notif_valid(pc_tracer *t, uint64_t id);
int pc_notifying(pc_tracer *t);
ssize_t pc_read(pid_t tid, uint64_t addr, void *buf, size_t len);
ssize_t pc_write(pid_t tid, uint64_t addr, const void *buf, size_t len);
int pc_getfd(pid_t tid, int fd);
const pc_stats *pc_get_stats(pc_tracer *t);
/* How stopped calls ended, per rule (the order given to pc_new, then one row for calls
 * with no rule): resumed by C (not ours), answered from the C table, handed to Python.
 * `out` holds 3 * (nrules + 1) counts. */
void pc_get_rule_stats(pc_tracer *t, uint64_t *out);

/* The answer table: results Python computed, replayed by C for identical calls.
 * key: an absolute path as the program wrote it; follow: 1 or 0.
 * err: 0 if the entry exists, else a positive errno. */
int pc_table_put(pc_tracer *t, const char *key, int follow, int err, const void *stat_buf,
                 const int8_t *access_err, const char *link, int link_len);
int pc_table_put_open(pc_tracer *t, const char *key, int follow, const char *target, int is_dir);
/* the listing of the directory whose anchor is `key`: linux_dirent64 records whose d_off
 * is the index of the next record, so a descriptor's file position is its cursor */
int pc_table_put_dents(pc_tracer *t, const char *key, const void *records, size_t len);
/* a path's extended attributes: records name_len:u16 name value_len:u32 value, where
 * value_len PC_XATTR_PYTHON marks a name only Python can answer (cvmfs magic attributes)
 * and PC_XATTR_PREFIX a prefix ("user.") under which every name not listed is Python's */
#define PC_XATTR_PYTHON 0xFFFFFFFF
#define PC_XATTR_PREFIX 0xFFFFFFFE
int pc_table_put_xattrs(pc_tracer *t, const char *key, int follow, const void *blob, size_t len);
/* the answer of listxattr: the names, each NUL-terminated */
int pc_table_put_xnames(pc_tracer *t, const char *key, int follow, const void *names, size_t len);
/* many answers at once: records in memo.py's format, from memory or from an open file
 * past `offset`; returns how many were taken */
int pc_table_load(pc_tracer *t, const void *records, size_t len);
/* open a file of the cache as C opens those it serves (respond.c open_backing) */
int pc_open_backing(pc_tracer *t, const char *path, int flags);
/* After the exec event of `tid`: the logical program (what /proc/self/exe shows) of an
 * exec C made from a kept recipe, into buf (its length; 0: C made none, Python did). */
int pc_take_exec(pc_tracer *t, pid_t tid, char *buf, int len);
int pc_table_load_fd(pc_tracer *t, int fd, uint64_t offset);
void pc_table_clear(pc_tracer *t);
/* The backing files of the opens answered from the table since the last call, as
 * NUL-terminated paths in buf (as many as fit: call again until it returns 0). Python
 * records them as used in the cache's LRU, which only sees the opens it answers. */
size_t pc_table_take_served(pc_tracer *t, char *buf, size_t len);

/* The C start path (csrc/launcher/): the launcher starts the job from a start plan
 * (tracer/startplan.py) with no Python running, and Python, started in the same process
 * when a call needs it, adopts the running tracer. */
#define PC_MAX_MEMO 32
typedef struct {
    pc_tracer *tracer;
    pid_t root;
    int report_fd;
    int notify;
    int64_t memo_size[PC_MAX_MEMO]; /* the plan's memo files as C loaded them: the file's
                                     * size then, -1 if not loaded */
    char plan[PC_PATH_MAX + 1];     /* the plan the job was started from */
    int plan_fd; /* its bytes as the launcher checked and used them (a memfd): the file
                  * may be replaced meanwhile by another run's; -1 if none */
} pc_adoption;
/* the build this core is (a plan of another build is not used) */
const char *pc_build_id(void);
/* the digest of this header the core was built with: the launcher, built with its own
 * copy, loads no core of another interface */
const char *pc_abi(void);
/* on: task events (NEWTASK, EXEC, EXIT) are dropped, not queued, while no Python takes
 * them; returns whether the root exec'd meanwhile */
int pc_set_quiet(pc_tracer *t, int on);
/* the event taken last goes back to the head of the queue, for the next pc_next */
int pc_unget(pc_tracer *t);
void pc_adopt_set(const pc_adoption *a);
/* After pc_set_quiet(t, 0): the logical programs of the processes that run one C
 * exec'd from a kept recipe meanwhile, as "PID:PROGRAM" NUL-terminated records (as
 * many as fit: call again until it returns 0). */
size_t pc_take_quiet_exes(pc_tracer *t, char *buf, size_t len);
/* the adoption set before, once: 1 and *out filled, or 0 */
int pc_adopt_take(pc_adoption *out);
/* cdef: end */

#endif
