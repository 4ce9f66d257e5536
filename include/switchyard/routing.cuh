#pragma once
/// \file Routers and losses on the device (nvcc only): TopK kernels, losses, Sinkhorn, router
/// linear layer and jitter. docs/routing.md, "CUDA".

#include "switchyard/routing.hpp"
#include "switchyard/routing/losses.cuh"
#include "switchyard/routing/router_linear.cuh"
#include "switchyard/routing/sinkhorn.cuh"
#include "switchyard/routing/top_k.cuh"
