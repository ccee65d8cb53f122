/* AVX2 variant (compiled with -mavx2 -mpopcnt): pixel-in-lanes GEMM with a nibble-split
 * A. A ymm holds word k of 2 pixels, each as its two nibble halves (the driver writes A
 * that way, see bnn_variant.wnib): [p0 & 0x0f.., (p0 >> 4) & 0x0f.., p1 lo, p1 hi]. The
 * weight panel p->wnib holds [wlo, whi, wlo, whi] per (k, channel), used as the memory
 * operand of vpxor (a broadcast, even vbroadcasti128, takes a shuffle pipe on Zen 3), and (a ^ w) & 0x0f.. == (a & 0x0f..) ^ (w & 0x0f..) leaves per (ymm, channel, k): vpxor,
 * vpshufb (nibble popcount table), vpaddb into byte counters = 3 vector ops per 128 binary
 * MACs, nothing else in the loop. Byte counters grow by <= 4 per k and are flushed with
 * vpsadbw every 63 k. Register tile: 2 ymm (4 pixels) x 4 channels = 8 counters, 2 A
 * vectors, 2 temporaries, the table: no spills in 16 ymm registers (the previous tile
 * spilled 6 of its 8 counters to the stack). */
#include <immintrin.h>

#include "bnn_internal.h"

#define L 2  /* pixels per block (per ymm) */
#define NB 4
#define MV 2 /* ymm (blocks) per tile: 4 pixels */
#define KFLUSH 63

static int avx2_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}

static void avx2_pack_rows(const bnn_plan* p, const float* x, const float* t, uint64_t* pin,
                           int64_t y0, int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64, W = p->w;
  for (int64_t yy = y0; yy < y1; yy++) {
    uint64_t* row = pin + ((yy + p->pt) * p->wp + p->pl) * cw;
    for (int64_t j = 0; j < cw; j++) {
      int64_t c0 = 64 * j, nc = p->cg - c0 < 64 ? p->cg - c0 : 64;
      const float* src0 = x + c0 * hw + yy * W;
      for (int64_t x0 = 0; x0 < W; x0 += 8) {
        /* words of pixels x0..x0+3 in w0, x0+4..x0+7 in w1 (4 x uint64 each); a row's
         * last < 8 pixels through a masked load (masked-off lanes read 0.0: bit 0, and
         * are not stored) instead of a branchy scalar loop */
        const int64_t nx = W - x0 < 8 ? W - x0 : 8;
        const __m256i lm =
            _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nx), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i w0 = _mm256_setzero_si256(), w1 = _mm256_setzero_si256();
        const float* src = src0 + x0;
        for (int64_t c = 0; c < nc; c++, src += hw) {
          /* 64 channel planes are read in parallel, too many streams for the hardware
           * prefetchers: fetch the same pixels of this channel's next row */
          if ((x0 & 15) == 0) _mm_prefetch((const char*)(src + W), _MM_HINT_T0);
          /* !(v >= t): all-ones below the threshold and for NaN, widened to 64-bit lanes */
          __m256 v = nx == 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, lm);
          const __m256 thr = _mm256_set1_ps(t ? t[c0 + c] : 0.0f);
          __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, thr, _CMP_NGE_UQ));
          __m256i bit = _mm256_set1_epi64x((long long)(UINT64_C(1) << c));
          __m256i n0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(neg));
          __m256i n1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(neg, 1));
          w0 = _mm256_or_si256(w0, _mm256_and_si256(n0, bit));
          w1 = _mm256_or_si256(w1, _mm256_and_si256(n1, bit));
        }
        if (cw == 1 && nx == 8) {
          _mm256_storeu_si256((__m256i*)(row + x0), w0);
          _mm256_storeu_si256((__m256i*)(row + x0 + 4), w1);
        } else {
          uint64_t wd[8];
          _mm256_storeu_si256((__m256i*)wd, w0);
          _mm256_storeu_si256((__m256i*)(wd + 4), w1);
          for (int64_t i = 0; i < nx; i++) row[(x0 + i) * cw + j] = wd[i];
        }
      }
    }
  }
}

/* One channel pair's 4 pixels each (tile of 2 blocks): y = bias + mult * (ktotal - 2 pc
 * - corr), stored as 4 contiguous floats per channel. pc: [o0 px0..3, o1 px0..3]. */
static inline void store_pair(const bnn_plan* p, __m256i pc, int64_t blk, int mv, int64_t g,
                              int64_t ol0, float* y) {
  const int64_t pix0 = blk * L;
  int64_t valid = p->npix - pix0;
  if (valid > L * mv) valid = L * mv;
  __m256i v = _mm256_sub_epi32(_mm256_set1_epi32((int)p->ktotal), _mm256_add_epi32(pc, pc));
  if (p->corr && (p->blk_border[blk] || (mv > 1 && p->blk_border[blk + 1]))) {
    int32_t cv[8] = {0};
    for (int h = 0; h < 2; h++)
      if (ol0 + h < p->og)
        for (int64_t l = 0; l < valid; l++) cv[4 * h + l] = bnn_corr(p, g, pix0 + l, ol0 + h);
    v = _mm256_sub_epi32(v, _mm256_loadu_si256((const __m256i*)cv));
  }
  const int64_t oc0 = g * p->og + ol0;
  const int ok1 = ol0 + 1 < p->og;
  __m256 mult = _mm256_set_m128(_mm_set1_ps(ok1 ? p->mult[oc0 + 1] : 0.0f),
                                _mm_set1_ps(p->mult[oc0]));
  __m256 bias = _mm256_set_m128(_mm_set1_ps(ok1 ? p->bias[oc0 + 1] : 0.0f),
                                _mm_set1_ps(p->bias[oc0]));
  __m256 f = _mm256_add_ps(bias, _mm256_mul_ps(mult, _mm256_cvtepi32_ps(v)));
  float* dst0 = y + oc0 * p->npix + pix0;
  if (valid == 4) {
    _mm_storeu_ps(dst0, _mm256_castps256_ps128(f));
    if (ok1) _mm_storeu_ps(dst0 + p->npix, _mm256_extractf128_ps(f, 1));
  } else {
    float t[8];
    _mm256_storeu_ps(t, f);
    for (int64_t l = 0; l < valid; l++) dst0[l] = t[l];
    if (ok1)
      for (int64_t l = 0; l < valid; l++) dst0[p->npix + l] = t[4 + l];
  }
}

static void avx2_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                      int64_t g, int64_t ob0, int64_t ob1, float* y) {
  const int64_t K = p->k64;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t ob = ob0; ob < ob1; ob++) {
    const uint64_t* wn = p->wnib + 4 * (g * p->ogp + ob * NB) * K;
    for (int64_t b = 0; b < nblk; b += MV) {
      const int mv = nblk - b >= MV ? MV : 1;
      /* A of the tile's blocks: 4 words per k; a missing second block repeats the first */
      const uint64_t* a0 = a + b * K * 2 * L;
      const uint64_t* a1 = mv > 1 ? a0 + K * 2 * L : a0;
      __m256i acc[MV][NB];
      for (int m = 0; m < MV; m++)
        for (int o = 0; o < NB; o++) acc[m][o] = _mm256_setzero_si256();
      for (int64_t k0 = 0; k0 < K; k0 += KFLUSH) {
        const int64_t k1 = k0 + KFLUSH < K ? k0 + KFLUSH : K;
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
        __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
        /* the k loop in asm: gcc's allocation of the intrinsics version copied every
         * counter through another register each step (8 extra moves per 24 ops) */
        const uint64_t* pa0 = a0 + 4 * k0;
        const int64_t d1 = (a1 - a0) * 8; /* bytes from block 0 to block 1 (or 0) */
        const uint64_t* pw = wn + 4 * NB * k0;
        int64_t n = k1 - k0;
        __m256i x0, x1, t0, t1;
        __asm__ volatile(
            "1:\n\t"
            "vmovdqa (%[pa0]), %[x0]\n\t"
            "vmovdqa (%[pa0], %[d1]), %[x1]\n\t"
            "vpxor 0(%[pw]), %[x0], %[t0]\n\t"
            "vpxor 0(%[pw]), %[x1], %[t1]\n\t"
            "vpshufb %[t0], %[lut], %[t0]\n\t"
            "vpshufb %[t1], %[lut], %[t1]\n\t"
            "vpaddb %[t0], %[c00], %[c00]\n\t"
            "vpaddb %[t1], %[c10], %[c10]\n\t"
            "vpxor 32(%[pw]), %[x0], %[t0]\n\t"
            "vpxor 32(%[pw]), %[x1], %[t1]\n\t"
            "vpshufb %[t0], %[lut], %[t0]\n\t"
            "vpshufb %[t1], %[lut], %[t1]\n\t"
            "vpaddb %[t0], %[c01], %[c01]\n\t"
            "vpaddb %[t1], %[c11], %[c11]\n\t"
            "vpxor 64(%[pw]), %[x0], %[t0]\n\t"
            "vpxor 64(%[pw]), %[x1], %[t1]\n\t"
            "vpshufb %[t0], %[lut], %[t0]\n\t"
            "vpshufb %[t1], %[lut], %[t1]\n\t"
            "vpaddb %[t0], %[c02], %[c02]\n\t"
            "vpaddb %[t1], %[c12], %[c12]\n\t"
            "vpxor 96(%[pw]), %[x0], %[t0]\n\t"
            "vpxor 96(%[pw]), %[x1], %[t1]\n\t"
            "vpshufb %[t0], %[lut], %[t0]\n\t"
            "vpshufb %[t1], %[lut], %[t1]\n\t"
            "vpaddb %[t0], %[c03], %[c03]\n\t"
            "vpaddb %[t1], %[c13], %[c13]\n\t"
            "addq $32, %[pa0]\n\t"
            "subq $-128, %[pw]\n\t"
            "decq %[n]\n\t"
            "jnz 1b\n\t"
            : [pa0] "+r"(pa0), [pw] "+r"(pw), [n] "+r"(n), [c00] "+x"(c00),
              [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03), [c10] "+x"(c10),
              [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13), [x0] "=&x"(x0),
              [x1] "=&x"(x1), [t0] "=&x"(t0), [t1] "=&x"(t1)
            : [lut] "x"(lut), [d1] "r"(d1)
            : "cc", "memory");
        const __m256i z = _mm256_setzero_si256();
        acc[0][0] = _mm256_add_epi64(acc[0][0], _mm256_sad_epu8(c00, z));
        acc[0][1] = _mm256_add_epi64(acc[0][1], _mm256_sad_epu8(c01, z));
        acc[0][2] = _mm256_add_epi64(acc[0][2], _mm256_sad_epu8(c02, z));
        acc[0][3] = _mm256_add_epi64(acc[0][3], _mm256_sad_epu8(c03, z));
        acc[1][0] = _mm256_add_epi64(acc[1][0], _mm256_sad_epu8(c10, z));
        acc[1][1] = _mm256_add_epi64(acc[1][1], _mm256_sad_epu8(c11, z));
        acc[1][2] = _mm256_add_epi64(acc[1][2], _mm256_sad_epu8(c12, z));
        acc[1][3] = _mm256_add_epi64(acc[1][3], _mm256_sad_epu8(c13, z));
      }
      /* acc[m][o] (u64 lanes, < 2^31): [px 2m lo, px 2m hi, px 2m+1 lo, px 2m+1 hi] */
      __m256i u[NB];
      for (int o = 0; o < NB; o++) u[o] = _mm256_hadd_epi32(acc[0][o], acc[1][o]);
      /* u[o] = [p0lo p0hi p2lo p2hi | p1lo p1hi p3lo p3hi] */
      for (int o = 0; o < NB; o += 2) {
        if (ob * NB + o >= p->og) break;
        __m256i v = _mm256_hadd_epi32(u[o], u[o + 1]); /* [p0 p2 q0 q2 | p1 p3 q1 q3] */
        v = _mm256_permutevar8x32_epi32(v, perm);       /* [p0 p1 p2 p3 q0 q1 q2 q3] */
        store_pair(p, v, blk0 + b, mv, g, ob * NB + o, y);
      }
    }
  }
}

const bnn_variant bnn_variant_avx2 = {"avx2", L, NB, MV, 1, 1, avx2_supported, avx2_pack_rows,
                                      avx2_gemm};
