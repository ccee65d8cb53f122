/* Internal structures shared by the driver (bnn_core.c) and the kernel variants. */
#ifndef BNN_INTERNAL_H
#define BNN_INTERNAL_H

#include <stdint.h>

#include "bnn.h"

/*
 * Data layouts used by every variant (only the lane count L and the output-channel
 * block NB differ):
 *   pin   packed, padded input of one (n, g): [HP][WP][CW64] uint64, bit 1 = -1,
 *         padding positions hold 0 bits (= +1).
 *   A     "transposed im2col" of a chunk of pixel blocks: [blk][K64 / KV][L][KV] uint64
 *         where pixel p = blk * L + lane and k = (ky * KW + kx) * CW64 + j.
 *   wpan  weight panel of one group: [OGP / NB][K64 / KV][NB][KV] uint64 (OGP = OG padded
 *         to a multiple of NB with zero rows).
 * KV (variant.kv, 1 or 2) is the number of consecutive k words kept together per lane:
 * 2 lets a 128-bit NEON register hold words k, k+1 of one pixel (or of one channel's
 * weights), so neither side needs a broadcast. K64 is then rounded up to a multiple of KV
 * and the extra words are 0 on both sides (0 xor 0 counts nothing).
 * acc = ktotal - 2 * popcount(a xor w) - corr, where corr is only non-zero for
 * pad_value 0 at border pixels (removes the +1 contribution of padded taps).
 */
/* Words of zero slack after the weight panel and the im2col scratch: a kernel may load
 * one k step past the end of its operands (software-pipelined loops); never used. */
#define BNN_SLACK_WORDS 32

typedef struct bnn_plan {
  int64_t n, c, h, w, o, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group, pad_value;
  int64_t cg, og, ho, wo, hp, wp;
  int64_t cw32, cw64, k64, ktotal, npix; /* k64 is a multiple of kv */
  int64_t lanes, nb, kv, anib, ogp, nblk; /* anib: A words nibble-split (variant.wnib) */
  uint64_t* wpan;         /* [group][OGP/NB][K64][NB] */
  uint64_t* wnib;         /* optional: [group][OGP/NB][K64][NB][4] = (lo, hi, lo, hi) with
                           * lo = w & 0x0f.., hi = (w >> 4) & 0x0f.. */
  int64_t* pix_base;      /* [nblk * L]: word offset of the pixel's top-left tap in pin */
  int64_t* tap_off;       /* [KH*KW]: word offset of each tap relative to pix_base */
  /* pad_value 0 correction */
  int32_t* pix_cls;       /* [nblk * L]: class index * OGP (0 = no padded tap) */
  uint8_t* blk_border;    /* [nblk]: block has a pixel with padded taps */
  int32_t* corr;          /* [group][ncls][OGP] */
  int64_t ncls;
  /* when ncls <= 16: corr16 [group][OGP][16] and raw class ids per pixel, so a vector
   * kernel can fetch 8 pixels' corrections with one in-register permute */
  int32_t* corr16;
  int32_t* pix_cls_raw;   /* [nblk * L] */
  const float* mult;
  const float* bias;
} bnn_plan;

typedef struct bnn_variant {
  const char* name;
  int lanes;  /* L */
  int nb;     /* output-channel block */
  int mv;     /* pixel blocks per register tile (chunks are a multiple of it) */
  int wnib;   /* wants p->wnib (nibble-split weight panel) and a nibble-split A:
               * every A word w becomes two, (w & 0x0f.., (w >> 4) & 0x0f..), so A is
               * [blk][K64][L][2] (kv must be 1) */
  int kv;     /* k words per lane group (1 or 2), see the layouts above */
  int (*supported)(void);
  /* Pack channels [0, cg) of rows [y0, y1) of one (n, g) image x (channel stride h*w)
   * into the interior of pin: bit 0 (+1) where x >= t[c], bit 1 (-1) otherwise and for
   * NaN; t is the group's per-channel thresholds, or NULL for 0. */
  void (*pack_rows)(const bnn_plan* p, const float* x, const float* t, uint64_t* pin,
                    int64_t y0, int64_t y1);
  /* Compute output for pixel blocks [blk0, blk0 + nblk) and output-channel blocks
   * [ob0, ob1) (of NB channels each) of group g; a holds the pixel blocks' transposed
   * im2col. y points at y[n] (NCHW). */
  void (*gemm)(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk, int64_t g,
               int64_t ob0, int64_t ob1, float* y);
} bnn_variant;

/* Scalar epilogue helper shared by variants: writes one output value. */
static inline float bnn_affine(const bnn_plan* p, int64_t oc, int32_t acc) {
  float t = p->mult[oc] * (float)acc;
  return p->bias[oc] + t;
}

static inline int32_t bnn_corr(const bnn_plan* p, int64_t g, int64_t pix, int64_t o_local) {
  if (!p->corr) return 0;
  return p->corr[(g * p->ncls) * p->ogp + p->pix_cls[pix] + o_local];
}

extern const bnn_variant bnn_variant_portable;
#if defined(__x86_64__) || defined(_M_X64)
extern const bnn_variant bnn_variant_avx2;
extern const bnn_variant bnn_variant_avx512;
#endif
#if defined(__aarch64__) || defined(__arm__)
extern const bnn_variant bnn_variant_neon;
#endif

/* Test hook: run with an explicit variant (test_runner); threshold: [C] or NULL. */
int bnn_conv2d_with_variant(const bnn_variant* v, const bnn_conv_params* p, const float* x,
                            const uint32_t* w, const float* multiplier, const float* bias,
                            const float* threshold, float* y);

#endif
