#pragma once
/// \file Umbrella header: the host API, plus the CUDA headers when compiled by nvcc.
///
///     #include <switchyard/switchyard.hpp>
///     namespace sy = switchyard;

#include "switchyard/config.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/core/macros.hpp"
#include "switchyard/core/math.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/routing.hpp"
#include "switchyard/version.hpp"

#if defined(__CUDACC__)
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing.cuh"
#endif
