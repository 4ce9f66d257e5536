#pragma once
// The input documents of `switchyard route` and `switchyard layer` (docs/cli.md): parsing with
// messages that name the key, row and column, the computation, and the output object. The CLI
// commands and the fuzz harness (tests/fuzz/documents_fuzz.cpp) call the same functions.

#include <boost/json.hpp>
#include <fmt/core.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/config/json.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/dispatch/renormalize.hpp"
#include "switchyard/layer.hpp"
#include "switchyard/routing.hpp"

namespace switchyard::cli {

namespace json = boost::json;

/// A dense row-major array read from JSON.
struct dense {
  index_t rows = 0, cols = 0, depth = 1;  ///< [rows][cols] or [rows][cols][depth]
  bool three_d = false;                    ///< read as [rows][cols][depth] (read_tensor3)
  std::vector<double> data;
};

// Infinite values (1e999) pass: the router's own check names the first token whose logits are
// not finite, as it does for any caller.
inline double read_number(const json::value& v, const std::string& where) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  throw config_error(fmt::format("{} is {}, expected a number", where, detail::kind_of(v)));
}

/// `m` (read as `key`) when every value is finite. For the inputs that reach the results without
/// the router's check of its logits (expert weights and biases, dy, grad_probs): an infinite
/// value there would give results JSON cannot hold.
inline dense finite_input(dense m, std::string_view key) {
  for (std::size_t i = 0; i < m.data.size(); ++i) {
    if (std::isfinite(m.data[i])) continue;
    const auto n = static_cast<index_t>(i);
    const std::string at = !m.three_d ? fmt::format("[{}][{}]", n / m.cols, n % m.cols)
                                        : fmt::format("[{}][{}][{}]", n / (m.cols * m.depth),
                                                      n / m.depth % m.cols, n % m.depth);
    throw config_error(fmt::format("{}{} is {}, expected a finite number", key, at, m.data[i]));
  }
  return m;
}

/// Reads doc[key] as `rows` rows (rows < 0: any, at least one) of `cols` numbers (cols < 0: the
/// width of the first row, the same for all). `what` names the expected width in messages.
inline dense read_matrix(const json::object& doc, const char* key, index_t rows, index_t cols,
                         const char* what, bool allow_empty = false) {
  const json::value* v = doc.if_contains(key);
  if (!v) throw config_error(fmt::format("{}: missing", key));
  if (!v->is_array())
    throw config_error(fmt::format("{}: expected an array of rows, got {}", key, detail::kind_of(*v)));
  const json::array& a = v->get_array();
  if (a.empty() && !(allow_empty && rows <= 0))
    throw config_error(fmt::format("{}: expected a non-empty array of rows", key));
  if (rows >= 0 && static_cast<index_t>(a.size()) != rows)
    throw config_error(fmt::format("{}: has {} rows, expected {}", key, a.size(), rows));
  dense m;
  m.rows = static_cast<index_t>(a.size());
  for (std::size_t r = 0; r < a.size(); ++r) {
    if (!a[r].is_array())
      throw config_error(fmt::format("{} row {} is {}, expected an array of numbers", key, r,
                                     detail::kind_of(a[r])));
    const json::array& row = a[r].get_array();
    const auto width = static_cast<index_t>(row.size());
    if (cols < 0) cols = width;
    if (width == 0)
      throw config_error(fmt::format("{} row {} is empty, expected {} ({})", key, r,
                                     cols > 0 ? fmt::format("{} numbers", cols) : "numbers", what));
    if (width != cols)
      throw config_error(fmt::format("{} row {} has {} numbers, expected {} ({})", key, r, width,
                                     cols, what));
    for (std::size_t c = 0; c < row.size(); ++c)
      m.data.push_back(read_number(row[c], fmt::format("{}[{}][{}]", key, r, c)));
  }
  m.cols = cols < 0 ? 0 : cols;
  return m;
}

/// Reads doc[key] as [n0][n1][n2] numbers.
inline dense read_tensor3(const json::object& doc, const char* key, index_t n0, index_t n1,
                          index_t n2, const char* shape) {
  const json::value* v = doc.if_contains(key);
  if (!v) throw config_error(fmt::format("{}: missing (expected {})", key, shape));
  if (!v->is_array() || static_cast<index_t>(v->get_array().size()) != n0)
    throw config_error(fmt::format("{}: expected {} = {} matrices", key, shape, n0));
  dense t;
  t.rows = n0;
  t.cols = n1;
  t.depth = n2;
  t.three_d = true;
  for (index_t i = 0; i < n0; ++i) {
    json::object one;
    one["m"] = v->get_array()[static_cast<std::size_t>(i)];
    const std::string name = fmt::format("{}[{}]", key, i);
    try {
      const dense m = read_matrix(one, "m", n1, n2, shape);
      t.data.insert(t.data.end(), m.data.begin(), m.data.end());
    } catch (const config_error& e) {
      std::string msg = e.what();
      if (msg.rfind("m", 0) == 0) msg = name + msg.substr(1);
      throw config_error(msg);
    }
  }
  return t;
}

inline json::array to_rows(const double* p, index_t rows, index_t cols) {
  json::array a;
  for (index_t r = 0; r < rows; ++r) {
    json::array row;
    for (index_t c = 0; c < cols; ++c) row.push_back(p[r * cols + c]);
    a.push_back(std::move(row));
  }
  return a;
}
inline json::array to_tensor3(const double* p, index_t n0, index_t n1, index_t n2) {
  json::array a;
  for (index_t i = 0; i < n0; ++i) a.push_back(to_rows(p + i * n1 * n2, n1, n2));
  return a;
}
inline json::array to_array(const std::vector<std::int64_t>& v) {
  json::array a;
  for (auto x : v) a.push_back(x);
  return a;
}
inline json::value optional_number(const std::optional<double>& v) {
  return v ? json::value(*v) : json::value(nullptr);
}

/// Prints doubles in the shortest form that parses back to the same value (Boost.JSON would
/// write 7.310585786300049E-1).
inline void write_json(const json::value& v, std::string& s) {
  switch (v.kind()) {
    case json::kind::double_:
      // JSON has no infinity or NaN: an overflow in the results is an error, not a document.
      if (!std::isfinite(v.get_double()))
        throw numeric_error(fmt::format(
            "a result is {} (an overflow in double, or inf - inf after one): JSON has no "
            "document for it",
            v.get_double()));
      s += fmt::format("{}", v.get_double());
      return;
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

namespace detail {

inline const json::object& document_object(const json::value& doc,
                                           std::initializer_list<const char*> known,
                                           const char* command) {
  if (!doc.is_object())
    throw config_error(fmt::format("the {} input must be a JSON object, got {}", command,
                                   switchyard::detail::kind_of(doc)));
  const json::object& in = doc.get_object();
  for (const auto& kv : in) {
    bool ok = false;
    for (const char* k : known) ok = ok || kv.key() == k;
    if (!ok) {
      std::string list;
      for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      throw config_error(fmt::format("{}: unknown key of the {} input (known: {})",
                                     std::string_view(kv.key()), command, list));
    }
  }
  return in;
}

inline Config document_config(const json::object& in) {
  const json::value* cfg_doc = in.if_contains("config");
  if (!cfg_doc) throw config_error("config: missing (an object of config fields)");
  ParsedConfig parsed = parse_config(*cfg_doc);
  for (auto& p : validate(parsed.config, &parsed.paths)) parsed.problems.push_back(std::move(p));
  if (!parsed.problems.empty()) {
    for (auto& p : parsed.problems) p.message = "config." + p.message;
    throw config_error(join_problems(parsed.problems));
  }
  return parsed.config;
}

/// A whole number from 0 to `max` (5.0 counts as 5, as in configs); the error echoes a number
/// it refuses ("seed: ..., got -1").
inline std::uint64_t read_count(const json::object& in, const char* key, std::uint64_t def,
                                std::uint64_t max = UINT64_MAX) {
  const json::value* v = in.if_contains(key);
  if (!v) return def;
  std::uint64_t out = 0;
  if (std::string got = switchyard::detail::read_whole(*v, out, std::uint64_t{0}, max);
      !got.empty())
    throw config_error(
        fmt::format("{}: expected a whole number from 0 to {}, got {}", key, max, got));
  return out;
}

inline bool read_flag(const json::object& in, const char* key, bool def) {
  const json::value* v = in.if_contains(key);
  if (!v) return def;
  if (!v->is_bool())
    throw config_error(fmt::format("{}: expected true or false, got {}", key,
                                   switchyard::detail::kind_of(*v)));
  return v->get_bool();
}

}  // namespace detail

/// `switchyard route`: routes, drops per the config's dispatch, and with "grad_probs" the
/// gradient of Σ grad_probs·probs + aux_loss + z_loss (docs/cli.md).
inline json::object route_document(const json::value& doc) {
  const json::object& in = detail::document_object(
      doc, {"config", "logits", "x", "router_weight", "router_bias", "grad_probs", "seed", "step",
            "training"},
      "route");
  const Config c = detail::document_config(in);
  const index_t E = c.num_experts;
  const int k = static_cast<int>(c.num_experts_per_token);
  const bool training = detail::read_flag(in, "training", true);
  const bool from_x = in.contains("x");
  if (from_x == in.contains("logits"))
    throw config_error("give either logits [T][E] or x [T][H] with router_weight [E][H]");
  dense x, w, z;
  std::vector<double> bias;
  if (from_x) {
    x = read_matrix(in, "x", -1, -1, "the hidden size of the first row");
    w = read_matrix(in, "router_weight", E, x.cols, "the hidden size of x");
    if (const json::value* b = in.if_contains("router_bias")) {
      if (!b->is_array() || static_cast<index_t>(b->get_array().size()) != E)
        throw config_error(fmt::format("router_bias: expected an array of {} numbers", E));
      for (std::size_t e = 0; e < b->get_array().size(); ++e)
        bias.push_back(read_number(b->get_array()[e], fmt::format("router_bias[{}]", e)));
    }
    if (c.input_jitter_eps && training) {
      JitterParams j;
      j.eps = *c.input_jitter_eps;
      j.seed = detail::read_count(in, "seed", 0);
      j.step = static_cast<std::uint32_t>(detail::read_count(in, "step", 0, UINT32_MAX));
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
    z = read_matrix(in, "logits", -1, E, "num_experts");
  }
  const index_t T = z.rows;
  std::optional<dense> grad_probs;
  if (in.contains("grad_probs"))
    grad_probs = finite_input(read_matrix(in, "grad_probs", T, E, "num_experts"), "grad_probs");

  GlobalAuxLoss global;
  RouteContext ctx;
  ctx.training = training;
  ctx.global_aux = &global;
  return with_router(c, [&](const auto& router) {
    const auto r = router.forward(exec::Host{}, matrix_view<const double>(z.data.data(), T, E), ctx);
    const DispatchPlan plan = build_plan(exec::Host{}, dispatch_options(c, T), r.indices(), r.probs());
    json::object o;
    json::array idx;
    for (index_t t = 0; t < T; ++t) {
      json::array row;
      for (int j = 0; j < k; ++j) row.push_back(r.topk_indices[t * k + j]);
      idx.push_back(std::move(row));
    }
    o["topk_indices"] = std::move(idx);
    o["topk_probs"] = to_rows(r.topk_probs.data(), T, k);
    // Dense combine weights after dropping (renormalised over the kept routes under DeepSpeed
    // semantics): 0 where a token is not routed or its route was dropped.
    std::vector<double> weights(static_cast<std::size_t>(T * k));
    combine_weights(exec::Host{}, plan, r.probs(), matrix_view<double>(weights.data(), T, k));
    std::vector<double> probs(static_cast<std::size_t>(T * E), 0.0);
    for (index_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j)
        probs[static_cast<std::size_t>(t * E + r.topk_indices[t * k + j])] = weights[t * k + j];
    o["probs"] = to_rows(probs.data(), T, E);
    // Tokens each expert processes: its kept routes, or C rows each with pad_to_capacity.
    std::vector<std::int64_t> per_expert = plan.kept_per_expert;
    if (plan.padded)
      for (auto& n : per_expert) n = std::min<std::int64_t>(*plan.capacity, T);
    o["tokens_per_expert"] = to_array(per_expert);
    o["capacity"] = plan.capacity ? json::value(*plan.capacity) : json::value(nullptr);
    o["dropped"] = plan.dropped;
    o["aux_loss"] = optional_number(r.aux_loss);
    o["z_loss"] = optional_number(r.z_loss);
    if (c.load_balancing_type == LoadBalancingType::sinkhorn)
      o["sinkhorn_iterations"] = r.sinkhorn_iterations;
    if (from_x) o["logits"] = to_rows(r.logits.data(), T, E);
    o["routed_per_expert"] = to_array(plan.routed_per_expert);
    if (grad_probs) {
      // d/d(selected weight) of Σ grad_probs·probs: the dense upstream gradient at each route,
      // through the combine weights (dropped routes and the capacity mask are constants).
      std::vector<double> dweight(static_cast<std::size_t>(T * k)), dprob(dweight.size());
      for (index_t t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j)
          dweight[static_cast<std::size_t>(t * k + j)] =
              grad_probs->data[static_cast<std::size_t>(t * E + r.topk_indices[t * k + j])];
      combine_weights_backward(exec::Host{}, plan, r.probs(),
                               matrix_view<const double>(dweight.data(), T, k),
                               matrix_view<double>(dprob.data(), T, k));
      std::vector<double> dz(static_cast<std::size_t>(T * E));
      router.backward(exec::Host{}, r, matrix_view<const double>(dprob.data(), T, k),
                      matrix_view<double>(dz.data(), T, E));
      o["grad_logits"] = to_rows(dz.data(), T, E);
      if (from_x) {
        std::vector<double> dx(static_cast<std::size_t>(T * x.cols)),
            dw(static_cast<std::size_t>(E * x.cols)), db(static_cast<std::size_t>(E));
        router_linear_backward(exec::Host{}, matrix_view<const double>(x.data.data(), T, x.cols),
                               matrix_view<const double>(w.data.data(), E, x.cols),
                               matrix_view<const double>(dz.data(), T, E),
                               matrix_view<double>(dx.data(), T, x.cols),
                               matrix_view<double>(dw.data(), E, x.cols),
                               vector_view<double>(db.data(), E));
        o["grad_x"] = to_rows(dx.data(), T, x.cols);
        o["grad_router_weight"] = to_rows(dw.data(), E, x.cols);
        if (!bias.empty()) o["grad_router_bias"] = to_rows(db.data(), 1, E)[0];
      }
    }
    return o;
  });
}

/// `switchyard layer`: one MoE layer on one rank (host, double) through make_layer, the code a
/// framework calls; with "dy", the gradients of Σ dy·y + aux_loss + z_loss (docs/cli.md).
inline json::object layer_document(const json::value& doc) {
  const json::object& in =
      detail::document_object(doc,
                              {"config", "x", "router_weight", "fc1_weight", "fc2_weight",
                               "fc1_bias", "fc2_bias", "shared_fc1_weight", "shared_fc2_weight",
                               "shared_gate_weight", "dy", "seed", "step", "training"},
                              "layer");
  Config c = detail::document_config(in);
  if (c.world() != 1)
    throw config_error(fmt::format("config: the layer command runs one rank, the config "
                                   "describes {} (set the parallel sizes to 1)",
                                   c.world()));
  const index_t E = c.num_experts, H = c.hidden_size, F = c.ffn_hidden_size;
  const index_t F1 = c.gated ? 2 * F : F;
  const dense x = read_matrix(in, "x", -1, H, "hidden_size");
  const index_t T = x.rows;
  const dense wr = read_matrix(in, "router_weight", E, H, "hidden_size");
  const std::string fc1_shape = fmt::format("[{}][{}][{}]", E, F1, H);
  const std::string fc2_shape = fmt::format("[{}][{}][{}]", E, H, F);
  const dense fc1 =
      finite_input(read_tensor3(in, "fc1_weight", E, F1, H, fc1_shape.c_str()), "fc1_weight");
  const dense fc2 =
      finite_input(read_tensor3(in, "fc2_weight", E, H, F, fc2_shape.c_str()), "fc2_weight");
  // Both or neither of each pair, as the config says: an array the layer would not read is an
  // error, not ignored.
  const auto given = [&in](const char* a, const char* b, bool wanted) {
    return wanted ? in.contains(a) && in.contains(b) : !in.contains(a) && !in.contains(b);
  };
  if (!given("fc1_bias", "fc2_bias", c.add_bias_linear))
    throw config_error("fc1_bias and fc2_bias are given exactly when config.add_bias_linear is true");
  const index_t Fs = c.shared_expert_intermediate_size.value_or(0), Fs1 = c.gated ? 2 * Fs : Fs;
  if (!given("shared_fc1_weight", "shared_fc2_weight", Fs > 0))
    throw config_error(
        "shared_fc1_weight and shared_fc2_weight are given exactly when "
        "config.shared_expert_intermediate_size is set");
  if (c.shared_expert_gate != in.contains("shared_gate_weight"))
    throw config_error(
        "shared_gate_weight is given exactly when config.shared_expert_gate is true");
  std::optional<dense> dy;
  if (in.contains("dy")) dy = finite_input(read_matrix(in, "dy", T, H, "hidden_size"), "dy");

  LocalComm one;
  auto layer = make_layer<double>(c, MoEComms<LocalComm>{&one, &one, &one});
  MoEParams<double>& p = layer->params();
  p.router_weight = wr.data;
  p.fc1 = fc1.data;
  p.fc2 = fc2.data;
  if (c.add_bias_linear) {
    p.fc1_bias = finite_input(read_matrix(in, "fc1_bias", E, F1, "fc1 rows"), "fc1_bias").data;
    p.fc2_bias = finite_input(read_matrix(in, "fc2_bias", E, H, "hidden_size"), "fc2_bias").data;
  }
  if (Fs > 0) {
    p.shared_fc1 = finite_input(read_matrix(in, "shared_fc1_weight", Fs1, H, "hidden_size"),
                                "shared_fc1_weight")
                       .data;
    p.shared_fc2 =
        finite_input(read_matrix(in, "shared_fc2_weight", H, Fs, "shared_expert_intermediate_size"),
                     "shared_fc2_weight")
            .data;
  }
  if (c.shared_expert_gate)
    p.shared_gate = finite_input(read_matrix(in, "shared_gate_weight", 1, H, "hidden_size"),
                                 "shared_gate_weight")
                        .data;
  ForwardOptions fo;
  fo.training = detail::read_flag(in, "training", true);
  fo.seed = detail::read_count(in, "seed", 0);
  fo.step = static_cast<std::uint32_t>(detail::read_count(in, "step", 0, UINT32_MAX));
  GlobalAuxLoss global;
  fo.global_aux = &global;
  auto fwd = layer->forward(matrix_view<const double>(x.data.data(), T, H), fo);
  json::object o;
  o["y"] = to_rows(fwd.y.data(), T, H);
  o["tokens_per_expert"] = to_array(fwd.metrics.kept_per_expert);
  o["capacity"] = fwd.metrics.capacity ? json::value(*fwd.metrics.capacity) : json::value(nullptr);
  o["dropped"] = fwd.metrics.dropped;
  o["aux_loss"] = optional_number(fwd.metrics.aux_loss);
  o["z_loss"] = optional_number(fwd.metrics.z_loss);
  if (c.load_balancing_type == LoadBalancingType::sinkhorn)
    o["sinkhorn_iterations"] = fwd.metrics.sinkhorn_iterations;
  o["routed_per_expert"] = to_array(fwd.metrics.tokens_per_expert);
  if (dy) {
    auto g = layer->make_grads();
    const auto dx = layer->backward(fwd.saved, matrix_view<const double>(dy->data.data(), T, H), g);
    o["grad_x"] = to_rows(dx.data(), T, H);
    o["grad_router_weight"] = to_rows(g.router_weight.data(), E, H);
    o["grad_fc1_weight"] = to_tensor3(g.fc1.data(), E, F1, H);
    o["grad_fc2_weight"] = to_tensor3(g.fc2.data(), E, H, F);
    if (c.add_bias_linear) {
      o["grad_fc1_bias"] = to_rows(g.fc1_bias.data(), E, F1);
      o["grad_fc2_bias"] = to_rows(g.fc2_bias.data(), E, H);
    }
    if (Fs > 0) {
      o["grad_shared_fc1_weight"] = to_rows(g.shared_fc1.data(), Fs1, H);
      o["grad_shared_fc2_weight"] = to_rows(g.shared_fc2.data(), H, Fs);
    }
    if (c.shared_expert_gate) o["grad_shared_gate_weight"] = to_rows(g.shared_gate.data(), 1, H);
  }
  return o;
}

}  // namespace switchyard::cli
