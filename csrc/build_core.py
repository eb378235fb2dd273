"""cffi build script for parrot_cvmfs._core, the package's C core.

Run by `pip install .` through setup.py's cffi_modules; every C source of the
project is listed here: the publisher's chunker, the preload's bulk fetcher and the
tracer (spawning the job, its event loop).
"""

from cffi import FFI

# Paths are relative to the project root, where setuptools runs this script.
ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct {
        uint64_t min_size, avg_size, max_size;
        uint64_t last_cut;
        uint64_t pos;
        uint32_t xor32;
        int64_t threshold;
    } pc_chunker;
    void pc_chunker_init(pc_chunker *c, uint64_t min_size, uint64_t avg_size, uint64_t max_size);
    size_t pc_chunker_feed(pc_chunker *c, const uint8_t *buf, size_t len, uint64_t *cuts,
                           size_t max_cuts);

    #define PC_PATH_MAX 4096
    #define PC_MAX_RULES 128
    #define PC_KIND_PATH 1
    #define PC_KIND_PATH2 2
    #define PC_KIND_FD 3
    #define PC_KIND_CWD 4
    #define PC_KIND_SOCKADDR 5
    #define PC_FAST_NONE 0
    #define PC_FAST_STAT 1
    #define PC_FAST_STATX 2
    #define PC_FAST_ACCESS 3
    #define PC_FAST_READLINK 4
    #define PC_FAST_OPEN 5
    #define PC_FAST_GETDENTS 6
    #define PC_FAST_GETXATTR 7
    #define PC_FAST_LISTXATTR 8
    #define PC_EV_SYSCALL 1
    #define PC_EV_SYSCALL_EXIT 2
    #define PC_EV_NEWTASK 3
    #define PC_EV_EXEC 4
    #define PC_EV_EXIT 5
    #define PC_EV_NOCHILD 6

    typedef struct {
        int nr;
        int kind;
        int dirfd_arg;
        int path_arg;
        int dirfd2_arg;
        int path2_arg;
        int flags_arg;
        uint64_t empty_flag;
        uint64_t nofollow_flag;
        uint64_t follow_flag;
        int follow_default;
        int proc_sensitive;
        int fast;
        int out_arg;
        int mode_arg;
        int size_arg;
        int attr_arg;
        int bare_fd;
    } pc_rule;

    typedef struct {
        int kind;
        int notify;
        uint64_t notif_id;
        int tid;
        int other;
        int aux;
        int rule;
        int nr;
        uint64_t args[6];
        uint64_t sp;
        int64_t ret;
        int status;
        int path_err;
        int path2_err;
        int path_len;
        int path2_len;
        int base_len;
        int base2_len;
        int empty_path;
        char path[4097];
        char path2[4097];
        char base[4097];
        char base2[4097];
    } pc_event;

    typedef struct {
        uint64_t stops;
        uint64_t exit_stops;
        uint64_t signals;
        uint64_t tasks;
    } pc_stats;

    typedef struct pc_tracer pc_tracer;
    pc_tracer *pc_new(const pc_rule *rules, int nrules);
    void pc_free(pc_tracer *t);
    int pc_add_prefix(pc_tracer *t, int which, const char *prefix);
    int pc_spawn(pc_tracer *t, const char *file, char *const argv[], char *const envp[],
                   const void *filter, int filter_len, int notify, int *report_fd, char *err,
                   int errlen);
    int pc_open_backing(pc_tracer *t, const char *path, int flags);
    int pc_spawn_failure(int report_fd, char *err, int errlen);
    void pc_forward_signals(pc_tracer *t);
    int pc_next(pc_tracer *t, pc_event *ev);
    int pc_resume(pc_tracer *t, int tid, uint64_t token);
    int pc_skip(pc_tracer *t, int tid, uint64_t token, int64_t result);
    int pc_set_args(pc_tracer *t, int tid, uint64_t token, int narg, const int *args,
                    const uint64_t *values, int report_exit, int is_exec);
    int pc_finish_exit(pc_tracer *t, int tid, uint64_t token, int set_result, int64_t result);
    int pc_restart_exit(pc_tracer *t, int tid, uint64_t token);
    int pc_claim(pc_tracer *t, uint64_t token);
    int pc_given_up(pc_tracer *t);
    int pc_exit_code(pc_tracer *t);
    int pc_notif_reply(pc_tracer *t, uint64_t id, int64_t result);
    int pc_notif_continue(pc_tracer *t, uint64_t id);
    int pc_notif_addfd(pc_tracer *t, uint64_t id, int fd, int cloexec, int tid);
    int pc_notif_valid(pc_tracer *t, uint64_t id);
    int pc_notifying(pc_tracer *t);
    ssize_t pc_read(int tid, uint64_t addr, void *buf, size_t len);
    ssize_t pc_write(int tid, uint64_t addr, const void *buf, size_t len);
    int pc_getfd(int tid, int fd);
    const pc_stats *pc_get_stats(pc_tracer *t);
    void pc_get_rule_stats(pc_tracer *t, uint64_t *out);
    size_t pc_table_take_served(pc_tracer *t, char *buf, size_t len);
    int pc_ntasks(pc_tracer *t);
    int pc_table_put(pc_tracer *t, const char *key, int follow, int err, const void *stat_buf,
                     const int8_t *access_err, const char *link, int link_len);
    int pc_table_put_open(pc_tracer *t, const char *key, int follow, const char *target,
                          int is_dir);
    int pc_table_put_dents(pc_tracer *t, const char *key, const void *records, size_t len);
    int pc_table_load(pc_tracer *t, const void *records, size_t len);
    int pc_table_load_fd(pc_tracer *t, int fd, uint64_t offset);
    int pc_table_put_xattrs(pc_tracer *t, const char *key, int follow, const void *blob,
                            size_t len);
    int pc_table_put_xnames(pc_tracer *t, const char *key, int follow, const void *names,
                            size_t len);
    void pc_table_clear(pc_tracer *t);
    int pc_table_size(pc_tracer *t);

    #define PC_FETCH_OK 0
    #define PC_FETCH_PRESENT 1
    #define PC_FETCH_NOT_TRIED 2
    #define PC_FETCH_CONNECT 3
    #define PC_FETCH_NETWORK 4
    #define PC_FETCH_HTTP 5
    #define PC_FETCH_BAD_DATA 6
    #define PC_FETCH_LOCAL 7
    #define PC_FETCH_UNSUPPORTED 8
    #define PC_FETCH_UNVERIFIED -1
    typedef struct {
        const char *request;
        const char *tmp;
        const char *dest;
        int algorithm;
        unsigned char digest[20];
        int compressed;
        int64_t size;
        int64_t limit;
        int64_t wire_limit;
        int64_t budget_ms;
        int mode;
        int status;
        int http_status;
        int64_t stored;
    } pc_fetch_item;
    typedef struct {
        int64_t done;
        int64_t bytes;
        int stop;
    } pc_fetch_progress;
    int pc_fetch_batch(const char *host, int port, const char *host_header,
                       pc_fetch_item *items, int n, int nthreads, int timeout_ms,
                       int64_t low_speed_limit, pc_fetch_progress *progress);
    """
)
ffibuilder.set_source(
    "parrot_cvmfs._core",
    '#include "chunker.h"\n#include "fetch.h"\n#include "tracer.h"',
    sources=[
        "csrc/chunker.c",
        "csrc/digest.c",
        "csrc/fetch.c",
        "csrc/tracer.c",
        "csrc/spawn.c",
        "csrc/tracee.c",
        "csrc/answers.c",
        "csrc/examine.c",
        "csrc/respond.c",
        "csrc/notify.c",
    ],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["z"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
