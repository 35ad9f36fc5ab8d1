// Reptile's inner Adam step (beta1 = 0, the paper's) over all of a task's parameters in one call:
// per element v <- beta2 v + (1 - beta2) g^2, w <- w - lr c g / (sqrt(v) + eps c), c = sqrt(1 - beta2^t)
// (torch.optim.Adam's step; fastadapt/algorithms/reptile.py derives the form). The torch._foreach
// version is five passes over the parameters, each a loop of per-tensor ATen calls on CPU (with a
// scalar wrapped into a tensor for some), plus a temporary of the parameters' size for sqrt(v): on
// the benchmarks' Conv-4 (18 tensors, 113k elements) 200-400 us a step, against 55-70 us for this
// pass (ad hoc timings of Reptile._update and of this kernel, 1 thread, AVX-512 Xeon; the step-level
// effect is measured in benchmarks/README.md). Here one pass, vectorised, in place, without the GIL.
#include "fused_update.h"

#include "vector_clones.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include <cmath>
#include <vector>

using torch::Tensor;

namespace {

// Same order of operations as the foreach version: v * beta2 + ((1 - beta2) * g) * g, then
// w + step * (g / (sqrt(v) + eps_c)) with step = -lr c.
template <typename scalar_t>
FASTADAPT_VECTOR_CLONES void adam_beta1_zero(scalar_t* w, const scalar_t* g, scalar_t* v, int64_t n, scalar_t beta2,
                                             scalar_t one_minus_beta2, scalar_t step, scalar_t eps_c) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t gi = g[i];
    const scalar_t vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    v[i] = vi;
    w[i] = w[i] + step * (gi / (std::sqrt(vi) + eps_c));
  }
}

template <typename scalar_t>
void update_one(Tensor& w, const Tensor& g, Tensor& v, double beta2, double step, double eps_c) {
  scalar_t* wp = w.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* vp = v.data_ptr<scalar_t>();
  // Dense tensors with equal strides: element i is at the same offset in all three, whatever the layout.
  at::parallel_for(0, w.numel(), 16384, [&](int64_t begin, int64_t end) {
    adam_beta1_zero<scalar_t>(wp + begin, gp + begin, vp + begin, end - begin, scalar_t(beta2), scalar_t(1 - beta2),
                              scalar_t(step), scalar_t(eps_c));
  });
}

// weights and moments in place; grads read. Every triple: CPU, float32 or float64, the same sizes,
// dense; a gradient laid out unlike its weight is copied into the weight's layout first.
void adam_beta1_zero_step(std::vector<Tensor> weights, const std::vector<Tensor>& grads, std::vector<Tensor> moments,
                          double lr, double beta2, double eps, int64_t t) {
  TORCH_CHECK(weights.size() == grads.size() && weights.size() == moments.size(),
              "adam_beta1_zero_step: ", weights.size(), " weights, ", grads.size(), " grads, ", moments.size(),
              " moments");
  TORCH_CHECK(t >= 1, "adam_beta1_zero_step: step t must be >= 1, got ", t);
  const double c = std::sqrt(1 - std::pow(beta2, static_cast<double>(t)));
  for (size_t i = 0; i < weights.size(); ++i) {
    Tensor& w = weights[i];
    Tensor& v = moments[i];
    Tensor g = grads[i];
    TORCH_CHECK(w.device().is_cpu() && g.device().is_cpu() && v.device().is_cpu(),
                "adam_beta1_zero_step: tensor ", i, " is not on the CPU");
    TORCH_CHECK((w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble) &&
                    g.scalar_type() == w.scalar_type() && v.scalar_type() == w.scalar_type(),
                "adam_beta1_zero_step: tensor ", i, " needs float32 or float64 weight, grad and moment of one dtype, got ",
                w.scalar_type(), ", ", g.scalar_type(), ", ", v.scalar_type());
    TORCH_CHECK(g.sizes() == w.sizes() && v.sizes() == w.sizes(), "adam_beta1_zero_step: tensor ", i,
                " sizes differ: weight ", w.sizes(), ", grad ", g.sizes(), ", moment ", v.sizes());
    TORCH_CHECK(w.is_non_overlapping_and_dense() && v.is_non_overlapping_and_dense() && v.strides() == w.strides(),
                "adam_beta1_zero_step: tensor ", i, ": weight and moment must be dense and laid out alike, strides ",
                w.strides(), " and ", v.strides());
    if (g.strides() != w.strides() || !g.is_non_overlapping_and_dense()) {
      g = at::empty_like(w).copy_(g);
    }
    if (w.scalar_type() == at::kFloat) {
      update_one<float>(w, g, v, beta2, -lr * c, eps * c);
    } else {
      update_one<double>(w, g, v, beta2, -lr * c, eps * c);
    }
    // As an in-place ATen op would: autograd notices a later use of a graph that saved the old values.
    torch::autograd::impl::bump_version(w);
    torch::autograd::impl::bump_version(v);
  }
}

}  // namespace

void register_fused_update(pybind11::module& m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("adam_beta1_zero_step", &adam_beta1_zero_step, release(),
        "In-place Adam step with beta1 = 0 over lists of weights (updated), grads and second moments (updated).");
}
