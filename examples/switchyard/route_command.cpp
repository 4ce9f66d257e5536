// `switchyard route INPUT.json`: routes the tokens of INPUT with the router its config describes
// (host backend, double precision) and prints one JSON object (docs/cli.md, "route").
#include <fmt/core.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "switchyard/config/json.hpp"
#include "switchyard/routing.hpp"

namespace switchyard::cli {
namespace {

namespace json = boost::json;

/// A matrix read from JSON: rows × cols doubles, row-major.
struct dense {
  index_t rows = 0, cols = 0;
  std::vector<double> data;
};

double read_number(const json::value& v, const std::string& where) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  throw config_error(fmt::format("{} is {}, expected a number", where, detail::kind_of(v)));
}

/// Reads key as an array of rows of `cols` numbers (cols < 0: any width, the same for all rows).
dense read_matrix(const json::object& doc, const char* key, index_t cols, const char* width_name) {
  const json::value* v = doc.if_contains(key);
  if (!v || !v->is_array() || v->get_array().empty())
    throw config_error(fmt::format("{}: expected a non-empty array of rows (one per {})", key,
                                   std::string(key) == "router_weight" ? "expert" : "token"));
  dense m;
  const json::array& rows = v->get_array();
  m.rows = static_cast<index_t>(rows.size());
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array())
      throw config_error(fmt::format("{} row {} is {}, expected an array of numbers", key, r,
                                     detail::kind_of(rows[r])));
    const json::array& row = rows[r].get_array();
    const auto width = static_cast<index_t>(row.size());
    if (cols < 0) cols = width;
    if (width != cols || width == 0)
      throw config_error(fmt::format("{} row {} has {} numbers, expected {} ({})", key, r, width,
                                     cols, width_name));
    for (std::size_t c = 0; c < row.size(); ++c)
      m.data.push_back(read_number(row[c], fmt::format("{}[{}][{}]", key, r, c)));
  }
  m.cols = cols;
  return m;
}

json::array to_rows(const double* p, index_t rows, index_t cols) {
  json::array a;
  for (index_t r = 0; r < rows; ++r) {
    json::array row;
    for (index_t c = 0; c < cols; ++c) row.push_back(p[r * cols + c]);
    a.push_back(std::move(row));
  }
  return a;
}

json::value optional_number(const std::optional<double>& v) {
  return v ? json::value(*v) : json::value(nullptr);
}

// Boost.JSON prints doubles as 7.310585786300049E-1; fmt's shortest round-trip form
// (0.7310585786300049) reads better and parses back to the same double.
void write_json(const json::value& v, std::string& s) {
  switch (v.kind()) {
    case json::kind::double_: s += fmt::format("{}", v.get_double()); return;
    case json::kind::array: {
      s += '[';
      bool first = true;
      for (const auto& e : v.get_array()) {
        if (!first) s += ',';
        first = false;
        write_json(e, s);
      }
      s += ']';
      return;
    }
    case json::kind::object: {
      s += '{';
      bool first = true;
      for (const auto& kv : v.get_object()) {
        if (!first) s += ',';
        first = false;
        s += json::serialize(json::value(kv.key()));
        s += ':';
        write_json(kv.value(), s);
      }
      s += '}';
      return;
    }
    default: s += json::serialize(v); return;
  }
}

constexpr const char* known_keys[] = {"config", "logits",   "x",     "router_weight",
                                      "router_bias", "dprobs", "seed", "step", "training"};

int run_route(const std::string& file) {
  std::vector<problem> syntax;
  const json::value doc = parse_json_text(read_text_file(file), syntax, file);
  if (!syntax.empty()) throw config_error(join_problems(syntax));
  if (!doc.is_object()) throw config_error(file + ": the input must be a JSON object");
  const json::object& in = doc.get_object();
  for (const auto& kv : in) {
    bool known = false;
    for (const char* k : known_keys) known = known || kv.key() == k;
    if (!known)
      throw config_error(fmt::format("{}: unknown key; expected config, logits or x with "
                                     "router_weight, and optionally router_bias, dprobs, seed, "
                                     "step, training",
                                     std::string_view(kv.key())));
  }
  const json::value* cfg_doc = in.if_contains("config");
  if (!cfg_doc) throw config_error("config: missing (an object of config fields)");
  ParsedConfig parsed = parse_config(*cfg_doc);
  for (auto& p : validate(parsed.config, &parsed.paths)) parsed.problems.push_back(std::move(p));
  if (!parsed.problems.empty()) throw config_error(join_problems(parsed.problems));
  const Config& c = parsed.config;
  const index_t E = c.num_experts;

  bool training = true;
  if (const json::value* t = in.if_contains("training")) {
    if (!t->is_bool()) throw config_error("training: expected true or false, got " +
                                          detail::kind_of(*t));
    training = t->get_bool();
  }
  const bool from_x = in.contains("x");
  if (from_x == in.contains("logits"))
    throw config_error("give either logits [T][E] or x [T][H] with router_weight [E][H]");
  dense x, w, z;
  std::vector<double> bias;
  if (from_x) {
    x = read_matrix(in, "x", -1, "hidden size of the first row");
    w = read_matrix(in, "router_weight", x.cols, "hidden size of x");
    if (w.rows != E)
      throw config_error(fmt::format("router_weight has {} rows, expected {} (num_experts)",
                                     w.rows, E));
    if (const json::value* b = in.if_contains("router_bias")) {
      if (!b->is_array() || static_cast<index_t>(b->get_array().size()) != E)
        throw config_error(fmt::format("router_bias: expected an array of {} numbers", E));
      for (std::size_t e = 0; e < b->get_array().size(); ++e)
        bias.push_back(read_number(b->get_array()[e], fmt::format("router_bias[{}]", e)));
    }
    if (c.input_jitter_eps && training) {
      JitterParams j;
      j.eps = *c.input_jitter_eps;
      if (const json::value* s = in.if_contains("seed"))
        j.seed = static_cast<std::uint64_t>(read_number(*s, "seed"));
      if (const json::value* s = in.if_contains("step"))
        j.step = static_cast<std::uint32_t>(read_number(*s, "step"));
      apply_input_jitter(exec::Host{}, matrix_view<double>(x.data.data(), x.rows, x.cols), j);
    }
    z.rows = x.rows;
    z.cols = E;
    z.data.resize(static_cast<std::size_t>(z.rows * E));
    router_linear_forward(exec::Host{}, matrix_view<const double>(x.data.data(), x.rows, x.cols),
                          matrix_view<const double>(w.data.data(), E, x.cols),
                          vector_view<const double>(bias.empty() ? nullptr : bias.data(), E),
                          matrix_view<double>(z.data.data(), z.rows, E));
  } else {
    if (in.contains("router_weight") || in.contains("router_bias"))
      throw config_error("router_weight and router_bias go with x, not with logits");
    if (c.input_jitter_eps && training)
      throw config_error("input_jitter_eps multiplies x: give x and router_weight, not logits");
    z = read_matrix(in, "logits", E, "num_experts");
  }
  const index_t T = z.rows;
  const int k = static_cast<int>(c.num_experts_per_token);
  std::optional<dense> dprobs;
  if (in.contains("dprobs")) {
    dprobs = read_matrix(in, "dprobs", k, "num_experts_per_token");
    if (dprobs->rows != T)
      throw config_error(fmt::format("dprobs has {} rows, expected {} (one per token)",
                                     dprobs->rows, T));
  }

  GlobalAuxLoss global;
  RouteContext ctx;
  ctx.training = training;
  ctx.global_aux = &global;
  json::object out = with_router(c, [&](const auto& router) {
    const auto r = router.forward(exec::Host{}, matrix_view<const double>(z.data.data(), T, E),
                                  ctx);
    json::object o;
    json::array idx;
    for (index_t t = 0; t < T; ++t) {
      json::array row;
      for (int j = 0; j < k; ++j) row.push_back(r.topk_indices[t * k + j]);
      idx.push_back(std::move(row));
    }
    o["topk_indices"] = std::move(idx);
    o["topk_probs"] = to_rows(r.topk_probs.data(), T, k);
    const auto d = r.dense_probs();
    o["probs"] = to_rows(d.data(), T, E);
    json::array counts;
    for (auto n : r.tokens_per_expert) counts.push_back(n);
    o["tokens_per_expert"] = std::move(counts);
    // Dropless until the dispatcher lands in route: every route is kept.
    o["capacity"] = nullptr;
    o["dropped"] = 0;
    o["aux_loss"] = optional_number(r.aux_loss);
    o["z_loss"] = optional_number(r.z_loss);
    if (c.load_balancing_type == LoadBalancingType::sinkhorn)
      o["sinkhorn_iterations"] = r.sinkhorn_iterations;
    if (from_x) o["logits"] = to_rows(r.logits.data(), T, E);
    if (dprobs) {
      std::vector<double> dz(static_cast<std::size_t>(T * E));
      router.backward(exec::Host{}, r, matrix_view<const double>(dprobs->data.data(), T, k),
                      matrix_view<double>(dz.data(), T, E));
      o["dlogits"] = to_rows(dz.data(), T, E);
      if (from_x) {
        std::vector<double> dx(static_cast<std::size_t>(T * x.cols)),
            dw(static_cast<std::size_t>(E * x.cols)), db(static_cast<std::size_t>(E));
        router_linear_backward(exec::Host{}, matrix_view<const double>(x.data.data(), T, x.cols),
                               matrix_view<const double>(w.data.data(), E, x.cols),
                               matrix_view<const double>(dz.data(), T, E),
                               matrix_view<double>(dx.data(), T, x.cols),
                               matrix_view<double>(dw.data(), E, x.cols),
                               vector_view<double>(db.data(), E));
        o["dx"] = to_rows(dx.data(), T, x.cols);
        o["drouter_weight"] = to_rows(dw.data(), E, x.cols);
        if (!bias.empty()) o["drouter_bias"] = to_rows(db.data(), 1, E)[0];
      }
    }
    return o;
  });
  std::string text;
  write_json(out, text);
  fmt::print("{}\n", text);
  return 0;
}

}  // namespace

void add_route_command(CLI::App& app, runner& run) {
  auto file = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "route", "Route tokens with the router of a config and print indices, weights and losses");
  cmd->add_option("input", *file,
                  "JSON {\"config\": {...}, \"logits\": [[...]]} or x + router_weight")
      ->required();
  cmd->callback([file, &run] { run = [file] { return run_route(*file); }; });
}

}  // namespace switchyard::cli
