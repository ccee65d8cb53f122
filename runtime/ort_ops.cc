// onnxruntime shim: registers BinaryConv2d (domain com.bnn_export, opset 1) on the CPU
// execution provider and forwards to the plain C API in bnn.h. Threads: the op runs its
// work through the session's intra-op thread pool (KernelContext::ParallelFor), so it
// follows SessionOptions.intra_op_num_threads (1 = single-threaded).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bnn.h"

namespace {

const char* kDomain = "com.bnn_export";

// onnxruntime does not tell a custom op how many intra-op threads its session has, and
// the task split should follow it: one thread wants no split beyond the L1-sized chunks
// (a 32-way split cost 6-13% there), T threads about 4T tasks (32 cost 6-9% at 2). So
// every call records which threads ran its tasks (one bit per thread, ids from a
// process-wide counter) and the kernel keeps the largest count seen in one call. Until a
// call has run, the op offers 32 tasks, so that every pool thread can show up.
std::atomic<int> g_next_thread_bit{0};
thread_local int t_thread_bit = -1;

struct PoolCtx {
  OrtKernelContext* ctx;
  std::atomic<uint64_t> threads_seen{0};  // this call's threads, one bit each
};

struct Trampoline {
  bnn_task_fn fn;
  void* arg;
  std::atomic<uint64_t>* threads_seen;
};

void RunTask(void* user, size_t i) {
  auto* t = static_cast<Trampoline*>(user);
  if (t_thread_bit < 0) t_thread_bit = g_next_thread_bit.fetch_add(1, std::memory_order_relaxed) & 63;
  const uint64_t bit = uint64_t{1} << t_thread_bit;
  if (!(t->threads_seen->load(std::memory_order_relaxed) & bit))
    t->threads_seen->fetch_or(bit, std::memory_order_relaxed);
  t->fn(t->arg, i);
}

// Tasks to offer for a pool of `threads` (0: not known yet), the rule of bnn_conv2d's
// own pthread path (bnn_core.c run_planned).
int TasksFor(int threads) {
  if (threads == 0) return 32;
  return threads == 1 ? 1 : std::min(4 * threads, 64);
}

// Called from C code: must not throw. If onnxruntime refuses the parallel-for, run the
// tasks on this thread (every task is idempotent, so re-running any is harmless).
void OrtParallelFor(void* pool_ctx, bnn_task_fn fn, void* fn_arg, size_t total) {
  auto* pc = static_cast<PoolCtx*>(pool_ctx);
  Trampoline t{fn, fn_arg, &pc->threads_seen};
  OrtStatus* st = Ort::GetApi().KernelContext_ParallelFor(pc->ctx, RunTask, total, 0, &t);
  if (st) {
    Ort::GetApi().ReleaseStatus(st);
    for (size_t i = 0; i < total; i++) fn(fn_arg, i);
  }
}

bool GetInt(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, out);
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  return true;
}

bool GetInts(const OrtApi* api, const OrtKernelInfo* info, const char* name,
             std::vector<int64_t>* out) {
  size_t n = 0;
  OrtStatus* st = api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &n);
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  out->resize(n);
  if (n == 0) return true;
  st = api->KernelInfoGetAttributeArray_int64(info, name, out->data(), &n);
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  return true;
}

struct BinaryConv2d {
  BinaryConv2d(const OrtApi* api, const OrtKernelInfo* info) {
    // Constructors must not throw across the C ABI: record errors, report in Compute.
    std::vector<int64_t> ks, strides{1, 1}, pads{0, 0, 0, 0}, dil{1, 1};
    if (!GetInt(api, info, "channels_in", &channels_in_)) error_ += "missing attribute channels_in; ";
    if (!GetInts(api, info, "kernel_shape", &ks) || ks.size() != 2)
      error_ += "attribute kernel_shape must be 2 ints; ";
    std::vector<int64_t> tmp;
    if (GetInts(api, info, "strides", &tmp)) strides = tmp;
    if (GetInts(api, info, "pads", &tmp)) pads = tmp;
    if (GetInts(api, info, "dilations", &tmp)) dil = tmp;
    GetInt(api, info, "group", &group_);
    GetInt(api, info, "pad_value", &pad_value_);
    if (strides.size() != 2) error_ += "strides must be 2 ints; ";
    if (dil.size() != 2) error_ += "dilations must be 2 ints; ";
    if (pads.size() != 4) error_ += "pads must be 4 ints [top, left, bottom, right]; ";
    if (!error_.empty()) return;
    // W a constant initializer (every exported model): its plan (weight panel, geometry
    // tables) is built at the first run and reused; otherwise built at every run
    int is_constant = 0;
    const OrtValue* w_value = nullptr;
    OrtStatus* st = api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &w_value);
    if (st) api->ReleaseStatus(st);
    else w_constant_ = is_constant != 0;
    kh_ = ks[0]; kw_ = ks[1];
    sh_ = strides[0]; sw_ = strides[1];
    dh_ = dil[0]; dw_ = dil[1];
    pt_ = pads[0]; pl_ = pads[1]; pb_ = pads[2]; pr_ = pads[3];
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& X,
                      const Ort::Custom::Tensor<uint32_t>& W,
                      const Ort::Custom::Tensor<float>& multiplier,
                      const Ort::Custom::Tensor<float>& bias,
                      std::optional<const Ort::Custom::Tensor<float>*> threshold,
                      std::optional<const Ort::Custom::Tensor<float>*> residual,
                      std::optional<const Ort::Custom::Tensor<float>*> rprelu_shift,
                      std::optional<const Ort::Custom::Tensor<float>*> rprelu_slope,
                      std::optional<const Ort::Custom::Tensor<float>*> rprelu_bias,
                      Ort::Custom::Tensor<float>& Y) {
    if (!error_.empty()) return Ort::Status(("BinaryConv2d: " + error_).c_str(), ORT_INVALID_ARGUMENT);
    const auto& xs = X.Shape();
    const auto& ws = W.Shape();
    if (xs.size() != 4) return Fail("X must be 4-D [N, C, H, W]");
    if (ws.size() != 4) return Fail("W must be 4-D uint32 [O, KH, KW, CW]");
    if (xs[1] != channels_in_) return Fail("X.shape[1] != channels_in");
    if (group_ < 1 || channels_in_ % group_) return Fail("group must divide channels_in");
    if (ws[1] != kh_ || ws[2] != kw_) return Fail("W.shape[1:3] != kernel_shape");
    if (ws[3] != bnn_weight_words(channels_in_ / group_))
      return Fail("W.shape[3] != ceil((channels_in / group) / 32)");
    const int64_t o = ws[0];
    if (multiplier.NumberOfElement() != o || bias.NumberOfElement() != o)
      return Fail("multiplier and bias must have O = W.shape[0] elements");
    bnn_conv_params p{xs[0], xs[1], xs[2], xs[3], o, kh_, kw_, sh_, sw_, dh_, dw_,
                      pt_, pl_, pb_, pr_, group_, pad_value_};
    int64_t ho = 0, wo = 0;
    bnn_conv_params shape_p = p;
    if (shape_p.n == 0) shape_p.n = 1;  // empty batch: still validate, output is empty
    if (bnn_conv2d_output_shape(&shape_p, &ho, &wo) != BNN_OK) return Fail(bnn_last_error());
    // optional inputs: threshold [C] ([0]: none, so that a residual can follow it),
    // residual [N, O, HO, WO] ([0]: none, so that the RPReLU vectors can follow it),
    // rprelu_shift, rprelu_slope, rprelu_bias [O] each (all three or none)
    const float* thr = nullptr;
    if (threshold.has_value() && *threshold && (*threshold)->NumberOfElement() != 0) {
      if ((*threshold)->NumberOfElement() != xs[1])
        return Fail("threshold must have C = X.shape[1] elements (or 0 for none)");
      thr = (*threshold)->Data();
    }
    const float* res = nullptr;
    if (residual.has_value() && *residual && (*residual)->Shape() != std::vector<int64_t>{0}) {
      const std::vector<int64_t> want{xs[0], o, ho, wo};
      if ((*residual)->Shape() != want) return Fail("residual must have the output's shape [N, O, HO, WO]");
      res = (*residual)->Data();
    }
    const std::optional<const Ort::Custom::Tensor<float>*>* rp_in[3] = {&rprelu_shift, &rprelu_slope,
                                                                        &rprelu_bias};
    const char* rp_names[3] = {"rprelu_shift", "rprelu_slope", "rprelu_bias"};
    const float* rp[3] = {nullptr, nullptr, nullptr};
    int n_rp = 0;
    for (int i = 0; i < 3; i++) {
      const auto& in = *rp_in[i];
      if (!in.has_value() || !*in) continue;
      if ((*in)->Shape() != std::vector<int64_t>{o})
        return Fail(std::string(rp_names[i]) + " must be 1-D with O = W.shape[0] = " +
                    std::to_string(o) + " elements");
      rp[i] = (*in)->Data();
      n_rp++;
    }
    if (n_rp != 0 && n_rp != 3)
      return Fail("rprelu_shift, rprelu_slope and rprelu_bias must be given together (got " +
                  std::to_string(n_rp) + " of 3)");
    const bnn_fusion fusion{thr, res, rp[0], rp[1], rp[2]};
    float* y = Y.Allocate({xs[0], o, ho, wo});
    if (xs[0] * o * ho * wo == 0) return Ort::Status{nullptr};
    PoolCtx pc;
    pc.ctx = ctx;
    std::shared_ptr<bnn_conv_plan> plan;
    if (w_constant_) {
      std::lock_guard<std::mutex> lock(plan_mu_);
      if (!plan_ || plan_w_ != W.Data() || !bnn_plan_matches(plan_.get(), &p)) {
        bnn_conv_plan* fresh = nullptr;
        if (bnn_plan_create(&p, W.Data(), &fresh) != BNN_OK) return Fail(bnn_last_error());
        plan_.reset(fresh, bnn_plan_destroy);
        plan_w_ = W.Data();
      }
      plan = plan_;  // kept alive for this call even if another call replaces plan_
    }
    const int tasks = TasksFor(pool_threads_.load(std::memory_order_relaxed));
    int rc = bnn_conv2d_fused_ex(plan.get(), &p, X.Data(), W.Data(), multiplier.Data(),
                                 bias.Data(), &fusion, y, OrtParallelFor, &pc, tasks);
    const int seen = __builtin_popcountll(pc.threads_seen.load(std::memory_order_relaxed));
    int known = pool_threads_.load(std::memory_order_relaxed);
    while (seen > known && !pool_threads_.compare_exchange_weak(known, seen)) {
    }
    if (rc != BNN_OK) return Fail(bnn_last_error());
    return Ort::Status{nullptr};
  }

  // Output shape for ORT's graph planning, set only when H, W, O are known integers
  // (N may be symbolic). Never throws: on anything unexpected the shape stays unknown.
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) {
    try {
      const auto& xs = ctx.GetInputShape(0);
      const auto& ws = ctx.GetInputShape(1);
      if (xs.size() != 4 || ws.size() != 4 || !xs[2].IsInt() || !xs[3].IsInt() ||
          !ws[0].IsInt() || xs[2].AsInt() < 1 || xs[3].AsInt() < 1 || ws[0].AsInt() < 1)
        return Ort::Status{nullptr};
      if (!xs[0].IsInt() && (!xs[0].AsSym() || !*xs[0].AsSym())) return Ort::Status{nullptr};
      auto ints = [&](const char* name, std::vector<int64_t> dflt) {
        try {
          return ctx.GetAttrInts(name);
        } catch (const Ort::Exception&) {
          return dflt;
        }
      };
      std::vector<int64_t> ks = ctx.GetAttrInts("kernel_shape");
      std::vector<int64_t> st = ints("strides", {1, 1}), pd = ints("pads", {0, 0, 0, 0});
      std::vector<int64_t> dl = ints("dilations", {1, 1});
      if (ks.size() != 2 || st.size() != 2 || pd.size() != 4 || dl.size() != 2)
        return Ort::Status{nullptr};
      int64_t ho = 0, wo = 0;
      bnn_conv_params p{1, 1, xs[2].AsInt(), xs[3].AsInt(), 1, ks[0], ks[1], st[0], st[1],
                        dl[0], dl[1], pd[0], pd[1], pd[2], pd[3], 1, 1};
      if (bnn_conv2d_output_shape(&p, &ho, &wo) != BNN_OK) return Ort::Status{nullptr};
      Ort::ShapeInferContext::Shape out{xs[0], ws[0].AsInt(), ho, wo};
      return ctx.SetOutputShape(0, out);
    } catch (const std::exception&) {
      return Ort::Status{nullptr};
    }
  }

  static Ort::Status Fail(const std::string& msg) {
    return Ort::Status(("BinaryConv2d: " + msg).c_str(), ORT_INVALID_ARGUMENT);
  }

  std::string error_;
  bool w_constant_ = false;
  std::mutex plan_mu_;
  std::shared_ptr<bnn_conv_plan> plan_;
  const void* plan_w_ = nullptr;
  std::atomic<int> pool_threads_{0};  // most threads seen running one call's tasks
  int64_t channels_in_ = 0, kh_ = 1, kw_ = 1, sh_ = 1, sw_ = 1, dh_ = 1, dw_ = 1;
  int64_t pt_ = 0, pl_ = 0, pb_ = 0, pr_ = 0, group_ = 1, pad_value_ = 1;
};

std::once_flag g_once;
std::unique_ptr<Ort::Custom::OrtLiteCustomOp> g_op;
std::unique_ptr<Ort::CustomOpDomain> g_domain;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // API version 1 always exists and can build the error status.
    const OrtApi* api1 = api_base->GetApi(1);
    std::string msg = std::string("bnn ort ops were built against onnxruntime API ") +
                      std::to_string(ORT_API_VERSION) + ", which onnxruntime " +
                      api_base->GetVersionString() + " does not provide; upgrade onnxruntime";
    return api1 ? api1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    std::call_once(g_once, [] {
      g_op.reset(Ort::Custom::CreateLiteCustomOp<BinaryConv2d>("BinaryConv2d",
                                                              "CPUExecutionProvider"));
      g_domain = std::make_unique<Ort::CustomOpDomain>(kDomain);
      g_domain->Add(g_op.get());
    });
    Ort::UnownedSessionOptions so(options);
    so.Add(*g_domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
