/* Driver: validation, weight repacking, pad-0 correction tables, im2col, threading,
 * run-time variant selection, and the portable (plain C) kernel variant. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnn_internal.h"

/* ------------------------------------------------------------------ errors */
static _Thread_local char g_err[512];

static int set_err(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return code;
}

const char* bnn_last_error(void) { return g_err; }

/* ------------------------------------------------------------------ helpers */
/* SWAR popcount: the portable build has no popcnt instruction, and libgcc's
 * __popcountdi2 fallback is a slow out-of-line call. */
static inline int popcount64(uint64_t v) {
#if defined(__POPCNT__) || defined(__aarch64__)
  return __builtin_popcountll(v);
#else
  v = v - ((v >> 1) & UINT64_C(0x5555555555555555));
  v = (v & UINT64_C(0x3333333333333333)) + ((v >> 2) & UINT64_C(0x3333333333333333));
  v = (v + (v >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
  return (int)((v * UINT64_C(0x0101010101010101)) >> 56);
#endif
}

int64_t bnn_weight_words(int64_t cg) { return (cg + 31) / 32; }

static int validate(const bnn_conv_params* p, int64_t* ho, int64_t* wo) {
  if (!p) return set_err(BNN_EINVAL, "params is NULL");
  if (p->n < 1 || p->c < 1 || p->h < 1 || p->w < 1 || p->o < 1)
    return set_err(BNN_EINVAL, "N, C, H, W, O must be >= 1 (got %lld %lld %lld %lld %lld)",
                   (long long)p->n, (long long)p->c, (long long)p->h, (long long)p->w,
                   (long long)p->o);
  if (p->kh < 1 || p->kw < 1) return set_err(BNN_EINVAL, "kernel_shape must be >= 1");
  if (p->sh < 1 || p->sw < 1) return set_err(BNN_EINVAL, "strides must be >= 1");
  if (p->dh < 1 || p->dw < 1) return set_err(BNN_EINVAL, "dilations must be >= 1");
  if (p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0)
    return set_err(BNN_EINVAL, "pads must be >= 0");
  if (p->group < 1 || p->c % p->group || p->o % p->group)
    return set_err(BNN_EINVAL, "group=%lld must divide C=%lld and O=%lld", (long long)p->group,
                   (long long)p->c, (long long)p->o);
  if (p->pad_value != 0 && p->pad_value != 1)
    return set_err(BNN_EINVAL, "pad_value must be 0 or 1 (got %lld)", (long long)p->pad_value);
  int64_t eh = p->dh * (p->kh - 1) + 1, ew = p->dw * (p->kw - 1) + 1;
  int64_t hp = p->h + p->pad_top + p->pad_bottom, wp = p->w + p->pad_left + p->pad_right;
  if (hp < eh || wp < ew)
    return set_err(BNN_EINVAL, "dilated kernel %lldx%lld larger than padded input %lldx%lld",
                   (long long)eh, (long long)ew, (long long)hp, (long long)wp);
  if ((p->c / p->group) * p->kh * p->kw >= (1 << 24))
    return set_err(BNN_EINVAL, "(C/group)*KH*KW must be < 2^24 for exact float output");
  *ho = (hp - eh) / p->sh + 1;
  *wo = (wp - ew) / p->sw + 1;
  return BNN_OK;
}

int bnn_conv2d_output_shape(const bnn_conv_params* p, int64_t* ho, int64_t* wo) {
  g_err[0] = 0;
  return validate(p, ho, wo);
}

int bnn_pack_weights(const int8_t* w, int64_t o, int64_t cg, int64_t kh, int64_t kw,
                     uint32_t* out) {
  g_err[0] = 0;
  if (!w || !out || o < 1 || cg < 1 || kh < 1 || kw < 1)
    return set_err(BNN_EINVAL, "bnn_pack_weights: bad arguments");
  int64_t cw = bnn_weight_words(cg);
  memset(out, 0, (size_t)(o * kh * kw * cw) * sizeof(uint32_t));
  for (int64_t oc = 0; oc < o; oc++)
    for (int64_t c = 0; c < cg; c++)
      for (int64_t y = 0; y < kh; y++)
        for (int64_t x = 0; x < kw; x++)
          if (w[((oc * cg + c) * kh + y) * kw + x] < 0)
            out[((oc * kh + y) * kw + x) * cw + c / 32] |= 1u << (c % 32);
  return BNN_OK;
}

/* ------------------------------------------------------------------ variants */
static int supported_always(void) { return 1; }

#if defined(__x86_64__) || defined(_M_X64)
static const bnn_variant* const k_variants[] = {&bnn_variant_portable, &bnn_variant_avx2,
                                                &bnn_variant_avx512};
#elif defined(__aarch64__) || defined(__arm__)
static const bnn_variant* const k_variants[] = {&bnn_variant_portable, &bnn_variant_neon};
#else
static const bnn_variant* const k_variants[] = {&bnn_variant_portable};
#endif
#define N_VARIANTS (sizeof k_variants / sizeof k_variants[0])

static const bnn_variant* g_variant;  /* chosen variant (NULL: not yet chosen) */
static pthread_mutex_t g_variant_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_avail[128];

static const bnn_variant* best_variant(void) {
  const bnn_variant* best = &bnn_variant_portable;
  for (size_t i = 0; i < N_VARIANTS; i++)
    if (k_variants[i]->supported()) best = k_variants[i];
  return best;
}

static void avail_str(char* buf, size_t n) {
  buf[0] = 0;
  for (size_t i = 0; i < N_VARIANTS; i++) {
    if (!k_variants[i]->supported()) continue;
    if (buf[0]) strncat(buf, ",", n - strlen(buf) - 1);
    strncat(buf, k_variants[i]->name, n - strlen(buf) - 1);
  }
}

/* Must not take g_variant_mu (called with it held). */
static int choose(const char* name, const bnn_variant** out, const char* origin) {
  if (!name || !*name || !strcmp(name, "auto")) {
    *out = best_variant();
    return BNN_OK;
  }
  char avail[128];
  avail_str(avail, sizeof avail);
  for (size_t i = 0; i < N_VARIANTS; i++) {
    if (!strcmp(k_variants[i]->name, name)) {
      if (!k_variants[i]->supported())
        return set_err(BNN_ENOKERNEL, "%skernel '%s' is not supported by this CPU (available: %s)",
                       origin, name, avail);
      *out = k_variants[i];
      return BNN_OK;
    }
  }
  return set_err(BNN_ENOKERNEL, "%sunknown kernel '%s' (available: %s)", origin, name, avail);
}

static int current_variant(const bnn_variant** out) {
  int rc = BNN_OK;
  pthread_mutex_lock(&g_variant_mu);
  if (!g_variant) {
    const bnn_variant* v = NULL;
    rc = choose(getenv("BNN_KERNEL"), &v, "BNN_KERNEL: ");
    if (rc == BNN_OK) g_variant = v;
  }
  *out = g_variant;
  pthread_mutex_unlock(&g_variant_mu);
  return rc;
}

const char* bnn_available_kernels(void) {
  pthread_mutex_lock(&g_variant_mu);
  if (!g_avail[0]) avail_str(g_avail, sizeof g_avail); /* CPU features never change */
  pthread_mutex_unlock(&g_variant_mu);
  return g_avail;
}

int bnn_set_kernel(const char* name) {
  g_err[0] = 0;
  const bnn_variant* v = NULL;
  int rc = choose(name, &v, "");
  if (rc != BNN_OK) return rc;
  pthread_mutex_lock(&g_variant_mu);
  g_variant = v;
  pthread_mutex_unlock(&g_variant_mu);
  return BNN_OK;
}

const char* bnn_kernel_name(void) {
  const bnn_variant* v = NULL;
  if (current_variant(&v) != BNN_OK || !v) return "unavailable";
  return v->name;
}

/* ------------------------------------------------------------------ plan */
static void plan_free(bnn_plan* p) {
  free(p->wpan);
  free(p->wnib);
  free(p->pix_base);
  free(p->tap_off);
  free(p->pix_cls);
  free(p->blk_border);
  free(p->corr);
  free(p->corr16);
  free(p->pix_cls_raw);
}

static int plan_build(bnn_plan* p, const bnn_variant* v, const bnn_conv_params* cp,
                      const uint32_t* w, const float* mult, const float* bias) {
  int64_t ho = 0, wo = 0;
  memset(p, 0, sizeof *p);
  int rc = validate(cp, &ho, &wo);
  if (rc) return rc;
  p->n = cp->n; p->c = cp->c; p->h = cp->h; p->w = cp->w; p->o = cp->o;
  p->kh = cp->kh; p->kw = cp->kw; p->sh = cp->sh; p->sw = cp->sw; p->dh = cp->dh; p->dw = cp->dw;
  p->pt = cp->pad_top; p->pl = cp->pad_left; p->pb = cp->pad_bottom; p->pr = cp->pad_right;
  p->group = cp->group; p->pad_value = cp->pad_value;
  p->cg = p->c / p->group; p->og = p->o / p->group;
  p->ho = ho; p->wo = wo;
  p->hp = p->h + p->pt + p->pb; p->wp = p->w + p->pl + p->pr;
  p->cw32 = bnn_weight_words(p->cg);
  p->cw64 = (p->cg + 63) / 64;
  p->kv = v->kv > 1 ? v->kv : 1;
  p->anib = v->wnib ? 1 : 0;
  p->k64 = (p->kh * p->kw * p->cw64 + p->kv - 1) / p->kv * p->kv;
  p->ktotal = p->cg * p->kh * p->kw;
  p->npix = ho * wo;
  p->lanes = v->lanes; p->nb = v->nb;
  p->ogp = (p->og + p->nb - 1) / p->nb * p->nb;
  p->nblk = (p->npix + p->lanes - 1) / p->lanes;
  p->mult = mult; p->bias = bias;
  const int64_t ntap = p->kh * p->kw, L = p->lanes;

  /* + slack: kernels may prefetch one k step past the end of a panel */
  p->wpan = calloc((size_t)(p->group * p->ogp * p->k64) + BNN_SLACK_WORDS, sizeof(uint64_t));
  p->pix_base = malloc((size_t)(p->nblk * L) * sizeof(int64_t));
  p->tap_off = malloc((size_t)ntap * sizeof(int64_t));
  if (!p->wpan || !p->pix_base || !p->tap_off) goto nomem;

  /* weight panel: [g][ob][k / kv][nb][kv], channel padding bits masked off */
  for (int64_t g = 0; g < p->group; g++)
    for (int64_t ol = 0; ol < p->og; ol++) {
      const uint32_t* src = w + (g * p->og + ol) * ntap * p->cw32;
      uint64_t* dst = p->wpan + (g * p->ogp + (ol / p->nb) * p->nb) * p->k64 + (ol % p->nb) * p->kv;
      for (int64_t t = 0; t < ntap; t++)
        for (int64_t j = 0; j < p->cw64; j++) {
          uint64_t lo = src[t * p->cw32 + 2 * j];
          uint64_t hi = (2 * j + 1 < p->cw32) ? src[t * p->cw32 + 2 * j + 1] : 0;
          uint64_t word = lo | (hi << 32);
          int64_t valid = p->cg - 64 * j;
          if (valid < 64) word &= (UINT64_C(1) << valid) - 1;
          int64_t k = t * p->cw64 + j;
          dst[(k / p->kv) * p->nb * p->kv + k % p->kv] = word;
        }
    }

  if (v->wnib) {
    /* [g][ob][k][nb][4] = (lo, hi, lo, hi): one 256-bit memory operand per (k, channel)
     * lines up with a nibble-split A vector of 2 pixels */
    size_t nw = (size_t)(p->group * p->ogp * p->k64);
    p->wnib = aligned_alloc(64, (nw * 4 * sizeof(uint64_t) + 63) / 64 * 64);
    if (!p->wnib) goto nomem;
    const uint64_t m4 = UINT64_C(0x0f0f0f0f0f0f0f0f);
    for (size_t i = 0; i < nw; i++) {
      uint64_t lo = p->wpan[i] & m4, hi = (p->wpan[i] >> 4) & m4;
      p->wnib[4 * i] = lo;
      p->wnib[4 * i + 1] = hi;
      p->wnib[4 * i + 2] = lo;
      p->wnib[4 * i + 3] = hi;
    }
  }

  for (int64_t ky = 0; ky < p->kh; ky++)
    for (int64_t kx = 0; kx < p->kw; kx++)
      p->tap_off[ky * p->kw + kx] = (ky * p->dh * p->wp + kx * p->dw) * p->cw64;
  for (int64_t q = 0; q < p->nblk * L; q++) {
    int64_t pix = q < p->npix ? q : 0; /* lanes past the end read pixel 0, never stored */
    int64_t oy = pix / wo, ox = pix % wo;
    p->pix_base[q] = (oy * p->sh * p->wp + ox * p->sw) * p->cw64;
  }

  if (p->pad_value == 0 && (p->pt || p->pl || p->pb || p->pr)) {
    /* valid ky range per output row / kx range per column; class = (range_y, range_x) */
    int64_t nry = 0, nrx = 0;
    int64_t* ry = malloc((size_t)ho * 2 * sizeof(int64_t)); /* (lo, hi) per oy */
    int64_t* rx = malloc((size_t)wo * 2 * sizeof(int64_t));
    int64_t* cy = malloc((size_t)ho * sizeof(int64_t));     /* row class id */
    int64_t* cx = malloc((size_t)wo * sizeof(int64_t));
    int64_t* uy = malloc((size_t)ho * 2 * sizeof(int64_t)); /* unique ranges */
    int64_t* ux = malloc((size_t)wo * 2 * sizeof(int64_t));
    int32_t* ws = malloc((size_t)(p->o * ntap) * sizeof(int32_t));
    if (!ry || !rx || !cy || !cx || !uy || !ux || !ws) {
      free(ry); free(rx); free(cy); free(cx); free(uy); free(ux); free(ws);
      goto nomem;
    }
    for (int64_t dim = 0; dim < 2; dim++) {
      int64_t nout = dim ? wo : ho, k = dim ? p->kw : p->kh, s = dim ? p->sw : p->sh;
      int64_t d = dim ? p->dw : p->dh, pad = dim ? p->pl : p->pt, size = dim ? p->w : p->h;
      int64_t *r = dim ? rx : ry, *cls = dim ? cx : cy, *u = dim ? ux : uy;
      int64_t* nu = dim ? &nrx : &nry;
      for (int64_t i = 0; i < nout; i++) {
        int64_t lo = k, hi = -1;
        for (int64_t kk = 0; kk < k; kk++) {
          int64_t iy = i * s - pad + kk * d;
          if (iy >= 0 && iy < size) {
            if (lo == k) lo = kk;
            hi = kk;
          }
        }
        r[2 * i] = lo; r[2 * i + 1] = hi;
        int64_t id = -1;
        for (int64_t q = 0; q < *nu; q++)
          if (u[2 * q] == lo && u[2 * q + 1] == hi) id = q;
        if (id < 0) {
          id = (*nu)++;
          u[2 * id] = lo; u[2 * id + 1] = hi;
        }
        cls[i] = id;
      }
    }
    /* per-tap weight sums: contribution of a +1 activation */
    for (int64_t oc = 0; oc < p->o; oc++)
      for (int64_t t = 0; t < ntap; t++) {
        int32_t pc = 0;
        for (int64_t j = 0; j < p->cw32; j++)
          pc += popcount64(w[(oc * ntap + t) * p->cw32 + j] &
                           (p->cg - 32 * j >= 32 ? 0xffffffffu
                                                 : (uint32_t)((1u << (p->cg - 32 * j)) - 1)));
        ws[oc * ntap + t] = (int32_t)p->cg - 2 * pc;
      }
    p->ncls = nry * nrx;
    p->corr = calloc((size_t)(p->group * p->ncls * p->ogp), sizeof(int32_t));
    p->pix_cls = malloc((size_t)(p->nblk * L) * sizeof(int32_t));
    p->blk_border = calloc((size_t)p->nblk, 1);
    if (!p->corr || !p->pix_cls || !p->blk_border) {
      free(ry); free(rx); free(cy); free(cx); free(uy); free(ux); free(ws);
      goto nomem;
    }
    /* corr = (sum of all taps) - (sum of the taps inside the valid ky x kx range) */
    for (int64_t g = 0; g < p->group; g++)
      for (int64_t ol = 0; ol < p->og; ol++) {
        const int32_t* wt = ws + (g * p->og + ol) * ntap;
        int32_t total = 0;
        for (int64_t t = 0; t < ntap; t++) total += wt[t];
        for (int64_t a = 0; a < nry; a++)
          for (int64_t b = 0; b < nrx; b++) {
            int32_t inside = 0;
            for (int64_t ky = uy[2 * a]; ky <= uy[2 * a + 1]; ky++)
              for (int64_t kx = ux[2 * b]; kx <= ux[2 * b + 1]; kx++) inside += wt[ky * p->kw + kx];
            p->corr[((g * p->ncls) + a * nrx + b) * p->ogp + ol] = total - inside;
          }
      }
    for (int64_t q = 0; q < p->nblk * L; q++) {
      int64_t pix = q < p->npix ? q : 0;
      int64_t oy = pix / wo, ox = pix % wo;
      int64_t k = cy[oy] * nrx + cx[ox];
      int full = ry[2 * oy] == 0 && ry[2 * oy + 1] == p->kh - 1 && rx[2 * ox] == 0 &&
                 rx[2 * ox + 1] == p->kw - 1;
      p->pix_cls[q] = (int32_t)(k * p->ogp);
      if (!full && q < p->npix) p->blk_border[q / L] = 1;
    }
    if (p->ncls <= 16) {
      p->corr16 = calloc((size_t)(p->group * p->ogp * 16), sizeof(int32_t));
      p->pix_cls_raw = malloc((size_t)(p->nblk * L) * sizeof(int32_t));
      if (!p->corr16 || !p->pix_cls_raw) {
        free(ry); free(rx); free(cy); free(cx); free(uy); free(ux); free(ws);
        goto nomem;
      }
      for (int64_t g = 0; g < p->group; g++)
        for (int64_t k = 0; k < p->ncls; k++)
          for (int64_t ol = 0; ol < p->ogp; ol++)
            p->corr16[(g * p->ogp + ol) * 16 + k] = p->corr[(g * p->ncls + k) * p->ogp + ol];
      for (int64_t q = 0; q < p->nblk * L; q++)
        p->pix_cls_raw[q] = (int32_t)(p->pix_cls[q] / p->ogp);
    }
    free(ry); free(rx); free(cy); free(cx); free(uy); free(ux); free(ws);
  }
  return BNN_OK;
nomem:
  plan_free(p);
  return set_err(BNN_ENOMEM, "out of memory building the conv plan");
}

/* transposed im2col of blocks [blk0, blk0 + nblk) into a: [blk][k64 / kv][L][kv] */
static void im2col(const bnn_plan* p, const uint64_t* pin, int64_t blk0, int64_t nblk,
                   uint64_t* a) {
  const int64_t L = p->lanes, ntap = p->kh * p->kw, cw = p->cw64;
  if (p->kv > 1) {
    const int64_t KV = p->kv;
    for (int64_t b = 0; b < nblk; b++) {
      const int64_t* base = p->pix_base + (blk0 + b) * L;
      uint64_t* blkdst = a + b * p->k64 * L;
      for (int64_t l = 0; l < L; l++) {
        int64_t k = 0;
        for (int64_t t = 0; t < ntap; t++) {
          const uint64_t* src = pin + p->tap_off[t] + base[l];
          for (int64_t j = 0; j < cw; j++, k++)
            blkdst[(k / KV) * L * KV + l * KV + k % KV] = src[j];
        }
        for (; k < p->k64; k++) blkdst[(k / KV) * L * KV + l * KV + k % KV] = 0;
      }
    }
    return;
  }
  if (p->anib) {
    const uint64_t m4 = UINT64_C(0x0f0f0f0f0f0f0f0f);
    for (int64_t b = 0; b < nblk; b++) {
      const int64_t* base = p->pix_base + (blk0 + b) * L;
      uint64_t* dst = a + b * p->k64 * L * 2;
      for (int64_t t = 0; t < ntap; t++) {
        const uint64_t* src = pin + p->tap_off[t];
        for (int64_t j = 0; j < cw; j++, dst += 2 * L)
          for (int64_t l = 0; l < L; l++) {
            uint64_t w = src[base[l] + j];
            dst[2 * l] = w & m4;
            dst[2 * l + 1] = (w >> 4) & m4;
          }
      }
    }
    return;
  }
  for (int64_t b = 0; b < nblk; b++) {
    const int64_t* base = p->pix_base + (blk0 + b) * L;
    uint64_t* dst = a + b * p->k64 * L;
    for (int64_t t = 0; t < ntap; t++) {
      const uint64_t* src = pin + p->tap_off[t];
      for (int64_t j = 0; j < cw; j++, dst += L)
        for (int64_t l = 0; l < L; l++) dst[l] = src[base[l] + j];
    }
  }
}

/* ------------------------------------------------------------------ execution */
typedef struct {
  const bnn_plan* p;
  const bnn_variant* v;
  const float* x;
  float* y;
  const float* threshold; /* [C] or NULL: bit = +1 where x >= threshold[c] */
  const float* residual;  /* [N, O, HO, WO] or NULL: added after the affine epilogue */
  /* [O] each or all NULL: RPReLU after the residual: t = y - shift[o];
   * y = ((t < 0) ? slope[o] * t : t) + bias[o] */
  const float* rp_shift;
  const float* rp_slope;
  const float* rp_bias;
  uint64_t* pin;       /* [n][group][hp][wp][cw64] */
  int64_t pin_stride;  /* words per (n, g) */
  int64_t row_chunks, row_step;
  /* gemm tasks: per image blk_chunks pixel chunks x ob_chunks output-channel ranges;
   * chunk i covers units [i * nunits / blk_chunks, (i + 1) * nunits / blk_chunks) of mv
   * blocks, range j output-channel blocks [j * nob / ob_chunks, (j + 1) * nob / ob_chunks) */
  int64_t blk_chunks, nunits, mv;
  int64_t ob_chunks, nob;
  int failed; /* a gemm task could not allocate its im2col scratch */
} run_ctx;

static void task_pack(void* arg, size_t idx) {
  run_ctx* r = arg;
  const bnn_plan* p = r->p;
  int64_t img = (int64_t)idx / r->row_chunks, rc = (int64_t)idx % r->row_chunks;
  int64_t n = img / p->group, g = img % p->group;
  int64_t y0 = rc * r->row_step, y1 = y0 + r->row_step < p->h ? y0 + r->row_step : p->h;
  if (y0 >= y1) return;
  const float* x = r->x + (n * p->c + g * p->cg) * p->h * p->w;
  /* a per-channel threshold is compared in the variant's pack itself (x >= t[c]): no
   * float op before the layer, no scratch image */
  const float* t = r->threshold ? r->threshold + g * p->cg : NULL;
  r->v->pack_rows(p, x, t, r->pin + img * r->pin_stride, y0, y1);
}

/* (t < 0) ? st : t as a bit select: exactly one of the two values (NaN t: t), written so
 * that a loop of it vectorizes (GCC keeps a float ?: as a branch: "control flow in loop") */
static inline float select_if_negative(float t, float st) {
  uint32_t tb, sb;
  memcpy(&tb, &t, sizeof tb);
  memcpy(&sb, &st, sizeof sb);
  uint32_t m = (uint32_t)0 - (uint32_t)(t < 0.0f);
  uint32_t out = (sb & m) | (tb & ~m);
  float q;
  memcpy(&q, &out, sizeof q);
  return q;
}

/* The float epilogue after the affine one, over the tile a gemm task just wrote
 * (cache-hot): output channels of blocks [ob0, ob1) of group g, pixels [pix0, pix1).
 * y += residual, then RPReLU; every step is one float32 operation rounded on its own
 * (built with -ffp-contract=off), the rounding of the separate ONNX Add, Sub, PRelu, Add. */
static void epilogue_pass(const run_ctx* r, int64_t n, int64_t g, int64_t ob0, int64_t ob1,
                          int64_t pix0, int64_t pix1) {
  const bnn_plan* p = r->p;
  int64_t o1 = ob1 * p->nb < p->og ? ob1 * p->nb : p->og;
  if (pix1 > p->npix) pix1 = p->npix;
  for (int64_t ol = ob0 * p->nb; ol < o1; ol++) {
    const int64_t oc = g * p->og + ol;
    const int64_t off = (n * p->o + oc) * p->npix;
    float* y = r->y + off;
    const float* res = r->residual ? r->residual + off : NULL;
    if (!r->rp_shift) {
      for (int64_t i = pix0; i < pix1; i++) y[i] += res[i];
      continue;
    }
    const float shift = r->rp_shift[oc], slope = r->rp_slope[oc], bias = r->rp_bias[oc];
    if (res) {
      for (int64_t i = pix0; i < pix1; i++) {
        float v = y[i] + res[i];
        float t = v - shift;
        y[i] = select_if_negative(t, slope * t) + bias;
      }
    } else {
      for (int64_t i = pix0; i < pix1; i++) {
        float t = y[i] - shift;
        y[i] = select_if_negative(t, slope * t) + bias;
      }
    }
  }
}

static void task_gemm(void* arg, size_t idx) {
  run_ctx* r = arg;
  const bnn_plan* p = r->p;
  const int64_t per_img = r->blk_chunks * r->ob_chunks;
  int64_t img = (int64_t)idx / per_img, rem = (int64_t)idx % per_img;
  int64_t bc = rem / r->ob_chunks, oc = rem % r->ob_chunks;
  int64_t n = img / p->group, g = img % p->group;
  int64_t b0 = bc * r->nunits / r->blk_chunks * r->mv;
  int64_t b1 = (bc + 1) * r->nunits / r->blk_chunks * r->mv;
  if (b1 > p->nblk) b1 = p->nblk;
  int64_t nb = b1 - b0;
  int64_t ob0 = oc * r->nob / r->ob_chunks, ob1 = (oc + 1) * r->nob / r->ob_chunks;
  if (nb <= 0 || ob1 <= ob0) return;
  uint64_t* a = aligned_alloc(
      64, (size_t)((nb * p->k64 * p->lanes * 8 * (1 + p->anib) + BNN_SLACK_WORDS * 8 + 63) / 64 *
                   64));
  if (!a) {
    __atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
    return;
  }
  im2col(p, r->pin + img * r->pin_stride, b0, nb, a);
  r->v->gemm(p, a, b0, nb, g, ob0, ob1, r->y + n * p->o * p->npix);
  free(a);
  if (r->residual || r->rp_shift)
    epilogue_pass(r, n, g, ob0, ob1, b0 * p->lanes, (b0 + nb) * p->lanes);
}

/* default parallel-for: run inline or on a pthread team */
typedef struct {
  bnn_task_fn fn;
  void* arg;
  size_t total;
  size_t next;
} team_ctx;

static void* team_worker(void* arg) {
  team_ctx* t = arg;
  for (;;) {
    size_t i = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
    if (i >= t->total) break;
    t->fn(t->arg, i);
  }
  return NULL;
}

static void pthread_parallel_for(void* ctx, bnn_task_fn fn, void* arg, size_t total) {
  int nthreads = *(int*)ctx;
  if (nthreads <= 1 || total <= 1) {
    for (size_t i = 0; i < total; i++) fn(arg, i);
    return;
  }
  if ((size_t)nthreads > total) nthreads = (int)total;
  team_ctx t = {fn, arg, total, 0};
  pthread_t th[64];
  int started = 0;
  for (int i = 0; i < nthreads - 1 && i < 64; i++)
    if (pthread_create(&th[started], NULL, team_worker, &t) == 0) started++;
  team_worker(&t);
  for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}

/* Pack + gemm with a built plan; `plan` is only read (several calls may share it): the
 * batch size and the affine vectors come with the call. */
static int run_planned(const bnn_variant* v, const bnn_plan* plan, int64_t n, const float* x,
                       const float* mult, const float* bias, const bnn_fusion* f, float* y,
                       bnn_parallel_for_fn pf, void* pf_ctx, int max_tasks) {
  if (!x || !mult || !bias || !y) return set_err(BNN_EINVAL, "NULL tensor pointer");
  int nrp = !!f->rprelu_shift + !!f->rprelu_slope + !!f->rprelu_bias;
  if (nrp != 0 && nrp != 3)
    return set_err(BNN_EINVAL,
                   "rprelu_shift, rprelu_slope and rprelu_bias must be given together (got %d of 3)",
                   nrp);
  int nthreads;
  if (!pf) { /* no parallel-for given: max_tasks pthreads (1: the calling thread only) */
    nthreads = max_tasks < 1 ? 1 : max_tasks > 64 ? 64 : max_tasks;
    pf = pthread_parallel_for;
    pf_ctx = &nthreads;
    max_tasks = nthreads == 1 ? 1 : 4 * nthreads;
  }
  bnn_plan p = *plan;
  p.n = n;
  p.mult = mult;
  p.bias = bias;
  run_ctx r = {.p = &p,
               .v = v,
               .x = x,
               .y = y,
               .threshold = f->threshold,
               .residual = f->residual,
               .rp_shift = f->rprelu_shift,
               .rp_slope = f->rprelu_slope,
               .rp_bias = f->rprelu_bias};
  r.pin_stride = p.hp * p.wp * p.cw64;
  r.pin = calloc((size_t)(p.n * p.group * r.pin_stride), sizeof(uint64_t));
  if (!r.pin) return set_err(BNN_ENOMEM, "out of memory for the packed input");
  if (max_tasks < 1) max_tasks = 1;
  int64_t images = p.n * p.group;
  /* phase 1: pack; split rows only when there are fewer images than tasks */
  r.row_chunks = images >= max_tasks ? 1 : (max_tasks + images - 1) / images;
  if (r.row_chunks > p.h) r.row_chunks = p.h;
  r.row_step = (p.h + r.row_chunks - 1) / r.row_chunks;
  pf(pf_ctx, task_pack, &r, (size_t)(images * r.row_chunks));
  /* phase 2: im2col + gemm in chunks of <= ~64 pixels (L1-resident). With several tasks
   * (threads), the chunk count is rounded up to a multiple of max_tasks and the chunks are
   * equal to within one tile, so that every thread gets the same work (a 4-core ARM
   * cluster: 784 pixels were 12 full chunks + 1 quarter one); layers with fewer pixel
   * chunks than tasks (7x7, 4x4 maps) are split over output-channel blocks as well. */
  r.mv = v->mv;
  r.nunits = (p.nblk + r.mv - 1) / r.mv;
  const int64_t unit_step = (64 + p.lanes * r.mv - 1) / (p.lanes * r.mv);
  r.blk_chunks = (r.nunits + unit_step - 1) / unit_step;
  r.nob = p.ogp / p.nb;
  r.ob_chunks = 1;
  if (max_tasks > 1) {
    int64_t total = images * r.blk_chunks;
    int64_t want = (total + max_tasks - 1) / max_tasks * max_tasks;
    int64_t per_img = (want + images - 1) / images;
    r.blk_chunks = per_img < r.nunits ? per_img : r.nunits;
    total = images * r.blk_chunks;
    if (total < max_tasks) {
      int64_t split = (max_tasks + total - 1) / total;
      r.ob_chunks = split < r.nob ? split : r.nob;
    }
  }
  pf(pf_ctx, task_gemm, &r, (size_t)(images * r.blk_chunks * r.ob_chunks));
  free(r.pin);
  if (r.failed) return set_err(BNN_ENOMEM, "out of memory for im2col scratch");
  return BNN_OK;
}

static int run(const bnn_variant* v, const bnn_conv_params* cp, const float* x,
               const uint32_t* w, const float* mult, const float* bias, const bnn_fusion* f,
               float* y, bnn_parallel_for_fn pf, void* pf_ctx, int max_tasks) {
  g_err[0] = 0;
  if (!x || !w || !mult || !bias || !y) return set_err(BNN_EINVAL, "NULL tensor pointer");
  bnn_plan p;
  int rc = plan_build(&p, v, cp, w, mult, bias);
  if (rc) return rc;
  rc = run_planned(v, &p, cp->n, x, mult, bias, f, y, pf, pf_ctx, max_tasks);
  plan_free(&p);
  return rc;
}

/* ------------------------------------------------------------------ cached plans */
struct bnn_conv_plan {
  bnn_conv_params params; /* n is not part of the plan */
  const bnn_variant* v;
  bnn_plan p;
};

static int same_geometry(const bnn_conv_params* a, const bnn_conv_params* b) {
  bnn_conv_params x = *a, z = *b;
  x.n = z.n = 0;
  return memcmp(&x, &z, sizeof x) == 0;
}

int bnn_plan_create(const bnn_conv_params* p, const uint32_t* w, bnn_conv_plan** out) {
  g_err[0] = 0;
  if (!p || !w || !out) return set_err(BNN_EINVAL, "NULL argument");
  *out = NULL;
  const bnn_variant* v = NULL;
  int rc = current_variant(&v);
  if (rc) return rc;
  bnn_conv_plan* plan = calloc(1, sizeof *plan);
  if (!plan) return set_err(BNN_ENOMEM, "out of memory for a conv plan");
  bnn_conv_params shape = *p;
  if (shape.n < 1) shape.n = 1; /* the plan does not depend on the batch */
  rc = plan_build(&plan->p, v, &shape, w, NULL, NULL);
  if (rc) {
    free(plan);
    return rc;
  }
  plan->params = shape;
  plan->v = v;
  *out = plan;
  return BNN_OK;
}

int bnn_plan_matches(const bnn_conv_plan* plan, const bnn_conv_params* p) {
  const bnn_variant* v = NULL;
  if (!plan || !p || current_variant(&v)) return 0;
  return plan->v == v && same_geometry(&plan->params, p);
}

void bnn_plan_destroy(bnn_conv_plan* plan) {
  if (!plan) return;
  plan_free(&plan->p);
  free(plan);
}

int bnn_conv2d_planned(const bnn_conv_plan* plan, const bnn_conv_params* p, const float* x,
                       const float* multiplier, const float* bias, const float* threshold,
                       const float* residual, float* y, bnn_parallel_for_fn parallel_for,
                       void* ctx, int max_tasks) {
  g_err[0] = 0;
  if (!bnn_plan_matches(plan, p))
    return set_err(BNN_EINVAL, "the plan was built for other conv parameters or kernel variant");
  if (p->n < 0) return set_err(BNN_EINVAL, "negative batch size");
  const bnn_fusion f = {threshold, residual, NULL, NULL, NULL};
  return run_planned(plan->v, &plan->p, p->n, x, multiplier, bias, &f, y, parallel_for, ctx,
                     max_tasks);
}

int bnn_conv2d_fused_ex(const bnn_conv_plan* plan, const bnn_conv_params* p, const float* x,
                        const uint32_t* w, const float* multiplier, const float* bias,
                        const bnn_fusion* fusion, float* y, bnn_parallel_for_fn parallel_for,
                        void* ctx, int max_tasks) {
  g_err[0] = 0;
  const bnn_fusion none = {NULL, NULL, NULL, NULL, NULL};
  const bnn_fusion* f = fusion ? fusion : &none;
  if (plan) {
    if (!bnn_plan_matches(plan, p))
      return set_err(BNN_EINVAL, "the plan was built for other conv parameters or kernel variant");
    if (p->n < 0) return set_err(BNN_EINVAL, "negative batch size");
    return run_planned(plan->v, &plan->p, p->n, x, multiplier, bias, f, y, parallel_for, ctx,
                       max_tasks);
  }
  const bnn_variant* v = NULL;
  int rc = current_variant(&v);
  if (rc) return rc;
  return run(v, p, x, w, multiplier, bias, f, y, parallel_for, ctx, max_tasks);
}



int bnn_conv2d_with_variant(const bnn_variant* v, const bnn_conv_params* p, const float* x,
                            const uint32_t* w, const float* multiplier, const float* bias,
                            const float* threshold, float* y) {
  int one = 1;
  const bnn_fusion f = {threshold, NULL, NULL, NULL, NULL};
  return run(v, p, x, w, multiplier, bias, &f, y, pthread_parallel_for, &one, 1);
}

int bnn_conv2d(const bnn_conv_params* p, const float* x, const uint32_t* w,
               const float* multiplier, const float* bias, float* y, int num_threads) {
  const bnn_variant* v = NULL;
  int rc = current_variant(&v);
  if (rc) return rc;
  if (num_threads < 1) num_threads = 1;
  if (num_threads > 64) num_threads = 64;
  const bnn_fusion none = {NULL, NULL, NULL, NULL, NULL};
  return run(v, p, x, w, multiplier, bias, &none, y, pthread_parallel_for, &num_threads,
             num_threads == 1 ? 1 : 4 * num_threads);
}

int bnn_conv2d_ex(const bnn_conv_params* p, const float* x, const uint32_t* w,
                  const float* multiplier, const float* bias, float* y,
                  bnn_parallel_for_fn parallel_for, void* ctx, int max_tasks) {
  if (!parallel_for) max_tasks = 1; /* documented: no parallel-for runs inline */
  return bnn_conv2d_fused(p, x, w, multiplier, bias, NULL, NULL, y, parallel_for, ctx,
                          max_tasks);
}

int bnn_conv2d_fused(const bnn_conv_params* p, const float* x, const uint32_t* w,
                     const float* multiplier, const float* bias, const float* threshold,
                     const float* residual, float* y, bnn_parallel_for_fn parallel_for,
                     void* ctx, int max_tasks) {
  const bnn_variant* v = NULL;
  int rc = current_variant(&v);
  if (rc) return rc;
  const bnn_fusion f = {threshold, residual, NULL, NULL, NULL};
  return run(v, p, x, w, multiplier, bias, &f, y, parallel_for, ctx, max_tasks);
}

/* ------------------------------------------------------------------ portable variant */
#define PORT_L 8
#define PORT_NB 4

static void portable_pack_rows(const bnn_plan* p, const float* x, const float* t,
                               uint64_t* pin, int64_t y0, int64_t y1) {
  const int64_t hw = p->h * p->w, cw = p->cw64;
  for (int64_t yy = y0; yy < y1; yy++) {
    uint64_t* row = pin + ((yy + p->pt) * p->wp + p->pl) * cw;
    for (int64_t xx = 0; xx < p->w; xx++)
      for (int64_t j = 0; j < cw; j++) row[xx * cw + j] = 0;
    for (int64_t c = 0; c < p->cg; c++) {
      const float* src = x + c * hw + yy * p->w;
      const uint64_t bit = UINT64_C(1) << (c % 64);
      const float tc = t ? t[c] : 0.0f;
      for (int64_t xx = 0; xx < p->w; xx++)
        if (!(src[xx] >= tc)) row[xx * cw + c / 64] |= bit;
    }
  }
}

static void portable_gemm(const bnn_plan* p, const uint64_t* a, int64_t blk0, int64_t nblk,
                          int64_t g, int64_t ob0, int64_t ob1, float* y) {
  const int64_t K = p->k64;
  for (int64_t ob = ob0; ob < ob1; ob++) {
    const uint64_t* wp = p->wpan + (g * p->ogp + ob * PORT_NB) * K;
    for (int64_t b = 0; b < nblk; b++) {
      const uint64_t* ab = a + b * K * PORT_L;
      int32_t acc[PORT_NB][PORT_L] = {{0}};
      for (int64_t k = 0; k < K; k++)
        for (int o = 0; o < PORT_NB; o++) {
          uint64_t wv = wp[k * PORT_NB + o];
          for (int l = 0; l < PORT_L; l++) acc[o][l] += popcount64(ab[k * PORT_L + l] ^ wv);
        }
      for (int o = 0; o < PORT_NB; o++) {
        int64_t ol = ob * PORT_NB + o;
        if (ol >= p->og) break;
        int64_t oc = g * p->og + ol;
        for (int l = 0; l < PORT_L; l++) {
          int64_t pix = (blk0 + b) * PORT_L + l;
          if (pix >= p->npix) break;
          int32_t v = (int32_t)p->ktotal - 2 * acc[o][l] - bnn_corr(p, g, pix, ol);
          y[oc * p->npix + pix] = bnn_affine(p, oc, v);
        }
      }
    }
  }
}

const bnn_variant bnn_variant_portable = {"portable", PORT_L, PORT_NB, 1, 0, 1, supported_always,
                                          portable_pack_rows, portable_gemm};
