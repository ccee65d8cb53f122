/*
 * bnn runtime: binary (xor + popcount) 2-D convolution kernels.
 *
 * Plain C API with no ONNX / onnxruntime knowledge. Semantics follow
 * docs/onnx_ops.md (`BinaryConv2d`): activations are binarized inside
 * (x >= 0 -> +1 -> bit 0, otherwise incl. NaN -> -1 -> bit 1), weights come
 * bit-packed as uint32 [O, KH, KW, CW] with CW = ceil((C / group) / 32), bit 1 = -1.
 *
 *   y[n, o, oy, ox] = bias[o] + multiplier[o] * acc[n, o, oy, ox]
 *
 * (optionally followed by a residual add and RPReLU: bnn_conv2d_fused_ex).
 *
 * All functions return 0 on success and a negative BNN_E* code on failure;
 * bnn_last_error() then describes the problem (thread-local string).
 */
#ifndef BNN_H
#define BNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BNN_API __declspec(dllexport)
#else
#define BNN_API __attribute__((visibility("default")))
#endif

#define BNN_OK 0
#define BNN_EINVAL (-1)  /* invalid shape / attribute */
#define BNN_ENOMEM (-2)  /* allocation failed */
#define BNN_ENOKERNEL (-3) /* requested kernel variant unavailable on this CPU/build */

typedef struct bnn_conv_params {
  int64_t n, c, h, w;      /* input X [N, C, H, W] */
  int64_t o;               /* output channels */
  int64_t kh, kw;          /* kernel_shape */
  int64_t sh, sw;          /* strides */
  int64_t dh, dw;          /* dilations */
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t group;
  int64_t pad_value;       /* 1: pad with +1; 0: padded taps contribute 0 */
} bnn_conv_params;

/* Fills *ho, *wo with the output spatial size; validates params. */
BNN_API int bnn_conv2d_output_shape(const bnn_conv_params* p, int64_t* ho, int64_t* wo);

/* Number of uint32 words per (o, ky, kx) in the packed weight: ceil((c/group)/32). */
BNN_API int64_t bnn_weight_words(int64_t channels_per_group);

/*
 * Binary convolution. x: float [N,C,H,W]; w: uint32 [O,KH,KW,CW]; multiplier, bias:
 * float [O]; y: float [N,O,HO,WO] (caller allocated). num_threads <= 1 runs on the
 * calling thread only; > 1 uses that many pthreads for this call.
 */
BNN_API int bnn_conv2d(const bnn_conv_params* p, const float* x, const uint32_t* w,
                       const float* multiplier, const float* bias, float* y, int num_threads);

/*
 * Same, but work is handed to a caller-supplied parallel-for (e.g. an onnxruntime
 * intra-op thread pool): parallel_for(ctx, fn, fn_arg, total) must call fn(fn_arg, i)
 * exactly once for every i in [0, total), in any order / on any threads, and return
 * after all calls finished. max_tasks bounds the number of tasks created per phase.
 */
typedef void (*bnn_task_fn)(void* fn_arg, size_t index);
typedef void (*bnn_parallel_for_fn)(void* ctx, bnn_task_fn fn, void* fn_arg, size_t total);
BNN_API int bnn_conv2d_ex(const bnn_conv_params* p, const float* x, const uint32_t* w,
                          const float* multiplier, const float* bias, float* y,
                          bnn_parallel_for_fn parallel_for, void* ctx, int max_tasks);

/*
 * bnn_conv2d_ex with two optional fusions (NULL: off):
 *   threshold float [C]: the input is binarized per channel at threshold[c] (+1 where
 *     x >= threshold[c], otherwise incl. NaN -1) instead of at 0: ReActNet's RSign;
 *   residual float [N, O, HO, WO]: y = (bias[o] + multiplier[o] * acc) + residual, the
 *     rounding of a separate Add: a residual shortcut.
 * parallel_for NULL: runs on max_tasks pthreads (1: the calling thread only).
 */
BNN_API int bnn_conv2d_fused(const bnn_conv_params* p, const float* x, const uint32_t* w,
                             const float* multiplier, const float* bias, const float* threshold,
                             const float* residual, float* y, bnn_parallel_for_fn parallel_for,
                             void* ctx, int max_tasks);

/*
 * Cached plans: the weight panel and the geometry tables of one conv, built once (the
 * weights of a deployed model are constant) and reused by every call with the same
 * parameters (any batch size) and kernel variant. A plan is only read by
 * bnn_conv2d_planned, so concurrent calls may share it.
 */
typedef struct bnn_conv_plan bnn_conv_plan;
BNN_API int bnn_plan_create(const bnn_conv_params* p, const uint32_t* w, bnn_conv_plan** out);
/* 1 when `plan` serves `p` (same parameters but n, and the variant in use), else 0. */
BNN_API int bnn_plan_matches(const bnn_conv_plan* plan, const bnn_conv_params* p);
BNN_API void bnn_plan_destroy(bnn_conv_plan* plan);
/* bnn_conv2d_fused with a plan of the same w (BNN_EINVAL if the plan does not match). */
BNN_API int bnn_conv2d_planned(const bnn_conv_plan* plan, const bnn_conv_params* p,
                               const float* x, const float* multiplier, const float* bias,
                               const float* threshold, const float* residual, float* y,
                               bnn_parallel_for_fn parallel_for, void* ctx, int max_tasks);

/*
 * Optional fusions of bnn_conv2d_fused_ex (every pointer NULL: off), applied in this order:
 *   threshold float [C]: as in bnn_conv2d_fused (ReActNet's RSign);
 *   residual float [N, O, HO, WO]: as in bnn_conv2d_fused (y += residual);
 *   rprelu_shift, rprelu_slope, rprelu_bias float [O] each, all three or none: ReActNet's
 *     RPReLU on the result, per output channel o:
 *       t = y - rprelu_shift[o];  q = (t < 0) ? rprelu_slope[o] * t : t;
 *       y = q + rprelu_bias[o]
 *     each step one float32 operation with its own rounding: the result of ONNX's Sub,
 *     PRelu, Add run separately (NaN stays NaN).
 */
typedef struct bnn_fusion {
  const float* threshold;
  const float* residual;
  const float* rprelu_shift;
  const float* rprelu_slope;
  const float* rprelu_bias;
} bnn_fusion;

/*
 * bnn_conv2d_fused / bnn_conv2d_planned with every fusion of bnn_fusion (fusion NULL:
 * none). plan NULL: w is used (and repacked for this call, as bnn_conv2d_fused does);
 * otherwise the plan must match p (BNN_EINVAL if not) and w is ignored (may be NULL).
 * BNN_EINVAL when only some of the three RPReLU vectors are given.
 * parallel_for NULL: runs on max_tasks pthreads (1 or less: the calling thread only).
 */
BNN_API int bnn_conv2d_fused_ex(const bnn_conv_plan* plan, const bnn_conv_params* p,
                                const float* x, const uint32_t* w, const float* multiplier,
                                const float* bias, const bnn_fusion* fusion, float* y,
                                bnn_parallel_for_fn parallel_for, void* ctx, int max_tasks);

/*
 * Pack +-1 weights int8 [O, C/group, KH, KW] (value < 0 -> bit 1; 0 and > 0 -> bit 0)
 * into uint32 [O, KH, KW, CW] (CW = bnn_weight_words(cg)), padding bits 0.
 */
BNN_API int bnn_pack_weights(const int8_t* w_pm1, int64_t o, int64_t cg, int64_t kh,
                             int64_t kw, uint32_t* out);

/* Name of the kernel variant in use: "portable", "avx2", "avx512", "neon". */
BNN_API const char* bnn_kernel_name(void);
/* Comma separated variants usable on this CPU with this build, best last. */
BNN_API const char* bnn_available_kernels(void);
/*
 * Force a variant by name ("auto" = best available). Without a call, the env var
 * BNN_KERNEL (same names) is honoured at first use, else "auto".
 */
BNN_API int bnn_set_kernel(const char* name);
/* Description of the last error on this thread ("" if none). */
BNN_API const char* bnn_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* BNN_H */
