/* Compiled by `parrot_cvmfs demo` and published as /bin/hello-c. */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    printf("hello-c: a C binary from the repository, /proc/self/exe = %s, %d argument(s)\n", self,
           argc - 1);
    return 0;
}
