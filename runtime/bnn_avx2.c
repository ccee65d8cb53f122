/* AVX2 variant (compiled with -mavx2 -mpopcnt): pixel-in-lanes GEMM like the AVX-512
 * one, 4 pixels (uint64 lanes) per ymm, popcount by nibble lookup (vpshufb) with byte
 * accumulators flushed into 64-bit lanes by vpsadbw. */
#include <immintrin.h>

#include "bnn_internal.h"

#define L 4
#define NB 4
#define MV 2

static int avx2_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}

static void avx2_pack_rows(const bnn_plan* p, const float* x, uint64_t* pin, int64_t y0,
                           int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64, W = p->w;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t yy = y0; yy < y1; yy++) {
    uint64_t* row = pin + ((yy + p->pt) * p->wp + p->pl) * cw;
    for (int64_t j = 0; j < cw; j++) {
      int64_t c0 = 64 * j, nc = p->cg - c0 < 64 ? p->cg - c0 : 64;
      const float* src0 = x + c0 * hw + yy * W;
      int64_t x0 = 0;
      for (; x0 + 8 <= W; x0 += 8) {
        /* words of pixels x0..x0+3 in w0, x0+4..x0+7 in w1 (4 x uint64 each) */
        __m256i w0 = _mm256_setzero_si256(), w1 = _mm256_setzero_si256();
        const float* src = src0 + x0;
        for (int64_t c = 0; c < nc; c++, src += hw) {
          /* !(v >= 0): all-ones for negatives and NaN, widened to 64-bit lanes */
          __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(src), zero,
                                                          _CMP_NGE_UQ));
          __m256i bit = _mm256_set1_epi64x((long long)(UINT64_C(1) << c));
          __m256i n0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(neg));
          __m256i n1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(neg, 1));
          w0 = _mm256_or_si256(w0, _mm256_and_si256(n0, bit));
          w1 = _mm256_or_si256(w1, _mm256_and_si256(n1, bit));
        }
        if (cw == 1) {
          _mm256_storeu_si256((__m256i*)(row + x0), w0);
          _mm256_storeu_si256((__m256i*)(row + x0 + 4), w1);
        } else {
          uint64_t wd[8];
          _mm256_storeu_si256((__m256i*)wd, w0);
          _mm256_storeu_si256((__m256i*)(wd + 4), w1);
          for (int i = 0; i < 8; i++) row[(x0 + i) * cw + j] = wd[i];
        }
      }
      for (; x0 < W; x0++) {
        uint64_t wd = 0;
        for (int64_t c = 0; c < nc; c++)
          if (!(src0[c * hw + x0] >= 0.0f)) wd |= UINT64_C(1) << c;
        row[x0 * cw + j] = wd;
      }
    }
  }
}

/* Nibble-split popcount: (a ^ w) & 0x0f.. == (a & 0x0f..) ^ (w & 0x0f..), so the input's
 * nibbles are split once per (pixel vector, k) and the weights' once per call (p->wnib);
 * per (pixel vector, channel, k) that leaves 2 xor + 2 vpshufb + 2 byte adds. Byte
 * counters grow by <= 8 per step and are flushed with vpsadbw every 31 steps. */
static void avx2_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                      int64_t g, float* y) {
  const int64_t K = p->k64;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  for (int64_t ob = 0; ob < p->ogp / NB; ob++) {
    const uint64_t* wn = p->wnib + 2 * (g * p->ogp + ob * NB) * K;
    for (int64_t b = 0; b < nblk; b += MV) {
      int mv = nblk - b >= MV ? MV : 1;
      uint64_t acc[MV][NB][L] = {{{0}}};
      for (int64_t k0 = 0; k0 < K; k0 += 31) {
        int64_t k1 = k0 + 31 < K ? k0 + 31 : K;
        __m256i bacc[MV][NB];
        for (int m = 0; m < MV; m++)
          for (int o = 0; o < NB; o++) bacc[m][o] = _mm256_setzero_si256();
        for (int64_t k = k0; k < k1; k++) {
          __m256i alo[MV], ahi[MV];
          for (int m = 0; m < MV; m++) {
            __m256i av =
                _mm256_load_si256((const __m256i*)(a + ((b + (m < mv ? m : 0)) * K + k) * L));
            alo[m] = _mm256_and_si256(av, low4);
            ahi[m] = _mm256_and_si256(_mm256_srli_epi16(av, 4), low4);
          }
          for (int o = 0; o < NB; o++) {
            __m256i wl = _mm256_set1_epi64x((long long)wn[2 * (k * NB + o)]);
            __m256i wh = _mm256_set1_epi64x((long long)wn[2 * (k * NB + o) + 1]);
            for (int m = 0; m < MV; m++) {
              __m256i cl = _mm256_shuffle_epi8(lut, _mm256_xor_si256(alo[m], wl));
              __m256i ch = _mm256_shuffle_epi8(lut, _mm256_xor_si256(ahi[m], wh));
              bacc[m][o] = _mm256_add_epi8(bacc[m][o], _mm256_add_epi8(cl, ch));
            }
          }
        }
        for (int m = 0; m < MV; m++)
          for (int o = 0; o < NB; o++) {
            uint64_t s[L];
            _mm256_storeu_si256((__m256i*)s, _mm256_sad_epu8(bacc[m][o], _mm256_setzero_si256()));
            for (int l = 0; l < L; l++) acc[m][o][l] += s[l];
          }
      }
      for (int m = 0; m < mv; m++) {
        int64_t blk = blk0 + b + m;
        for (int o = 0; o < NB; o++) {
          int64_t ol = ob * NB + o;
          if (ol >= p->og) break;
          int64_t oc = g * p->og + ol;
          for (int l = 0; l < L; l++) {
            int64_t pix = blk * L + l;
            if (pix >= p->npix) break;
            int32_t v =
                (int32_t)p->ktotal - 2 * (int32_t)acc[m][o][l] - bnn_corr(p, g, pix, ol);
            y[oc * p->npix + pix] = bnn_affine(p, oc, v);
          }
        }
      }
    }
  }
}

const bnn_variant bnn_variant_avx2 = {"avx2", L, NB, MV, 1, 1, avx2_supported, avx2_pack_rows,
                                      avx2_gemm};
