// Conformance with Megatron-Core and DeepSpeed (docs/conformance.md): every fixture in
// data/set*/ holds the exact input document of `switchyard route` or `switchyard layer` and the
// values Megatron-Core's own router functions, or DeepSpeed's top1/top2/topkgating (config
// "semantics": "deepspeed"), and torch layers built on them, computed on the CPU in float64,
// gradients by torch.autograd (tools/conformance/generate.py). Each fixture is run through
// route_document / layer_document, the functions the CLI runs, and compared key by key.
//
// Tolerance: both sides compute in IEEE double, but in different orders (torch's vectorised
// reductions and autograd's chain of ops against Switchyard's closed-form gradients of
// REFERENCE §8), so values agree to rounding, not bit for bit. Each fixture states its
// tolerance, |got - expected| <= abs + rel·|expected| with abs = rel = 1e-10 as written by the
// generator: the largest difference observed is ~2e-15 (2e-5 of the tolerance, printed with
// --log_level=message), so rounding in other orders or seeds has room, while any real
// disagreement (a wrong route, drop, scale or gradient term changes values by 1e-4 or more) fails.
// Integers (counts, capacity, dropped) and nulls must match exactly.
#define BOOST_TEST_MODULE conformance
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "documents.hpp"
#include "switchyard/config/layout.hpp"

namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

struct tolerance {
  double abs = 0, rel = 0;
};

/// Largest |got - expected| / (abs + rel·|expected|) over the floating-point values compared so
/// far: printed per set (--log_level=message) to show the headroom the tolerance leaves.
double worst_ratio = 0.0;

bool is_number(const json::value& v) {
  return v.is_double() || v.is_int64() || v.is_uint64();
}
double as_double(const json::value& v) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  return static_cast<double>(v.get_uint64());
}
bool is_integer(const json::value& v) {
  return v.is_int64() || v.is_uint64();
}

/// Appends one line per difference between got and expected under `path`.
void compare(const json::value& got, const json::value& expected, const tolerance& tol,
             const std::string& path, std::vector<std::string>& diffs) {
  if (diffs.size() >= 20) return;  // enough to see what is wrong
  if (expected.is_null() || got.is_null()) {
    if (!(expected.is_null() && got.is_null()))
      diffs.push_back(path + ": got " + json::serialize(got) + ", expected " +
                      json::serialize(expected));
    return;
  }
  if (is_number(expected)) {
    if (!is_number(got)) {
      diffs.push_back(path + ": got " + json::serialize(got) + ", expected a number");
      return;
    }
    if (is_integer(expected)) {
      // Counts are exact: Switchyard prints them as integers too.
      if (!is_integer(got) || as_double(got) != as_double(expected))
        diffs.push_back(path + ": got " + json::serialize(got) + ", expected " +
                        json::serialize(expected));
      return;
    }
    const double g = as_double(got), e = as_double(expected);
    worst_ratio = std::max(worst_ratio, std::abs(g - e) / (tol.abs + tol.rel * std::abs(e)));
    if (!(std::abs(g - e) <= tol.abs + tol.rel * std::abs(e))) {
      std::ostringstream s;
      s.precision(17);
      s << path << ": got " << g << ", expected " << e << " (difference " << std::abs(g - e) << ")";
      diffs.push_back(s.str());
    }
    return;
  }
  if (expected.is_array()) {
    if (!got.is_array() || got.get_array().size() != expected.get_array().size()) {
      diffs.push_back(path + ": shape differs (got " + json::serialize(got).substr(0, 80) + ")");
      return;
    }
    for (std::size_t i = 0; i < expected.get_array().size(); ++i)
      compare(got.get_array()[i], expected.get_array()[i], tol,
              path + "[" + std::to_string(i) + "]", diffs);
    return;
  }
  if (got != expected)
    diffs.push_back(path + ": got " + json::serialize(got) + ", expected " +
                    json::serialize(expected));
}

/// Runs one fixture; returns its differences (empty: it conforms).
std::vector<std::string> check_fixture(const json::object& fx) {
  const std::string kind = json::value_to<std::string>(fx.at("kind"));
  const json::object& tol_doc = fx.at("tolerance").as_object();
  const tolerance tol{as_double(tol_doc.at("abs")), as_double(tol_doc.at("rel"))};
  const json::object got = kind == "route"   ? switchyard::cli::route_document(fx.at("input"))
                           : kind == "layer" ? switchyard::cli::layer_document(fx.at("input"))
                                             : throw std::runtime_error("unknown kind " + kind);
  std::vector<std::string> diffs;
  const json::object& expected = fx.at("expected").as_object();
  if (expected.empty()) diffs.push_back("no expected values");
  for (const auto& kv : expected) {
    const std::string key(kv.key());
    if (!got.contains(key)) {
      diffs.push_back(key + ": missing from the output");
      continue;
    }
    compare(got.at(key), kv.value(), tol, key, diffs);
  }
  return diffs;
}

json::value read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in, "cannot open " << p);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

/// Checks every fixture of one set against its manifest (which lists the files and the versions
/// that generated them, so a lost file is an error, not a silently smaller test).
/// The fixtures' root: data/ of this directory, or $SY_CONFORMANCE_DATA (e.g. a larger random set
/// written by `generate.py --sets random --random N --out DIR`).
fs::path data_root() {
  const char* env = std::getenv("SY_CONFORMANCE_DATA");
  return env && *env ? fs::path(env) : fs::path(SY_CONFORMANCE_DATA);
}

void check_set(const std::string& name) {
  worst_ratio = 0.0;
  const fs::path dir = data_root() / name;
  const json::object manifest = read_json(dir / "manifest.json").as_object();
  const json::array& files = manifest.at("fixtures").as_array();
  BOOST_REQUIRE(!files.empty());
  std::map<std::string, int> per_kind;
  for (const auto& f : files) {
    const std::string file = json::value_to<std::string>(f);
    BOOST_TEST_CONTEXT(name << "/" << file) {
      const json::object fx = read_json(dir / file).as_object();
      ++per_kind[json::value_to<std::string>(fx.at("kind"))];
      const json::object& cfg = fx.at("input").at("config").as_object();
      ++per_kind[cfg.contains("semantics") ? json::value_to<std::string>(cfg.at("semantics"))
                                           : std::string("megatron")];
      std::vector<std::string> diffs;
      try {
        diffs = check_fixture(fx);
      } catch (const std::exception& e) {
        diffs.push_back(std::string("threw: ") + e.what());
      }
      std::string all;
      for (const auto& d : diffs) all += "\n  " + d;
      BOOST_TEST(diffs.empty(), json::value_to<std::string>(fx.at("source")) << all);
    }
  }
  BOOST_TEST_MESSAGE(name << ": " << per_kind["route"] << " route and " << per_kind["layer"]
                          << " layer fixtures (" << per_kind["megatron"] << " Megatron-Core, "
                          << per_kind["deepspeed"] << " DeepSpeed); largest difference "
                          << worst_ratio << " of the tolerance");
  // Both kinds and both peers are present in every set.
  BOOST_TEST(per_kind["route"] > 0);
  BOOST_TEST(per_kind["layer"] > 0);
  BOOST_TEST(per_kind["megatron"] > 0);
  BOOST_TEST(per_kind["deepspeed"] > 0);
}

}  // namespace

BOOST_AUTO_TEST_CASE(fixtures_set1) {
  check_set("set1");
}
BOOST_AUTO_TEST_CASE(fixtures_set2) {
  check_set("set2");
}
// Random configurations (generate.py --random): sizes, k, score function, pre-softmax, groups,
// bias, scaling, every balancing type, z-loss, capacity and padding in combinations the two sets
// above do not list, for both peers.
BOOST_AUTO_TEST_CASE(fixtures_random) {
  check_set("random");
}

// Process groups (`switchyard plan`'s "groups"): the same sets of ranks as Megatron-Core's
// RankGenerator builds for tp x ep x dp x pp (data/layouts.json, generate.py layout_fixtures).
BOOST_AUTO_TEST_CASE(layouts_match_megatron_and_deepspeed_groups) {
  const json::object doc = read_json(data_root() / "layouts.json").as_object();
  const json::array& cases = doc.at("layouts").as_array();
  BOOST_REQUIRE(cases.size() >= 50);
  const std::map<std::string, switchyard::GroupKind> kinds = {
      {"tensor_parallel", switchyard::GroupKind::tensor_parallel},
      {"pipeline_parallel", switchyard::GroupKind::pipeline_parallel},
      {"dense_data_parallel", switchyard::GroupKind::dense_data_parallel},
      {"expert_parallel", switchyard::GroupKind::expert_parallel},
      {"expert_data_parallel", switchyard::GroupKind::expert_data_parallel}};
  using groups_t = std::vector<std::vector<std::int64_t>>;
  auto sorted = [](groups_t g) {
    for (auto& members : g) std::sort(members.begin(), members.end());
    std::sort(g.begin(), g.end());
    return g;
  };
  int compared = 0;
  for (const auto& c : cases) {
    const json::object& o = c.as_object();
    const auto size = [&](const char* key) { return o.at(key).to_number<std::int64_t>(); };
    const switchyard::Layout layout(size("data_parallel_size"), size("expert_parallel_size"),
                                    size("tensor_parallel_size"), size("pipeline_parallel_size"));
    // Megatron-Core's five kinds of group, and DeepSpeed's expert-parallel and
    // expert-data-parallel groups of the same world.
    const json::object& groups = o.at("groups").as_object();
    const json::object& deepspeed = o.at("deepspeed_groups").as_object();
    BOOST_REQUIRE_EQUAL(groups.size(), kinds.size());
    BOOST_REQUIRE_EQUAL(deepspeed.size(), 2u);
    using peer_groups = std::pair<const char*, const json::object*>;
    for (const auto& [source, peer] : {peer_groups{"megatron", &groups}, {"deepspeed", &deepspeed}})
      for (const auto& [key, kind] : kinds) {
        if (!peer->contains(key)) continue;
        BOOST_TEST_CONTEXT(source << ": dp " << layout.dp() << " ep " << layout.ep() << " tp "
                                  << layout.tp() << " pp " << layout.pp() << ": " << key) {
          const auto expected = sorted(json::value_to<groups_t>(peer->at(key)));
          BOOST_TEST((sorted(layout.groups(kind)) == expected));
          ++compared;
        }
      }
  }
  BOOST_TEST_MESSAGE("layouts: " << cases.size() << " layouts, " << compared << " groups compared");
  BOOST_TEST(compared == static_cast<int>(cases.size()) * 7);
}

// The comparison itself catches a disagreement: a perturbed expected value, a changed count and
// a missing key each fail.
BOOST_AUTO_TEST_CASE(comparison_detects_differences) {
  const fs::path dir = data_root() / "set1";
  const json::object manifest = read_json(dir / "manifest.json").as_object();
  const std::string first = json::value_to<std::string>(manifest.at("fixtures").as_array().at(0));
  json::object fx = read_json(dir / first).as_object();
  BOOST_TEST(check_fixture(fx).empty());

  json::object moved = fx;
  json::object& exp = moved["expected"].as_object();
  BOOST_REQUIRE(exp.contains("probs") || exp.contains("y"));
  json::value& m = exp.contains("probs") ? exp["probs"] : exp["y"];
  json::value& v = m.as_array()[0].as_array()[0];
  v = as_double(v) + 1e-8;
  BOOST_TEST(!check_fixture(moved).empty());

  json::object counted = fx;
  counted["expected"].as_object()["dropped"] = 12345;
  BOOST_TEST(!check_fixture(counted).empty());

  json::object missing = fx;
  missing["expected"].as_object()["no_such_key"] = 1.0;
  BOOST_TEST(!check_fixture(missing).empty());
}
