/* ARM NEON variant: a 4-pixel x NB-channel register tile over k-word pairs.
 *
 * Layout (kv = 2, see bnn_internal.h): a 128-bit register holds words k, k+1 of one
 * pixel (A: [blk][K/2][4 px][2]) or of one output channel's weights (wpan:
 * [ob][K/2][NB][2]), so both operands come from plain `ldr q`/`ldp q` loads. The older
 * 2-pixels-per-register layout needed one weight broadcast per (k, channel), and every
 * broadcast form (dup, ld1r, a lane ld1) occupies an ASIMD pipe on Neoverse N1 (ld1r
 * also on Cortex-A72): 8 broadcasts on top of 48 eor/cnt/accumulate ops per 2048 binary
 * MACs capped that loop at 7.0 cycles per 512 there (2 ASIMD pipes).
 *
 * Per (pixel, channel pair, k pair): eor x2, cnt x2, one addp (byte pairs of both
 * channels' counts side by side: <= 16 per byte) and one uadalp into u16: 3 ASIMD ops per
 * 128 binary MACs, the floor for eor + cnt + one accumulate per count. Accumulator lanes
 * 0-3 belong to the pair's first channel, lanes 4-7 to the second.
 *
 * aarch64: the k loop is inline asm, software-pipelined for in-order cores (Cortex-A53 /
 * A55) and fine for out-of-order ones (see kloop).
 * 32-bit ARM (16 q registers): the same arithmetic with intrinsics, 2 channels per tile.
 * NEON is mandatory on aarch64; on 32-bit ARM this file alone is compiled with -mfpu=neon
 * and only entered when the kernel reports NEON in AT_HWCAP. */
#include <arm_neon.h>

#include "bnn_internal.h"

#if defined(__arm__)
#include <sys/auxv.h>
#define BNN_HWCAP_NEON (1 << 12) /* HWCAP_NEON of arch/arm */
#endif

#define L 4 /* pixels per block (= per tile) */
#define KV 2
#if defined(__aarch64__)
#define NB 4
#else
#define NB 2
#endif
#define NP (NB / 2)  /* channel pairs per tile */
#define MV 1
/* u16 lanes grow by <= 32 per k pair (2 bytes of <= 16) */
#define KCHUNK 1024

static int neon_supported(void) {
#if defined(__aarch64__)
  return 1;
#else
  return (getauxval(AT_HWCAP) & BNN_HWCAP_NEON) != 0;
#endif
}

static void neon_pack_rows(const bnn_plan* p, const float* x, const float* t, uint64_t* pin,
                           int64_t y0, int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64, W = p->w;
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
          /* 64 channel planes read in parallel: fetch this channel's next row */
          if ((x0 & 15) == 0) __builtin_prefetch(src + W);
          /* vcgeq is false for NaN, so ~(v >= t) marks values below t and NaN */
          uint32x4_t ge = vcgeq_f32(vld1q_f32(src), vdupq_n_f32(t ? t[c0 + c] : 0.0f));
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
          if (!(src0[c * hw + x0] >= (t ? t[c0 + c] : 0.0f))) wd |= UINT64_C(1) << c;
        row[x0 * cw + j] = wd;
      }
    }
  }
}

#if defined(__aarch64__)
/* One k chunk of a 4 x 4 tile: n >= 1 k pairs from a (64 bytes per k pair) and w (64
 * bytes per k pair) into c[m + 4 * q] (pixel m, channel pair q). Loads run one k pair
 * ahead (the buffers carry BNN_SLACK_WORDS of slack).
 * Registers: a_m = v8+m, w_o = v12+o; channel pair q's counts in v(16 + 8q + m) (first
 * channel, then the addp sum) and v(20 + 8q + m) (second channel).
 * Schedule per k pair and channel pair: 8 eor, the 4 uadalp of the other channel pair
 * (one step behind: pair 1's sums of the previous k pair; they start at 0), 8 cnt, 4 addp.
 * Grouping the 1-cycle eors keeps results completing in order on the in-order models
 * (a 1-cycle op right after a 4-cycle one waits ~3 cycles there), and every consumer sits
 * >= 7 instructions after its producer. Modeled (llvm-mca 19, cycles per 512 binary MACs):
 * cortex-a72 6.0, neoverse-n1 6.0, cortex-a55 15.0, cortex-a53 16.0; the ASIMD bound is
 * 6.0 (3 ops per 128 binary MACs on 2 pipes); see docs/kernels.md. */
static inline void kloop(const uint64_t* a, const uint64_t* w, int64_t n, uint16x8_t c[8]) {
  uint16x8_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5], c6 = c[6],
             c7 = c[7];
  __asm__ volatile(
      "ldr q8, [%[a]]\n\t"
      "ldr q12, [%[w]]\n\t"
      "ldr q9, [%[a], #16]\n\t"
      "ldr q13, [%[w], #16]\n\t"
      "ldr q10, [%[a], #32]\n\t"
      "ldr q14, [%[w], #32]\n\t"
      "ldr q11, [%[a], #48]\n\t"
      "ldr q15, [%[w], #48]\n\t"
      "movi v24.16b, #0\n\t"
      "movi v25.16b, #0\n\t"
      "movi v26.16b, #0\n\t"
      "movi v27.16b, #0\n\t"
      "1:\n\t"
      /* k pair, channel pair 0: eor, uadalp of the previous pair's channel pair 1, cnt, addp */
      "eor v16.16b, v8.16b, v12.16b\n\t"
      "eor v17.16b, v9.16b, v12.16b\n\t"
      "eor v18.16b, v10.16b, v12.16b\n\t"
      "eor v19.16b, v11.16b, v12.16b\n\t"
      "eor v20.16b, v8.16b, v13.16b\n\t"
      "eor v21.16b, v9.16b, v13.16b\n\t"
      "eor v22.16b, v10.16b, v13.16b\n\t"
      "eor v23.16b, v11.16b, v13.16b\n\t"
      "uadalp %[c4].8h, v24.16b\n\t"
      "uadalp %[c5].8h, v25.16b\n\t"
      "uadalp %[c6].8h, v26.16b\n\t"
      "uadalp %[c7].8h, v27.16b\n\t"
      "ldr q12, [%[w], #64]\n\t"
      "cnt v16.16b, v16.16b\n\t"
      "cnt v20.16b, v20.16b\n\t"
      "cnt v17.16b, v17.16b\n\t"
      "cnt v21.16b, v21.16b\n\t"
      "ldr q13, [%[w], #80]\n\t"
      "cnt v18.16b, v18.16b\n\t"
      "cnt v22.16b, v22.16b\n\t"
      "cnt v19.16b, v19.16b\n\t"
      "cnt v23.16b, v23.16b\n\t"
      "addp v16.16b, v16.16b, v20.16b\n\t"
      "addp v17.16b, v17.16b, v21.16b\n\t"
      "addp v18.16b, v18.16b, v22.16b\n\t"
      "addp v19.16b, v19.16b, v23.16b\n\t"
      /* channel pair 1; the next k pair's loads */
      "eor v24.16b, v8.16b, v14.16b\n\t"
      "eor v25.16b, v9.16b, v14.16b\n\t"
      "eor v26.16b, v10.16b, v14.16b\n\t"
      "eor v27.16b, v11.16b, v14.16b\n\t"
      "eor v28.16b, v8.16b, v15.16b\n\t"
      "eor v29.16b, v9.16b, v15.16b\n\t"
      "eor v30.16b, v10.16b, v15.16b\n\t"
      "eor v31.16b, v11.16b, v15.16b\n\t"
      "uadalp %[c0].8h, v16.16b\n\t"
      "uadalp %[c1].8h, v17.16b\n\t"
      "ldr q8, [%[a], #64]\n\t"
      "uadalp %[c2].8h, v18.16b\n\t"
      "uadalp %[c3].8h, v19.16b\n\t"
      "ldr q9, [%[a], #80]\n\t"
      "cnt v24.16b, v24.16b\n\t"
      "cnt v28.16b, v28.16b\n\t"
      "ldr q10, [%[a], #96]\n\t"
      "cnt v25.16b, v25.16b\n\t"
      "cnt v29.16b, v29.16b\n\t"
      "ldr q11, [%[a], #112]\n\t"
      "cnt v26.16b, v26.16b\n\t"
      "cnt v30.16b, v30.16b\n\t"
      "ldr q14, [%[w], #96]\n\t"
      "cnt v27.16b, v27.16b\n\t"
      "cnt v31.16b, v31.16b\n\t"
      "ldr q15, [%[w], #112]\n\t"
      "add %[a], %[a], #64\n\t"
      "add %[w], %[w], #64\n\t"
      "subs %[n], %[n], #1\n\t"
      "addp v24.16b, v24.16b, v28.16b\n\t"
      "addp v25.16b, v25.16b, v29.16b\n\t"
      "addp v26.16b, v26.16b, v30.16b\n\t"
      "addp v27.16b, v27.16b, v31.16b\n\t"
      "b.ne 1b\n\t"
      /* drain: channel pair 1 of the last k pair */
      "uadalp %[c4].8h, v24.16b\n\t"
      "uadalp %[c5].8h, v25.16b\n\t"
      "uadalp %[c6].8h, v26.16b\n\t"
      "uadalp %[c7].8h, v27.16b\n\t"
      : [a] "+r"(a), [w] "+r"(w), [n] "+r"(n), [c0] "+w"(c0), [c1] "+w"(c1),
        [c2] "+w"(c2), [c3] "+w"(c3), [c4] "+w"(c4), [c5] "+w"(c5), [c6] "+w"(c6),
        [c7] "+w"(c7)
      :
      : "cc", "memory", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17",
        "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29",
        "v30", "v31");
  c[0] = c0; c[1] = c1; c[2] = c2; c[3] = c3; c[4] = c4; c[5] = c5; c[6] = c6; c[7] = c7;
}
#define PADDQ_U32(x, y) vpaddq_u32((x), (y))
#else
/* 32-bit ARM: intrinsics, c[m + 4 * q] as above (NB = 2: q = 0 only). */
static inline void kloop(const uint64_t* a, const uint64_t* w, int64_t n, uint16x8_t c[4 * NP]) {
  for (int64_t kk = 0; kk < n; kk++, a += L * KV, w += NB * KV) {
    uint8x16_t av[L];
    for (int m = 0; m < L; m++) av[m] = vreinterpretq_u8_u64(vld1q_u64(a + m * KV));
    for (int q = 0; q < NP; q++) {
      uint8x16_t w0 = vreinterpretq_u8_u64(vld1q_u64(w + (2 * q) * KV));
      uint8x16_t w1 = vreinterpretq_u8_u64(vld1q_u64(w + (2 * q + 1) * KV));
      for (int m = 0; m < L; m++) {
        uint8x16_t x0 = vcntq_u8(veorq_u8(av[m], w0)), x1 = vcntq_u8(veorq_u8(av[m], w1));
        uint8x16_t s = vcombine_u8(vpadd_u8(vget_low_u8(x0), vget_high_u8(x0)),
                                   vpadd_u8(vget_low_u8(x1), vget_high_u8(x1)));
        c[m + 4 * q] = vpadalq_u8(c[m + 4 * q], s);
      }
    }
  }
}
static inline uint32x4_t paddq_u32_arm(uint32x4_t x, uint32x4_t y) {
  return vcombine_u32(vpadd_u32(vget_low_u32(x), vget_high_u32(x)),
                      vpadd_u32(vget_low_u32(y), vget_high_u32(y)));
}
#define PADDQ_U32(x, y) paddq_u32_arm((x), (y))
#endif

/* 4 pixels of channel ol: y = bias + mult * (ktotal - 2 * pc - corr) */
static inline void store4(const bnn_plan* p, uint32x4_t pc, int64_t blk, int64_t g,
                          int64_t ol, float* y) {
  if (ol >= p->og) return;
  const int64_t oc = g * p->og + ol;
  int32x4_t v = vsubq_s32(vdupq_n_s32((int32_t)p->ktotal),
                          vreinterpretq_s32_u32(vshlq_n_u32(pc, 1)));
  const int64_t pix0 = blk * L;
  if (p->corr && p->blk_border[blk]) {
    int32_t cv[L];
    for (int l = 0; l < L; l++) cv[l] = bnn_corr(p, g, pix0 + l, ol);
    v = vsubq_s32(v, vld1q_s32(cv));
  }
  float32x4_t f = vmulq_f32(vdupq_n_f32(p->mult[oc]), vcvtq_f32_s32(v));
  f = vaddq_f32(vdupq_n_f32(p->bias[oc]), f);
  float* dst = y + oc * p->npix + pix0;
  int64_t valid = p->npix - pix0;
  if (valid >= L) {
    vst1q_f32(dst, f);
  } else {
    float t[L];
    vst1q_f32(t, f);
    for (int64_t l = 0; l < valid; l++) dst[l] = t[l];
  }
}

static void neon_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                      int64_t g, int64_t ob0, int64_t ob1, float* y) {
  const int64_t K2 = p->k64 / KV;
  for (int64_t ob = ob0; ob < ob1; ob++) {
    const uint64_t* wp = p->wpan + (g * p->ogp + ob * NB) * p->k64;
    for (int64_t b = 0; b < nblk; b++) {
      const uint64_t* ab = a + b * p->k64 * L;
      uint32x4_t acc[4 * NP];
      for (int i = 0; i < 4 * NP; i++) acc[i] = vdupq_n_u32(0);
      for (int64_t k0 = 0; k0 < K2; k0 += KCHUNK) {
        int64_t n = K2 - k0 < KCHUNK ? K2 - k0 : KCHUNK;
        uint16x8_t c[4 * NP];
        for (int i = 0; i < 4 * NP; i++) c[i] = vdupq_n_u16(0);
        kloop(ab + k0 * L * KV, wp + k0 * NB * KV, n, c);
        for (int i = 0; i < 4 * NP; i++) acc[i] = vpadalq_u16(acc[i], c[i]);
      }
      for (int q = 0; q < NP; q++) {
        /* acc[m + 4q] lanes: 0-1 channel 2q of pixel m, 2-3 channel 2q+1 */
        uint32x4_t s01 = PADDQ_U32(acc[0 + 4 * q], acc[1 + 4 * q]); /* p0A p0B p1A p1B */
        uint32x4_t s23 = PADDQ_U32(acc[2 + 4 * q], acc[3 + 4 * q]);
        uint32x4x2_t z = vuzpq_u32(s01, s23);
        store4(p, z.val[0], blk0 + b, g, ob * NB + 2 * q, y);
        store4(p, z.val[1], blk0 + b, g, ob * NB + 2 * q + 1, y);
      }
    }
  }
}

const bnn_variant bnn_variant_neon = {"neon", L, NB, MV, 0, KV, neon_supported, neon_pack_rows,
                                      neon_gemm};
