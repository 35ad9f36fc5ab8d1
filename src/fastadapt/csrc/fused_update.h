// fastadapt's fused inner-loop update (fused_update.cpp): bound into the same extension module as the kernels.
#pragma once
#include <torch/extension.h>

void register_fused_update(pybind11::module& m);
