/* The program bench_syscalls.py runs: N calls of one kind on one path, then the
 * time per call on stdout.
 *
 *   statloop stat  PATH N   stat(PATH)
 *   statloop fstat PATH N   fstat() of one descriptor opened on PATH
 *   statloop open  PATH N   open(PATH, O_RDONLY) + close()
 *   statloop readlink PATH N  readlink(PATH) of a path that is not a link (EINVAL): what
 *                           a compiler's canonicalisation does at every component
 *   statloop tree  DIR N    stat(DIR/0), stat(DIR/1), ... over the TREE_FILES files
 *                           named 0..TREE_FILES-1: a different path at every call, as
 *                           a real program's calls are (no hot table entry, no hot cache
 *                           line)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TREE_FILES 3000

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: statloop stat|fstat|open|readlink|tree PATH N\n");
        return 2;
    }
    const char *kind = argv[1], *path = argv[2];
    long n = atol(argv[3]);
    struct stat st;
    int fd = -1;
    static char names[TREE_FILES][256];
    if (kind[0] == 't')
        for (int i = 0; i < TREE_FILES; i++)
            snprintf(names[i], sizeof names[i], "%s/%d", path, i);
    if (strcmp(kind, "fstat") == 0 && (fd = open(path, O_RDONLY)) < 0) {
        perror(path);
        return 1;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int rc;
        if (kind[0] == 's') {
            rc = stat(path, &st);
        } else if (kind[0] == 't') {
            rc = stat(names[i % TREE_FILES], &st);
        } else if (kind[0] == 'r') {
            char buf[256];
            rc = readlink(path, buf, sizeof buf) < 0 && errno == EINVAL ? 0 : -1;
        } else if (kind[0] == 'f') {
            rc = fstat(fd, &st);
        } else {
            rc = open(path, O_RDONLY);
            if (rc >= 0)
                rc = close(rc);
        }
        if (rc != 0) {
            perror(path);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    printf("%.3f us/call\n", ns / 1e3 / (double)n);
    return 0;
}
