// What the extension's autograd functions share: a convolution's configuration, saved in and
// loaded from an autograd context and called forward and backward, and the broadcast shape of a
// per-channel vector.
#pragma once
#include <torch/extension.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastadapt {

using torch::Tensor;
using torch::autograd::AutogradContext;

struct ConvConfig {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
  bool has_bias;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = has_bias;
  }

  static ConvConfig load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(),
            ctx->saved_data["has_bias"].toBool()};
  }

  std::vector<int64_t> output_padding() const { return std::vector<int64_t>(stride.size(), 0); }

  Tensor conv(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b) const {
    return at::convolution(x, w, b, stride, padding, dilation, false, output_padding(), groups);
  }

  std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                              std::array<bool, 3> mask) const {
    std::vector<int64_t> bias_size{w.size(0)};
    c10::OptionalIntArrayRef bias_sizes;
    if (mask[2]) bias_sizes = bias_size;
    return at::convolution_backward(gy, x, w, bias_sizes, stride, padding, dilation, false, output_padding(), groups,
                                    mask);
  }
};

// (1, C, 1, ...): a per-channel vector viewed to broadcast over x.
inline std::vector<int64_t> channel_shape(const Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = -1;
  return shape;
}

}  // namespace fastadapt
