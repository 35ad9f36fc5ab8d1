// fastadapt's compact activations (compact_activations.cpp): bound into the same extension module as the kernels.
#pragma once
#include <torch/extension.h>

void register_compact_activations(pybind11::module& m);
