// The kernels of fastadapt/compact_activations.py (which says when they apply and what they
// saved): training-mode BatchNorm over the output of a cheap convolution, keeping the convolution's
// inputs instead of that output and recomputing it in the backward, and a ReLU that keeps a mask
// instead of its output. The backward writes the input gradient into the recomputed output's
// memory, which it owns, in two passes over the data with no temporary of the input's size: ATen's
// native_batch_norm_backward allocates one, and at the backward of a network's first block that
// temporary set a task's peak. Written in C++ so that the autograd engine runs the node without
// the GIL (worker threads of fastadapt.task_parallel stay parallel).
#include "compact_activations.h"

#include <ATen/Parallel.h>

#include <vector>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

namespace {

// Rows of `channels` values (channels-last) or planes of `inner` values per channel (contiguous).
struct Layout {
  bool channels_last;
  int64_t N, C, inner;
};

bool layout_of(const Tensor& g, const Tensor& x, Layout* layout) {
  if (!x.device().is_cpu() || !(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) return false;
  if (g.scalar_type() != x.scalar_type() || x.dim() < 3) return false;
  auto format = x.suggest_memory_format();
  bool channels_last = format != at::MemoryFormat::Contiguous;
  if (!x.is_contiguous(format) || !g.is_contiguous(format)) return false;
  *layout = {channels_last, x.size(0), x.size(1), x.numel() / (x.size(0) * x.size(1))};
  return true;
}

// Per channel c over its M elements: sum_g = sum(g), sum_gx = sum(g (x - mean)), in double.
template <typename scalar_t>
void channel_sums(const scalar_t* g, const scalar_t* x, const double* mean, const Layout& l, double* sum_g,
                  double* sum_gx) {
  const int64_t C = l.C;
  if (!l.channels_last) {
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double sg = 0, sgx = 0;
        for (int64_t n = 0; n < l.N; ++n) {
          const int64_t base = (n * C + c) * l.inner;
          for (int64_t i = 0; i < l.inner; ++i) {
            sg += g[base + i];
            sgx += static_cast<double>(g[base + i]) * (x[base + i] - mean[c]);
          }
        }
        sum_g[c] = sg;
        sum_gx[c] = sgx;
      }
    });
    return;
  }
  const int64_t rows = l.N * l.inner;
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * C, 0.0);  // per thread: sum_g, sum_gx
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    double* sg = partial.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    double* sgx = sg + C;
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t *gr = g + r * C, *xr = x + r * C;
      for (int64_t c = 0; c < C; ++c) {
        sg[c] += gr[c];
        sgx[c] += static_cast<double>(gr[c]) * (xr[c] - mean[c]);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) sum_g[c] = sum_gx[c] = 0;
  for (int t = 0; t < threads; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      sum_g[c] += partial[(2 * t) * C + c];
      sum_gx[c] += partial[(2 * t + 1) * C + c];
    }
  }
}

// x <- a g + b x + d per channel: the input gradient gx = s w (g - mean(g) - xh mean(g xh)) with
// xh = (x - mean) s written as a linear function of (g, x).
template <typename scalar_t>
void write_input_grad(const scalar_t* g, scalar_t* x, const scalar_t* a, const scalar_t* b, const scalar_t* d,
                      const Layout& l) {
  const int64_t C = l.C;
  if (!l.channels_last) {
    at::parallel_for(0, l.N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        const scalar_t ac = a[c], bc = b[c], dc = d[c];
        scalar_t *xp = x + p * l.inner;
        const scalar_t* gp = g + p * l.inner;
        for (int64_t i = 0; i < l.inner; ++i) xp[i] = ac * gp[i] + bc * xp[i] + dc;
      }
    });
    return;
  }
  at::parallel_for(0, l.N * l.inner, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* xr = x + r * C;
      const scalar_t* gr = g + r * C;
      for (int64_t c = 0; c < C; ++c) xr[c] = a[c] * gr[c] + b[c] * xr[c] + d[c];
    }
  });
}

// Training-mode BatchNorm backward with the input gradient written into `x` (which the caller
// owns); returns (gx, gw, gb) with gx aliasing x. ATen's kernel where the layout is not one of the
// two handled here.
std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_into_input(const Tensor& g, Tensor& x, const Tensor& w,
                                                                  const Tensor& mean, const Tensor& invstd,
                                                                  double eps, std::array<bool, 3> mask) {
  Layout l;
  if (!layout_of(g, x, &l)) {
    return at::native_batch_norm_backward(g, x, w, {}, {}, mean, invstd, true, eps, mask);
  }
  const int64_t C = l.C;
  const double M = static_cast<double>(l.N * l.inner);
  Tensor mean_ = mean.to(at::kDouble).contiguous(), s_ = invstd.to(at::kDouble).contiguous();
  Tensor w_ = w.defined() ? w.to(at::kDouble).contiguous() : at::ones({C}, mean_.options());
  Tensor sums = at::empty({2, C}, mean_.options());
  double *sum_g = sums.data_ptr<double>(), *sum_gx = sum_g + C;
  Tensor coefficients = at::empty({3, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_backward_into_input", [&] {
    const double *MEAN = mean_.data_ptr<double>(), *S = s_.data_ptr<double>(), *W = w_.data_ptr<double>();
    channel_sums<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), MEAN, l, sum_g, sum_gx);
    scalar_t *a = coefficients.data_ptr<scalar_t>(), *b = a + C, *d = b + C;
    for (int64_t c = 0; c < C; ++c) {
      // gx = ws g - ws mean(g) - ws s^2 (x - mean) sum_gx / M,  ws = w s
      const double ws = W[c] * S[c], k = ws * S[c] * S[c] * sum_gx[c] / M;
      a[c] = static_cast<scalar_t>(ws);
      b[c] = static_cast<scalar_t>(-k);
      d[c] = static_cast<scalar_t>(k * MEAN[c] - ws * sum_g[c] / M);
    }
    if (mask[0]) write_input_grad<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), a, b, d, l);
  });
  Tensor gw, gb;
  if (mask[1]) gw = (sums[1] * s_).to(w.scalar_type());
  if (mask[2]) gb = sums[0].to(w.scalar_type());
  return {mask[0] ? x : Tensor(), gw, gb};
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
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
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
    auto stride = ctx->saved_data["stride"].toIntVector(), padding = ctx->saved_data["padding"].toIntVector(),
         dilation = ctx->saved_data["dilation"].toIntVector();
    Tensor x = at::convolution(conv_input, conv_weight, conv_bias.defined() ? c10::optional<Tensor>(conv_bias)
                                                                          : c10::nullopt,
                               stride, padding, dilation, false, std::vector<int64_t>(stride.size(), 0),
                               ctx->saved_data["groups"].toInt());
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
struct MaskedRelu : Function<MaskedRelu> {
  static Tensor forward(AutogradContext* ctx, Tensor x) {
    Tensor y = at::relu(x);
    ctx->save_for_backward({at::le(y, 0)});  // threshold_backward's test: a NaN output passes the gradient
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor mask = ctx->get_saved_variables()[0];
    // In the output's layout (as threshold_backward gives): a convolution's input gradient may come
    // contiguous where the output is channels-last, and BatchNorm's backward then copies one of them.
    Tensor out = at::empty_like(grads[0], grads[0].options().memory_format(mask.suggest_memory_format()));
    out.copy_(grads[0]);
    return {out.masked_fill_(mask, 0)};
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
