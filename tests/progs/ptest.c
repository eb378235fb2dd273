/* Test program for parrot_run: one scenario per subcommand, each printing what it
 * observed, so that tests compare outputs (natively or against expectations).
 * Scenarios follow what PRoot's and Parrot's test suites check (vfork/exec,
 * /proc/self/exe, chdir in threads, openat edge cases, many mmaps, threads and
 * fork), written for /cvmfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *root; /* a directory in /cvmfs with the test tree */

static void res(const char *what, long r)
{
    if (r < 0)
        printf("%s: %s\n", what, strerrorname_np(errno));
    else
        printf("%s: ok\n", what);
}

static int c_vfork_exec(char **argv)
{
    /* vfork, then exec a program from /cvmfs in the child; the parent waits */
    pid_t pid = vfork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(99);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("vfork child exit %d\n", WEXITSTATUS(st));
    return 0;
}

static int c_self_exe(void)
{
    char b[4096];
    ssize_t n = readlink("/proc/self/exe", b, sizeof b - 1);
    b[n > 0 ? n : 0] = 0;
    printf("%s\n", b);
    n = readlink("/proc/thread-self/exe", b, sizeof b - 1);
    b[n > 0 ? n : 0] = 0;
    printf("%s\n", b);
    struct stat a, c;
    stat("/proc/self/exe", &a);
    int fd = open("/proc/self/exe", O_RDONLY);
    fstat(fd, &c);
    printf("same size %d\n", a.st_size == c.st_size);
    return 0;
}

struct hammer { const char *path; int n; int bad; };

static void *hammer_thread(void *p)
{
    struct hammer *h = p;
    char buf[64];
    for (int i = 0; i < h->n; i++) {
        struct stat st, st2;
        if (stat(h->path, &st) != 0) { h->bad++; continue; }
        int fd = open(h->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { h->bad++; continue; }
        if (fstat(fd, &st2) != 0 || st.st_ino != st2.st_ino || st.st_size != st2.st_size)
            h->bad++;
        if (read(fd, buf, sizeof buf) < 0)
            h->bad++;
        close(fd);
    }
    return NULL;
}

static int c_threads(const char *path, int nthreads, int n)
{
    pthread_t t[64];
    struct hammer h[64];
    for (int i = 0; i < nthreads; i++) {
        h[i] = (struct hammer){path, n, 0};
        pthread_create(&t[i], NULL, hammer_thread, &h[i]);
    }
    int bad = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        bad += h[i].bad;
    }
    printf("threads done, errors %d\n", bad);
    return bad != 0;
}

static void *chdir_thread(void *p)
{
    (void)p;
    res("thread chdir", chdir(root));
    return NULL;
}

static int c_chdir_threads(void)
{
    /* threads share the working directory: one changes it, the other sees it */
    pthread_t t;
    pthread_create(&t, NULL, chdir_thread, NULL);
    pthread_join(t, NULL);
    char b[4096];
    printf("cwd %s\n", getcwd(b, sizeof b) ? b : "(error)");
    DIR *d = opendir(".");
    int n = 0;
    while (d && readdir(d))
        n++;
    printf("entries in . %d\n", n);
    return 0;
}

static int c_openat_edges(void)
{
    char p[4096];
    int dfd = open(root, O_RDONLY | O_DIRECTORY);
    res("open dir O_DIRECTORY", dfd);
    res("openat relative", openat(dfd, "README", O_RDONLY));
    res("openat ..", openat(dfd, "../" , O_RDONLY | O_DIRECTORY));
    res("openat O_NOFOLLOW symlink", openat(dfd, "links/rel", O_RDONLY | O_NOFOLLOW));
    res("openat O_PATH|O_NOFOLLOW symlink", openat(dfd, "links/rel", O_PATH | O_NOFOLLOW));
    res("openat O_DIRECTORY file", openat(dfd, "README", O_RDONLY | O_DIRECTORY));
    res("openat trailing slash file", openat(dfd, "README/", O_RDONLY));
    res("openat dirlink/", openat(dfd, "links/dirlink/", O_RDONLY));
    res("openat O_RDWR", openat(dfd, "README", O_RDWR));
    res("openat O_CREAT new", openat(dfd, "newfile", O_WRONLY | O_CREAT, 0644));
    res("openat O_CREAT|O_EXCL existing", openat(dfd, "README", O_WRONLY | O_CREAT | O_EXCL, 0644));
    res("openat O_RDONLY|O_CREAT existing", openat(dfd, "README", O_RDONLY | O_CREAT, 0644));
    res("openat missing", openat(dfd, "missing", O_RDONLY));
    res("openat loop", openat(dfd, "links/loop-a", O_RDONLY));
    res("openat dangling", openat(dfd, "links/dangling", O_RDONLY));
    struct open_how how = {.flags = O_RDONLY, .resolve = RESOLVE_NO_SYMLINKS};
    res("openat2 NO_SYMLINKS plain", syscall(SYS_openat2, dfd, "README", &how, sizeof how));
    res("openat2 NO_SYMLINKS link", syscall(SYS_openat2, dfd, "links/rel", &how, sizeof how));
    struct stat a, b;
    int fd = openat(dfd, "README", O_RDONLY);
    fstatat(dfd, "README", &a, 0);
    res("fstatat AT_EMPTY_PATH", fstatat(fd, "", &b, AT_EMPTY_PATH));
    printf("same inode %d same dev %d\n", a.st_ino == b.st_ino, a.st_dev == b.st_dev);
    fstat(dfd, &b);
    stat(root, &a);
    printf("dir same inode %d nlink %d\n", a.st_ino == b.st_ino, a.st_nlink == b.st_nlink);
    res("mkdirat new", mkdirat(dfd, "newdir", 0755));
    res("mkdirat existing", mkdirat(dfd, "data", 0755));
    res("unlinkat", unlinkat(dfd, "README", 0));
    res("unlinkat missing", unlinkat(dfd, "missing", 0));
    snprintf(p, sizeof p, "%s/README", root);
    res("rename in", rename(p, "/tmp/parrot-cvmfs-rename-target"));
    res("chmod", chmod(p, 0777));
    res("chmod missing", chmod("/cvmfs/nonexistent.example.org/x", 0777));
    res("truncate", truncate(p, 0));
    res("access W_OK", access(p, W_OK));
    res("access R_OK", access(p, R_OK));
    res("symlink into", symlink("x", p));
    res("fchmod on fd", fchmod(fd, 0777));
    snprintf(p, sizeof p, "%s/links/rel", root);
    char l[256];
    ssize_t n = readlink(p, l, sizeof l);
    printf("readlink %.*s\n", (int)(n > 0 ? n : 0), l);
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    n = readlink(p, l, sizeof l);
    printf("fd link %.*s\n", (int)(n > 0 ? n : 0), l);
    return 0;
}

static int c_mmaps(const char *path, int n)
{
    /* many mappings of one /cvmfs file, all reading the same bytes */
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return perror("open"), 1;
    long sum0 = -1;
    for (int i = 0; i < n; i++) {
        unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED)
            return perror("mmap"), 1;
        long sum = 0;
        for (off_t j = 0; j < st.st_size; j += 512)
            sum += m[j];
        if (sum0 < 0)
            sum0 = sum;
        else if (sum != sum0)
            return printf("mapping %d differs\n", i), 1;
    }
    printf("%d mappings agree\n", n);
    return 0;
}

static void *fork_thread(void *p)
{
    (void)p;
    pid_t pid = fork();
    if (pid == 0) {
        struct stat st;
        _exit(stat(root, &st) == 0 ? 0 : 1);
    }
    int s;
    waitpid(pid, &s, 0);
    return (void *)(long)(WIFEXITED(s) && WEXITSTATUS(s) == 0);
}

static int c_threads_fork(int n)
{
    /* many threads, each forking a child that stats /cvmfs */
    int ok = 0;
    for (int i = 0; i < n; i += 16) {
        pthread_t t[16];
        int k = n - i < 16 ? n - i : 16;
        for (int j = 0; j < k; j++)
            pthread_create(&t[j], NULL, fork_thread, NULL);
        for (int j = 0; j < k; j++) {
            void *r;
            pthread_join(t[j], &r);
            ok += (int)(long)r;
        }
    }
    printf("%d of %d forked children saw /cvmfs\n", ok, n);
    return ok != n;
}

/* One pass of getdents64 over `fd` with a `bufsize` buffer: the names, space-joined,
 * in order; the position after the third record is kept in *mid. */
static int list_names(int fd, size_t bufsize, char *out, size_t outsize, off_t *mid)
{
    char buf[4096];
    size_t used = 0;
    int count = 0;
    out[0] = '\0';
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, bufsize);
        if (n < 0)
            return -errno;
        if (n == 0)
            return count;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            used += (size_t)snprintf(out + used, outsize - used, "%s%s", count ? " " : "", d->d_name);
            if (++count == 3 && mid)
                *mid = d->d_off;
            off += d->d_reclen;
        }
    }
}

static int getdents_pass(const char *dir)
{
    static char a[1 << 16], b[1 << 16], c[1 << 16], tail[1 << 16];
    off_t mid = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    int n = list_names(fd, 4096, a, sizeof a, &mid);
    /* a buffer too small for one record is EINVAL, as the kernel says */
    char tiny[8];
    lseek(fd, 0, SEEK_SET);
    long e = syscall(SYS_getdents64, fd, tiny, sizeof tiny);
    int einval = e < 0 && errno == EINVAL;
    lseek(fd, 0, SEEK_SET);
    int m = list_names(fd, 40, b, sizeof b, NULL); /* one record at a time */
    DIR *d = fdopendir(dup(fd));
    rewinddir(d);
    size_t used = 0;
    int k = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        used += (size_t)snprintf(c + used, sizeof c - used, "%s%s", k++ ? " " : "", de->d_name);
    closedir(d);
    lseek(fd, mid, SEEK_SET); /* seekdir to a position getdents gave */
    list_names(fd, 4096, tail, sizeof tail, NULL);
    close(fd);
    const char *rest = a;
    for (int i = 0; i < 3 && rest; i++)
        rest = strchr(rest, ' ') ? strchr(rest, ' ') + 1 : NULL;
    printf("entries %d small-buffer-same %d readdir-same %d tiny-einval %d seek-same %d\n", n,
           m == n && !strcmp(a, b), k == n && !strcmp(a, c), einval, rest && !strcmp(rest, tail));
    return 0;
}

static void *getdents_thread(void *dir)
{
    getdents_pass(dir);
    return NULL;
}

static int c_getdents(const char *dir)
{
    /* the first pass is answered by Python, the next ones from the C table; the last
     * one from a thread that is not the thread-group leader */
    for (int i = 0; i < 2; i++)
        getdents_pass(dir);
    pthread_t t;
    pthread_create(&t, NULL, getdents_thread, (void *)dir);
    pthread_join(t, NULL);
    return 0;
}

/* One descriptor number given, in turn, to each of PATHS (directories in /cvmfs and on
 * the host, and files), by dup2 and by close-and-reopen, and used several times from
 * this thread and from another: what fstat, fstatat, openat, getdents64 and
 * /proc/self/fd/N say must be about the file now at that number (any cache of what a
 * descriptor names must see it change hands). NAMES are looked up relative to it; a
 * path's own name is printed as its last component, so that a run over a copy of the
 * tree prints the same. */
struct fd_round {
    int fd;
    const char *path;
    char **names;
};

static void *fd_round_report(void *arg)
{
    struct fd_round *r = arg;
    struct stat a, b;
    for (int pass = 0; pass < 3; pass++) {
        int same = fstat(r->fd, &a) == 0 && stat(r->path, &b) == 0 && a.st_ino == b.st_ino &&
                   a.st_dev == b.st_dev && a.st_mode == b.st_mode;
        char link[4096];
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", r->fd);
        ssize_t n = readlink(self, link, sizeof link - 1);
        link[n > 0 ? n : 0] = 0;
        const char *base = strrchr(link, '/');
        const char *want = strrchr(r->path, '/');
        printf("  fstat-same %d link-base-same %d", same, base && want && !strcmp(base, want));
        for (char **nm = r->names; *nm; nm++) {
            int e = fstatat(r->fd, *nm, &a, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
            int o = openat(r->fd, *nm, O_RDONLY | O_DIRECTORY);
            int oe = o >= 0 ? 0 : errno;
            if (o >= 0)
                close(o);
            printf(" %s:%s/%s", *nm, e ? strerrorname_np(e) : "ok", oe ? strerrorname_np(oe) : "ok");
        }
        char buf[8192];
        long total = 0, got;
        if (lseek(r->fd, 0, SEEK_SET) == 0) {
            while ((got = syscall(SYS_getdents64, r->fd, buf, sizeof buf)) > 0)
                for (long off = 0; off < got; off += ((struct dirent64 *)(buf + off))->d_reclen)
                    total++;
            printf(" entries %ld\n", got < 0 ? -(long)errno : total);
        } else {
            printf(" lseek %s\n", strerrorname_np(errno));
        }
    }
    return NULL;
}

static int c_fd_reuse(char **paths)
{
    char **names = paths;
    while (*names && strcmp(*names, "--"))
        names++;
    if (!*names)
        return 2;
    *names++ = NULL;
    int num = open("/", O_RDONLY | O_DIRECTORY); /* the number every round uses */
    for (int round = 0; round < 2; round++) {
        for (char **p = paths; *p; p++) {
            int fd;
            if (round == 0) { /* close, then open: the kernel gives the lowest, `num` */
                close(num);
                fd = open(*p, O_RDONLY);
            } else { /* dup2 over it while it is open */
                int other = open(*p, O_RDONLY);
                fd = other < 0 ? -1 : dup2(other, num);
                if (other >= 0)
                    close(other);
            }
            if (fd != num) {
                printf("%s: not at the number (%d)\n", strrchr(*p, '/'), fd);
                return 1;
            }
            printf("%s %s\n", round ? "dup2" : "reopen", strrchr(*p, '/'));
            struct fd_round r = {num, *p, names};
            fd_round_report(&r);
            pthread_t th; /* another thread of the same descriptor table */
            pthread_create(&th, NULL, fd_round_report, &r);
            pthread_join(th, NULL);
        }
    }
    return 0;
}

/* Each of PATHS is opened and used by descriptor (fstat, fstatat of NAME, openat of it,
 * getdents64), from this thread and another, then locked with flock and closed; a new
 * open of it must then take the lock at once. A tracer that kept a copy of the job's
 * descriptor past its close would still hold the lock (the lock belongs to the open
 * file, which the copy keeps alive). */
static void *use_by_descriptor(void *arg)
{
    int fd = *(int *)arg;
    struct stat st;
    char buf[8192];
    fstat(fd, &st);
    fstatat(fd, "nothing", &st, 0);
    int o = openat(fd, "nothing", O_RDONLY);
    if (o >= 0)
        close(o);
    while (syscall(SYS_getdents64, fd, buf, sizeof buf) > 0) /* ENOTDIR on a file */
        ;
    return NULL;
}

static int c_lock_after_use(char **paths)
{
    for (char **p = paths; *p; p++) {
        for (int pass = 0; pass < 2; pass++) { /* the second from the kept answers' side */
            int fd = open(*p, O_RDONLY);
            if (fd < 0) {
                printf("%s: open %s\n", *p, strerrorname_np(errno));
                return 1;
            }
            use_by_descriptor(&fd);
            pthread_t th;
            pthread_create(&th, NULL, use_by_descriptor, &fd);
            pthread_join(th, NULL);
            int l = flock(fd, LOCK_EX | LOCK_NB); /* a held lock fails, not hangs */
            close(fd);
            /* the number taken meanwhile: the new open is another number, so a copy kept
             * by number would not be dropped by the reopen */
            int filler = open("/dev/null", O_RDONLY);
            fd = open(*p, O_RDONLY);
            int again = fd < 0 ? -1 : flock(fd, LOCK_EX | LOCK_NB);
            if (filler >= 0)
                close(filler);
            printf("%s: lock %s, relock after close %s\n", strrchr(*p, '/'),
                   l ? strerrorname_np(errno) : "ok", again ? strerrorname_np(errno) : "ok");
            if (fd >= 0)
                close(fd);
        }
    }
    return 0;
}

/* execve of each of PATHS, three times, from a child: the errno each attempt gets (a
 * shell or execvp trying one PATH directory after another sees these); an exec that
 * succeeds runs the program with no arguments, which must exit at once. */
static int c_exec_errors(char **paths)
{
    for (char **p = paths; *p; p++) {
        printf("%s:", strrchr(*p, '/') ? strrchr(*p, '/') : *p);
        for (int i = 0; i < 3; i++) {
            int fds[2];
            if (pipe2(fds, O_CLOEXEC))
                return 1;
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                char *argv[] = {*p, NULL};
                int null = open("/dev/null", O_WRONLY);
                dup2(null, 1); /* what a program that ran prints is not ours to compare */
                execve(*p, argv, (char *[]){NULL});
                int e = errno;
                write(fds[1], &e, sizeof e);
                _exit(127);
            }
            close(fds[1]);
            int e = 0;
            ssize_t n = read(fds[0], &e, sizeof e);
            close(fds[0]);
            waitpid(pid, NULL, 0);
            printf(" %s", n == sizeof e ? strerrorname_np(e) : "ran");
        }
        printf("\n");
    }
    return 0;
}

/* CMD run under the seccomp filter F of N instructions (and every process it starts) */
static int exec_filtered(struct sock_filter *f, unsigned short n, char **cmd)
{
    struct sock_fprog prog = {n, f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp");
        return 1;
    }
    execvp(cmd[0], cmd);
    perror(cmd[0]);
    return 127;
}

/* Run CMD where a seccomp filter makes ptrace (or installing seccomp filters) fail
 * with EPERM, as a container's profile does. */
static int c_deny(const char *what, char **cmd)
{
    int ptrace_only = !strcmp(what, "ptrace");
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ptrace_only ? SYS_ptrace : SYS_seccomp, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ptrace_only ? SYS_ptrace : SYS_prctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_SECCOMP, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return exec_filtered(f, sizeof f / sizeof f[0], cmd);
}

/* For each of PATHS: two opens of it, the first closed, then a write lease on the
 * second: refused (EAGAIN) while any other open of the file lives, so a copy a tracer
 * kept of the first would show. */
static int c_lease_after_close(char **paths)
{
    for (char **p = paths; *p; p++) {
        int a = open(*p, O_RDONLY), b = open(*p, O_RDONLY);
        if (a < 0 || b < 0) {
            printf("%s: open %s\n", *p, strerrorname_np(errno));
            return 1;
        }
        struct stat st;
        fstat(a, &st); /* used by descriptor first, as a program does */
        close(a);
        int l = fcntl(b, F_SETLEASE, F_WRLCK);
        printf("%s: lease %s\n", strrchr(*p, '/'), l ? strerrorname_np(errno) : "ok");
        if (!l)
            fcntl(b, F_SETLEASE, F_UNLCK);
        close(b);
    }
    return 0;
}

/* PROGRAM ARGS with kcmp refused with ERRNO (as a container runtime's seccomp profile
 * refuses it): parrot_run must then work as if it had none. */
static int c_no_kcmp(int err, char **argv)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_kcmp, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)(err & 0xffff)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return exec_filtered(f, sizeof f / sizeof f[0], argv);
}

/* open-storm FLAGS ROUNDS PATHS: each of PATHS opened and closed ROUNDS times while a
 * 50 µs timer interrupts this thread (SA_RESTART if FLAGS has 'r'; else an EINTR is
 * retried, as Python and most libraries do). Prints how many descriptors the job holds
 * afterwards beyond the ones it had: an answer given to a call the signal had already
 * ended must not leave one behind. With 'l' in FLAGS, a POSIX read lock is taken on
 * the first path first, and that path's descriptors are all kept open (a close of any
 * would drop the lock, natively too); a child tells afterwards whether this process
 * still holds the lock. */
static volatile sig_atomic_t ticks;
static void tick(int sig) { (void)sig; ticks++; }

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static int c_open_storm(const char *flags, int rounds, char **paths)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick;
    sa.sa_flags = strchr(flags, 'r') ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    int locked = -1;
    struct flock lk = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    if (strchr(flags, 'l') && ((locked = open(paths[0], O_RDONLY | O_CLOEXEC)) < 0 ||
                               fcntl(locked, F_SETLK, &lk) < 0)) {
        perror("lock");
        return 1;
    }
    int before = count_fds(), eintr = 0, failed = 0, kept = 0;
    struct itimerval it = {{0, 50}, {0, 50}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (int i = 0; i < rounds; i++)
        for (char **p = paths; *p; p++) {
            int fd;
            while ((fd = open(*p, O_RDONLY | O_CLOEXEC)) < 0 && errno == EINTR)
                eintr++;
            if (fd < 0 && !failed++)
                fprintf(stderr, "%s: %s\n", *p, strerrorname_np(errno));
            else if (fd >= 0 && locked >= 0 && p == paths)
                kept++;
            else if (fd >= 0)
                close(fd);
        }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("failed %d strays %d", failed, count_fds() - before - kept);
    if (locked >= 0) {
        fflush(stdout);
        pid_t c = fork();
        if (c == 0) { /* a write lock asked for: the parent's read lock, if it holds one */
            struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
            int fd = open(paths[0], O_RDONLY);
            _exit(fd >= 0 && fcntl(fd, F_GETLK, &q) == 0 && q.l_type == F_RDLCK &&
                          q.l_pid == getppid()
                      ? 0
                      : 1);
        }
        int st = 1;
        waitpid(c, &st, 0);
        printf(" lock %s", WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "held" : "lost");
    }
    printf("\n");
    for (int fd = 3; fd < 1024; fd++) { /* what a stray is, for the failure's message */
        char l[64], target[4096];
        snprintf(l, sizeof l, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(l, target, sizeof target - 1);
        if (k > 0)
            fprintf(stderr, "fd %d: %.*s\n", fd, (int)k, target);
    }
    fprintf(stderr, "ticks %d eintr %d\n", (int)ticks, eintr);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    root = getenv("ROOT");
    const char *c = argv[1];
    if (!strcmp(c, "vfork-exec")) return c_vfork_exec(argv + 2);
    if (!strcmp(c, "self-exe")) return c_self_exe();
    if (!strcmp(c, "threads")) return c_threads(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(c, "chdir-threads")) return c_chdir_threads();
    if (!strcmp(c, "openat")) return c_openat_edges();
    if (!strcmp(c, "mmaps")) return c_mmaps(argv[2], atoi(argv[3]));
    if (!strcmp(c, "threads-fork")) return c_threads_fork(atoi(argv[2]));
    if (!strcmp(c, "getdents")) return c_getdents(argv[2]);
    if (!strcmp(c, "fd-reuse")) return c_fd_reuse(argv + 2);
    if (!strcmp(c, "lock-after-use")) return c_lock_after_use(argv + 2);
    if (!strcmp(c, "lease-after-close")) return c_lease_after_close(argv + 2);
    if (!strcmp(c, "no-kcmp") && argc > 3) return c_no_kcmp(atoi(argv[2]), argv + 3);
    if (!strcmp(c, "open-storm") && argc > 4)
        return c_open_storm(argv[2], atoi(argv[3]), argv + 4);
    if (!strcmp(c, "exec-errors")) return c_exec_errors(argv + 2);
    if (!strcmp(c, "deny") && argc > 3) return c_deny(argv[2], argv + 3);
    return 2;
}
