/* Standalone exactness test: random shapes through every kernel variant available on
 * this CPU, compared bit-exactly against the portable variant and a naive direct
 * convolution. Built statically for aarch64 (or armhf, with bnn_neon.c compiled with
 * -mfpu=neon) it checks the NEON kernel under qemu-aarch64-static / qemu-arm-static.
 * Usage: test_runner [iterations] [seed]
 *        (every third random case adds per-channel thresholds, bit = x >= t[c])
 *        test_runner --cases FILE   (cases with expected outputs written by
 *                                    tests/test_neon_qemu.py from the numpy reference;
 *                                    every variant, 1-4 threads)
 * Prints "N passed, N failed" and exits non-zero on any mismatch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnn_internal.h"

static uint64_t rng_state;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}
static int64_t rint_in(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint32_t)(hi - lo + 1)); }

static const bnn_variant* variants[] = {
    &bnn_variant_portable,
#if defined(__x86_64__)
    &bnn_variant_avx2,   &bnn_variant_avx512,
#endif
#if defined(__aarch64__) || defined(__arm__)
    &bnn_variant_neon,
#endif
};

/* naive reference: integer accumulation then the same affine in float; input bits are
 * x >= t[c] (t NULL: 0), NaN -> -1 */
static void naive(const bnn_conv_params* p, int64_t ho, int64_t wo, const float* x,
                  const float* t, const int8_t* wpm, const float* mult, const float* bias,
                  float* y) {
  int64_t cg = p->c / p->group, og = p->o / p->group;
  for (int64_t n = 0; n < p->n; n++)
    for (int64_t o = 0; o < p->o; o++) {
      int64_t g = o / og;
      for (int64_t oy = 0; oy < ho; oy++)
        for (int64_t ox = 0; ox < wo; ox++) {
          int32_t acc = 0;
          for (int64_t c = 0; c < cg; c++)
            for (int64_t ky = 0; ky < p->kh; ky++)
              for (int64_t kx = 0; kx < p->kw; kx++) {
                int64_t iy = oy * p->sh - p->pad_top + ky * p->dh;
                int64_t ix = ox * p->sw - p->pad_left + kx * p->dw;
                int a;
                if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w)
                  a = (int)p->pad_value;
                else
                  a = x[((n * p->c + g * cg + c) * p->h + iy) * p->w + ix] >=
                              (t ? t[g * cg + c] : 0.0f)
                          ? 1
                          : -1;
                acc += a * wpm[((o * cg + c) * p->kh + ky) * p->kw + kx];
              }
          float t = mult[o] * (float)acc;
          y[((n * p->o + o) * ho + oy) * wo + ox] = bias[o] + t;
        }
    }
}

/* --cases FILE: "BNNC", int64 count, then per case int64 n c o h w kh kw sh sw dh dw
 * top left bottom right group pad_value, float x[n c h w], uint32 w[o kh kw cw],
 * float mult[o], float bias[o], float y[n o ho wo] (expected). Little-endian. */
static int read_all(FILE* f, void* dst, size_t n) { return fread(dst, 1, n, f) == n; }

static int run_cases(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    printf("cannot open %s\n", path);
    return 2;
  }
  char magic[4];
  int64_t count = 0;
  if (!read_all(f, magic, 4) || memcmp(magic, "BNNC", 4) || !read_all(f, &count, 8)) {
    printf("%s: not a cases file\n", path);
    return 2;
  }
  int passed = 0, failed = 0;
  size_t nv = sizeof variants / sizeof variants[0];
  for (int64_t ci = 0; ci < count; ci++) {
    int64_t q[17];
    if (!read_all(f, q, sizeof q)) {
      printf("%s: truncated at case %lld\n", path, (long long)ci);
      return 2;
    }
    bnn_conv_params p = {q[0], q[1], q[3], q[4], q[2], q[5], q[6], q[7], q[8], q[9], q[10],
                         q[11], q[12], q[13], q[14], q[15], q[16]};
    int64_t ho, wo;
    if (bnn_conv2d_output_shape(&p, &ho, &wo) != BNN_OK) {
      printf("case %lld: %s\n", (long long)ci, bnn_last_error());
      return 2;
    }
    size_t nx = (size_t)(p.n * p.c * p.h * p.w), ny = (size_t)(p.n * p.o * ho * wo);
    size_t nw = (size_t)(p.o * p.kh * p.kw * bnn_weight_words(p.c / p.group));
    float* x = malloc(nx * 4);
    uint32_t* w = malloc(nw * 4);
    float* mult = malloc((size_t)p.o * 4);
    float* bias = malloc((size_t)p.o * 4);
    float* want = malloc(ny * 4);
    float* y = malloc(ny * 4);
    if (!read_all(f, x, nx * 4) || !read_all(f, w, nw * 4) || !read_all(f, mult, (size_t)p.o * 4) ||
        !read_all(f, bias, (size_t)p.o * 4) || !read_all(f, want, ny * 4)) {
      printf("%s: truncated at case %lld\n", path, (long long)ci);
      return 2;
    }
    for (size_t v = 0; v < nv; v++) {
      if (!variants[v]->supported()) continue;
      if (bnn_set_kernel(variants[v]->name) != BNN_OK) {
        printf("FAIL case %lld: %s\n", (long long)ci, bnn_last_error());
        failed++;
        continue;
      }
      for (int threads = 1; threads <= 4; threads++) {
        for (size_t i = 0; i < ny; i++) y[i] = 12345.0f;
        int rc = bnn_conv2d(&p, x, w, mult, bias, y, threads);
        if (rc == BNN_OK && memcmp(y, want, ny * 4) == 0) {
          passed++;
        } else {
          size_t bad = 0;
          while (bad < ny && y[bad] == want[bad]) bad++;
          printf("FAIL case %lld %s threads=%d rc=%d (%s): y[%zu]=%g want %g\n", (long long)ci,
                 variants[v]->name, threads, rc, bnn_last_error(), bad, bad < ny ? y[bad] : 0.0,
                 bad < ny ? want[bad] : 0.0);
          failed++;
        }
      }
    }
    free(x); free(w); free(mult); free(bias); free(want); free(y);
  }
  fclose(f);
  printf("variants:");
  for (size_t v = 0; v < nv; v++)
    if (variants[v]->supported()) printf(" %s", variants[v]->name);
  printf("\ncases: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc > 2 && !strcmp(argv[1], "--cases")) return run_cases(argv[2]);
  int iters = argc > 1 ? atoi(argv[1]) : 200;
  rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 88172645463325252ull;
  int passed = 0, failed = 0;
  size_t nv = sizeof variants / sizeof variants[0];
  for (int it = 0; it < iters; it++) {
    bnn_conv_params p;
    memset(&p, 0, sizeof p);
    p.group = rint_in(1, 4) == 4 ? rint_in(2, 3) : 1;
    int64_t cg = rnd() % 3 == 0 ? rint_in(1, 140) : (int64_t[]){1, 3, 31, 32, 33, 63, 64, 65, 100, 128}[rnd() % 10];
    p.c = cg * p.group;
    p.o = p.group * rint_in(1, 20);
    p.n = rint_in(1, 2);
    p.kh = rint_in(1, 4); p.kw = rint_in(1, 4);
    p.sh = rint_in(1, 3); p.sw = rint_in(1, 3);
    p.dh = rint_in(1, 2); p.dw = rint_in(1, 2);
    p.pad_top = rint_in(0, 2); p.pad_left = rint_in(0, 2);
    p.pad_bottom = rint_in(0, 2); p.pad_right = rint_in(0, 2);
    p.pad_value = rnd() & 1;
    p.h = rint_in(1, 14); p.w = rint_in(1, 19);
    int64_t ho, wo;
    if (bnn_conv2d_output_shape(&p, &ho, &wo) != BNN_OK) { it--; continue; }
    size_t nx = (size_t)(p.n * p.c * p.h * p.w), ny = (size_t)(p.n * p.o * ho * wo);
    size_t nw = (size_t)(p.o * cg * p.kh * p.kw);
    int64_t cw = bnn_weight_words(cg);
    float* x = malloc(nx * sizeof(float));
    float* thr = malloc((size_t)p.c * sizeof(float));
    int8_t* wpm = malloc(nw);
    uint32_t* wq = malloc((size_t)(p.o * p.kh * p.kw * cw) * sizeof(uint32_t));
    float* mult = malloc((size_t)p.o * sizeof(float));
    float* bias = malloc((size_t)p.o * sizeof(float));
    float* yref = malloc(ny * sizeof(float));
    float* y = malloc(ny * sizeof(float));
    for (size_t i = 0; i < nx; i++) {
      uint32_t r = rnd() % 16;
      x[i] = r == 0 ? 0.0f : r == 1 ? -0.0f : r == 2 ? NAN : ((float)(rnd() % 2001) - 1000.0f) / 100.0f;
    }
    /* every third case: per-channel thresholds (RSign) from the same value grid as x, so
     * that ties (x == t: +1) occur, and the odd -0.0 / NaN threshold */
    const float* t = NULL;
    if (it % 3 == 2) {
      for (int64_t c = 0; c < p.c; c++) {
        uint32_t r = rnd() % 16;
        thr[c] = r == 0 ? -0.0f : r == 1 ? NAN : ((float)(rnd() % 2001) - 1000.0f) / 100.0f;
      }
      t = thr;
    }
    for (size_t i = 0; i < nw; i++) wpm[i] = (rnd() & 1) ? 1 : -1;
    int affine = it % 2;
    for (int64_t i = 0; i < p.o; i++) {
      mult[i] = affine ? ((float)(rnd() % 1000) - 500.0f) / 123.0f : 1.0f;
      bias[i] = affine ? ((float)(rnd() % 1000) - 500.0f) / 7.0f : 0.0f;
    }
    bnn_pack_weights(wpm, p.o, cg, p.kh, p.kw, wq);
    naive(&p, ho, wo, x, t, wpm, mult, bias, yref);
    for (size_t v = 0; v < nv; v++) {
      if (!variants[v]->supported()) continue;
      for (size_t i = 0; i < ny; i++) y[i] = 12345.0f;
      int rc = bnn_conv2d_with_variant(variants[v], &p, x, wq, mult, bias, t, y);
      int ok = rc == BNN_OK && memcmp(y, yref, ny * sizeof(float)) == 0;
      if (ok) {
        passed++;
      } else {
        failed++;
        size_t bad = 0;
        while (bad < ny && y[bad] == yref[bad]) bad++;
        printf("FAIL %s rc=%d (%s) n=%lld c=%lld o=%lld g=%lld hw=%lldx%lld k=%lldx%lld "
               "s=%lld,%lld d=%lld,%lld pads=%lld,%lld,%lld,%lld pv=%lld: y[%zu]=%g want %g\n",
               variants[v]->name, rc, bnn_last_error(), (long long)p.n, (long long)p.c,
               (long long)p.o, (long long)p.group, (long long)p.h, (long long)p.w,
               (long long)p.kh, (long long)p.kw, (long long)p.sh, (long long)p.sw,
               (long long)p.dh, (long long)p.dw, (long long)p.pad_top, (long long)p.pad_left,
               (long long)p.pad_bottom, (long long)p.pad_right, (long long)p.pad_value, bad,
               bad < ny ? y[bad] : 0.0, bad < ny ? yref[bad] : 0.0);
      }
    }
    free(x); free(thr); free(wpm); free(wq); free(mult); free(bias); free(yref); free(y);
  }
  printf("variants:");
  for (size_t v = 0; v < nv; v++)
    if (variants[v]->supported()) printf(" %s", variants[v]->name);
  printf("\n%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
