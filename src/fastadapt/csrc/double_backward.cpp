// Convolution and training-mode BatchNorm whose backward is itself a node with an explicit
// backward (the double backward): what second-order MAML differentiates through.
//
// PyTorch's own double backward of a convolution computes the weight-gradient term as a
// convolution of the transposed input with the transposed gradient (a dilated, large-kernel
// convolution for strided layers), and BatchNorm's as some thirty element-wise passes. Here the
// convolution terms are ordinary convolution forward/backward calls and BatchNorm's are two
// passes over the data on contiguous CPU tensors (ATen operations elsewhere; the formulas are
// derived in fastadapt/double_backward.py). Written in C++ so that the autograd engine runs these
// nodes without the GIL: worker threads (fastadapt.task_parallel) stay parallel. The convolution's backward passes are differentiable ATen calls (higher orders work);
// BatchNorm's double backward raises if differentiated again.
#include <torch/extension.h>
#include "compact_activations.h"
#include "conv_config.h"
#include "fused_update.h"
#include "tensor_pool.h"

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;
using fastadapt::channel_shape;
using fastadapt::ConvConfig;

namespace {

// (gy, x, w) -> (gw[, gx][, gb]): the convolution's backward, as a differentiable node.
// Outputs are only those computed (gx when x needs a gradient, gb when there is a bias):
// autograd outputs cannot be undefined tensors.
struct ConvBackward : Function<ConvBackward> {
  static variable_list forward(AutogradContext* ctx, Tensor gy, Tensor x, Tensor w, std::vector<int64_t> stride,
                               std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                               bool has_bias) {
    ctx->set_materialize_grads(false);
    ConvConfig config{stride, padding, dilation, groups, has_bias};
    config.save(ctx);
    bool has_gx = x.requires_grad();
    ctx->saved_data["has_gx"] = has_gx;
    ctx->save_for_backward({gy, x, w});
    auto r = config.backward(gy, x, w, {has_gx, true, has_bias});
    variable_list out{std::get<1>(r)};
    if (has_gx) out.push_back(std::get<0>(r));
    if (has_bias) out.push_back(std::get<2>(r));
    return out;
  }

  // Upstream (ggw, ggx, ggb) for the outputs (gw, gx, gb). With y = conv(x, w) + b and
  // gx = conv_input_grad(gy, w), gw = conv_weight_grad(gy, x), gb = sum(gy):
  //   d/dgy = conv(ggx, w) + conv(x, ggw) + ggb,
  //   d/dw  = conv_weight_grad(gy, ggx),   d/dx = conv_input_grad(gy, ggw).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &gy = saved[0], &x = saved[1], &w = saved[2];
    auto config = ConvConfig::load(ctx);
    bool has_gx = ctx->saved_data["has_gx"].toBool();
    Tensor ggw = grads[0];
    Tensor ggx = has_gx ? grads[1] : Tensor();
    Tensor ggb = config.has_bias ? grads[has_gx ? 2 : 1] : Tensor();
    Tensor dgy, dx, dw;
    if (ctx->needs_input_grad(0)) {
      if (ggx.defined()) dgy = config.conv(ggx, w, c10::nullopt);
      Tensor part;
      if (ggw.defined()) {
        part = config.conv(x, ggw, ggb.defined() ? c10::optional<Tensor>(ggb) : c10::nullopt);
      } else if (ggb.defined()) {
        std::vector<int64_t> shape(gy.dim(), 1);
        shape[1] = -1;
        part = ggb.view(shape).expand_as(gy);
      }
      if (part.defined()) dgy = dgy.defined() ? dgy + part : part;
    }
    if (ctx->needs_input_grad(1) && ggw.defined()) dx = std::get<0>(config.backward(gy, x, ggw, {true, false, false}));
    if (ctx->needs_input_grad(2) && ggx.defined()) dw = std::get<1>(config.backward(gy, ggx, w, {false, true, false}));
    return {dgy, dx, dw, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct Conv : Function<Conv> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor w, c10::optional<Tensor> b,
                        std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        int64_t groups) {
    ConvConfig config{stride, padding, dilation, groups, b.has_value() && b->defined()};
    config.save(ctx);
    ctx->save_for_backward({x, w});
    return config.conv(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto c = ConvConfig::load(ctx);
    bool has_gx = saved[0].requires_grad();
    auto r = ConvBackward::apply(grads[0], saved[0], saved[1], c.stride, c.padding, c.dilation, c.groups, c.has_bias);
    Tensor gx = has_gx ? r[1] : Tensor();
    Tensor gb = c.has_bias ? r[has_gx ? 2 : 1] : Tensor();
    return {gx, r[0], gb, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::vector<int64_t> non_channel_dims(const Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// BatchNorm's double backward on contiguous CPU tensors in two passes over the data: per channel,
// one pass for sum(u), sum(u (x - mean)), sum(u g), then one that writes d/dg and d/dx, both
// linear in (u, g, x - mean) with per-channel coefficients (the formulas of BatchNormBackward).
// Sums in double. Returns false (nothing written) where it does not apply.
bool fused_batch_norm_double_backward(const Tensor& u, const Tensor& g, const Tensor& x, const Tensor& w,
                                      const Tensor& mean, const Tensor& s, const Tensor& a, const Tensor& b,
                                      const Tensor& sum_gxh, const Tensor& sum_g, Tensor& dg, Tensor& dx, Tensor& dw) {
  if (!x.device().is_cpu() || !(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) return false;
  for (const Tensor* t : {&u, &g, &x}) {
    if (!t->is_contiguous() || t->scalar_type() != x.scalar_type()) return false;
  }
  const int64_t N = x.size(0), C = x.size(1), inner = x.numel() / (N * C);
  const double M = static_cast<double>(N * inner);
  auto per_channel = [&](const Tensor& t) { return t.to(at::kDouble).contiguous(); };
  Tensor w_ = per_channel(w), mean_ = per_channel(mean), s_ = per_channel(s), a_ = per_channel(a),
         b_ = per_channel(b), sgx_ = per_channel(sum_gxh), sg_ = per_channel(sum_g);
  Tensor dw_ = at::empty({C}, w_.options());
  dg = at::empty_like(g);
  dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_batch_norm_double_backward", [&] {
    const scalar_t *pu = u.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>(), *px = x.data_ptr<scalar_t>();
    scalar_t *pdg = dg.data_ptr<scalar_t>(), *pdx = dx.data_ptr<scalar_t>();
    const double *W = w_.data_ptr<double>(), *MEAN = mean_.data_ptr<double>(), *S = s_.data_ptr<double>(),
                 *A = a_.data_ptr<double>(), *B = b_.data_ptr<double>(), *SGX = sgx_.data_ptr<double>(),
                 *SG = sg_.data_ptr<double>();
    double* DW = dw_.data_ptr<double>();
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const double mu = MEAN[c];
        double su = 0, sux = 0, sug = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t base = (n * C + c) * inner;
          for (int64_t i = 0; i < inner; ++i) {
            const double uv = pu[base + i];
            su += uv;
            sux += uv * (px[base + i] - mu);
            sug += uv * pg[base + i];
          }
        }
        const double sc = S[c], ws = W[c] * sc, sum_uxh = sux * sc;
        const double Cc = sug - su * SG[c] / M - sum_uxh * SGX[c] / M;
        DW[c] = sc * Cc;
        // d/dg = ws u + (a - ws mean(u xh)) xh + (b - ws mean(u))
        const double g_u = ws, g_x = (A[c] - ws * sum_uxh / M) * sc, g_0 = B[c] - ws * su / M;
        // d/dx = s c1 g + s c2 u + k xh - s mean(v)
        const double c1 = A[c] - ws * sum_uxh / M, c2 = -ws * SGX[c] / M;
        const double mean_v = (c1 * SG[c] + c2 * su) / M, mean_vxh = (c1 * SGX[c] + c2 * sum_uxh) / M;
        const double k = -ws * sc * Cc / M - sc * mean_vxh;
        const double x_g = sc * c1, x_u = sc * c2, x_x = k * sc, x_0 = -sc * mean_v;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t base = (n * C + c) * inner;
          for (int64_t i = 0; i < inner; ++i) {
            const double uv = pu[base + i], gv = pg[base + i], xm = px[base + i] - mu;
            pdg[base + i] = static_cast<scalar_t>(g_u * uv + g_x * xm + g_0);
            pdx[base + i] = static_cast<scalar_t>(x_g * gv + x_u * uv + x_x * xm + x_0);
          }
        }
      }
    });
  });
  dw = dw_.to(w.scalar_type());
  return true;
}

// (g, x, w, mean, invstd) -> (gx, gw, gb): training-mode BatchNorm's backward as a node.
struct BatchNormBackward : Function<BatchNormBackward> {
  static variable_list forward(AutogradContext* ctx, Tensor g, Tensor x, Tensor w, Tensor mean, Tensor invstd,
                               double eps) {
    ctx->set_materialize_grads(false);
    auto r = at::native_batch_norm_backward(g, x, w, {}, {}, mean, invstd, true, eps, {true, true, true});
    const Tensor &sum_gxh = std::get<1>(r), &sum_g = std::get<2>(r);
    ctx->save_for_backward({g, x, w, mean, invstd, sum_gxh, sum_g});
    ctx->saved_data["eps"] = eps;
    return {std::get<0>(r), sum_gxh, sum_g};
  }

  // Upstream (u, a, b) for (gx, gw, gb); per channel, over its M elements, s = invstd,
  // xh = (x - mean) s, P v = v - mean(v) - xh mean(v xh) (fastadapt/double_backward.py):
  //   d/dg = w s P u + a xh + b
  //   d/dw = s C,  C = sum(u g) - sum(u) sum(g) / M - sum(u xh) sum(g xh) / M
  //   d/dx = -w s^2 xh C / M + s P(c1 g + c2 u),  c1 = a - w s sum(u xh) / M,  c2 = -w s sum(g xh) / M
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // mean and s enter below as constants: right for the second derivative, not beyond it.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fastadapt's BatchNorm kernel gives first and second derivatives only: differentiating its double "
                "backward (backward with create_graph=True through a second-order meta-gradient) is not implemented; "
                "turn second_order_kernels off for third-order derivatives");
    auto saved = ctx->get_saved_variables();
    const Tensor &g = saved[0], &x = saved[1], &w = saved[2], &mean = saved[3], &s = saved[4];
    const Tensor &sum_gxh = saved[5], &sum_g = saved[6];
    double eps = ctx->saved_data["eps"].toDouble();
    // Undefined upstream gradients (outputs nobody used) count as zeros.
    const Tensor u = grads[0].defined() ? grads[0] : at::zeros_like(g);
    const Tensor a = grads[1].defined() ? grads[1] : at::zeros_like(w);
    const Tensor b = grads[2].defined() ? grads[2] : at::zeros_like(w);
    Tensor dg, dx, dw;
    if (!fused_batch_norm_double_backward(u, g, x, w, mean, s, a, b, sum_gxh, sum_g, dg, dx, dw)) {
      // Any other layout, dtype or device: the same formulas with ATen operations.
      auto shape = channel_shape(x);
      double M = static_cast<double>(x.numel() / x.size(1));
      auto xh = at::addcmul((-mean * s).view(shape), x, s.view(shape));
      // One fused pass: w s P u, sum(u xh), sum(u).
      auto [w_s_pu, sum_uxh, sum_u] =
          at::native_batch_norm_backward(u, x, w, {}, {}, mean, s, true, eps, {true, true, true});
      auto sum_ug = (u * g).sum(non_channel_dims(x));
      dg = at::addcmul(w_s_pu, xh, a.view(shape)) + b.view(shape);
      auto C = sum_ug - sum_u * sum_g / M - sum_uxh * sum_gxh / M;
      dw = s * C;
      auto ws = w * s;
      auto c1 = a - ws * sum_uxh / M;
      auto c2 = -ws * sum_gxh / M;
      auto mean_v = (c1 * sum_g + c2 * sum_u) / M;
      auto mean_vxh = (c1 * sum_gxh + c2 * sum_uxh) / M;
      auto k = -ws * s * C / M - s * mean_vxh;
      dx = at::addcmul(at::addcmul(g * (s * c1).view(shape), u, (s * c2).view(shape)), xh, k.view(shape)) -
           (s * mean_v).view(shape);
    }
    return {ctx->needs_input_grad(0) ? dg : Tensor(), ctx->needs_input_grad(1) ? dx : Tensor(),
            ctx->needs_input_grad(2) ? dw : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct BatchNorm : Function<BatchNorm> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor w, Tensor b, c10::optional<Tensor> running_mean,
                        c10::optional<Tensor> running_var, double momentum, double eps) {
    auto r = at::native_batch_norm(x, w, b, running_mean, running_var, true, momentum, eps);
    ctx->save_for_backward({x, w, std::get<1>(r), std::get<2>(r)});
    ctx->saved_data["eps"] = eps;
    return std::get<0>(r);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto r = BatchNormBackward::apply(grads[0], saved[0], saved[1], saved[2], saved[3],
                                      ctx->saved_data["eps"].toDouble());
    return {r[0], r[1], r[2], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor conv(Tensor x, Tensor w, c10::optional<Tensor> b, std::vector<int64_t> stride, std::vector<int64_t> padding,
            std::vector<int64_t> dilation, int64_t groups) {
  return Conv::apply(x, w, b, stride, padding, dilation, groups);
}

Tensor batch_norm(Tensor x, Tensor w, Tensor b, c10::optional<Tensor> running_mean,
                  c10::optional<Tensor> running_var, double momentum, double eps) {
  return BatchNorm::apply(x, w, b, running_mean, running_var, momentum, eps);
}

}  // namespace

// Both release the GIL while they compute, as PyTorch's own bindings do: worker threads
// (fastadapt.task_parallel) run their forward passes in parallel.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("conv", &conv, release(), "Convolution (any dimension) with an explicit double backward.");
  m.def("batch_norm", &batch_norm, release(), "Training-mode BatchNorm with an explicit double backward.");
  register_tensor_pool(m);
  register_compact_activations(m);
  register_fused_update(m);
}
