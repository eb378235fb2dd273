/* 100,000 (or N) stat() calls on one path; prints the time per call. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
int main(int argc, char **argv){ int n = atoi(argv[2]); struct stat st; struct timespec a,b;
 clock_gettime(CLOCK_MONOTONIC,&a);
 for(int i=0;i<n;i++) if(stat(argv[1],&st)!=0){perror("stat");return 1;}
 clock_gettime(CLOCK_MONOTONIC,&b);
 printf("%.3f us/call\n", ((b.tv_sec-a.tv_sec)*1e9+(b.tv_nsec-a.tv_nsec))/1e3/n); return 0;}
