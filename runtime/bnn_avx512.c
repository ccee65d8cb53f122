/* AVX-512 variant: VPOPCNTQ on 512-bit vectors. Compiled with
 * -mavx512f -mavx512vl -mavx512bw -mavx512vpopcntdq; only called when cpuid says so.
 *
 * Pixel-in-lanes GEMM: one zmm holds word k of 8 output pixels; a weight word of one
 * output channel is broadcast against it, so every accumulator lane belongs to one
 * (pixel, channel) pair and no horizontal reductions are needed. Register tile:
 * MV pixel vectors (8 px each) x NB=8 output channels = 24 zmm accumulators. */
#include <immintrin.h>
#include <string.h>

#include "bnn_internal.h"

#define L 8
#define NB 8

static int avx512_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vpopcntdq");
}

static void avx512_pack_rows(const bnn_plan* p, const float* x, const float* t, uint64_t* pin,
                             int64_t y0, int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64, W = p->w;
  uint64_t tmp[16];
  for (int64_t yy = y0; yy < y1; yy++) {
    uint64_t* row = pin + ((yy + p->pt) * p->wp + p->pl) * cw;
    for (int64_t j = 0; j < cw; j++) {
      int64_t c0 = 64 * j, nc = p->cg - c0 < 64 ? p->cg - c0 : 64;
      const float* src0 = x + c0 * hw + yy * W;
      for (int64_t x0 = 0; x0 < W; x0 += 16) {
        int64_t nx = W - x0 < 16 ? W - x0 : 16;
        __mmask16 lm = (__mmask16)((1u << nx) - 1);
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        const float* src = src0 + x0;
        for (int64_t c = 0; c < nc; c++, src += hw) {
          /* 64 channel planes read in parallel are too many streams for the hardware
           * prefetchers: fetch the same pixels of this channel's next row */
          _mm_prefetch((const char*)(src + W), _MM_HINT_T0);
          __m512 v = _mm512_maskz_loadu_ps(lm, src);
          /* !(v >= t): true below the threshold and for NaN */
          const __m512 thr = _mm512_set1_ps(t ? t[c0 + c] : 0.0f);
          __mmask16 m = _mm512_mask_cmp_ps_mask(lm, v, thr, _CMP_NGE_UQ);
          __m512i bit = _mm512_set1_epi64((long long)(UINT64_C(1) << c));
          a0 = _mm512_mask_or_epi64(a0, (__mmask8)m, a0, bit);
          a1 = _mm512_mask_or_epi64(a1, (__mmask8)(m >> 8), a1, bit);
        }
        if (cw == 1 && nx == 16) {
          _mm512_storeu_si512(row + x0, a0);
          _mm512_storeu_si512(row + x0 + 8, a1);
        } else {
          _mm512_storeu_si512(tmp, a0);
          _mm512_storeu_si512(tmp + 8, a1);
          for (int64_t i = 0; i < nx; i++) row[(x0 + i) * cw + j] = tmp[i];
        }
      }
    }
  }
}

static inline void epilogue(const bnn_plan* p, __m512i acc, int64_t blk, int64_t g,
                            int64_t ol, float* y) {
  if (ol >= p->og) return;
  const int64_t oc = g * p->og + ol;
  __m256i pop = _mm512_cvtepi64_epi32(acc);
  __m256i v = _mm256_sub_epi32(_mm256_set1_epi32((int)p->ktotal), _mm256_add_epi32(pop, pop));
  if (p->corr16 && p->blk_border[blk]) {
    __m512i idx = _mm512_castsi256_si512(
        _mm256_loadu_si256((const __m256i*)(p->pix_cls_raw + blk * L)));
    __m512i tab = _mm512_loadu_si512(p->corr16 + (g * p->ogp + ol) * 16);
    v = _mm256_sub_epi32(v, _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, tab)));
  } else if (p->corr && p->blk_border[blk]) {
    __m256i idx = _mm256_loadu_si256((const __m256i*)(p->pix_cls + blk * L));
    const int32_t* cb = p->corr + g * p->ncls * p->ogp + ol;
    v = _mm256_sub_epi32(v, _mm256_i32gather_epi32((const int*)cb, idx, 4));
  }
  __m256 f = _mm256_cvtepi32_ps(v);
  f = _mm256_mul_ps(_mm256_set1_ps(p->mult[oc]), f);
  f = _mm256_add_ps(_mm256_set1_ps(p->bias[oc]), f);
  float* dst = y + oc * p->npix + blk * L;
  int64_t valid = p->npix - blk * L;
  if (valid >= L)
    _mm256_storeu_ps(dst, f);
  else
    _mm256_mask_storeu_ps(dst, (__mmask8)((1u << valid) - 1), f);
}

#define DEFINE_TILE(MV)                                                                     \
  static inline __attribute__((always_inline)) void tile_##MV(                              \
      const bnn_plan* p, const uint64_t* a, const uint64_t* wp, int64_t blk, int64_t g,      \
      int64_t ol0, float* y) {                                                               \
    const int64_t K = p->k64;                                                                \
    __m512i acc[MV][NB];                                                                     \
    _Pragma("GCC unroll 8") for (int m = 0; m < MV; m++)                                     \
      _Pragma("GCC unroll 8") for (int o = 0; o < NB; o++) acc[m][o] =                       \
        _mm512_setzero_si512();                                                              \
    for (int64_t k = 0; k < K; k++) {                                                        \
      __m512i av[MV];                                                                        \
      _Pragma("GCC unroll 8") for (int m = 0; m < MV; m++) av[m] =                           \
        _mm512_load_si512(a + (m * K + k) * L);                                              \
      _Pragma("GCC unroll 8") for (int o = 0; o < NB; o++) {                                 \
        __m512i wv = _mm512_set1_epi64((long long)wp[k * NB + o]);                           \
        _Pragma("GCC unroll 8") for (int m = 0; m < MV; m++) acc[m][o] = _mm512_add_epi64(   \
          acc[m][o], _mm512_popcnt_epi64(_mm512_xor_si512(av[m], wv)));                      \
      }                                                                                      \
    }                                                                                        \
    _Pragma("GCC unroll 8") for (int m = 0; m < MV; m++)                                     \
      _Pragma("GCC unroll 8") for (int o = 0; o < NB; o++)                                   \
        epilogue(p, acc[m][o], blk + m, g, ol0 + o, y);                                      \
  }

DEFINE_TILE(3)
DEFINE_TILE(2)
DEFINE_TILE(1)

static void avx512_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                        int64_t g, int64_t ob0, int64_t ob1, float* y) {
  const int64_t K = p->k64;
  for (int64_t ob = ob0; ob < ob1; ob++) {
    const uint64_t* wp = p->wpan + (g * p->ogp + ob * NB) * K;
    int64_t b = 0;
    for (; b + 3 <= nblk; b += 3) tile_3(p, a + b * K * L, wp, blk0 + b, g, ob * NB, y);
    if (nblk - b == 2)
      tile_2(p, a + b * K * L, wp, blk0 + b, g, ob * NB, y);
    else if (nblk - b == 1)
      tile_1(p, a + b * K * L, wp, blk0 + b, g, ob * NB, y);
  }
}

const bnn_variant bnn_variant_avx512 = {"avx512", L, NB, 3, 0, 1, avx512_supported, avx512_pack_rows,
                                        avx512_gemm};
