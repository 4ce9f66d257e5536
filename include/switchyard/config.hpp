#pragma once
/// \file The runtime config without JSON: fields, rules, presets, capacity, layout, memory.
/// JSON in and out is config/json.hpp (target switchyard::json).

#include "switchyard/config/capacity.hpp"
#include "switchyard/config/config_types.hpp"
#include "switchyard/config/enums.hpp"
#include "switchyard/config/layout.hpp"
#include "switchyard/config/memory.hpp"
#include "switchyard/config/presets.hpp"
#include "switchyard/config/rules.hpp"
#include "switchyard/config/static_check.hpp"
#include "switchyard/config/validate.hpp"
