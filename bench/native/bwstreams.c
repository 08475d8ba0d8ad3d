/* K interleaved read streams per thread over 1 GiB (2 MiB pages advised), AVX2, best of 5: the multi-stream yardstick
   for bitnet bench's bandwidth probe. Each stream's part is shortened by the gap and followed by it, so starts are off a
   power-of-two spacing (gap 4096, as the probe does) or exactly on an even split (gap 0).
   Build: gcc -O3 -march=native -pthread -o bwstreams bench/native/bwstreams.c   Run: ./bwstreams THREADS */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#define BYTES (1L << 30)
static char *buf; static int T, K; static long gap, q; static uint64_t sinks[64]; static pthread_barrier_t start, stop;
static void *run(void *arg) {
  long w = (long)arg; const char *p = buf + w * (BYTES / T); __m256i acc[8];
  for (int k = 0; k < K; k++) acc[k] = _mm256_setzero_si256();
  pthread_barrier_wait(&start);
  for (long i = 0; i < q; i += 64)
    for (int k = 0; k < K; k++) {
      const char *x = p + k * (q + gap) + i;
      acc[k] = _mm256_add_epi64(acc[k], _mm256_add_epi64(_mm256_load_si256((const __m256i *)x), _mm256_load_si256((const __m256i *)(x + 32))));
    }
  pthread_barrier_wait(&stop);
  uint64_t t[4]; __m256i a = acc[0]; for (int k = 1; k < K; k++) a = _mm256_add_epi64(a, acc[k]);
  _mm256_storeu_si256((__m256i *)t, a); sinks[w] = t[0] + t[1] + t[2] + t[3]; return 0;
}
int main(int c, char **v) {
  T = c > 1 ? atoi(v[1]) : 1; buf = aligned_alloc(1 << 21, BYTES); madvise(buf, BYTES, MADV_HUGEPAGE); memset(buf, 1, BYTES);
  int ks[] = {4, 4, 6, 8}; long gaps[] = {0, 4096, 4096, 4096};
  for (int j = 0; j < 4; j++) {
    K = ks[j]; gap = gaps[j]; q = (BYTES / T - (K - 1) * gap) / K / 64 * 64; double best = 0;
    for (int r = 0; r < 5; r++) {
      pthread_t th[64]; struct timespec a, b;
      pthread_barrier_init(&start, 0, T + 1); pthread_barrier_init(&stop, 0, T + 1);
      for (long w = 0; w < T; w++) pthread_create(&th[w], 0, run, (void *)w);
      pthread_barrier_wait(&start); clock_gettime(CLOCK_MONOTONIC, &a); pthread_barrier_wait(&stop); clock_gettime(CLOCK_MONOTONIC, &b);
      for (int w = 0; w < T; w++) pthread_join(th[w], 0);
      pthread_barrier_destroy(&start); pthread_barrier_destroy(&stop);
      double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9, g = (double)q * K * T / s / 1e9; if (g > best) best = g;
    }
    uint64_t sum = 0; for (int w = 0; w < T; w++) sum += sinks[w]; /* read, or the compiler drops the loop */
    printf("native %d streams, gap %ld, %d thread(s): %.1f GB/s (checksum %llu)\n", K, gap, T, best, (unsigned long long)sum);
  }
  return 0;
}
