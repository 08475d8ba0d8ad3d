/* A plain C streaming-sum loop over 1 GiB, 1..N threads, best of 5: the yardstick for bitnet bench's bandwidth probe.
   Build: gcc -O3 -march=native -pthread -o bwloop bench/native/bwloop.c   Run: ./bwloop 1; ./bwloop 2 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#define BYTES (1L<<30)
static uint64_t *buf; static int T; static uint64_t sinks[64];
static void *run(void *arg){ long w=(long)arg; long n=BYTES/8/T; uint64_t *p=buf+w*n; uint64_t s0=0,s1=0,s2=0,s3=0;
 for(long i=0;i<n;i+=4){s0+=p[i];s1+=p[i+1];s2+=p[i+2];s3+=p[i+3];} sinks[w]=s0+s1+s2+s3; return 0;}
int main(int c,char**v){T=c>1?atoi(v[1]):1; buf=aligned_alloc(64,BYTES); memset(buf,1,BYTES); double best=0;
 for(int r=0;r<5;r++){struct timespec a,b; clock_gettime(CLOCK_MONOTONIC,&a); pthread_t th[64];
  for(long w=0;w<T;w++)pthread_create(&th[w],0,run,(void*)w); for(int w=0;w<T;w++)pthread_join(th[w],0);
  clock_gettime(CLOCK_MONOTONIC,&b); double s=(b.tv_sec-a.tv_sec)+(b.tv_nsec-a.tv_nsec)*1e-9; double g=BYTES/s/1e9; if(g>best)best=g;}
 uint64_t tot=0; for(int w=0;w<T;w++) tot+=sinks[w]; printf("native plain loop, %d thread(s): %.1f GB/s (checksum %llu)\n",T,best,(unsigned long long)tot); return 0;}
