/* STAND-IN benchmark program for the emulated-ARM test only: it runs no model.
 *
 * Cross-compiled as a static aarch64 binary by the tests and run under qemu-aarch64-static.
 * It times a small integer loop per "inference" and prints the statistics in
 * lce_benchmark_model's format (larq/compute-engine docs/get_started.md, "3. Benchmarking").
 * Flags: --graph=PATH (read once), --num_runs=N, --warmup_runs=N; others are ignored.
 * With --json it prints only one JSON object {"machine": ..., "mean_us": ...} (worker style).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static volatile unsigned sink;

static long long one_inference(void) {
  long long start = now_us();
  unsigned acc = 1;
  for (unsigned i = 0; i < 200000; i++) acc = acc * 2654435761u + (acc >> 7);
  sink = acc;
  return now_us() - start;
}

static double phase(int runs, long long *first_out) {
  printf("Running benchmark for at least %d iterations and at least 0 seconds but "
         "terminate if exceeding 150 seconds.\n", runs);
  long long first = 0, curr = 0, lo = 0, hi = 0;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < runs; i++) {
    curr = one_inference();
    if (i == 0) first = lo = hi = curr;
    if (curr < lo) lo = curr;
    if (curr > hi) hi = curr;
    sum += (double)curr;
    sum_sq += (double)curr * (double)curr;
  }
  double avg = runs ? sum / runs : 0;
  double var = runs ? sum_sq / runs - avg * avg : 0;
  printf("count=%d first=%lld curr=%lld min=%lld max=%lld avg=%g std=%lld\n\n", runs, first,
         curr, lo, hi, avg, (long long)llround(sqrt(var > 0 ? var : 0)));
  if (first_out) *first_out = first;
  return avg;
}

int main(int argc, char **argv) {
  int runs = 50, warmup = 1, json = 0;
  const char *graph = NULL;
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--num_runs=", 11) == 0) runs = atoi(argv[i] + 11);
    else if (strncmp(argv[i], "--warmup_runs=", 14) == 0) warmup = atoi(argv[i] + 14);
    else if (strncmp(argv[i], "--graph=", 8) == 0) graph = argv[i] + 8;
    else if (strcmp(argv[i], "--json") == 0) json = 1;
  }
  struct utsname names;
  uname(&names);
  if (json) {
    double total = 0;
    for (int i = 0; i < runs; i++) total += (double)one_inference();
    printf("{\"machine\": \"%s\", \"mean_us\": %g}\n", names.machine, runs ? total / runs : 0);
    return 0;
  }
  printf("STARTING!\nMachine: [%s]\n", names.machine);
  long long start = now_us();
  FILE *model = graph ? fopen(graph, "rb") : NULL;
  if (!model) {
    fprintf(stderr, "ERROR: Failed to mmap model %s\n", graph ? graph : "(none)");
    return 1;
  }
  fclose(model);
  long long init = now_us() - start;
  long long first = 0;
  double warm_avg = phase(warmup, &first);
  double avg = phase(runs, warmup ? NULL : &first);
  printf("Inference timings in us: Init: %lld, First inference: %lld, Warmup (avg): %g, "
         "Inference (avg): %g\n", init, first, warm_avg, avg);
  return 0;
}
