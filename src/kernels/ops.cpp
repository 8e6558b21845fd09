// The op contract's entry points: check shapes, dtypes and devices (backend-neutral, so every backend
// gets the same messages), then call the implementation for the tensors' device: kernels/cpu, or kernels/cuda
// in a build with the CUDA backend (L3C_CUDA); without it a CUDA tensor is an internal error that says so.
//
// Shapes: a "(N, d)" operand may be given with any leading dimensions (B, T, d), as long as the
// product of the leading dimensions matches; the last dimension is the one the contract names.
#include "kernels/ops.h"

#include <initializer_list>

#include "kernels/cpu/cpu_ops.h"
#ifdef L3C_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace l3c::ops {
namespace {

int64_t last_dim(const Tensor& t) { return t.ndim == 0 ? 1 : t.shape[t.ndim - 1]; }
int64_t leading_rows(const Tensor& t) {
  const int64_t d = last_dim(t);
  return d == 0 ? 0 : t.numel() / d;
}

// The device a call runs on: that of its non-empty tensors, which must all agree. A CUDA tensor in a build
// without the CUDA backend is an internal error.
Device device_of(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (t->empty()) continue;
#ifndef L3C_WITH_CUDA
    L3C_CHECK(t->device == Device::CPU,
              "ops::{}: a tensor {} is on the {} device, but the CUDA backend is not part of this build "
              "(configure with -DL3C_CUDA=ON where nvcc is installed)",
              op, t->shape_string(), device_name(t->device));
#endif
    if (first == nullptr) first = t;
    L3C_CHECK(t->device == first->device, "ops::{}: tensors on different devices: {} on {} and {} on {}", op,
              first->shape_string(), device_name(first->device), t->shape_string(), device_name(t->device));
  }
  return first == nullptr ? Device::CPU : first->device;
}

// All given tensors share one floating dtype the backend computes in: f32 or f64 on the CPU, f32 or bf16 on
// CUDA.
void require_float(const char* op, Device device, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = *tensors.begin();
  if (device == Device::CUDA) {
    L3C_CHECK(first->dtype == DType::F32 || first->dtype == DType::BF16,
              "ops::{}: floating tensors must be f32 or bf16 on CUDA, got {}", op, dtype_name(first->dtype));
  } else {
    L3C_CHECK(first->dtype == DType::F32 || first->dtype == DType::F64,
              "ops::{}: floating tensors must be f32 or f64 on the CPU, got {}", op, dtype_name(first->dtype));
  }
  for (const Tensor* t : tensors)
    L3C_CHECK(t->dtype == first->dtype, "ops::{}: mixed dtypes {} and {}", op, dtype_name(first->dtype),
              dtype_name(t->dtype));
}

// Parameter gradients (the outputs that accumulate over micro-batches: dtable, dweight, dw, dW, dw_k, dw_v) have the
// call's dtype, or f32 in a bf16 call: mixed precision accumulates its gradients in fp32, since a bf16 sum that
// every micro-batch and every classifier row block adds into loses about 3 significant digits per thousand adds.
void require_param_grad(const char* op, DType dtype, std::initializer_list<const Tensor*> grads) {
  for (const Tensor* g : grads)
    L3C_CHECK(g->dtype == dtype || (dtype == DType::BF16 && g->dtype == DType::F32),
              "ops::{}: a parameter gradient {} is {}, expected {} for a {} call", op, g->shape_string(),
              dtype_name(g->dtype), dtype == DType::BF16 ? "bf16 or f32" : dtype_name(dtype), dtype_name(dtype));
}

// Statistics (rstd, lse, losses, L3 probs) have the call's dtype, except that a bf16 call keeps them in f32.
void require_stats(const char* op, DType dtype, std::initializer_list<const Tensor*> tensors) {
  const DType expected = statistics_dtype(dtype);
  for (const Tensor* t : tensors)
    L3C_CHECK(t->dtype == expected, "ops::{}: a statistics tensor {} is {}, expected {} for a {} call", op,
              t->shape_string(), dtype_name(t->dtype), dtype_name(expected), dtype_name(dtype));
}

void require_i32(const char* op, const char* what, const Tensor& t) {
  L3C_CHECK(t.dtype == DType::I32, "ops::{}: {} must be i32, got {}", op, what, dtype_name(t.dtype));
}

void require_data(const char* op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    L3C_CHECK(!t->empty() || t->numel() == 0, "ops::{}: a required tensor {} has no data", op,
              t->shape_string());
}

// A sum of the ops contract (sum_squares_into's output, update_gate's output and inputs): f64 (n) with memory.
void require_f64_sums(const char* op, const char* name, const Tensor& t, int64_t n) {
  L3C_CHECK(t.numel() == n && t.dtype == DType::F64, "ops::{}: {} {} {} must be ({}) f64", op, name, t.shape_string(),
            dtype_name(t.dtype), n);
  require_data(op, {&t});
}

}  // namespace

// Runs `call` on the CUDA backend and returns from the op (only reached for CUDA tensors, which device_of
// refuses in a build without the backend). A CUDA error meanwhile names the op.
#ifdef L3C_WITH_CUDA
#define L3C_RUN_ON_CUDA(call)                                  \
  do {                                                         \
    const cuda::CurrentOp l3c_current_op_(#call);              \
    return cuda::call;                                         \
  } while (0)
#else
#define L3C_RUN_ON_CUDA(call) L3C_CHECK(false, "ops: no CUDA backend in this build")
#endif

// ---- elementwise ---------------------------------------------------------------------------------
void fill_zero(Tensor t) {
  if (t.numel() == 0) return;
  require_data("fill_zero", {&t});
  if (device_of("fill_zero", {&t}) == Device::CUDA) L3C_RUN_ON_CUDA(fill_zero(t));
  cpu::fill_zero(t);
}

void copy(Tensor dst, Tensor src) {
  L3C_CHECK(dst.numel() == src.numel() && dst.dtype == src.dtype, "ops::copy: dst {} {} vs src {} {}",
            dst.shape_string(), dtype_name(dst.dtype), src.shape_string(), dtype_name(src.dtype));
  if (dst.numel() == 0) return;
  require_data("copy", {&dst, &src});
  const Device to = device_of("copy", {&dst}), from = device_of("copy", {&src});
  if (to != from) L3C_RUN_ON_CUDA(copy_between(dst, src));
  if (to == Device::CUDA) L3C_RUN_ON_CUDA(copy(dst, src));
  cpu::copy(dst, src);
}

void convert(Tensor dst, Tensor src) {
  const char* op = "convert";
  L3C_CHECK(dst.numel() == src.numel(), "ops::convert: dst {} vs src {}", dst.shape_string(), src.shape_string());
  for (const Tensor* t : {&dst, &src})
    L3C_CHECK(t->dtype != DType::I32, "ops::convert: floating tensors only, got {}", dtype_name(t->dtype));
  if (dst.numel() == 0) return;
  require_data(op, {&dst, &src});
  const Device device = device_of(op, {&dst, &src});
  if (device == Device::CUDA) {
    for (const Tensor* t : {&dst, &src})
      L3C_CHECK(t->dtype == DType::F32 || t->dtype == DType::BF16, "ops::convert: f32 or bf16 on CUDA, got {}",
                dtype_name(t->dtype));
    L3C_RUN_ON_CUDA(convert(dst, src));
  }
  cpu::convert(dst, src);
}

void add_inplace(Tensor y, Tensor x) {
  L3C_CHECK(y.numel() == x.numel(), "ops::add_inplace: y {} vs x {}", y.shape_string(), x.shape_string());
  const Device device = device_of("add_inplace", {&y, &x});
  require_float("add_inplace", device, {&y, &x});
  if (y.numel() == 0) return;
  require_data("add_inplace", {&y, &x});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(add_inplace(y, x));
  cpu::add_inplace(y, x);
}

void scale_inplace(Tensor y, double s) {
  const Device device = device_of("scale_inplace", {&y});
  require_float("scale_inplace", device, {&y});
  if (y.numel() == 0) return;
  require_data("scale_inplace", {&y});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(scale_inplace(y, s));
  cpu::scale_inplace(y, s);
}

double sum_squares(Tensor x) {
  const Device device = device_of("sum_squares", {&x});
  require_float("sum_squares", device, {&x});
  if (x.numel() == 0) return 0.0;
  require_data("sum_squares", {&x});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(sum_squares(x));
  return cpu::sum_squares(x);
}

void sum_squares_into(Tensor out, Tensor x) {
  const char* op = "sum_squares_into";
  require_f64_sums(op, "out", out, 1);
  const Device device = device_of(op, {&out, &x});
  require_float(op, device, {&x});
  if (x.numel() > 0) require_data(op, {&x});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(sum_squares_into(out, x));
  out.ptr<double>()[0] = x.numel() == 0 ? 0.0 : cpu::sum_squares(x);
}

void add_mean(Tensor sum, Tensor values) {
  const char* op = "add_mean";
  L3C_CHECK(sum.numel() == 1 && sum.dtype == DType::F64 && values.numel() >= 1, "ops::{}: sum {} {} must be (1) f64, "
            "values {} non-empty", op, sum.shape_string(), dtype_name(sum.dtype), values.shape_string());
  const Device device = device_of(op, {&sum, &values});
  L3C_CHECK(values.dtype == DType::F32 || (device == Device::CPU && values.dtype == DType::F64),
            "ops::{}: values are f32 (or f64 on the CPU), got {}", op, dtype_name(values.dtype));
  require_data(op, {&sum, &values});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(add_mean(sum, values));
  cpu::add_mean(sum, values);
}

void add_to_sums(Tensor sums, Tensor values) {
  const char* op = "add_to_sums";
  L3C_CHECK(sums.dtype == DType::F64 && values.numel() == sums.numel(), "ops::{}: sums {} {} must be f64 with one "
            "element per value ({})", op, sums.shape_string(), dtype_name(sums.dtype), values.shape_string());
  const Device device = device_of(op, {&sums, &values});
  L3C_CHECK(values.dtype == DType::F32 || (device == Device::CPU && values.dtype == DType::F64),
            "ops::{}: values are f32 (or f64 on the CPU), got {}", op, dtype_name(values.dtype));
  if (sums.numel() == 0) return;
  require_data(op, {&sums, &values});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(add_to_sums(sums, values));
  cpu::add_to_sums(sums, values);
}

// ---- AdamW --------------------------------------------------------------------------------------------
void write_adamw_constants(Tensor out, const AdamWStep& step) {
  L3C_CHECK(out.numel() == kAdamWConstants && (out.dtype == DType::F32 || out.dtype == DType::F64) &&
                out.device == Device::CPU && !out.empty(),
            "ops::write_adamw_constants: out {} {} on {} must be ({}) f32 or f64 host memory", out.shape_string(),
            dtype_name(out.dtype), device_name(out.device), kAdamWConstants);
  if (out.dtype == DType::F32) *static_cast<AdamWConstants<float>*>(out.data) = adamw_constants<float>(step);
  else *static_cast<AdamWConstants<double>*>(out.data) = adamw_constants<double>(step);
}

void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor master, Tensor constants, Tensor gate) {
  const char* op = "adamw_update";
  const int64_t n = param.numel();
  L3C_CHECK(grad.numel() == n && m.numel() == n && v.numel() == n && (master.empty() || master.numel() == n),
            "ops::{}: param {}, grad {}, m {}, v {} and master {} must have one size", op, param.shape_string(),
            grad.shape_string(), m.shape_string(), v.shape_string(), master.shape_string());
  const Device device = device_of(op, {&param, &grad, &m, &v, &master, &constants, &gate});
  require_float(op, device, {&param});
  require_param_grad(op, param.dtype, {&grad});
  if (device == Device::CUDA) {
    require_stats(op, DType::BF16, {&m, &v});  // f32 moments
    L3C_CHECK(master.empty() == (param.dtype == DType::F32), "ops::{}: a {} parameter needs {}", op,
              dtype_name(param.dtype), param.dtype == DType::F32 ? "no master copy" : "an f32 master copy");
    if (!master.empty()) require_stats(op, DType::BF16, {&master});
  } else {
    require_float(op, device, {&param, &grad, &m, &v});
    L3C_CHECK(master.empty(), "ops::{}: master weights are for bf16 parameters on CUDA", op);
  }
  L3C_CHECK(constants.numel() == kAdamWConstants && constants.dtype == m.dtype && !constants.empty(),
            "ops::{}: constants {} {} must be the step's ({}) AdamWConstants in the moments' dtype ({}), on their "
            "device (ops::write_adamw_constants)", op, constants.shape_string(), dtype_name(constants.dtype),
            kAdamWConstants, dtype_name(m.dtype));
  if (!gate.empty()) require_f64_sums(op, "gate", gate, 2);
  if (n == 0) return;
  require_data(op, {&param, &grad, &m, &v});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(adamw_update(param, grad, m, v, master, constants, gate));
  cpu::adamw_update(param, grad, m, v, constants, gate);
}

void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm) {
  const char* op = "update_gate";
  require_f64_sums(op, "gate", gate, 2);
  require_f64_sums(op, "loss_sum", loss_sum, 1);
  require_f64_sums(op, "grad_squares", grad_squares, 1);
  L3C_CHECK(max_norm >= 0.0, "ops::{}: max_norm {} is negative", op, max_norm);
  const Device device = device_of(op, {&gate, &loss_sum, &grad_squares});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(update_gate(gate, loss_sum, grad_squares, max_norm));
  cpu::update_gate(gate, loss_sum, grad_squares, max_norm);
}

// ---- embedding ------------------------------------------------------------------------------------
void embedding_forward(Tensor out, Tensor table, Tensor tokens) {
  const char* op = "embedding_forward";
  L3C_CHECK(table.ndim == 2 && last_dim(out) == table.shape[1] && leading_rows(out) == tokens.numel(),
            "ops::{}: out {} must be (N, d) for table (V, d) {} and tokens (N) {}", op, out.shape_string(),
            table.shape_string(), tokens.shape_string());
  const Device device = device_of(op, {&out, &table, &tokens});
  require_float(op, device, {&out, &table});
  require_i32(op, "tokens", tokens);
  if (out.numel() == 0) return;
  require_data(op, {&out, &table, &tokens});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(embedding_forward(out, table, tokens));
  cpu::embedding_forward(out, table, tokens);
}

void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) {
  const char* op = "embedding_backward";
  L3C_CHECK(dtable.ndim == 2 && last_dim(dout) == dtable.shape[1] && leading_rows(dout) == tokens.numel(),
            "ops::{}: dout {} must be (N, d) for dtable (V, d) {} and tokens (N) {}", op,
            dout.shape_string(), dtable.shape_string(), tokens.shape_string());
  const Device device = device_of(op, {&dtable, &dout, &tokens});
  require_float(op, device, {&dout});
  require_param_grad(op, dout.dtype, {&dtable});
  require_i32(op, "tokens", tokens);
  if (dout.numel() == 0) return;
  require_data(op, {&dtable, &dout, &tokens});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(embedding_backward(dtable, dout, tokens));
  cpu::embedding_backward(dtable, dout, tokens);
}

// ---- RMSNorm --------------------------------------------------------------------------------------
void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps) {
  const char* op = "rmsnorm_forward";
  const int64_t d = last_dim(x), n = leading_rows(x);
  L3C_CHECK(out.numel() == x.numel() && last_dim(out) == d && rstd.numel() == n && weight.numel() == d,
            "ops::{}: x {} (N, d), out {} (N, d), rstd {} (N), weight {} (d)", op, x.shape_string(),
            out.shape_string(), rstd.shape_string(), weight.shape_string());
  L3C_CHECK(eps >= 0, "ops::{}: eps must be >= 0, got {}", op, eps);
  const Device device = device_of(op, {&out, &rstd, &x, &weight});
  require_float(op, device, {&out, &x, &weight});
  require_stats(op, x.dtype, {&rstd});
  if (x.numel() == 0) return;
  require_data(op, {&out, &rstd, &x, &weight});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(rmsnorm_forward(out, rstd, x, weight, eps));
  cpu::rmsnorm_forward(out, rstd, x, weight, eps);
}

void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) {
  const char* op = "rmsnorm_backward";
  const int64_t d = last_dim(x), n = leading_rows(x);
  L3C_CHECK(dx.numel() == x.numel() && last_dim(dx) == d && dout.numel() == x.numel() &&
                last_dim(dout) == d && rstd.numel() == n && weight.numel() == d && dweight.numel() == d,
            "ops::{}: x {} (N, d), dx {}, dout {} (N, d), rstd {} (N), weight {}, dweight {} (d)", op,
            x.shape_string(), dx.shape_string(), dout.shape_string(), rstd.shape_string(),
            weight.shape_string(), dweight.shape_string());
  const Device device = device_of(op, {&dx, &dweight, &dout, &x, &weight, &rstd});
  require_float(op, device, {&dx, &dout, &x, &weight});
  require_param_grad(op, x.dtype, {&dweight});
  require_stats(op, x.dtype, {&rstd});
  if (x.numel() == 0) return;
  require_data(op, {&dx, &dweight, &dout, &x, &weight, &rstd});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(rmsnorm_backward(dx, dweight, dout, x, weight, rstd));
  cpu::rmsnorm_backward(dx, dweight, dout, x, weight, rstd);
}

// ---- matrix products ------------------------------------------------------------------------------
void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate) {
  const char* op = "matmul_forward";
  L3C_CHECK(w.ndim == 2 && last_dim(x) == w.shape[1] && last_dim(out) == w.shape[0] &&
                leading_rows(out) == leading_rows(x),
            "ops::{}: out {} = x {} @ w^T {}: need x (N, K), w (M, K), out (N, M)", op, out.shape_string(),
            x.shape_string(), w.shape_string());
  const Device device = device_of(op, {&out, &x, &w});
  require_float(op, device, {&out, &x, &w});
  if (out.numel() == 0) return;
  require_data(op, {&out, &x, &w});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(matmul_forward(out, x, w, accumulate));
  cpu::matmul_forward(out, x, w, accumulate);
}

void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx) {
  const char* op = "matmul_backward";
  L3C_CHECK(w.ndim == 2 && last_dim(x) == w.shape[1] && last_dim(dout) == w.shape[0] &&
                leading_rows(dout) == leading_rows(x),
            "ops::{}: dout {}, x {}, w {}: need dout (N, M), x (N, K), w (M, K)", op, dout.shape_string(),
            x.shape_string(), w.shape_string());
  L3C_CHECK(dx.empty() || (dx.numel() == x.numel() && last_dim(dx) == last_dim(x)),
            "ops::{}: dx {} must have x's shape {}", op, dx.shape_string(), x.shape_string());
  L3C_CHECK(dw.empty() || (dw.numel() == w.numel() && last_dim(dw) == last_dim(w)),
            "ops::{}: dw {} must have w's shape {}", op, dw.shape_string(), w.shape_string());
  const Device device = device_of(op, {&dx, &dw, &dout, &x, &w});
  require_float(op, device, {&dout, &x, &w});
  if (!dx.empty()) require_float(op, device, {&dout, &dx});
  if (!dw.empty()) require_param_grad(op, dout.dtype, {&dw});
  if (dx.empty() && dw.empty()) return;
  require_data(op, {&dout, &x, &w});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(matmul_backward(dx, dw, dout, x, w, accumulate_dx));
  cpu::matmul_backward(dx, dw, dout, x, w, accumulate_dx);
}

// ---- rotary position embedding --------------------------------------------------------------------
void rope_forward(Tensor x, double theta) {
  const char* op = "rope_forward";
  L3C_CHECK(x.ndim == 4 && x.shape[3] % 2 == 0, "ops::{}: x {} must be (B, T, nh, hd) with hd even", op,
            x.shape_string());
  L3C_CHECK(theta > 0, "ops::{}: theta must be > 0, got {}", op, theta);
  const Device device = device_of(op, {&x});
  require_float(op, device, {&x});
  if (x.numel() == 0) return;
  require_data(op, {&x});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(rope_forward(x, theta));
  cpu::rope_forward(x, theta);
}

void rope_backward(Tensor dx, double theta) {
  const char* op = "rope_backward";
  L3C_CHECK(dx.ndim == 4 && dx.shape[3] % 2 == 0, "ops::{}: dx {} must be (B, T, nh, hd) with hd even", op,
            dx.shape_string());
  L3C_CHECK(theta > 0, "ops::{}: theta must be > 0, got {}", op, theta);
  const Device device = device_of(op, {&dx});
  require_float(op, device, {&dx});
  if (dx.numel() == 0) return;
  require_data(op, {&dx});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(rope_backward(dx, theta));
  cpu::rope_backward(dx, theta);
}

// ---- causal grouped-query attention --------------------------------------------------------------
namespace {
bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

void check_attention_shapes(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& out, const Tensor& lse) {
  const bool ok = q.ndim == 4 && k.ndim == 4 && same_shape(k, v) && same_shape(q, out) &&
                  k.shape[0] == q.shape[0] && k.shape[1] == q.shape[1] && k.shape[3] == q.shape[3] &&
                  k.shape[2] > 0 && q.shape[2] % k.shape[2] == 0 && lse.ndim == 3 &&
                  lse.shape[0] == q.shape[0] && lse.shape[1] == q.shape[2] && lse.shape[2] == q.shape[1];
  L3C_CHECK(ok,
            "ops::{}: q {} and out {} must be (B, T, H, hd), k {} and v {} (B, T, Hkv, hd) with H a "
            "multiple of Hkv, lse {} (B, H, T)",
            op, q.shape_string(), out.shape_string(), k.shape_string(), v.shape_string(), lse.shape_string());
}
}  // namespace

void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
  const char* op = "attention_forward";
  check_attention_shapes(op, q, k, v, out, lse);
  const Device device = device_of(op, {&out, &lse, &q, &k, &v});
  require_float(op, device, {&out, &q, &k, &v});
  require_stats(op, q.dtype, {&lse});
  if (q.numel() == 0) return;
  require_data(op, {&out, &lse, &q, &k, &v});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(attention_forward(out, lse, q, k, v));
  cpu::attention_forward(out, lse, q, k, v);
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                        Tensor out, Tensor lse) {
  const char* op = "attention_backward";
  check_attention_shapes(op, q, k, v, out, lse);
  L3C_CHECK(same_shape(dq, q) && same_shape(dout, q) && same_shape(dk, k) && same_shape(dv, k),
            "ops::{}: dq {} and dout {} must have q's shape {}, dk {} and dv {} k's shape {}", op,
            dq.shape_string(), dout.shape_string(), q.shape_string(), dk.shape_string(), dv.shape_string(),
            k.shape_string());
  const Device device = device_of(op, {&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse});
  require_float(op, device, {&dq, &dk, &dv, &dout, &q, &k, &v, &out});
  require_stats(op, q.dtype, {&lse});
  if (q.numel() == 0) return;
  require_data(op, {&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(attention_backward(dq, dk, dv, dout, q, k, v, out, lse));
  cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
}

// ---- inference: RoPE at positions, the KV cache -----------------------------------------------------
namespace {
void check_rows_index(const char* op, const Tensor& start, const Tensor& slots, int64_t batch) {
  require_i32(op, "start", start);
  L3C_CHECK(start.numel() == batch, "ops::{}: start {} must have one entry per batch row ({})", op,
            start.shape_string(), batch);
  if (!slots.empty() || slots.ndim > 0) {
    require_i32(op, "slots", slots);
    L3C_CHECK(slots.numel() == batch, "ops::{}: slots {} must have one entry per batch row ({})", op,
              slots.shape_string(), batch);
  }
}

// On the CPU the indices are readable here: every row's positions must lie in the cache, its slot among its rows.
void check_cache_bounds(const char* op, const Tensor& cache, const Tensor& slots, const Tensor& start, int64_t T) {
  if (start.device != Device::CPU) return;
  for (int64_t b = 0; b < start.numel(); ++b) {
    const int64_t s = slots.ptr<int32_t>()[b], p = start.ptr<int32_t>()[b];
    L3C_CHECK(s >= 0 && s < cache.shape[0] && p >= 0 && p + T <= cache.shape[1],
              "ops::{}: row {} writes or reads positions {} .. {} of cache slot {}, outside the cache {}", op, b, p,
              p + T - 1, s, cache.shape_string());
  }
}
}  // namespace

void rope_forward_at(Tensor x, double theta, Tensor start) {
  const char* op = "rope_forward_at";
  L3C_CHECK(x.ndim == 4 && x.shape[3] % 2 == 0, "ops::{}: x {} must be (B, T, nh, hd) with hd even", op,
            x.shape_string());
  L3C_CHECK(theta > 0, "ops::{}: theta must be > 0, got {}", op, theta);
  check_rows_index(op, start, Tensor(), x.shape[0]);
  const Device device = device_of(op, {&x, &start});
  require_float(op, device, {&x});
  if (x.numel() == 0) return;
  require_data(op, {&x, &start});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(rope_forward_at(x, theta, start));
  for (int64_t b = 0; b < start.numel(); ++b)
    L3C_CHECK(start.ptr<int32_t>()[b] >= 0, "ops::{}: row {} starts at position {}", op, b, start.ptr<int32_t>()[b]);
  cpu::rope_forward_at(x, theta, start);
}

void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start) {
  const char* op = "kv_cache_write";
  L3C_CHECK(cache.ndim == 4 && x.ndim == 4 && cache.shape[2] == x.shape[2] && cache.shape[3] == x.shape[3],
            "ops::{}: cache {} must be (S, Tmax, Hkv, hd) and x {} (B, T, Hkv, hd)", op, cache.shape_string(),
            x.shape_string());
  L3C_CHECK(cache.dtype == x.dtype, "ops::{}: cache {} and x {} dtypes differ", op, dtype_name(cache.dtype),
            dtype_name(x.dtype));
  check_rows_index(op, start, slots, x.shape[0]);
  const Device device = device_of(op, {&cache, &x, &slots, &start});
  require_float(op, device, {&cache, &x});
  if (x.numel() == 0) return;
  require_data(op, {&cache, &x, &slots, &start});
  check_cache_bounds(op, cache, slots, start, x.shape[1]);
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(kv_cache_write(cache, x, slots, start));
  cpu::kv_cache_write(cache, x, slots, start);
}

void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start) {
  const char* op = "attention_cached";
  L3C_CHECK(q.ndim == 4 && k_cache.ndim == 4 && same_shape(out, q) && same_shape(k_cache, v_cache) &&
                k_cache.shape[3] == q.shape[3] && k_cache.shape[2] > 0 && q.shape[2] % k_cache.shape[2] == 0,
            "ops::{}: q {} and out {} must be (B, T, H, hd), k_cache {} and v_cache {} (S, Tmax, Hkv, hd) with H a "
            "multiple of Hkv",
            op, q.shape_string(), out.shape_string(), k_cache.shape_string(), v_cache.shape_string());
  check_rows_index(op, start, slots, q.shape[0]);
  const Device device = device_of(op, {&out, &q, &k_cache, &v_cache, &slots, &start});
  require_float(op, device, {&out, &q, &k_cache, &v_cache});
  if (q.numel() == 0) return;
  require_data(op, {&out, &q, &k_cache, &v_cache, &slots, &start});
  check_cache_bounds(op, k_cache, slots, start, q.shape[1]);
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(attention_cached(out, q, k_cache, v_cache, slots, start));
  cpu::attention_cached(out, q, k_cache, v_cache, slots, start);
}

// ---- SwiGLU --------------------------------------------------------------------------------------
void swiglu_forward(Tensor out, Tensor gate, Tensor up) {
  const char* op = "swiglu_forward";
  L3C_CHECK(out.numel() == gate.numel() && up.numel() == gate.numel(),
            "ops::{}: out {}, gate {} and up {} must have one shape (N, F)", op, out.shape_string(),
            gate.shape_string(), up.shape_string());
  const Device device = device_of(op, {&out, &gate, &up});
  require_float(op, device, {&out, &gate, &up});
  if (out.numel() == 0) return;
  require_data(op, {&out, &gate, &up});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(swiglu_forward(out, gate, up));
  cpu::swiglu_forward(out, gate, up);
}

void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
  const char* op = "swiglu_backward";
  const int64_t n = gate.numel();
  L3C_CHECK(dgate.numel() == n && dup.numel() == n && dout.numel() == n && up.numel() == n,
            "ops::{}: dgate {}, dup {}, dout {}, gate {} and up {} must have one shape (N, F)", op,
            dgate.shape_string(), dup.shape_string(), dout.shape_string(), gate.shape_string(),
            up.shape_string());
  const Device device = device_of(op, {&dgate, &dup, &dout, &gate, &up});
  require_float(op, device, {&dgate, &dup, &dout, &gate, &up});
  if (n == 0) return;
  require_data(op, {&dgate, &dup, &dout, &gate, &up});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(swiglu_backward(dgate, dup, dout, gate, up));
  cpu::swiglu_backward(dgate, dup, dout, gate, up);
}

// ---- fused classifier -----------------------------------------------------------------------------
void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale) {
  const char* op = "classifier_forward_backward";
  const int64_t n = leading_rows(x);
  L3C_CHECK(W.ndim == 2 && last_dim(x) == W.shape[1] && losses.numel() == n && targets.numel() == n,
            "ops::{}: x {} (N, d), W {} (V, d), losses {} (N), targets {} (N)", op, x.shape_string(),
            W.shape_string(), losses.shape_string(), targets.shape_string());
  L3C_CHECK(dx.empty() || (dx.numel() == x.numel() && last_dim(dx) == last_dim(x)),
            "ops::{}: dx {} must have x's shape {}", op, dx.shape_string(), x.shape_string());
  L3C_CHECK(dW.empty() || (dW.numel() == W.numel() && last_dim(dW) == last_dim(W)),
            "ops::{}: dW {} must have W's shape {}", op, dW.shape_string(), W.shape_string());
  const Device device = device_of(op, {&losses, &dx, &dW, &x, &W, &targets});
  require_float(op, device, {&x, &W});
  require_stats(op, x.dtype, {&losses});
  if (!dx.empty()) require_float(op, device, {&x, &dx});
  if (!dW.empty()) require_param_grad(op, x.dtype, {&dW});
  require_i32(op, "targets", targets);
  if (n == 0) return;
  require_data(op, {&losses, &x, &W, &targets});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(classifier_forward_backward(losses, dx, dW, x, W, targets, grad_scale));
  cpu::classifier_forward_backward(losses, dx, dW, x, W, targets, grad_scale);
}

// ---- concatenation along the last dimension -----------------------------------------------------
void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b) {
  const char* op = "concat_last_dim";
  const int64_t n = leading_rows(out);
  L3C_CHECK(leading_rows(x_a) == n && leading_rows(x_b) == n && last_dim(out) == last_dim(x_a) + last_dim(x_b),
            "ops::{}: out {} must be (N, a + b) for x_a {} (N, a) and x_b {} (N, b)", op, out.shape_string(),
            x_a.shape_string(), x_b.shape_string());
  const Device device = device_of(op, {&out, &x_a, &x_b});
  require_float(op, device, {&out, &x_a, &x_b});
  if (out.numel() == 0) return;
  require_data(op, {&out, &x_a, &x_b});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(concat_last_dim(out, x_a, x_b));
  cpu::concat_last_dim(out, x_a, x_b);
}

void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a, bool accumulate_b) {
  const char* op = "split_last_dim";
  const int64_t n = leading_rows(dout);
  L3C_CHECK(leading_rows(dx_a) == n && leading_rows(dx_b) == n && last_dim(dout) == last_dim(dx_a) + last_dim(dx_b),
            "ops::{}: dout {} must be (N, a + b) for dx_a {} (N, a) and dx_b {} (N, b)", op, dout.shape_string(),
            dx_a.shape_string(), dx_b.shape_string());
  const Device device = device_of(op, {&dout, &dx_a, &dx_b});
  require_float(op, device, {&dout, &dx_a, &dx_b});
  if (dout.numel() == 0) return;
  require_data(op, {&dout, &dx_a, &dx_b});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(split_last_dim(dx_a, dx_b, dout, accumulate_a, accumulate_b));
  cpu::split_last_dim(dx_a, dx_b, dout, accumulate_a, accumulate_b);
}

// ---- group by key ---------------------------------------------------------------------------------
void group_by_key(Tensor order, Tensor offsets, Tensor keys, KeyCheck check) {
  const char* op = "group_by_key";
  L3C_CHECK(order.numel() == keys.numel() && offsets.numel() >= 1,
            "ops::{}: order {} must be (N) for keys {} (N), offsets {} (K + 1)", op, order.shape_string(),
            keys.shape_string(), offsets.shape_string());
  require_i32(op, "order", order);
  require_i32(op, "offsets", offsets);
  require_i32(op, "keys", keys);
  require_data(op, {&offsets});
  const Device device = device_of(op, {&order, &offsets, &keys});
  if (keys.numel() > 0) require_data(op, {&order, &keys});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(group_by_key(order, offsets, keys, check == KeyCheck::Verify));
  cpu::group_by_key(order, offsets, keys);
}

void gather_rows(Tensor out, Tensor x, Tensor index) {
  const char* op = "gather_rows";
  L3C_CHECK(last_dim(out) == last_dim(x) && leading_rows(out) == index.numel(),
            "ops::{}: out {} must be (M, d) for x {} (N, d) and index {} (M)", op, out.shape_string(),
            x.shape_string(), index.shape_string());
  const Device device = device_of(op, {&out, &x, &index});
  require_float(op, device, {&out, &x});
  require_i32(op, "index", index);
  if (out.numel() == 0) return;
  require_data(op, {&out, &x, &index});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(gather_rows(out, x, index));
  cpu::gather_rows(out, x, index);
}

void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate) {
  const char* op = "scatter_rows";
  L3C_CHECK(last_dim(out) == last_dim(x) && leading_rows(x) == index.numel() && index.numel() <= leading_rows(out),
            "ops::{}: x {} must be (M, d) for out {} (N, d), index {} (M), M <= N", op, x.shape_string(),
            out.shape_string(), index.shape_string());
  const Device device = device_of(op, {&out, &x, &index});
  require_float(op, device, {&out, &x});
  require_i32(op, "index", index);
  if (x.numel() == 0) return;
  require_data(op, {&out, &x, &index});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(scatter_rows(out, x, index, accumulate));
  cpu::scatter_rows(out, x, index, accumulate);
}

// ---- L3 lookup attention --------------------------------------------------------------------------
namespace {
// Shapes and dtypes; on the CPU also the offsets' end values (on CUDA they stay on the device: a kernel that
// meets a token whose rows do not fit the probs width writes NaN instead).
Device check_l3(const char* op, const Tensor& out, const Tensor& probs, const Tensor& x, const Tensor& w_k,
                const Tensor& w_v, const Tensor& group_offsets, const Tensor& row_offsets) {
  const int64_t n = leading_rows(x);
  const bool ok = w_k.ndim == 2 && w_v.ndim == 2 && w_k.shape[0] == w_v.shape[0] && last_dim(x) == w_k.shape[1] &&
                  leading_rows(out) == n && last_dim(out) == w_v.shape[1] && leading_rows(probs) == n &&
                  group_offsets.numel() >= 1 && row_offsets.numel() == group_offsets.numel();
  L3C_CHECK(ok,
            "ops::{}: x {} (N, d), w_k {} (v, d), w_v {} (v, d_emb), out {} (N, d_emb), probs {} (N, k), "
            "group_offsets {} and row_offsets {} (V + 1)",
            op, x.shape_string(), w_k.shape_string(), w_v.shape_string(), out.shape_string(), probs.shape_string(),
            group_offsets.shape_string(), row_offsets.shape_string());
  require_i32(op, "group_offsets", group_offsets);
  require_i32(op, "row_offsets", row_offsets);
  require_data(op, {&group_offsets, &row_offsets});
  const Device device = device_of(op, {&out, &probs, &x, &w_k, &w_v, &group_offsets, &row_offsets});
  require_float(op, device, {&out, &x, &w_k, &w_v});
  require_stats(op, x.dtype, {&probs});
  if (device == Device::CPU) {
    const int64_t groups = group_offsets.numel() - 1;
    L3C_CHECK(group_offsets.ptr<int32_t>()[0] == 0 && group_offsets.ptr<int32_t>()[groups] == n,
              "ops::{}: group_offsets must run from 0 to N = {}, got {} .. {}", op, n, group_offsets.ptr<int32_t>()[0],
              group_offsets.ptr<int32_t>()[groups]);
    L3C_CHECK(row_offsets.ptr<int32_t>()[0] == 0 && row_offsets.ptr<int32_t>()[groups] == w_k.shape[0],
              "ops::{}: row_offsets must run from 0 to v = {}, got {} .. {}", op, w_k.shape[0],
              row_offsets.ptr<int32_t>()[0], row_offsets.ptr<int32_t>()[groups]);
  }
  return device;
}
}  // namespace

void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets) {
  const char* op = "l3_lookup_forward";
  const Device device = check_l3(op, out, probs, x, w_k, w_v, group_offsets, row_offsets);
  if (x.numel() == 0) return;
  require_data(op, {&out, &probs, &x, &w_k, &w_v});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(l3_lookup_forward(out, probs, x, w_k, w_v, group_offsets, row_offsets));
  cpu::l3_lookup_forward(out, probs, x, w_k, w_v, group_offsets, row_offsets);
}

void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets) {
  const char* op = "l3_lookup_backward";
  const Device device = check_l3(op, dout, probs, x, w_k, w_v, group_offsets, row_offsets);
  L3C_CHECK(dx.numel() == x.numel() && last_dim(dx) == last_dim(x) && dw_k.numel() == w_k.numel() &&
                last_dim(dw_k) == last_dim(w_k) && dw_v.numel() == w_v.numel() && last_dim(dw_v) == last_dim(w_v),
            "ops::{}: dx {}, dw_k {} and dw_v {} must have the shapes of x {}, w_k {} and w_v {}", op,
            dx.shape_string(), dw_k.shape_string(), dw_v.shape_string(), x.shape_string(), w_k.shape_string(),
            w_v.shape_string());
  L3C_CHECK((w_v.data == w_k.data) == (dw_v.data == dw_k.data),
            "ops::{}: with tied tables (w_v is w_k) dw_v must be dw_k, and only then", op);
  L3C_CHECK(device_of(op, {&dx, &dw_k, &dw_v, &dout, &x}) == device, "ops::{}: tensors on different devices", op);
  require_float(op, device, {&dx, &dout, &x, &w_k, &w_v});
  require_param_grad(op, x.dtype, {&dw_k, &dw_v});
  if (x.numel() == 0) return;
  require_data(op, {&dx, &dw_k, &dw_v, &dout, &x, &w_k, &w_v, &probs});
  if (device == Device::CUDA)
    L3C_RUN_ON_CUDA(l3_lookup_backward(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets));
  cpu::l3_lookup_backward(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets);
}

// ---- Mixture-of-Experts ---------------------------------------------------------------------------
// The router's logits and their gradient, the grouped rows and the expert weights have the call's dtype; the
// routing statistics (probs, lse, routing weights, dweights, probs_bias, the layer statistics) are statistics.
namespace {
// For the ops whose floating tensors are all statistics: the CPU's dtype, or f32 on CUDA.
void require_routing_stats(const char* op, Device device, std::initializer_list<const Tensor*> tensors) {
  require_float(op, device, tensors);
  const Tensor* first = *tensors.begin();
  L3C_CHECK(device != Device::CUDA || first->dtype == DType::F32,
            "ops::{}: routing statistics are f32 on CUDA (also in a bf16 model), got {}", op, dtype_name(first->dtype));
}
}  // namespace

void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize) {
  const char* op = "moe_router_forward";
  const int64_t n = leading_rows(logits), E = last_dim(logits), k = last_dim(experts);
  L3C_CHECK(leading_rows(probs) == n && last_dim(probs) == E && lse.numel() == n && leading_rows(experts) == n &&
                leading_rows(weights) == n && last_dim(weights) == k && k >= 1 && k <= E,
            "ops::{}: logits {} and probs {} (N, E), lse {} (N), experts {} and weights {} (N, top_k), top_k <= E", op,
            logits.shape_string(), probs.shape_string(), lse.shape_string(), experts.shape_string(),
            weights.shape_string());
  const Device device = device_of(op, {&probs, &lse, &experts, &weights, &logits});
  require_float(op, device, {&logits});
  require_stats(op, logits.dtype, {&probs, &lse, &weights});
  require_i32(op, "experts", experts);
  if (n == 0) return;
  require_data(op, {&probs, &lse, &experts, &weights, &logits});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(moe_router_forward(probs, lse, experts, weights, logits, normalize));
  cpu::moe_router_forward(probs, lse, experts, weights, logits, normalize);
}

void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize) {
  const char* op = "moe_router_backward";
  const int64_t n = leading_rows(probs), E = last_dim(probs), k = last_dim(experts);
  L3C_CHECK(leading_rows(dlogits) == n && last_dim(dlogits) == E && lse.numel() == n && leading_rows(experts) == n &&
                leading_rows(weights) == n && last_dim(weights) == k && leading_rows(dweights) == n &&
                last_dim(dweights) == k && (probs_bias.empty() || probs_bias.numel() == E),
            "ops::{}: dlogits {} and probs {} (N, E), lse {} (N), experts {}, weights {} and dweights {} (N, top_k), "
            "probs_bias {} (E or empty)", op, dlogits.shape_string(), probs.shape_string(), lse.shape_string(),
            experts.shape_string(), weights.shape_string(), dweights.shape_string(), probs_bias.shape_string());
  const Device device = device_of(op, {&dlogits, &dweights, &probs, &lse, &experts, &weights, &probs_bias});
  require_float(op, device, {&dlogits});
  require_stats(op, dlogits.dtype, {&dweights, &probs, &lse, &weights});
  if (!probs_bias.empty()) require_stats(op, dlogits.dtype, {&probs_bias});
  require_i32(op, "experts", experts);
  if (n == 0) return;
  require_data(op, {&dlogits, &dweights, &probs, &lse, &experts, &weights});
  if (device == Device::CUDA)
    L3C_RUN_ON_CUDA(moe_router_backward(dlogits, dweights, probs, lse, experts, weights, probs_bias, z_scale, normalize));
  cpu::moe_router_backward(dlogits, dweights, probs, lse, experts, weights, probs_bias, z_scale, normalize);
}

void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets) {
  const char* op = "moe_routing_stats";
  const int64_t n = leading_rows(probs), E = last_dim(probs);
  L3C_CHECK(stats.numel() == kMoeStatistics && lse.numel() == n && offsets.numel() == E + 1 && E >= 1,
            "ops::{}: stats {} ({}), probs {} (N, E), lse {} (N), offsets {} (E + 1)", op, stats.shape_string(),
            kMoeStatistics, probs.shape_string(), lse.shape_string(), offsets.shape_string());
  const Device device = device_of(op, {&stats, &probs, &lse, &offsets});
  require_routing_stats(op, device, {&stats, &probs, &lse});
  require_i32(op, "offsets", offsets);
  require_data(op, {&stats, &offsets});
  if (n == 0) return fill_zero(stats);
  require_data(op, {&probs, &lse});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(moe_routing_stats(stats, probs, lse, offsets));
  cpu::moe_routing_stats(stats, probs, lse, offsets);
}

void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale) {
  const char* op = "moe_balance_bias";
  L3C_CHECK(offsets.numel() == probs_bias.numel() + 1, "ops::{}: probs_bias {} (E), offsets {} (E + 1)", op,
            probs_bias.shape_string(), offsets.shape_string());
  const Device device = device_of(op, {&probs_bias, &offsets});
  require_routing_stats(op, device, {&probs_bias});
  require_i32(op, "offsets", offsets);
  if (probs_bias.numel() == 0) return;
  require_data(op, {&probs_bias, &offsets});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(moe_balance_bias(probs_bias, offsets, scale));
  cpu::moe_balance_bias(probs_bias, offsets, scale);
}

void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k) {
  const char* op = "moe_pair_indices";
  L3C_CHECK(token_of_row.numel() == order.numel() && row_of_pair.numel() == order.numel() && top_k >= 1 &&
                order.numel() % top_k == 0,
            "ops::{}: token_of_row {}, row_of_pair {} and order {} must be (N * top_k), top_k = {}", op,
            token_of_row.shape_string(), row_of_pair.shape_string(), order.shape_string(), top_k);
  require_i32(op, "token_of_row", token_of_row);
  require_i32(op, "row_of_pair", row_of_pair);
  require_i32(op, "order", order);
  if (order.numel() == 0) return;
  require_data(op, {&token_of_row, &row_of_pair, &order});
  if (device_of(op, {&token_of_row, &row_of_pair, &order}) == Device::CUDA)
    L3C_RUN_ON_CUDA(moe_pair_indices(token_of_row, row_of_pair, order, top_k));
  cpu::moe_pair_indices(token_of_row, row_of_pair, order, top_k);
}

namespace {
// w (E, O, I), x (M, I), out (M, O), offsets (E + 1) running from 0 to M (checked on the CPU; on CUDA the offsets
// stay on the device, and rows outside [0, M) are left out instead of read).
void check_grouped_matmul(const char* op, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& offsets) {
  const bool ok = w.ndim == 3 && last_dim(x) == w.shape[2] && last_dim(out) == w.shape[1] &&
                  leading_rows(out) == leading_rows(x) && offsets.numel() == w.shape[0] + 1;
  L3C_CHECK(ok, "ops::{}: x {} (M, I), w {} (E, O, I), out {} (M, O), offsets {} (E + 1)", op, x.shape_string(),
            w.shape_string(), out.shape_string(), offsets.shape_string());
  require_i32(op, "offsets", offsets);
  require_data(op, {&offsets});
  if (offsets.device != Device::CPU) return;
  const int32_t* off = offsets.ptr<int32_t>();
  const int64_t E = w.shape[0];
  L3C_CHECK(off[0] == 0 && off[E] == leading_rows(x), "ops::{}: offsets must run from 0 to M = {}, got {} .. {}", op,
            leading_rows(x), off[0], off[E]);
  for (int64_t e = 0; e < E; ++e)
    L3C_CHECK(off[e] <= off[e + 1], "ops::{}: offsets must not decrease (group {}: {} > {})", op, e, off[e], off[e + 1]);
}
}  // namespace

void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  const char* op = "grouped_matmul_forward";
  const Device device = device_of(op, {&out, &x, &w, &offsets});
  check_grouped_matmul(op, out, x, w, offsets);
  require_float(op, device, {&out, &x, &w});
  if (out.numel() == 0) return;
  require_data(op, {&out, &x, &w});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(grouped_matmul_forward(out, x, w, offsets));
  cpu::grouped_matmul_forward(out, x, w, offsets);
}

void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx) {
  const char* op = "grouped_matmul_backward";
  check_grouped_matmul(op, dout, x, w, offsets);
  L3C_CHECK((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == w.numel()),
            "ops::{}: dx {} and dw {} must have the shapes of x {} and w {}", op, dx.shape_string(),
            dw.shape_string(), x.shape_string(), w.shape_string());
  const Device device = device_of(op, {&dx, &dw, &dout, &x, &w, &offsets});
  require_float(op, device, {&dout, &x, &w});
  if (!dx.empty()) require_float(op, device, {&dx, &x});
  if (!dw.empty()) require_param_grad(op, x.dtype, {&dw});
  if (dout.numel() == 0) return;
  require_data(op, {&dout, &x, &w});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(grouped_matmul_backward(dx, dw, dout, x, w, offsets, accumulate_dx));
  cpu::grouped_matmul_backward(dx, dw, dout, x, w, offsets, accumulate_dx);
}

namespace {
void check_combine(const char* op, const Tensor& out, const Tensor& rows, const Tensor& weights,
                   const Tensor& row_of_pair) {
  const int64_t n = leading_rows(out), m = leading_rows(rows);
  const bool ok = last_dim(out) == last_dim(rows) && row_of_pair.numel() == m && (n == 0 || m % n == 0) &&
                  (weights.empty() || weights.numel() == m);
  L3C_CHECK(ok, "ops::{}: out {} (N, d), rows {} (N * top_k, d), weights {} (N, top_k or empty), row_of_pair {} "
            "(N * top_k)", op, out.shape_string(), rows.shape_string(), weights.shape_string(),
            row_of_pair.shape_string());
  require_i32(op, "row_of_pair", row_of_pair);
}
}  // namespace

void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate) {
  const char* op = "moe_combine_forward";
  check_combine(op, out, rows, weights, row_of_pair);
  const Device device = device_of(op, {&out, &rows, &weights, &row_of_pair});
  require_float(op, device, {&out, &rows});
  if (!weights.empty()) require_stats(op, out.dtype, {&weights});
  if (out.numel() == 0) return;
  require_data(op, {&out, &rows, &row_of_pair});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(moe_combine_forward(out, rows, weights, row_of_pair, accumulate));
  cpu::moe_combine_forward(out, rows, weights, row_of_pair, accumulate);
}

void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair) {
  const char* op = "moe_combine_backward";
  check_combine(op, dout, rows, weights, row_of_pair);
  L3C_CHECK(drows.numel() == rows.numel() && (dweights.empty() || dweights.numel() == row_of_pair.numel()),
            "ops::{}: drows {} must be shaped as rows {}, dweights {} as (N, top_k)", op, drows.shape_string(),
            rows.shape_string(), dweights.shape_string());
  const Device device = device_of(op, {&drows, &dweights, &dout, &rows, &weights, &row_of_pair});
  require_float(op, device, {&drows, &dout, &rows});
  if (!weights.empty()) require_stats(op, dout.dtype, {&weights});
  if (!dweights.empty()) require_stats(op, dout.dtype, {&dweights});
  if (dout.numel() == 0) return;
  require_data(op, {&drows, &dout, &rows, &row_of_pair});
  if (device == Device::CUDA) L3C_RUN_ON_CUDA(moe_combine_backward(drows, dweights, dout, rows, weights, row_of_pair));
  cpu::moe_combine_backward(drows, dweights, dout, rows, weights, row_of_pair);
}

}  // namespace l3c::ops
