/* Standalone latency benchmark of the binary conv kernels (no Python, no onnxruntime),
 * e.g. built statically for an ARM board:
 *   aarch64-linux-gnu-gcc -O3 -static -Iruntime runtime/bench_main.c runtime/bnn_core.c \
 *       runtime/bnn_neon.c -lpthread -o bnn_bench
 * Usage: bnn_bench [--c 256] [--o 256] [--hw 28] [--k 3] [--layers 4] [--runs 50]
 *                  [--warmup 5] [--threads 1] [--pad-value 1] [--kernel auto]
 * Stack: `layers` chained KxK convs, stride 1, "same" padding. Prints one line:
 *   kernel=<name> layers=.. c=.. o=.. hw=.. k=.. threads=.. median_ms=.. min_ms=..
 *   cpu_median_ms=..
 * (cpu_median_ms: process CPU time per run, all threads: on a busy machine it leaves out
 * the time spent waiting for a core; at 1 thread it is the better figure there.) */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bnn.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static double cpu_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  long c = 256, o = 256, hw = 28, k = 3, layers = 4, runs = 50, warmup = 5, threads = 1;
  long pad_value = 1;
  const char* kernel = "auto";
  for (int i = 1; i + 1 < argc; i += 2) {
    const char* a = argv[i];
    long v = strtol(argv[i + 1], NULL, 10);
    if (!strcmp(a, "--c")) c = v;
    else if (!strcmp(a, "--o")) o = v;
    else if (!strcmp(a, "--hw")) hw = v;
    else if (!strcmp(a, "--k")) k = v;
    else if (!strcmp(a, "--layers")) layers = v;
    else if (!strcmp(a, "--runs")) runs = v;
    else if (!strcmp(a, "--warmup")) warmup = v;
    else if (!strcmp(a, "--threads")) threads = v;
    else if (!strcmp(a, "--pad-value")) pad_value = v;
    else if (!strcmp(a, "--kernel")) kernel = argv[i + 1];
    else {
      fprintf(stderr, "unknown option %s (see the header of bench_main.c)\n", a);
      return 2;
    }
  }
  if (c < 1 || o < 1 || hw < 1 || k < 1 || layers < 1 || runs < 1 || warmup < 0) {
    fprintf(stderr, "all sizes must be >= 1\n");
    return 2;
  }
  if (bnn_set_kernel(kernel) != BNN_OK) {
    fprintf(stderr, "%s\n", bnn_last_error());
    return 2;
  }
  long cmax = c > o ? c : o;
  size_t act = (size_t)cmax * (size_t)hw * (size_t)hw;
  float* a = malloc(act * sizeof(float));
  float* b = malloc(act * sizeof(float));
  float* mult = malloc((size_t)o * sizeof(float));
  float* bias = malloc((size_t)o * sizeof(float));
  uint32_t** w = malloc((size_t)layers * sizeof(uint32_t*));
  double* t = malloc((size_t)runs * sizeof(double));
  double* tc = malloc((size_t)runs * sizeof(double));
  if (!a || !b || !mult || !bias || !w || !t || !tc) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  srand(1);
  for (size_t i = 0; i < act; i++) a[i] = (float)(rand() % 2001 - 1000) / 100.0f;
  for (long i = 0; i < o; i++) {
    mult[i] = 1.0f;
    bias[i] = 0.0f;
  }
  for (long l = 0; l < layers; l++) {
    long cin = l == 0 ? c : o;
    size_t n = (size_t)o * (size_t)(k * k) * (size_t)bnn_weight_words(cin);
    w[l] = malloc(n * sizeof(uint32_t));
    if (!w[l]) return 1;
    for (size_t i = 0; i < n; i++) w[l][i] = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
  }
  for (long r = -warmup; r < runs; r++) {
    double t0 = now_ms(), c0 = cpu_ms();
    const float* in = a;
    float* out = b;
    for (long l = 0; l < layers; l++) {
      long cin = l == 0 ? c : o;
      bnn_conv_params p = {1, cin, hw, hw, o, k, k, 1, 1, 1, 1,
                           (k - 1) / 2, (k - 1) / 2, k / 2, k / 2, 1, pad_value};
      if (bnn_conv2d(&p, in, w[l], mult, bias, out, (int)threads) != BNN_OK) {
        fprintf(stderr, "bnn_conv2d: %s\n", bnn_last_error());
        return 1;
      }
      in = out;
      out = out == b ? a : b;
    }
    if (r >= 0) {
      t[r] = now_ms() - t0;
      tc[r] = cpu_ms() - c0;
    }
  }
  qsort(t, (size_t)runs, sizeof(double), cmp_double);
  qsort(tc, (size_t)runs, sizeof(double), cmp_double);
  printf("kernel=%s layers=%ld c=%ld o=%ld hw=%ld k=%ld threads=%ld median_ms=%.4f min_ms=%.4f "
         "cpu_median_ms=%.4f\n",
         bnn_kernel_name(), layers, c, o, hw, k, threads, t[runs / 2], t[0], tc[runs / 2]);
  return 0;
}
