// The kernels of fastadapt/compact_activations.py (which says when they apply and what they
// saved): training-mode BatchNorm over the output of a cheap convolution, keeping the convolution's
// inputs instead of that output and recomputing it in the backward, and a ReLU that keeps a mask
// instead of its output. The BatchNorm backward writes the input gradient into the recomputed
// output's memory, which it owns, with no temporary of the input's size: ATen's
// native_batch_norm_backward allocates one when it computes the input gradient, and at the
// backward of a network's first block that temporary set a task's peak. Written in C++ so that
// the autograd engine runs the nodes without the GIL (worker threads of fastadapt.task_parallel
// stay parallel).
#include "compact_activations.h"

#include "conv_config.h"
#include "vector_clones.h"

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>


using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;
using fastadapt::channel_shape;
using fastadapt::ConvConfig;

namespace {

// Training-mode BatchNorm backward with the input gradient written into `x` (which the caller
// owns); returns (gx, gw, gb) with gx aliasing x. The per-channel sums come from ATen's kernel with
// the input gradient masked off (no temporary of the input's size), the input gradient from three
// in-place passes: per channel, over its M elements, with s = invstd, ws = w s and
// xh = (x - mean) s, gx = ws (g - sum(g) / M - xh sum(g xh) / M) = ws g + k (mean - x) - ws sum(g) / M
// with k = ws s sum(g xh) / M.
std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_into_input(const Tensor& g, Tensor& x, const Tensor& w,
                                                                  const Tensor& mean, const Tensor& invstd,
                                                                  double eps, std::array<bool, 3> mask) {
  auto sums = at::native_batch_norm_backward(g, x, w, {}, {}, mean, invstd, true, eps, {false, true, true});
  const Tensor &sum_gxh = std::get<1>(sums), &sum_g = std::get<2>(sums);
  if (mask[0]) {
    const double M = static_cast<double>(x.numel() / x.size(1));
    auto shape = channel_shape(x);
    Tensor ws = w.defined() ? w * invstd : invstd;
    Tensor k = ws * invstd * sum_gxh / M;
    x.mul_(-k.view(shape)).add_((k * mean - ws * sum_g / M).view(shape)).addcmul_(g, ws.view(shape));
  }
  return {mask[0] ? x : Tensor(), mask[1] ? sum_gxh : Tensor(), mask[2] ? sum_g : Tensor()};
}

struct BatchNormOfConvolution : Function<BatchNormOfConvolution> {
  // x = conv(conv_input, conv_weight, conv_bias); the forward of F.batch_norm(x, ...) in training mode.
  static Tensor forward(AutogradContext* ctx, Tensor x, c10::optional<Tensor> w, c10::optional<Tensor> b,
                        c10::optional<Tensor> running_mean, c10::optional<Tensor> running_var, double momentum,
                        double eps, Tensor conv_input, Tensor conv_weight, c10::optional<Tensor> conv_bias,
                        std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        int64_t groups) {
    auto r = at::native_batch_norm(x, w, b, running_mean, running_var, true, momentum, eps);
    Tensor weight = w.has_value() ? *w : Tensor(), bias = conv_bias.has_value() ? *conv_bias : Tensor();
    ctx->save_for_backward({conv_input, conv_weight, bias, weight, std::get<1>(r), std::get<2>(r)});
    ctx->saved_data["eps"] = eps;
    ConvConfig{stride, padding, dilation, groups, bias.defined()}.save(ctx);
    ctx->saved_data["has_w"] = w.has_value() && w->defined();
    ctx->saved_data["has_b"] = b.has_value() && b->defined();
    return std::get<0>(r);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fastadapt's BatchNorm with a recomputed input (fastadapt.compact_activations) is differentiable "
                "once: a backward with create_graph=True through it is not implemented; run that pass without "
                "compact_activations (query_compact_activations=False)");
    auto saved = ctx->get_saved_variables();
    const Tensor &conv_input = saved[0], &conv_weight = saved[1], &conv_bias = saved[2], &w = saved[3];
    const Tensor &mean = saved[4], &invstd = saved[5];
    Tensor x = ConvConfig::load(ctx).conv(conv_input, conv_weight,
                                          conv_bias.defined() ? c10::optional<Tensor>(conv_bias) : c10::nullopt);
    bool has_w = ctx->saved_data["has_w"].toBool(), has_b = ctx->saved_data["has_b"].toBool();
    std::array<bool, 3> mask{ctx->needs_input_grad(0), has_w && ctx->needs_input_grad(1),
                             has_b && ctx->needs_input_grad(2)};
    auto [gx, gw, gb] = batch_norm_backward_into_input(grads[0], x, w, mean, invstd,
                                                       ctx->saved_data["eps"].toDouble(), mask);
    variable_list out(14);  // one per forward argument
    out[0] = gx;
    out[1] = gw;
    out[2] = gb;
    return out;
  }
};

// ReLU keeping a mask of the clamped elements (one byte each) instead of its output: the output
// is still kept by the next layer (a convolution's input), which releases it in its backward,
// right before this node's; the mask lets it go then, so the output, its gradient and the
// input gradient are never alive together. The backward is masked_fill of the gradient, itself
// differentiable (derivatives of any order).
// out[i] = zero[i] ? 0 : g[i] over memory laid out alike (dense tensors with equal strides), as
// bit masks so that the loop vectorises (FASTADAPT_VECTOR_CLONES, vector_clones.h).
template <typename scalar_t, typename bits_t>
FASTADAPT_VECTOR_CLONES void mask_gradient(const scalar_t* g, const bool* zero, scalar_t* out, int64_t n) {
  static_assert(sizeof(scalar_t) == sizeof(bits_t), "one mask word per element");
  for (int64_t i = 0; i < n; ++i) {
    bits_t word;
    std::memcpy(&word, g + i, sizeof word);
    word &= static_cast<bits_t>(zero[i]) - 1;  // all ones where the gradient passes, else 0
    std::memcpy(out + i, &word, sizeof word);
  }
}

// zero[i] = y[i] <= 0 (threshold_backward's test: a NaN output passes the gradient), vectorised
// as mask_gradient.
template <typename scalar_t>
FASTADAPT_VECTOR_CLONES void clamped(const scalar_t* y, bool* zero, int64_t n) {
  for (int64_t i = 0; i < n; ++i) zero[i] = y[i] <= scalar_t(0);
}

struct MaskedRelu : Function<MaskedRelu> {
  static Tensor forward(AutogradContext* ctx, Tensor x) {
    Tensor y = at::relu(x);
    Tensor zero;
    if (y.device().is_cpu() && y.is_non_overlapping_and_dense() && y.scalar_type() == at::kFloat) {
      zero = at::empty_like(y, y.options().dtype(at::kBool));
      clamped<float>(y.data_ptr<float>(), zero.data_ptr<bool>(), y.numel());
    } else {
      zero = at::le(y, 0);
    }
    ctx->save_for_backward({zero});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor zero = ctx->get_saved_variables()[0];
    const Tensor& g = grads[0];
    if (at::GradMode::is_enabled() || !g.device().is_cpu() || !zero.is_non_overlapping_and_dense() ||
        !(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble)) {
      return {g.masked_fill(zero, 0)};  // differentiable (a double backward), any device or dtype
    }
    // In the mask's (the output's) layout, as threshold_backward gives: a convolution's input gradient
    // may come in another layout, and BatchNorm's backward would then copy one of them.
    Tensor out = at::empty_like(zero, g.options());
    Tensor source = g.strides() == out.strides() ? g : out.copy_(g);
    if (g.scalar_type() == at::kFloat) {
      mask_gradient<float, uint32_t>(source.data_ptr<float>(), zero.data_ptr<bool>(), out.data_ptr<float>(),
                                     out.numel());
    } else {
      mask_gradient<double, uint64_t>(source.data_ptr<double>(), zero.data_ptr<bool>(), out.data_ptr<double>(),
                                      out.numel());
    }
    return {out};
  }
};

Tensor masked_relu(Tensor x) { return MaskedRelu::apply(x); }

Tensor batch_norm_of_convolution(Tensor x, c10::optional<Tensor> w, c10::optional<Tensor> b,
                                 c10::optional<Tensor> running_mean, c10::optional<Tensor> running_var,
                                 double momentum, double eps, Tensor conv_input, Tensor conv_weight,
                                 c10::optional<Tensor> conv_bias, std::vector<int64_t> stride,
                                 std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups) {
  return BatchNormOfConvolution::apply(x, w, b, running_mean, running_var, momentum, eps, conv_input, conv_weight,
                                       conv_bias, stride, padding, dilation, groups);
}

}  // namespace

void register_compact_activations(pybind11::module& m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("batch_norm_of_convolution", &batch_norm_of_convolution, release(),
        "Training-mode BatchNorm of a convolution's output, recomputing that output in the backward.");
  m.def("masked_relu", &masked_relu, release(), "ReLU whose backward keeps a mask instead of its output.");
  m.def(
      "batch_norm_backward_into_input",
      [](Tensor g, Tensor x, c10::optional<Tensor> w, Tensor mean, Tensor invstd, double eps) {
        auto r = batch_norm_backward_into_input(g, x, w.has_value() ? *w : Tensor(), mean, invstd, eps,
                                                {true, w.has_value(), w.has_value()});
        return std::make_tuple(std::get<0>(r), std::get<1>(r), std::get<2>(r));
      },
      release(), "BatchNorm's training-mode backward writing the input gradient into x (for tests).");
}
