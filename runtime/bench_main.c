/* Standalone latency benchmark of the binary conv kernels (no Python, no onnxruntime),
 * e.g. built statically for an ARM board (`make arm-bench`, or by hand):
 *   aarch64-linux-gnu-gcc -std=c11 -O3 -ffp-contract=off -pthread -static -Iruntime \
 *       runtime/bench_main.c runtime/bnn_core.c runtime/bnn_neon.c -o bnn_bench -lm
 * Usage: bnn_bench [--c 256] [--o 256] [--hw 28] [--k 3] [--layers 4] [--runs 50]
 *                  [--warmup 5] [--threads 1] [--pad-value 1] [--kernel auto]
 *                  [--check 1] [--no-plan 0] [--spin-us 50]
 * Stack: `layers` chained KxK convs, stride 1, "same" padding, batch 1; every run starts
 * from the same input. It runs the way a deployed model runs in onnxruntime: one plan
 * per layer (bnn_plan_create: weight panel, geometry) built before timing, and each timed
 * call is bnn_conv2d_planned. With --threads T > 1 the work goes through a persistent pool
 * (T-1 worker threads created once, plus the calling thread) with at most 4*T tasks per
 * phase, the library's own pthread default. Idle workers spin for up to --spin-us
 * microseconds, then sleep on a condition variable.
 * --no-plan 1 times the old per-call path instead, bnn_conv2d(..., T): plan built inside
 * every call and, with T > 1, threads created and joined for every phase of every call.
 * --check 1 (default) recomputes the stack once with bnn_conv2d on one thread after timing
 * and compares the final layer's output bit for bit (0: skip). Flags may be given without
 * a value (`--check`, `--no-plan` mean 1). Prints one line:
 *   kernel=<name> layers=.. c=.. o=.. hw=.. k=.. threads=.. median_ms=.. min_ms=..
 *   cpu_median_ms=.. plan=cached|per-call pool=persistent|per-call|none check=ok|off
 * (median_ms, min_ms: wall time of the whole stack per run; cpu_median_ms: CPU time per
 * run of all threads, the pool's read from each thread's own clock, workers' spinning
 * included: on a busy machine it leaves out the time spent waiting for a core; at 1
 * thread it is the better figure there.)
 * Exit status: 0; 1 on a failure or a check mismatch (line printed with check=mismatch);
 * 2 on bad options. */
#define _POSIX_C_SOURCE 200112L
#include <pthread.h>
#include <stdatomic.h>
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

/* ------------------------------------------------------------------ persistent pool */
/* Implements the bnn_parallel_for_fn contract: every index in [0, total) is run exactly
 * once (claimed through an atomic counter by the caller and the workers that joined the
 * job), and the call returns after all of them finished.
 * The caller writes the job, opens it (OPEN bit of `state`) and bumps `gen` to wake the
 * workers, then claims indices itself. A worker joins only while the job is open (CAS:
 * count + 1) and reads the job's fields only while joined. When the caller runs out of
 * indices it closes the job and waits for the joined workers' count to drop to 0, i.e.
 * for the tasks they are running; a worker that has not started yet (asleep, or without
 * a core on a busy machine) is not waited for. */
static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

#define POOL_OPEN 0x80000000u /* state: job open for joining; low bits: joined workers */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t work_cv; /* workers wait here for a new generation */
  pthread_cond_t done_cv; /* the caller waits here for the joined count to reach 0 */
  pthread_t* th;
  clockid_t* clk; /* the workers' CPU-time clocks */
  int clk_ok;     /* 1: every worker's clock could be read */
  int nworkers;
  double spin_ms;
  atomic_uint gen;   /* bumped (under mu) to wake the workers: a new job or stop */
  atomic_int stop;
  atomic_uint state; /* POOL_OPEN | number of workers inside the job */
  atomic_size_t next; /* next index to claim */
  bnn_task_fn fn;     /* the job: written by the caller while no worker is joined */
  void* arg;
  size_t total;
} pool_t;

static void pool_drain(pool_t* pl) {
  bnn_task_fn fn = pl->fn;
  void* arg = pl->arg;
  size_t total = pl->total;
  for (;;) {
    size_t i = atomic_fetch_add_explicit(&pl->next, 1, memory_order_relaxed);
    if (i >= total) break;
    fn(arg, i);
  }
}

/* Spins for up to spin_ms while *v == val: 1 as soon as it differs, else 0. */
static int spin_until_changed(atomic_uint* v, unsigned val, double spin_ms) {
  double t0 = spin_ms > 0 ? now_ms() : 0;
  for (unsigned n = 1;; n++) {
    if (atomic_load_explicit(v, memory_order_acquire) != val) return 1;
    if (spin_ms <= 0) return 0;
    cpu_relax();
    if ((n & 255) == 0 && now_ms() - t0 > spin_ms) return 0;
  }
}

/* Spins for up to spin_ms until *v == 0: 1 once it is, else 0. */
static int spin_until_zero(atomic_uint* v, double spin_ms) {
  double t0 = spin_ms > 0 ? now_ms() : 0;
  for (unsigned n = 1;; n++) {
    if (atomic_load_explicit(v, memory_order_acquire) == 0) return 1;
    if (spin_ms <= 0) return 0;
    cpu_relax();
    if ((n & 255) == 0 && now_ms() - t0 > spin_ms) return 0;
  }
}

static void* pool_worker(void* p) {
  pool_t* pl = p;
  unsigned seen = 0; /* generation 0: the pool's start, no job */
  for (;;) {
    if (!spin_until_changed(&pl->gen, seen, pl->spin_ms)) {
      pthread_mutex_lock(&pl->mu);
      while (atomic_load_explicit(&pl->gen, memory_order_acquire) == seen)
        pthread_cond_wait(&pl->work_cv, &pl->mu);
      pthread_mutex_unlock(&pl->mu);
    }
    seen = atomic_load_explicit(&pl->gen, memory_order_acquire);
    if (atomic_load_explicit(&pl->stop, memory_order_acquire)) return NULL;
    unsigned s = atomic_load_explicit(&pl->state, memory_order_relaxed);
    int joined = 0;
    while ((s & POOL_OPEN) && !joined)
      joined = atomic_compare_exchange_weak_explicit(&pl->state, &s, s + 1,
                                                     memory_order_acq_rel,
                                                     memory_order_relaxed);
    if (!joined) continue; /* closed already: the caller did not wait for us */
    pool_drain(pl);
    /* the last one out of a closed job wakes the caller (under mu: no lost wake-up) */
    if (atomic_fetch_sub_explicit(&pl->state, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&pl->mu);
      pthread_cond_signal(&pl->done_cv);
      pthread_mutex_unlock(&pl->mu);
    }
  }
}

static void pool_wake(pool_t* pl) {
  pthread_mutex_lock(&pl->mu);
  atomic_fetch_add_explicit(&pl->gen, 1, memory_order_acq_rel);
  pthread_cond_broadcast(&pl->work_cv);
  pthread_mutex_unlock(&pl->mu);
}

static void pool_parallel_for(void* ctx, bnn_task_fn fn, void* arg, size_t total) {
  pool_t* pl = ctx;
  if (total <= 1 || pl->nworkers == 0) {
    for (size_t i = 0; i < total; i++) fn(arg, i);
    return;
  }
  /* no worker is joined here (the previous call waited for that): the job is ours */
  pl->fn = fn;
  pl->arg = arg;
  pl->total = total;
  atomic_store_explicit(&pl->next, 0, memory_order_relaxed);
  atomic_store_explicit(&pl->state, POOL_OPEN, memory_order_release);
  pool_wake(pl);
  pool_drain(pl); /* the calling thread works too */
  atomic_fetch_and_explicit(&pl->state, ~POOL_OPEN, memory_order_acq_rel); /* close */
  if (!spin_until_zero(&pl->state, pl->spin_ms)) { /* joined workers still running tasks */
    pthread_mutex_lock(&pl->mu);
    while (atomic_load_explicit(&pl->state, memory_order_acquire) != 0)
      pthread_cond_wait(&pl->done_cv, &pl->mu);
    pthread_mutex_unlock(&pl->mu);
  }
}

static void pool_destroy(pool_t* pl) {
  atomic_store_explicit(&pl->stop, 1, memory_order_release);
  pool_wake(pl);
  for (int i = 0; i < pl->nworkers; i++) pthread_join(pl->th[i], NULL);
  free(pl->th);
  free(pl->clk);
  pthread_cond_destroy(&pl->done_cv);
  pthread_cond_destroy(&pl->work_cv);
  pthread_mutex_destroy(&pl->mu);
}

/* 0 on success; on failure nothing is left running. */
static int pool_init(pool_t* pl, int nworkers, double spin_ms) {
  memset(pl, 0, sizeof *pl);
  pthread_mutex_init(&pl->mu, NULL);
  pthread_cond_init(&pl->work_cv, NULL);
  pthread_cond_init(&pl->done_cv, NULL);
  atomic_init(&pl->gen, 0);
  atomic_init(&pl->stop, 0);
  atomic_init(&pl->state, 0);
  atomic_init(&pl->next, 0);
  pl->spin_ms = spin_ms;
  pl->th = malloc((size_t)(nworkers > 0 ? nworkers : 1) * sizeof(pthread_t));
  pl->clk = malloc((size_t)(nworkers > 0 ? nworkers : 1) * sizeof(clockid_t));
  if (!pl->th || !pl->clk) {
    free(pl->th);
    free(pl->clk);
    return -1;
  }
  pl->clk_ok = 1;
  for (int i = 0; i < nworkers; i++) {
    if (pthread_create(&pl->th[i], NULL, pool_worker, pl) != 0) {
      pool_destroy(pl); /* stops and joins the pl->nworkers already started */
      return -1;
    }
    pl->nworkers = i + 1;
    if (pthread_getcpuclockid(pl->th[i], &pl->clk[i]) != 0) pl->clk_ok = 0;
  }
  return 0;
}

/* CPU time of the calling thread and the workers, summed from their own clocks: Linux's
 * process clock adds a running thread's current time slice only at a tick or a context
 * switch, so per run it leaves out most of what spinning or busy workers did. */
static double pool_cpu_ms(const pool_t* pl) {
  if (!pl->clk_ok) return cpu_ms();
  struct timespec t;
  double sum = 0;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  sum += (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
  for (int i = 0; i < pl->nworkers; i++) {
    if (clock_gettime(pl->clk[i], &t) != 0) return cpu_ms();
    sum += (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
  }
  return sum;
}

/* ------------------------------------------------------------------ benchmark */
static int parse_flag_value(int argc, char** argv, int* i, long* v) {
  /* `--flag` alone means 1; `--flag N` takes N */
  if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
    char* end;
    *v = strtol(argv[*i + 1], &end, 10);
    if (*end) return -1;
    (*i)++;
  } else {
    *v = 1;
  }
  return 0;
}

static bnn_conv_params layer_params(long l, long c, long o, long hw, long k, long pad_value) {
  long cin = l == 0 ? c : o;
  bnn_conv_params p = {1, cin, hw, hw, o, k, k, 1, 1, 1, 1,
                       (k - 1) / 2, (k - 1) / 2, k / 2, k / 2, 1, pad_value};
  return p;
}

int main(int argc, char** argv) {
  long c = 256, o = 256, hw = 28, k = 3, layers = 4, runs = 50, warmup = 5, threads = 1;
  long pad_value = 1, check = 1, no_plan = 0, spin_us = 50;
  const char* kernel = "auto";
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (!strcmp(a, "--check") || !strcmp(a, "--no-plan")) {
      long v;
      if (parse_flag_value(argc, argv, &i, &v)) {
        fprintf(stderr, "%s takes 0 or 1\n", a);
        return 2;
      }
      if (!strcmp(a, "--check")) check = v;
      else no_plan = v;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "option %s needs a value (see the header of bench_main.c)\n", a);
      return 2;
    }
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
    else if (!strcmp(a, "--spin-us")) spin_us = v;
    else if (!strcmp(a, "--kernel")) kernel = argv[i + 1];
    else {
      fprintf(stderr, "unknown option %s (see the header of bench_main.c)\n", a);
      return 2;
    }
    i++;
  }
  if (c < 1 || o < 1 || hw < 1 || k < 1 || layers < 1 || runs < 1 || warmup < 0) {
    fprintf(stderr, "all sizes must be >= 1\n");
    return 2;
  }
  if (threads < 1) threads = 1;
  if (threads > 64) threads = 64; /* bnn_conv2d's own limit */
  if (spin_us < 0) spin_us = 0;
  if (bnn_set_kernel(kernel) != BNN_OK) {
    fprintf(stderr, "%s\n", bnn_last_error());
    return 2;
  }
  long cmax = c > o ? c : o;
  size_t act = (size_t)cmax * (size_t)hw * (size_t)hw;
  size_t out_n = (size_t)o * (size_t)hw * (size_t)hw;
  float* x0 = malloc((size_t)c * (size_t)hw * (size_t)hw * sizeof(float)); /* kept */
  float* a = malloc(act * sizeof(float));
  float* b = malloc(act * sizeof(float));
  float* mult = malloc((size_t)o * sizeof(float));
  float* bias = malloc((size_t)o * sizeof(float));
  uint32_t** w = calloc((size_t)layers, sizeof(uint32_t*));
  bnn_conv_plan** plans = calloc((size_t)layers, sizeof(bnn_conv_plan*));
  double* t = malloc((size_t)runs * sizeof(double));
  double* tc = malloc((size_t)runs * sizeof(double));
  if (!x0 || !a || !b || !mult || !bias || !w || !plans || !t || !tc) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  srand(1);
  for (size_t i = 0; i < (size_t)c * (size_t)hw * (size_t)hw; i++)
    x0[i] = (float)(rand() % 2001 - 1000) / 100.0f;
  /* affine values do not change the timing; non-trivial ones make --check stronger */
  for (long i = 0; i < o; i++) {
    mult[i] = 0.5f + (float)(rand() % 1000) / 1000.0f;
    bias[i] = (float)(rand() % 2001 - 1000) / 1000.0f;
  }
  for (long l = 0; l < layers; l++) {
    long cin = l == 0 ? c : o;
    size_t n = (size_t)o * (size_t)(k * k) * (size_t)bnn_weight_words(cin);
    w[l] = malloc(n * sizeof(uint32_t));
    if (!w[l]) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < n; i++) w[l][i] = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
  }
  if (!no_plan) {
    for (long l = 0; l < layers; l++) {
      bnn_conv_params p = layer_params(l, c, o, hw, k, pad_value);
      if (bnn_plan_create(&p, w[l], &plans[l]) != BNN_OK) {
        fprintf(stderr, "bnn_plan_create (layer %ld): %s\n", l, bnn_last_error());
        return 1;
      }
    }
  }
  pool_t pool;
  int use_pool = !no_plan && threads > 1;
  if (use_pool && pool_init(&pool, (int)threads - 1, (double)spin_us / 1e3) != 0) {
    fprintf(stderr, "could not start %ld worker threads\n", threads - 1);
    return 1;
  }
  const int max_tasks = threads > 1 ? 4 * (int)threads : 1;
  const float* last = NULL; /* final layer's output of the last run */
  int rc = 0;
  for (long r = -warmup; r < runs && !rc; r++) {
    double c0 = use_pool ? pool_cpu_ms(&pool) : cpu_ms(), t0 = now_ms();
    const float* in = x0;
    float* out = a;
    for (long l = 0; l < layers; l++) {
      bnn_conv_params p = layer_params(l, c, o, hw, k, pad_value);
      if (no_plan)
        rc = bnn_conv2d(&p, in, w[l], mult, bias, out, (int)threads);
      else if (use_pool)
        rc = bnn_conv2d_planned(plans[l], &p, in, mult, bias, NULL, NULL, out,
                                pool_parallel_for, &pool, max_tasks);
      else /* no parallel-for and max_tasks 1: the calling thread only */
        rc = bnn_conv2d_planned(plans[l], &p, in, mult, bias, NULL, NULL, out, NULL, NULL, 1);
      if (rc != BNN_OK) {
        fprintf(stderr, "%s (layer %ld): %s\n", no_plan ? "bnn_conv2d" : "bnn_conv2d_planned",
                l, bnn_last_error());
        break;
      }
      last = out;
      in = out;
      out = out == a ? b : a;
    }
    double t1 = now_ms(), c1 = use_pool ? pool_cpu_ms(&pool) : cpu_ms();
    if (r >= 0) {
      t[r] = t1 - t0;
      tc[r] = c1 - c0;
    }
  }
  if (use_pool) pool_destroy(&pool);
  for (long l = 0; l < layers; l++) bnn_plan_destroy(plans[l]);
  if (rc) return 1;

  const char* check_s = "off";
  if (check) {
    /* reference: the per-call path on the calling thread, in buffers of its own */
    float* ra = malloc(act * sizeof(float));
    float* rb = malloc(act * sizeof(float));
    if (!ra || !rb) {
      fprintf(stderr, "out of memory for --check\n");
      return 1;
    }
    const float* in = x0;
    float* out = ra;
    const float* ref = NULL;
    for (long l = 0; l < layers; l++) {
      bnn_conv_params p = layer_params(l, c, o, hw, k, pad_value);
      if (bnn_conv2d(&p, in, w[l], mult, bias, out, 1) != BNN_OK) {
        fprintf(stderr, "bnn_conv2d (check, layer %ld): %s\n", l, bnn_last_error());
        return 1;
      }
      ref = out;
      in = out;
      out = out == ra ? rb : ra;
    }
    check_s = "ok";
    if (memcmp(ref, last, out_n * sizeof(float)) != 0) {
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < out_n; i++)
        if (memcmp(&ref[i], &last[i], sizeof(float)) != 0 && bad++ == 0) first = i;
      fprintf(stderr,
              "check: %zu of %zu outputs of the final layer differ from the 1-thread "
              "bnn_conv2d run; first at %zu: %.9g vs %.9g\n",
              bad, out_n, first, (double)last[first], (double)ref[first]);
      check_s = "mismatch";
    }
    free(ra);
    free(rb);
  }
  qsort(t, (size_t)runs, sizeof(double), cmp_double);
  qsort(tc, (size_t)runs, sizeof(double), cmp_double);
  printf("kernel=%s layers=%ld c=%ld o=%ld hw=%ld k=%ld threads=%ld median_ms=%.4f min_ms=%.4f "
         "cpu_median_ms=%.4f plan=%s pool=%s check=%s\n",
         bnn_kernel_name(), layers, c, o, hw, k, threads, t[runs / 2], t[0], tc[runs / 2],
         no_plan ? "per-call" : "cached",
         use_pool ? "persistent" : (no_plan && threads > 1) ? "per-call" : "none", check_s);
  for (long l = 0; l < layers; l++) free(w[l]);
  free(w);
  free(plans);
  free(x0);
  free(a);
  free(b);
  free(mult);
  free(bias);
  free(t);
  free(tc);
  return strcmp(check_s, "mismatch") == 0 ? 1 : 0;
}
