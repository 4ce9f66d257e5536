#pragma once
/// \file The MoE layer (host API): MoELayer<Router, Dispatcher, Expert>, make_layer() for a
/// runtime config, communicators and the expert placement. docs/layer.md.

#include "switchyard/comm/communicator.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/layer/make_layer.hpp"
#include "switchyard/layer/moe_layer.hpp"
#include "switchyard/sharding/placement.hpp"
