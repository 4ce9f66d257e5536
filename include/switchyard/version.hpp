#pragma once
/// \file Library version.

#define SWITCHYARD_VERSION_MAJOR 0
#define SWITCHYARD_VERSION_MINOR 1
#define SWITCHYARD_VERSION_PATCH 0

namespace switchyard {
inline constexpr const char* version_string = "0.1.0";
}  // namespace switchyard
