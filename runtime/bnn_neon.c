/* ARM NEON variant: pixel-in-lanes GEMM, 2 pixels (uint64 lanes) per q register,
 * eor + cnt (bytes) + uadalp (pairwise add-accumulate into u16).
 * aarch64: NEON is mandatory. 32-bit ARM: this file alone is compiled with -mfpu=neon
 * and only entered when the kernel reports NEON in AT_HWCAP. */
#include <arm_neon.h>

#include "bnn_internal.h"

#if defined(__arm__)
#include <sys/auxv.h>
#define BNN_HWCAP_NEON (1 << 12) /* HWCAP_NEON of arch/arm */
#endif

#define L 2
#define NB 8
#define MV 2

static int neon_supported(void) {
#if defined(__aarch64__)
  return 1;
#else
  return (getauxval(AT_HWCAP) & BNN_HWCAP_NEON) != 0;
#endif
}

static void neon_pack_rows(const bnn_plan* p, const float* x, uint64_t* pin, int64_t y0,
                           int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64, W = p->w;
  const float32x4_t zero = vdupq_n_f32(0.0f);
  for (int64_t yy = y0; yy < y1; yy++) {
    uint64_t* row = pin + ((yy + p->pt) * p->wp + p->pl) * cw;
    for (int64_t j = 0; j < cw; j++) {
      int64_t c0 = 64 * j, nc = p->cg - c0 < 64 ? p->cg - c0 : 64;
      const float* src0 = x + c0 * hw + yy * W;
      int64_t x0 = 0;
      for (; x0 + 4 <= W; x0 += 4) {
        /* lanes: bit-words of 4 pixels, built as 2 x uint64x2 */
        uint64x2_t w01 = vdupq_n_u64(0), w23 = vdupq_n_u64(0);
        const float* src = src0 + x0;
        for (int64_t c = 0; c < nc; c++, src += hw) {
          /* vcgeq is false for NaN, so ~(v >= 0) marks negatives and NaN */
          uint32x4_t ge = vcgeq_f32(vld1q_f32(src), zero);
          uint32x4_t neg = vmvnq_u32(ge); /* all-ones where bit = 1 */
          uint64x2_t bit = vdupq_n_u64(UINT64_C(1) << c);
          uint64x2_t m01 = vreinterpretq_u64_s64(vmovl_s32(vreinterpret_s32_u32(vget_low_u32(neg))));
          uint64x2_t m23 = vreinterpretq_u64_s64(vmovl_s32(vreinterpret_s32_u32(vget_high_u32(neg))));
          w01 = vorrq_u64(w01, vandq_u64(m01, bit));
          w23 = vorrq_u64(w23, vandq_u64(m23, bit));
        }
        row[(x0 + 0) * cw + j] = vgetq_lane_u64(w01, 0);
        row[(x0 + 1) * cw + j] = vgetq_lane_u64(w01, 1);
        row[(x0 + 2) * cw + j] = vgetq_lane_u64(w23, 0);
        row[(x0 + 3) * cw + j] = vgetq_lane_u64(w23, 1);
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

static void neon_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                      int64_t g, float* y) {
  const int64_t K = p->k64;
  for (int64_t ob = 0; ob < p->ogp / NB; ob++) {
    const uint64_t* wp = p->wpan + (g * p->ogp + ob * NB) * K;
    for (int64_t b = 0; b < nblk; b += MV) {
      int mv = nblk - b >= MV ? MV : 1;
      uint32x4_t acc[MV][NB];
      for (int m = 0; m < MV; m++)
        for (int o = 0; o < NB; o++) acc[m][o] = vdupq_n_u32(0);
      for (int64_t k0 = 0; k0 < K; k0 += 2048) { /* u16 lanes: <= 2048 * 16 < 65536 */
        int64_t k1 = k0 + 2048 < K ? k0 + 2048 : K;
        uint16x8_t hacc[MV][NB];
        for (int m = 0; m < MV; m++)
          for (int o = 0; o < NB; o++) hacc[m][o] = vdupq_n_u16(0);
        for (int64_t k = k0; k < k1; k++) {
          uint8x16_t av[MV];
          for (int m = 0; m < MV; m++)
            av[m] = vreinterpretq_u8_u64(vld1q_u64(a + ((b + (m < mv ? m : 0)) * K + k) * L));
          for (int o = 0; o < NB; o++) {
            uint8x16_t wv = vreinterpretq_u8_u64(vld1q_dup_u64(wp + k * NB + o));
            for (int m = 0; m < MV; m++)
              hacc[m][o] = vpadalq_u8(hacc[m][o], vcntq_u8(veorq_u8(av[m], wv)));
          }
        }
        for (int m = 0; m < MV; m++)
          for (int o = 0; o < NB; o++) acc[m][o] = vpadalq_u16(acc[m][o], hacc[m][o]);
      }
      for (int m = 0; m < mv; m++) {
        int64_t blk = blk0 + b + m;
        for (int o = 0; o < NB; o++) {
          int64_t ol = ob * NB + o;
          if (ol >= p->og) break;
          int64_t oc = g * p->og + ol;
          uint64x2_t s = vpaddlq_u32(acc[m][o]);
          uint64_t pc[L] = {vgetq_lane_u64(s, 0), vgetq_lane_u64(s, 1)};
          for (int l = 0; l < L; l++) {
            int64_t pix = blk * L + l;
            if (pix >= p->npix) break;
            int32_t v = (int32_t)p->ktotal - 2 * (int32_t)pc[l] - bnn_corr(p, g, pix, ol);
            y[oc * p->npix + pix] = bnn_affine(p, oc, v);
          }
        }
      }
    }
  }
}

const bnn_variant bnn_variant_neon = {"neon", L, NB, MV, 0, neon_supported, neon_pack_rows,
                                      neon_gemm};
