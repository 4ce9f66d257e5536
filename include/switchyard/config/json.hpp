#pragma once
/// \file Config to and from JSON (Boost.JSON), in three dialects mapped onto the same Config:
///   flat         every field at the top level by its name (the torsh form);
///   nested       seed 003: model / model.moe / training / distributed / moe_optimization;
///   model_config seed 001: model_config / moe_layer_config / distributed_config / training_config.
/// Link target switchyard::json. docs/config.md lists where each field lives in each dialect.

#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/config/detail/did_you_mean.hpp"
#include "switchyard/config/format.hpp"
#include "switchyard/config/validate.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

/// The JSON shapes a config can be written in.
enum class Dialect { flat, nested, model_config };
template <>
struct enum_info<Dialect> {
  static constexpr std::string_view type_name = "Dialect";
  static constexpr std::array<std::string_view, 3> names = {"flat", "nested", "model_config"};
};

/// A config read from JSON, with where each field lives and what was wrong.
struct ParsedConfig {
  Config config;
  Dialect dialect = Dialect::flat;
  FieldPaths paths;               ///< field -> JSON path in this dialect
  std::vector<problem> problems;  ///< syntax, unknown keys, wrong types (not rule checks)
};

namespace detail {

/// One leaf of a dialect: a config field, or a constant the dialect requires (e.g. seed 001's
/// "master_addr": "env://") that Switchyard does not store.
struct dialect_entry {
  std::string path;
  std::string field;     ///< empty for a constant
  std::string constant;  ///< the only accepted value of a constant
};

inline std::string dialect_path(Dialect d, std::string_view field, std::string_view section) {
  const std::string f(field);
  switch (d) {
    case Dialect::flat: return f;
    case Dialect::nested:
      if (field == "num_experts_per_token") return "model.moe.num_experts_per_tok";
      if (section == "model") return "model." + f;
      if (section == "moe") return "model.moe." + f;
      if (section == "balance") return "moe_optimization." + f;
      if (section == "distributed") return "distributed." + f;
      return "training." + f;
    case Dialect::model_config:
      if (field == "num_experts_per_token") return "model_config.moe_layer_config.top_k";
      if (field == "moe_layer_frequency") return "model_config.moe_layer_config.moe_every_k_layers";
      if (field == "moe_layer_pattern") return "model_config.moe_layer_config.moe_layer_pattern";
      if (field == "load_balance_loss_coeff") return "model_config.moe_layer_config.aux_loss_factor";
      if (field == "communication_overlap")
        return "distributed_config.comm_optimization.all_to_all_overlap";
      if (section == "model") return "model_config." + f;
      if (section == "moe" || section == "balance") return "model_config.moe_layer_config." + f;
      if (section == "distributed") return "distributed_config." + f;
      return "training_config." + f;
  }
  return f;
}

inline std::vector<dialect_entry> dialect_entries(Dialect d) {
  std::vector<dialect_entry> v;
#define SY_DETAIL_DIALECT_ENTRY(type, name, def, section) \
  v.push_back(dialect_entry{dialect_path(d, #name, #section), #name, {}});
  SY_CONFIG_FIELDS(SY_DETAIL_DIALECT_ENTRY)
#undef SY_DETAIL_DIALECT_ENTRY
  if (d == Dialect::model_config) {
    v.push_back(dialect_entry{"model_config.model_type", {}, "transformer_moe"});
    v.push_back(dialect_entry{"distributed_config.master_addr", {}, "env://"});
    v.push_back(dialect_entry{"distributed_config.master_port", {}, "env://"});
  }
  return v;
}

inline std::string kind_of(const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::null: return "null";
    case boost::json::kind::bool_: return "a boolean";
    case boost::json::kind::int64:
    case boost::json::kind::uint64: return "an integer";
    case boost::json::kind::double_: return "a number";
    case boost::json::kind::string: return "a string";
    case boost::json::kind::array: return "an array";
    case boost::json::kind::object: return "an object";
  }
  return "a value";
}

// ---- reading one value; each returns an error text, empty when it worked --------------------

/// Reads a whole number from lo to hi: a JSON integer or a double with no fraction (5.0 counts
/// as 5, as configs written by Python may have it). Empty when it worked; otherwise what the
/// value is instead, for the caller's message: the number ("2.5", "-1", "18446744073709551615")
/// or its kind ("a string").
template <class Int>
std::string read_whole(const boost::json::value& v, Int& out, Int lo, Int hi) {
  static_assert(std::is_same_v<Int, std::int64_t> || std::is_same_v<Int, std::uint64_t>);
  const auto take = [&](auto x) -> std::string {
    if (std::cmp_less(x, lo) || std::cmp_greater(x, hi)) return std::to_string(x);
    out = static_cast<Int>(x);
    return {};
  };
  if (v.is_int64()) return take(v.get_int64());
  if (v.is_uint64()) return take(v.get_uint64());
  if (!v.is_double()) return kind_of(v);
  const double d = v.get_double();
  // Range first: converting an out-of-range double to an integer is undefined behaviour. The
  // bounds are Int's range, -2^63 <= d < 2^63 or 0 <= d < 2^64, exact in double.
  constexpr double below = std::is_signed_v<Int> ? -9223372036854775808.0 : 0.0;
  constexpr double above = std::is_signed_v<Int> ? 9223372036854775808.0 : 18446744073709551616.0;
  if (d >= below && d < above && d == std::floor(d) && take(static_cast<Int>(d)).empty()) return {};
  return to_text(d);
}

inline std::string read_value(const boost::json::value& v, std::int64_t& out) {
  std::string got = read_whole(v, out, INT64_MIN, INT64_MAX);
  if (got.empty()) return got;
  return (v.is_uint64() ? "integer too large, got " : "expected an integer, got ") + got;
}
inline std::string read_value(const boost::json::value& v, double& out) {
  if (!v.is_number()) return "expected a number, got " + kind_of(v);
  out = v.to_number<double>();
  return {};
}
inline std::string read_value(const boost::json::value& v, bool& out) {
  if (!v.is_bool()) return "expected true or false, got " + kind_of(v);
  out = v.get_bool();
  return {};
}
inline std::string read_value(const boost::json::value& v, unbuilt_object& out) {
  if (v.is_null()) {
    out.present = false;
    return {};
  }
  if (v.is_object()) {
    out.present = true;
    return {};
  }
  return "expected an object or null, got " + kind_of(v);
}
/// A torsh object (LoadBalancingConfig, ExpertMigrationConfig): null (absent), or an object whose
/// keys are each optional (torsh's defaults for the rest); `read_field(o, i, value)` reads the
/// value of keys[i] into o. An unknown or mistyped key is an error naming it.
template <class Obj, std::size_t N, class ReadField>
std::string read_torsh_object(const boost::json::value& v, Obj& out,
                              const std::array<std::string_view, N>& keys, ReadField read_field) {
  if (v.is_null()) {
    out = {};
    return {};
  }
  if (!v.is_object()) return "expected an object or null, got " + kind_of(v);
  Obj o;
  o.present = true;
  for (const auto& kv : v.get_object()) {
    const std::string_view key = kv.key();
    const auto i =
        static_cast<std::size_t>(std::find(keys.begin(), keys.end(), key) - keys.begin());
    std::string err;
    if (i < N) {
      err = read_field(o, i, kv.value());
    } else {
      err = "unknown key";
      if (auto near = closest(key, keys); !near.empty()) err += "; did you mean \"" + near + "\"?";
    }
    if (!err.empty()) return concat(key, ": ", err);
  }
  out = o;
  return {};
}
/// torsh's LoadBalancingConfig.
inline std::string read_value(const boost::json::value& v, load_balancing_object& out) {
  static constexpr std::array<std::string_view, 5> keys = {
      "enable_auto_balancing", "imbalance_threshold", "check_frequency",
      "max_concurrent_migrations", "load_smoothing_factor"};
  return read_torsh_object(
      v, out, keys, [](load_balancing_object& o, std::size_t i, const boost::json::value& x) {
        switch (i) {
          case 0: return read_value(x, o.enable_auto_balancing);
          case 1: return read_value(x, o.imbalance_threshold);
          case 2: return read_value(x, o.check_frequency);
          case 3: return read_value(x, o.max_concurrent_migrations);
          default: return read_value(x, o.load_smoothing_factor);
        }
      });
}
/// An array of numbers (double) or of integers (std::int64_t); each entry read as one value.
template <class T>
requires(std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>) std::string
    read_value(const boost::json::value& v, std::vector<T>& out) {
  const char* what = std::is_integral_v<T> ? "integers" : "numbers";
  if (!v.is_array()) return concat("expected an array of ", what, ", got ", kind_of(v));
  std::vector<T> list;
  for (std::size_t i = 0; i < v.get_array().size(); ++i) {
    T t{};
    if (std::string err = read_value(v.get_array()[i], t); !err.empty())
      return concat("entry ", i, ": ", err);
    list.push_back(t);
  }
  out = std::move(list);
  return {};
}
template <class E>
  requires std::is_enum_v<E>
std::string read_value(const boost::json::value& v, E& out) {
  std::string options;
  for (auto n : enum_info<E>::names) options += (options.empty() ? "\"" : ", \"") + std::string(n) + "\"";
  if (!v.is_string()) return "expected one of " + options + ", got " + kind_of(v);
  const std::string_view s = v.get_string();
  if (auto e = enum_from_name<E>(s)) {
    out = *e;
    return {};
  }
  std::string msg = concat("\"", s, "\" is not one of ", options);
  if (auto near = closest(s, enum_info<E>::names); !near.empty())
    msg += concat("; did you mean \"", near, "\"?");
  return msg;
}
template <class T>
std::string read_value(const boost::json::value& v, std::optional<T>& out) {
  if (v.is_null()) {
    out.reset();
    return {};
  }
  T t{};
  std::string err = read_value(v, t);
  if (err.empty()) out = t;
  return err;
}

/// One value, or Megatron-Core's list form: an array of 1 to N values.
template <class T, std::size_t N>
std::string read_value(const boost::json::value& v, one_or_more<T, N>& out) {
  if (!v.is_array()) {
    T t{};
    std::string err = read_value(v, t);
    if (err.empty()) out = t;
    return err;
  }
  const auto& a = v.get_array();
  if (a.empty() || a.size() > N) return concat("expected 1 to ", N, " entries, got ", a.size());
  one_or_more<T, N> list;
  list.clear();
  for (std::size_t i = 0; i < a.size(); ++i) {
    T t{};
    if (std::string err = read_value(a[i], t); !err.empty()) return concat("entry ", i, ": ", err);
    list.push_back(t);
  }
  out = list;
  return {};
}

/// load_balancing_type: a list is Megatron-Core's form that combines aux losses, so sinkhorn and
/// none are not list entries (Megatron would route ["sinkhorn"] with plain top-k, not Sinkhorn).
inline std::string read_value(const boost::json::value& v, balancing_types& out) {
  balancing_types t;
  if (std::string err = read_value<LoadBalancingType, max_balance_losses>(v, t); !err.empty())
    return err;
  if (v.is_array())
    for (std::size_t i = 0; i < t.size(); ++i)
      if (t[i] == LoadBalancingType::sinkhorn || t[i] == LoadBalancingType::none)
        return concat("entry ", i, ": ", enum_name(t[i]),
                      " is not an aux loss; a list combines aux_loss, seq_aux_loss and "
                      "global_aux_loss");
  out = t;
  return {};
}

/// torsh's ExpertMigrationConfig (`triggers` and `preferred_strategies` are arrays, as serde
/// writes them, or one name).
inline std::string read_value(const boost::json::value& v, migration_object& out) {
  static constexpr std::array<std::string_view, 5> keys = {
      "enable_migration", "triggers", "preferred_strategies", "cooldown_period",
      "max_migration_distance"};
  return read_torsh_object(v, out, keys,
                           [](migration_object& o, std::size_t i, const boost::json::value& x) {
                             switch (i) {
                               case 0: return read_value(x, o.enable_migration);
                               case 1: return read_value(x, o.triggers);
                               case 2: return read_value(x, o.preferred_strategies);
                               case 3: return read_value(x, o.cooldown_period);
                               default: return read_value(x, o.max_migration_distance);
                             }
                           });
}

inline std::string read_field(Config& c, std::string_view field, const boost::json::value& v) {
  if (field == "moe_layer_frequency" && v.is_array())  // Megatron's moe_layer_freq takes both
    return "expected an integer, got an array; a per-layer list of 1 (MoE) and 0 (dense) goes in "
           "the field moe_layer_pattern";
#define SY_DETAIL_READ_FIELD(type, name, def, section) \
  if (field == #name) return read_value(v, c.name);
  SY_CONFIG_FIELDS(SY_DETAIL_READ_FIELD)
#undef SY_DETAIL_READ_FIELD
  return "unknown field";
}

// ---- writing ---------------------------------------------------------------------------------

inline boost::json::value write_value(std::int64_t v) { return v; }
inline boost::json::value write_value(double v) { return v; }
inline boost::json::value write_value(bool v) { return v; }
inline boost::json::value write_value(const unbuilt_object& v) {
  return v.present ? boost::json::value(boost::json::object{}) : boost::json::value(nullptr);
}
inline boost::json::value write_value(const load_balancing_object& v) {
  if (!v.present) return nullptr;
  return boost::json::object{{"enable_auto_balancing", v.enable_auto_balancing},
                             {"imbalance_threshold", v.imbalance_threshold},
                             {"check_frequency", v.check_frequency},
                             {"max_concurrent_migrations", v.max_concurrent_migrations},
                             {"load_smoothing_factor", v.load_smoothing_factor}};
}
/// A JSON array of the values of a range.
template <class Range>
boost::json::value write_array(const Range& r);
template <class T>
boost::json::value write_value(const std::vector<T>& v) {
  return write_array(v);
}
template <class E>
  requires std::is_enum_v<E>
boost::json::value write_value(E e) {
  return boost::json::string(enum_name(e));
}
template <class T>
boost::json::value write_value(const std::optional<T>& v) {
  return v ? write_value(*v) : boost::json::value(nullptr);
}

template <class Range>
boost::json::value write_array(const Range& r) {
  boost::json::array a;
  for (const auto& e : r) a.push_back(write_value(e));
  return a;
}
template <class T, std::size_t N>
boost::json::value write_value(const one_or_more<T, N>& v) {
  return v.is_list() ? write_array(v) : write_value(v[0]);
}

inline boost::json::value write_value(const migration_object& v) {
  if (!v.present) return nullptr;
  return boost::json::object{{"enable_migration", v.enable_migration},
                             {"triggers", write_array(v.triggers)},
                             {"preferred_strategies", write_array(v.preferred_strategies)},
                             {"cooldown_period", v.cooldown_period},
                             {"max_migration_distance", v.max_migration_distance}};
}

inline void put_path(boost::json::object& root, std::string_view path, boost::json::value v) {
  boost::json::object* obj = &root;
  std::size_t start = 0;
  for (std::size_t dot = path.find('.'); dot != std::string_view::npos;
       start = dot + 1, dot = path.find('.', start)) {
    auto& child = (*obj)[path.substr(start, dot - start)];
    if (!child.is_object()) child = boost::json::object{};
    obj = &child.get_object();
  }
  (*obj)[path.substr(start)] = std::move(v);
}

/// The top-level key that decides a document's dialect ("model_config", "model", ...); empty for
/// the flat dialect.
inline std::string_view dialect_marker(const boost::json::object& o) {
  for (const char* k : {"model_config", "distributed_config", "training_config", "model",
                        "training", "distributed", "moe_optimization"})
    if (o.contains(k)) return k;
  return {};
}
inline Dialect detect_dialect(const boost::json::object& o) {
  const std::string_view marker = dialect_marker(o);
  if (marker.empty()) return Dialect::flat;
  return marker.ends_with("_config") ? Dialect::model_config : Dialect::nested;
}

/// Where `path` is a key of a dialect other than `d`: "the flat dialect's key" or "a section of
/// the nested dialect", and the field it holds (empty for a section); nullopt when no other
/// dialect has it.
inline std::optional<std::pair<std::string, std::string>> other_dialects_key(
    Dialect d, const std::string& path) {
  // Built once: a file of many unknown keys (the fuzzers make them) asks for each.
  static const std::array<std::vector<dialect_entry>, 3> tables{
      dialect_entries(Dialect::flat), dialect_entries(Dialect::nested),
      dialect_entries(Dialect::model_config)};
  for (const Dialect other : {Dialect::flat, Dialect::nested, Dialect::model_config}) {
    if (other == d) continue;
    for (const auto& e : tables[static_cast<std::size_t>(other)]) {
      if (e.path == path)
        return std::pair{concat("the ", enum_name(other), " dialect's key"), e.field};
      if (e.path.size() > path.size() && e.path.starts_with(path) && e.path[path.size()] == '.')
        return std::pair{concat("a section of the ", enum_name(other), " dialect"), std::string()};
    }
  }
  return std::nullopt;
}

struct dialect_reader {
  std::map<std::string, const dialect_entry*, std::less<>> leaves;
  std::set<std::string, std::less<>> sections;
  ParsedConfig* out;
  std::string_view marker;  ///< the key that chose the dialect (empty: flat)

  void walk(const boost::json::object& obj, const std::string& prefix) {
    for (const auto& kv : obj) {
      const std::string key(kv.key());
      // An empty key is shown as "" so that the problem still names where it is.
      const std::string shown = key.empty() ? std::string("\"\"") : key;
      const std::string path = prefix.empty() ? shown : prefix + "." + shown;
      if (auto it = leaves.find(path); it != leaves.end()) {
        read_leaf(*it->second, kv.value());
      } else if (sections.count(path)) {
        if (kv.value().is_object())
          walk(kv.value().get_object(), path);
        else
          add(path, "expected an object, got " + kind_of(kv.value()));
      } else {
        add(path, unknown_message(key, prefix, path));
      }
    }
  }
  void read_leaf(const dialect_entry& e, const boost::json::value& v) {
    if (e.field.empty()) {
      if (!v.is_string() || v.get_string() != e.constant)
        add(e.path, concat("the only supported value is \"", e.constant, "\", got ",
                           v.is_string() ? "\"" + std::string(v.get_string()) + "\"" : kind_of(v)));
      return;
    }
    if (std::string err = read_field(out->config, e.field, v); !err.empty()) add(e.path, err);
  }
  std::string unknown_message(const std::string& key, const std::string& prefix,
                              const std::string& path) const {
    // A file that mixes dialects: say which one it is read in, and why.
    if (auto other = other_dialects_key(out->dialect, path)) {
      // (A flat file meets none: a key of another dialect at its top is a marker of that one.)
      std::string msg = concat("unknown key: the file is read in the ", enum_name(out->dialect),
                               " dialect (it has \"", marker, "\")");
      if (!other->second.empty()) {
        for (const auto& [here, e] : leaves)
          if (e->field == other->second) msg += ", where this field is " + here;
      }
      return concat(msg, "; \"", path, "\" is ", other->first, " (a file uses one dialect)");
    }
    std::vector<std::string> siblings;
    const std::string p = prefix.empty() ? "" : prefix + ".";
    auto consider = [&](const std::string& full) {
      if (full.size() > p.size() && full.compare(0, p.size(), p) == 0) {
        const std::string rest = full.substr(p.size());
        if (rest.find('.') == std::string::npos) siblings.push_back(rest);
      }
    };
    for (const auto& [path, e] : leaves) consider(path);
    for (const auto& s : sections) consider(s);
    std::string msg = "unknown key";
    if (auto near = closest(key, siblings); !near.empty()) msg += "; did you mean \"" + near + "\"?";
    return msg;
  }
  void add(const std::string& path, const std::string& what) {
    out->problems.push_back(problem{path, path + ": " + what});
  }
};

}  // namespace detail

/// Where each field lives in dialect `d`.
inline FieldPaths field_paths(Dialect d) {
  FieldPaths paths;
  for (const auto& e : detail::dialect_entries(d))
    if (!e.field.empty()) paths[e.field] = e.path;
  return paths;
}

/// Reads a config from a parsed JSON document, detecting its dialect. Never throws on bad
/// content: every problem (unknown key with a did-you-mean, wrong type, bad enum) is listed.
inline ParsedConfig parse_config(const boost::json::value& doc) {
  ParsedConfig out;
  if (!doc.is_object()) {
    out.problems.push_back(problem{"$", "$: a config must be a JSON object, got " +
                                            detail::kind_of(doc)});
    return out;
  }
  const auto& root = doc.get_object();
  out.dialect = detail::detect_dialect(root);
  out.paths = field_paths(out.dialect);
  const auto entries = detail::dialect_entries(out.dialect);
  detail::dialect_reader reader;
  reader.out = &out;
  reader.marker = detail::dialect_marker(root);
  for (const auto& e : entries) {
    reader.leaves[e.path] = &e;
    for (std::size_t dot = e.path.find('.'); dot != std::string::npos;
         dot = e.path.find('.', dot + 1))
      reader.sections.insert(e.path.substr(0, dot));
  }
  reader.walk(root, "");
  return out;
}

namespace detail {

/// A boost::json::basic_parser handler that builds nothing and finds the first object key given
/// twice, with its path ("moe.num_experts", "layers[2].x"). Boost.JSON's DOM keeps the last of
/// two equal keys without a word; serde, which reads torsh's config, refuses them.
struct duplicate_key_finder {
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);
  using ec_t = boost::system::error_code;
  using sv = boost::json::string_view;

  struct level {
    bool object = false;
    std::set<std::string, std::less<>> keys;  // an object's keys so far
    std::string key;                          // an object's current key
    std::size_t values = 0;                   // an array's values so far
  };
  std::vector<level> open;  // the containers entered, outermost first
  std::string key;          // the key being read
  bool found = false;       // whether a key was given twice
  std::string duplicate;    // the first key given twice
  std::string path;         // where it is

  std::string where() const {
    std::string p;
    for (const level& l : open) {
      if (!l.object) {
        p += concat("[", l.values - 1, "]");
        continue;
      }
      if (!p.empty()) p += '.';
      p += l.key.empty() ? "\"\"" : l.key;  // the empty key, as the config reader writes it
    }
    return p;
  }
  bool value() {
    if (!open.empty() && !open.back().object) ++open.back().values;
    return true;
  }
  bool begin(bool object) {
    value();
    open.emplace_back().object = object;
    return true;
  }
  bool end() {
    open.pop_back();
    return true;
  }
  bool on_document_begin(ec_t&) { return true; }
  bool on_document_end(ec_t&) { return true; }
  bool on_array_begin(ec_t&) { return begin(false); }
  bool on_array_end(std::size_t, ec_t&) { return end(); }
  bool on_object_begin(ec_t&) { return begin(true); }
  bool on_object_end(std::size_t, ec_t&) { return end(); }
  bool on_string_part(sv, std::size_t, ec_t&) { return true; }
  bool on_string(sv, std::size_t, ec_t&) { return value(); }
  bool on_key_part(sv s, std::size_t, ec_t&) {
    key.append(s.data(), s.size());
    return true;
  }
  bool on_key(sv s, std::size_t, ec_t&) {
    key.append(s.data(), s.size());
    level& l = open.back();
    l.key = key;
    if (!l.keys.insert(key).second && !found) {
      found = true;
      duplicate = key;
      path = where();
    }
    key.clear();
    return true;
  }
  bool on_number_part(sv, ec_t&) { return true; }
  bool on_int64(std::int64_t, sv, ec_t&) { return value(); }
  bool on_uint64(std::uint64_t, sv, ec_t&) { return value(); }
  bool on_double(double, sv, ec_t&) { return value(); }
  bool on_bool(bool, ec_t&) { return value(); }
  bool on_null(ec_t&) { return value(); }
  bool on_comment_part(sv, ec_t&) { return true; }
  bool on_comment(sv, ec_t&) { return true; }
};

}  // namespace detail

/// Parses JSON text; a syntax error becomes a problem naming the line and column, a key given
/// twice in one object a problem naming its path.
inline boost::json::value parse_json_text(std::string_view text, std::vector<problem>& problems,
                                          std::string_view what = "document") {
  boost::json::parse_options opts;
  opts.max_depth = 64;
  boost::json::stream_parser p({}, opts);
  boost::system::error_code ec;
  const std::size_t used = p.write(text.data(), text.size(), ec);
  if (!ec) p.finish(ec);
  if (ec) {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < used && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    problems.push_back(problem{"$", detail::concat(what, ": invalid JSON at line ", line,
                                                   ", column ", col, ": ", ec.message())});
    return nullptr;
  }
  // The text is valid JSON: a second pass looks for a key given twice.
  boost::json::basic_parser<detail::duplicate_key_finder> keys(opts);
  keys.write_some(false, text.data(), text.size(), ec);
  const detail::duplicate_key_finder& found = keys.handler();
  if (!ec && found.found) {
    problems.push_back(
        problem{found.path, detail::concat(what, ": ", found.path, ": the key \"", found.duplicate,
                                           "\" is given twice in one object (which value is "
                                           "meant?)")});
    return nullptr;
  }
  return p.release();
}

/// The most bytes read_text_file reads: far above any config or `route`/`layer` document, and
/// an end for an endless stream (a pipe that does not close).
inline constexpr std::size_t max_text_bytes = std::size_t{1} << 30;

/// Reads the text of a file; throws config_error when it cannot (with the system's reason), when
/// it holds a NUL byte (JSON text has none: a binary file, or a device such as /dev/zero, is
/// refused at its first block instead of being read without end) or more than max_text_bytes.
inline std::string read_text_file(const std::string& file) {
  if (file.empty()) throw config_error("cannot open a file with an empty path");
  std::error_code ec;
  // An ifstream opens a directory and reads nothing: say what it is instead.
  if (std::filesystem::is_directory(file, ec))
    throw config_error("cannot open " + file + ": it is a directory, not a file");
  errno = 0;
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw config_error(detail::concat(
        "cannot open ", file, errno != 0 ? detail::concat(": ", std::strerror(errno)) : ""));
  std::string text;
  std::vector<char> block(std::size_t{1} << 16);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    const std::string_view part(block.data(), n);
    if (const std::size_t nul = part.find('\0'); nul != std::string_view::npos)
      throw config_error(detail::concat(file, ": not JSON text: a NUL byte at offset ",
                                        text.size() + nul, " (a binary file or a device?)"));
    if (text.size() + n > max_text_bytes)
      throw config_error(detail::concat(file, ": more than ", max_text_bytes >> 20,
                                        " MiB, larger than any config or document Switchyard "
                                        "reads"));
    text.append(part);
  }
  if (in.bad()) throw config_error("cannot read " + file);
  // A UTF-8 byte order mark (some Windows editors write one): not JSON, and RFC 8259 lets a
  // parser ignore it.
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
  return text;
}

/// Parses and validates config JSON text: parse problems and broken rules together.
inline ParsedConfig parse_and_validate(std::string_view text, std::string_view what = "config") {
  std::vector<problem> syntax;
  const boost::json::value doc = parse_json_text(text, syntax, what);
  if (!syntax.empty()) {
    ParsedConfig out;
    out.problems = std::move(syntax);
    return out;
  }
  ParsedConfig out = parse_config(doc);
  for (auto& p : validate(out.config, &out.paths)) out.problems.push_back(std::move(p));
  return out;
}

/// Loads a config file and validates it; throws config_error listing every problem.
inline ParsedConfig load_config_file(const std::string& file) {
  ParsedConfig out = parse_and_validate(read_text_file(file), file);
  if (!out.problems.empty()) throw config_error(join_problems(out.problems));
  return out;
}

/// Writes every field of `c` in dialect `d`.
inline boost::json::object to_json(const Config& c, Dialect d = Dialect::flat) {
  boost::json::object root;
  for (const auto& e : detail::dialect_entries(d)) {
    if (e.field.empty()) {
      detail::put_path(root, e.path, boost::json::string(e.constant));
      continue;
    }
#define SY_DETAIL_WRITE_FIELD(type, name, def, section) \
  if (e.field == #name) detail::put_path(root, e.path, detail::write_value(c.name));
    SY_CONFIG_FIELDS(SY_DETAIL_WRITE_FIELD)
#undef SY_DETAIL_WRITE_FIELD
  }
  return root;
}

/// Boost.JSON customisation: boost::json::value_from(config) writes the flat dialect.
inline void tag_invoke(const boost::json::value_from_tag&, boost::json::value& v, const Config& c) {
  v = to_json(c);
}

/// boost::json::value_to<Config>(v) reads any dialect; throws config_error on any problem
/// (parse or rule).
inline Config tag_invoke(const boost::json::value_to_tag<Config>&, const boost::json::value& v) {
  ParsedConfig p = parse_config(v);
  for (auto& pr : validate(p.config, &p.paths)) p.problems.push_back(std::move(pr));
  if (!p.problems.empty()) throw config_error(join_problems(p.problems));
  return p.config;
}

}  // namespace switchyard
