#pragma once
/// \file Text form of config field values, shared by validation messages and the CLI.

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/config/config_types.hpp"

namespace switchyard::detail {

inline std::string to_text(std::int64_t v) { return std::to_string(v); }
inline std::string to_text(double v) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  return std::string(buf, res.ptr);
}
/// A count computed in double (config/rules.hpp's size products): whole below 2^53, where a
/// double is exact, else with three significant digits (1.6e+19).
inline std::string count_text(double v) {
  if (v >= 0 && v < 9007199254740992.0) return std::to_string(static_cast<std::int64_t>(v));
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%.3g", v);
  return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
}
inline std::string to_text(bool v) { return v ? "true" : "false"; }
inline std::string to_text(const unbuilt_object& v) { return v.present ? "{...}" : "null"; }
inline std::string to_text(const load_balancing_object& v) {
  if (!v.present) return "null";
  return "{enable_auto_balancing: " + to_text(v.enable_auto_balancing) +
         ", imbalance_threshold: " + to_text(v.imbalance_threshold) +
         ", check_frequency: " + std::to_string(v.check_frequency) +
         ", max_concurrent_migrations: " + std::to_string(v.max_concurrent_migrations) +
         ", load_smoothing_factor: " + to_text(v.load_smoothing_factor) + "}";
}
template <class E>
  requires std::is_enum_v<E>
std::string to_text(E e) {
  return std::string(enum_name(e));
}
template <class T>
std::string to_text(const std::optional<T>& v) {
  return v ? to_text(*v) : std::string("null");
}
/// "[a, b, c]" of the values of a range.
template <class Range>
std::string list_text(const Range& r) {
  std::string s = "[";
  for (const auto& v : r) s += (s.size() > 1 ? ", " : "") + to_text(v);
  return s + "]";
}
template <class T>
std::string to_text(const std::vector<T>& v) {
  return list_text(v);
}
template <class T, std::size_t N>
std::string to_text(const one_or_more<T, N>& v) {
  return v.is_list() ? list_text(v) : to_text(v[0]);
}

inline std::string to_text(const migration_object& v) {
  if (!v.present) return "null";
  return "{enable_migration: " + to_text(v.enable_migration) +
         ", triggers: " + list_text(v.triggers) +
         ", preferred_strategies: " + list_text(v.preferred_strategies) +
         ", cooldown_period: " + std::to_string(v.cooldown_period) +
         ", max_migration_distance: " + std::to_string(v.max_migration_distance) + "}";
}

/// The value of the field named `field` as text; empty when there is no such field.
inline std::string field_text(const Config& c, std::string_view field) {
#define SY_DETAIL_FIELD_TEXT(type, name, def, section) \
  if (field == #name) return to_text(c.name);
  SY_CONFIG_FIELDS(SY_DETAIL_FIELD_TEXT)
#undef SY_DETAIL_FIELD_TEXT
  return {};
}

}  // namespace switchyard::detail

namespace switchyard {
/// Prints a one-or-more field as its config text ("aux_loss", "[aux_loss, seq_aux_loss]") on
/// any stream (test frameworks print field values they compare).
template <class Os, class T, std::size_t N>
requires requires(Os& os, const std::string& s) {
  os << s;
}
Os& operator<<(Os& os, const one_or_more<T, N>& v) {
  os << detail::to_text(v);
  return os;
}
}  // namespace switchyard
