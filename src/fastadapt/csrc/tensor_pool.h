// fastadapt's tensor pool (tensor_pool.cpp): bound into the same extension module as the kernels.
#pragma once
#include <torch/extension.h>

void register_tensor_pool(pybind11::module& m);
