#!/usr/bin/env python3
"""Writes the Megatron-Core conformance fixtures of tests/conformance/data/ (docs/conformance.md).

Every fixture is the exact input document of `switchyard route` or `switchyard layer`
(docs/cli.md) and the values Megatron-Core computes for it on the CPU in float64:

- route: Megatron-Core's own TopKRouter.routing() (router.py), run on an instance whose
  __init__ is bypassed (it needs CUDA and process groups) with a config namespace and process
  groups of size 1; it calls moe_utils' topk_routing_with_score_function, group_limited_topk,
  sinkhorn (through TopKRouter.sinkhorn_load_balancing), apply_router_token_dropping,
  compute_routing_scores_for_aux_loss, switch_load_balancing_loss_func (aux_loss, seq_aux_loss,
  global_aux_loss) and z_loss_func, and attaches the losses with MoEAuxLossAutoScaler exactly as
  in training. Gradients come from torch.autograd of sum(grad_probs * probs): the autoscalers add
  the aux and z-loss gradients (scale 1), as Megatron's backward does.
- layer: logits = x W_r^T, the same routing, moe_utils.permute / unpermute (probs applied in
  unpermute) around per-expert FFN / GLU experts written in torch (Megatron's fc1 chunk order:
  rows 0..F-1 through the activation times rows F..2F-1), forward and backward by autograd.

Run it in a venv with torch, megatron-core and deepspeed (see README.md); CI never runs it.
"""

import argparse
import atexit
import importlib.metadata as md
import json
import math
import os
import signal
import sys
import types
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402

from megatron.core.transformer.moe import moe_utils as mu  # noqa: E402
from megatron.core.transformer.moe import router as mrouter  # noqa: E402

torch.set_default_dtype(torch.float64)
DT = torch.float64

# Both sides compute in double, in different orders (see tests/conformance/conformance_test.cpp).
TOLERANCE = {"abs": 1e-10, "rel": 1e-10}


def versions():
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "megatron-core", "deepspeed"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# ---------------------------------------------------------------------------------------------
# Megatron's router, without its constructor
# ---------------------------------------------------------------------------------------------


def _one_rank_group():
    """torch.distributed on one process (gloo, a temporary file store): Megatron's reductions over
    a group of size 1 return their input unchanged."""
    import tempfile

    import torch.distributed as dist

    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(prefix="sy_conformance_", delete=False)
        store.close()
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        atexit.register(lambda: os.path.exists(store.name) and os.remove(store.name))
    return dist.group.WORLD


def balance_types(cfg):
    """load_balancing_type as a list: one name, or Megatron's list form (several aux losses, each
    with its coefficient at the same position of load_balance_loss_coeff)."""
    t = cfg["load_balancing_type"]
    return list(t) if isinstance(t, list) else [t]


def balance_coeffs(cfg):
    c = cfg["load_balance_loss_coeff"]
    return list(c) if isinstance(c, list) else [c]


def megatron_router(cfg):
    """A TopKRouter whose routing() is Megatron's code, configured from a flat Switchyard config.

    The mapping of Switchyard's fields onto Megatron's (docs/conformance.md):
    num_experts -> num_moe_experts, num_experts_per_token -> moe_router_topk,
    score_function -> moe_router_score_function, pre_softmax -> moe_router_pre_softmax,
    topk_scaling_factor -> moe_router_topk_scaling_factor, num_groups / group_topk ->
    moe_router_num_groups / moe_router_group_topk, expert_bias -> the expert_bias buffer,
    load_balancing_type -> moe_router_load_balancing_type, load_balance_loss_coeff ->
    moe_aux_loss_coeff, router_z_loss_coeff -> moe_z_loss_coeff, token_dispatch "capacity" with
    capacity_factor -> moe_expert_capacity_factor (None: dropless), drop_policy ->
    moe_token_drop_policy, pad_to_capacity -> moe_pad_expert_input_to_capacity.
    """
    r = mrouter.TopKRouter.__new__(mrouter.TopKRouter)
    torch.nn.Module.__init__(r)
    E = cfg["num_experts"]
    lbt = cfg["load_balancing_type"]
    capacity = cfg.get("token_dispatch") == "capacity"
    r.config = types.SimpleNamespace(
        num_moe_experts=E,
        moe_router_topk=cfg["num_experts_per_token"],
        moe_z_loss_coeff=cfg["router_z_loss_coeff"] or None,
        moe_router_pre_softmax=cfg.get("pre_softmax", False),
        moe_router_num_groups=cfg.get("num_groups"),
        moe_router_group_topk=cfg.get("group_topk"),
        moe_router_topk_scaling_factor=cfg.get("topk_scaling_factor"),
        moe_router_fusion=False,
        moe_expert_capacity_factor=cfg["capacity_factor"] if capacity else None,
        moe_token_drop_policy=cfg.get("drop_policy", "probs"),
        moe_pad_expert_input_to_capacity=cfg.get("pad_to_capacity", False),
        moe_aux_loss_coeff=cfg["load_balance_loss_coeff"],
        num_layers=1,
        mtp_num_layers=None,
    )
    r.num_experts = E
    r.topk = cfg["num_experts_per_token"]
    r.routing_type = lbt
    r.score_function = cfg.get("score_function", "softmax")
    r.input_jitter = None
    r.layer_number = 1
    r.calculate_per_token_loss = False
    r.tp_cp_group = _one_rank_group()
    r.tp_dp_cp_group = _one_rank_group()
    r.router_replay = None
    r.enable_expert_bias = bool(cfg.get("enable_expert_bias", False))
    # Megatron keeps the bias in float32 (_maintain_float32_expert_bias): the fixtures use values
    # that float32 holds exactly, so Switchyard's double bias is the same number.
    r.expert_bias = (
        torch.tensor(cfg["expert_bias"], dtype=torch.float32) if r.enable_expert_bias else None
    )
    r.local_tokens_per_expert = torch.zeros(E, dtype=torch.float32)
    if "global_aux_loss" in balance_types(cfg):
        # One micro-batch of a fresh global batch (the route and layer commands see one).
        r.global_tokens_per_expert = torch.zeros(E, dtype=torch.float32)
        r.ga_steps = torch.tensor(0, dtype=torch.float32)
    else:
        r.global_tokens_per_expert = None
        r.ga_steps = None
    r.training = True

    # Record the loss values Megatron attaches (it only logs them).
    r.recorded = {}
    attach = mrouter.TopKRouter.attach_and_log_load_balancing_loss

    def recording_attach(activation, coeff, aux_loss, name, *a, **kw):
        r.recorded[name] = float(aux_loss.detach())
        return attach(r, activation, coeff, aux_loss, name, *a, **kw)

    r.attach_and_log_load_balancing_loss = recording_attach
    return r


_z_loss_func = mrouter.z_loss_func
_z_record = {}


def _recording_z_loss(logits, coeff, padding_mask=None):
    z = _z_loss_func(logits, coeff, padding_mask=padding_mask)
    _z_record["z"] = float(z.detach())
    return z


mrouter.z_loss_func = _recording_z_loss


class float64_router_math:
    """Megatron computes the router's softmax and sigmoid in float32 even for float64 logits
    (torch.softmax(..., dtype=torch.float32).type_as(logits), torch.sigmoid(logits.float())), so
    its outputs carry float32 rounding (~1e-8). Inside this context those two casts keep float64
    tensors in float64, so the fixtures hold the same math at double precision and can be compared
    to 1e-10. Nothing else changes: Sinkhorn's selection still runs in float32
    (logits.to(dtype=torch.float32)) as in Megatron. generate.py checks every route fixture against
    the unmodified float32 path (same routing map, probs within 1e-6)."""

    def __enter__(self):
        self.softmax, self.float = torch.softmax, torch.Tensor.float
        softmax, to_float = self.softmax, self.float

        def softmax64(t, *a, dtype=None, **kw):
            if t.dtype == torch.float64 and dtype == torch.float32:
                dtype = None
            return softmax(t, *a, dtype=dtype, **kw)

        def float64(t, *a, **kw):
            return t if t.dtype == torch.float64 else to_float(t, *a, **kw)

        torch.softmax = softmax64
        torch.Tensor.float = float64
        return self

    def __exit__(self, *exc):
        torch.softmax = self.softmax
        torch.Tensor.float = self.float
        return False


def megatron_route(cfg, logits, seq_length, bsz, training=True):
    """Megatron's TopKRouter.routing on logits [T, E] laid out [seq, batch] (t = s*bsz + b).
    Returns probs, routing_map (after dropping), routing_map before dropping, aux, z."""
    r = megatron_router(cfg)
    r.training = training
    _z_record.clear()
    mu.clear_aux_losses_tracker()
    E = cfg["num_experts"]
    k = cfg["num_experts_per_token"]
    # routing() flattens [seq, batch, E]; the map before dropping is the same call without capacity.
    probs, routing_map = r.routing(logits.view(seq_length, bsz, E))
    with torch.no_grad():
        if r.routing_type == "sinkhorn":
            _, routed = r.sinkhorn_load_balancing(logits.detach())
        else:
            _, routed = mu.topk_routing_with_score_function(
                logits.detach(), k,
                use_pre_softmax=r.config.moe_router_pre_softmax,
                num_groups=r.config.moe_router_num_groups,
                group_topk=r.config.moe_router_group_topk,
                scaling_factor=r.config.moe_router_topk_scaling_factor,
                score_function=r.score_function,
                expert_bias=r.expert_bias)
    aux = None
    names = {"aux_loss": "load_balancing_loss", "seq_aux_loss": "seq_load_balancing_loss",
             "global_aux_loss": "global_load_balancing_loss"}
    if training:
        # Each aux loss Megatron attached (coefficient included), summed in its order.
        on = {t for t, c in zip(balance_types(cfg), balance_coeffs(cfg)) if t in names and c > 0}
        if on:
            aux = sum(r.recorded[names[t]] for t in names if t in on)
    z = _z_record.get("z") if training else None
    return probs, routing_map, routed, aux, z


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def rounded(t):
    return t.detach().tolist()


def base_config(E, k, S, B, **kw):
    c = {
        "num_experts": E,
        "num_experts_per_token": k,
        "score_function": "softmax",
        "pre_softmax": False,
        "load_balancing_type": "aux_loss",
        "load_balance_loss_coeff": 0.01,
        "router_z_loss_coeff": 0.001,
        "token_dispatch": "dropless",
        "capacity_factor": 1.25,
        "token_layout": "seq_batch",
        "sequence_length": S,
        "batch_size_per_gpu": B,
    }
    c.update(kw)
    return c


def route_expected(cfg, probs, final_map, routed, aux, z, T):
    k = cfg["num_experts_per_token"]
    E = cfg["num_experts"]
    exp = {"probs": rounded(probs)}
    kept = routed & final_map  # routes that survive (final_map is the padded map with padding)
    if cfg.get("token_dispatch") == "capacity":
        C = mu.get_capacity(num_tokens=T * k, num_experts=E, capacity_factor=cfg["capacity_factor"])
        exp["capacity"] = C
        exp["tokens_per_expert"] = [int(v) for v in final_map.sum(0)]
    else:
        exp["capacity"] = None
        exp["tokens_per_expert"] = [int(v) for v in final_map.sum(0)]
    exp["dropped"] = int(T * k - kept.sum())
    exp["routed_per_expert"] = [int(v) for v in routed.sum(0)]
    exp["aux_loss"] = aux
    exp["z_loss"] = z
    return exp


def check_sinkhorn_margin(cfg, logits):
    """Megatron selects by Sinkhorn in float32, Switchyard in double: keep only inputs whose
    selection is the same in both and not decided by a near tie."""
    k = cfg["num_experts_per_token"]
    p32 = mu.sinkhorn(logits.detach().to(torch.float32)).to(DT)
    p64 = mu.sinkhorn(logits.detach())
    top32 = torch.topk(p32, k + 1, dim=1)
    top64 = torch.topk(p64, k + 1, dim=1)
    if not torch.equal(torch.sort(top32.indices[:, :k]).values, torch.sort(top64.indices[:, :k]).values):
        return False
    gap = (top64.values[:, k - 1] - top64.values[:, k]) / top64.values[:, k - 1]
    return bool(gap.min() > 1e-3)


def route_fixture(name, cfg, gen, T, S, B, H=None, training=True, source=""):
    E = cfg["num_experts"]
    assert S * B == T
    while True:
        if H:
            x = torch.randn(T, H, generator=gen)
            w = torch.randn(E, H, generator=gen) * (1.0 / math.sqrt(H)) * 1.5
            logits_in = None
        else:
            logits_in = torch.randn(T, E, generator=gen) * 1.5
        gp = torch.randn(T, E, generator=gen)
        probe = logits_in if logits_in is not None else x @ w.T
        if cfg["load_balancing_type"] == "sinkhorn" and training and not check_sinkhorn_margin(cfg, probe):
            continue
        break
    if H:
        x.requires_grad_(True)
        w.requires_grad_(True)
        logits = Fn.linear(x, w)  # Megatron's router_gating_linear in float64 (TE-free path)
    else:
        logits = logits_in.clone().requires_grad_(True)
    p32, map32, _, aux32, _ = megatron_route(cfg, logits.detach().clone().requires_grad_(True), S, B,
                                             training=training)
    with float64_router_math():
        probs, final_map, routed, aux, z = megatron_route(cfg, logits, S, B, training=training)
    # Megatron's own float32 router math gives the same routes and the same values to float32
    # rounding: the float64 lift changes nothing else.
    assert torch.equal(map32, final_map), name
    assert (p32 - probs).abs().max() < 1e-6, name
    assert aux is None or abs(aux32 - aux) < 1e-6 * max(1.0, abs(aux)), name
    doc = {"config": cfg}
    if H:
        doc["x"] = rounded(x)
        doc["router_weight"] = rounded(w)
    else:
        doc["logits"] = rounded(logits)
    if not training:
        doc["training"] = False
    exp = route_expected(cfg, probs, final_map, routed, aux, z, T)
    if training:
        doc["grad_probs"] = rounded(gp)
        (probs * gp).sum().backward()
        if H:
            exp["logits"] = rounded(logits)
            exp["grad_x"] = rounded(x.grad)
            exp["grad_router_weight"] = rounded(w.grad)
        else:
            exp["grad_logits"] = rounded(logits.grad)
    else:
        # Megatron computes no losses outside training; Switchyard's values there are its own.
        exp.pop("aux_loss")
        exp.pop("z_loss")
    return {"kind": "route", "name": name, "input": doc, "expected": exp,
            "tolerance": TOLERANCE, "source": source}


ACT = {
    "gelu": lambda v: Fn.gelu(v),
    "gelu_tanh": lambda v: Fn.gelu(v, approximate="tanh"),
    "relu": Fn.relu,
    "silu": Fn.silu,
}


def expert_weights(gen, x, wr, F1, F):
    """fc1 [E][F1][H], fc2 [E][H][F] and dy [T][H] drawn after x and W_r; all but dy need grads."""
    (T, H), E = x.shape, wr.shape[0]
    fc1 = torch.randn(E, F1, H, generator=gen) / math.sqrt(H)
    fc2 = torch.randn(E, H, F, generator=gen) / math.sqrt(F)
    dy = torch.randn(T, H, generator=gen)
    for t in (x, wr, fc1, fc2):
        t.requires_grad_(True)
    return fc1, fc2, dy


def run_experts(rows_per_expert, fc1, fc2, act, gated):
    """FFN or GLU expert e on its rows (Megatron's glu: act(first half of fc1) * second half)."""
    outs = []
    for e, rows in enumerate(rows_per_expert):
        h = rows @ fc1[e].T
        if gated:
            a, b = torch.chunk(h, 2, dim=-1)
            h = act(a) * b
        else:
            h = act(h)
        outs.append(h @ fc2[e].T)
    return outs


def megatron_shared_expert(x, fc1, fc2, gate, act, gated):
    """Megatron-Core's SharedExpertMLP.forward (and MLP.forward, which it calls) on x: its
    constructor (ColumnParallelLinear / RowParallelLinear need process groups) is bypassed, the
    two linears are x·W^T without bias as Megatron's are on one rank, no fusion, no clamp."""
    from megatron.core.transformer.moe.shared_experts import SharedExpertMLP
    m = SharedExpertMLP.__new__(SharedExpertMLP)
    torch.nn.Module.__init__(m)
    m.config = types.SimpleNamespace(
        use_te_activation_func=False, bias_activation_fusion=False, gated_linear_unit=gated,
        activation_func=act, activation_func_clamp_value=None, glu_linear_offset=0.0,
        add_bias_linear=False, moe_shared_expert_overlap=False)
    m.activation_func = act
    m.linear_fc1 = lambda h: (Fn.linear(h, fc1), None)
    m.linear_fc2 = lambda h: (Fn.linear(h, fc2), None)
    m.use_shared_expert_gate = gate is not None
    m.gate_weight = gate
    return m.forward(x)


def layer_fixture(name, cfg, gen, T, S, B, source=""):
    E, H, F = cfg["num_experts"], cfg["hidden_size"], cfg["ffn_hidden_size"]
    gated = cfg["gated"]
    F1 = 2 * F if gated else F
    while True:
        x = torch.randn(T, H, generator=gen)
        wr = torch.randn(E, H, generator=gen) * (1.5 / math.sqrt(H))
        if cfg["load_balancing_type"] != "sinkhorn" or check_sinkhorn_margin(cfg, x @ wr.T):
            break
    fc1, fc2, dy = expert_weights(gen, x, wr, F1, F)
    logits = Fn.linear(x, wr)
    with float64_router_math():
        probs, final_map, routed, aux, z = megatron_route(cfg, logits, S, B)
    act = ACT[cfg["activation"]]
    pad = cfg.get("pad_to_capacity", False)
    if pad:
        C = mu.get_capacity(num_tokens=T * cfg["num_experts_per_token"], num_experts=E,
                            capacity_factor=cfg["capacity_factor"])
        permuted, _, sorted_idx = mu.permute(x, final_map, num_out_tokens=C * E, drop_and_pad=True)
        # min(C, T) rows per expert: with C > T every token is in every expert's block (the
        # capacity mask is all ones), and permute keeps the T of them.
        counts = [min(C, T)] * E
    else:
        permuted, _, sorted_idx = mu.permute(x, final_map)
        counts = [int(v) for v in final_map.sum(0)]
    outs = run_experts(torch.split(permuted, counts), fc1, fc2, act, gated)
    y = mu.unpermute(torch.cat(outs), sorted_idx, x.shape, probs=probs, routing_map=final_map,
                     drop_and_pad=pad)
    shared = {}  # the shared expert (moe_shared_expert_intermediate_size): MoELayer.postprocess
    Fs = cfg.get("shared_expert_intermediate_size")
    if Fs:
        Fs1 = 2 * Fs if gated else Fs
        shared["shared_fc1_weight"] = torch.randn(Fs1, H, generator=gen) / math.sqrt(H)
        shared["shared_fc2_weight"] = torch.randn(H, Fs, generator=gen) / math.sqrt(Fs)
        if cfg.get("shared_expert_gate"):
            shared["shared_gate_weight"] = torch.randn(1, H, generator=gen) * (2 / math.sqrt(H))
        for t in shared.values():
            t.requires_grad_(True)
        y = y + megatron_shared_expert(x, shared["shared_fc1_weight"], shared["shared_fc2_weight"],
                                       shared.get("shared_gate_weight"), act, gated)
    (y * dy).sum().backward()
    doc = {"config": cfg, "x": rounded(x), "router_weight": rounded(wr), "fc1_weight": rounded(fc1),
           "fc2_weight": rounded(fc2), "dy": rounded(dy)}
    doc.update({k: rounded(t) for k, t in shared.items()})
    kept = routed & final_map
    exp = {
        "y": rounded(y),
        "capacity": (mu.get_capacity(num_tokens=T * cfg["num_experts_per_token"], num_experts=E,
                                     capacity_factor=cfg["capacity_factor"])
                     if cfg.get("token_dispatch") == "capacity" else None),
        "tokens_per_expert": [int(v) for v in kept.sum(0)],
        "dropped": int(T * cfg["num_experts_per_token"] - kept.sum()),
        "routed_per_expert": [int(v) for v in routed.sum(0)],
        "aux_loss": aux,
        "z_loss": z,
        "grad_x": rounded(x.grad),
        "grad_router_weight": rounded(wr.grad),
        "grad_fc1_weight": rounded(fc1.grad),
        "grad_fc2_weight": rounded(fc2.grad),
    }
    exp.update({f"grad_{k}": rounded(t.grad) for k, t in shared.items()})
    return {"kind": "layer", "name": name, "input": doc, "expected": exp, "tolerance": TOLERANCE,
            "source": source}


# ---------------------------------------------------------------------------------------------
# DeepSpeed's gating (config "semantics": "deepspeed")
# ---------------------------------------------------------------------------------------------

class deepspeed_math:
    """DeepSpeed's gating runs in float32 ("everything is in fp32 in this function") with the
    default dtype float32. For double logits, Tensor.float() of its 0/1 masks and one-hot
    locations returns float64 instead (the values are 0 and 1 either way), and the default dtype
    is float32 as in training, so _capacity's torch.tensor(capacity_factor) stays float32."""

    def __init__(self, lift=True):
        self.lift = lift

    def __enter__(self):
        self.saved_float = torch.Tensor.float
        self.saved_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        if self.lift:
            torch.Tensor.float = lambda t, *a, **kw: t.to(torch.float64)
        return self

    def __exit__(self, *exc):
        torch.Tensor.float = self.saved_float
        torch.set_default_dtype(self.saved_dtype)


def deepspeed_gate(cfg, logits, sparse=False):
    """DeepSpeed's TopKGate.forward choice: top1gating for k = 1, top2gating for k = 2,
    topkgating above, with random token selection and second-expert sampling off. Also runs
    DeepSpeed unmodified in float32 and asserts the same routes and values to float32 rounding."""
    with deepspeed_math(lift=False):
        out32 = _deepspeed_gate(cfg, logits.detach().to(torch.float32), sparse)
    with deepspeed_math():
        out = _deepspeed_gate(cfg, logits, sparse)
    for a, b in zip(out, out32):
        if torch.is_tensor(a) and a.is_floating_point():
            assert (a.detach() - b.to(a.dtype)).abs().max() < 1e-5, "float32 DeepSpeed disagrees"
        elif torch.is_tensor(a):
            assert torch.equal(a, b), "float32 DeepSpeed routes differently"
        else:
            assert a == b
    return out


def _deepspeed_gate(cfg, logits, sparse):
    from deepspeed.moe import sharded_moe as dsm
    k = cfg["num_experts_per_token"]
    cf = cfg["capacity_factor"]
    minc = cfg.get("min_capacity", 0)
    drop = cfg.get("token_dispatch") == "capacity"
    if k == 1:
        return dsm.top1gating(logits, cf, minc, drop_tokens=drop, use_rts=False, sparse_routes=sparse)
    if k == 2:
        return dsm.top2gating(logits, cf, minc, drop_tokens=drop, top2_2nd_expert_sampling=False,
                              sparse_routes=sparse)
    return dsm.topkgating(logits, k, cf, minc, drop_tokens=drop,
                          drop_policy=cfg.get("drop_policy", "probs"), sparse_routes=sparse)


def deepspeed_losses(cfg, l_aux):
    on = cfg["load_balancing_type"] == "aux_loss" and cfg["load_balance_loss_coeff"] > 0
    return cfg["load_balance_loss_coeff"] * l_aux if on else None


def deepspeed_counts(cfg, kept_mask, exp_counts, capacity, T):
    k = cfg["num_experts_per_token"]
    kept = [int(v) for v in kept_mask.sum(0)]
    # top1gating without random token selection keeps torch.topk's choice (on the CPU) among an
    # over-full expert's equal 0/1 values, which Switchyard replays (position_by_topk).
    return {
        "capacity": int(capacity) if cfg.get("token_dispatch") == "capacity" else None,
        "tokens_per_expert": kept,
        "dropped": int(T * k - sum(kept)),
        "routed_per_expert": [int(v) for v in exp_counts],
    }


def ds_route_fixture(name, cfg, gen, T, H=None, source=""):
    E = cfg["num_experts"]
    if H:
        x = torch.randn(T, H, generator=gen).requires_grad_(True)
        w = (torch.randn(E, H, generator=gen) * (1.5 / math.sqrt(H))).requires_grad_(True)
        logits = Fn.linear(x, w)
    else:
        logits = (torch.randn(T, E, generator=gen) * 1.5).requires_grad_(True)
    gp = torch.randn(T, E, generator=gen)
    l_aux, combine, dispatch_mask, exp_counts = deepspeed_gate(cfg, logits)
    probs = combine.sum(-1)  # [T, E, C] -> the dense combine weight of each (token, expert)
    aux = deepspeed_losses(cfg, l_aux)
    capacity = combine.shape[-1]
    if cfg.get("token_dispatch") == "capacity":
        from deepspeed.moe import sharded_moe as dsm
        k = cfg["num_experts_per_token"]
        with deepspeed_math(lift=False):
            capacity = int(dsm._capacity(probs, torch.tensor(cfg["capacity_factor"] * k),
                                         torch.tensor(cfg.get("min_capacity", 0))))
    exp = {"probs": rounded(probs)}
    exp.update(deepspeed_counts(cfg, dispatch_mask.any(-1), exp_counts, capacity, T))
    exp["aux_loss"] = None if aux is None else float(aux)
    exp["z_loss"] = None
    doc = {"config": cfg, "grad_probs": rounded(gp)}
    loss = (probs * gp).sum() + (aux if aux is not None else 0.0)
    loss.backward()
    if H:
        doc["x"] = rounded(x)
        doc["router_weight"] = rounded(w)
        exp["logits"] = rounded(logits)
        exp["grad_x"] = rounded(x.grad)
        exp["grad_router_weight"] = rounded(w.grad)
    else:
        doc["logits"] = rounded(logits)
        exp["grad_logits"] = rounded(logits.grad)
    return {"kind": "route", "name": name, "input": doc, "expected": exp,
            "tolerance": TOLERANCE, "source": source}


def ds_layer_fixture(name, cfg, gen, T, source=""):
    """DeepSpeed's MOELayer.forward on one rank: TopKGate's gating with sparse routes,
    _route_slots / _sparse_encode into [E, C, H], per-expert FFN / GLU in torch, _sparse_decode."""
    from deepspeed.moe import sharded_moe as dsm
    E, H, F = cfg["num_experts"], cfg["hidden_size"], cfg["ffn_hidden_size"]
    gated = cfg["gated"]
    F1 = 2 * F if gated else F
    x = torch.randn(T, H, generator=gen)
    wr = torch.randn(E, H, generator=gen) * (1.5 / math.sqrt(H))
    fc1, fc2, dy = expert_weights(gen, x, wr, F1, F)
    logits = Fn.linear(x, wr)
    l_aux, C, E_, indices, locations, gates, exp_counts = deepspeed_gate(cfg, logits, sparse=True)
    C = int(C)
    slots = dsm._route_slots(indices, locations, E, C)
    dispatched = dsm._sparse_encode(x, slots, E, C)  # [E, C, H]
    outs = run_experts(dispatched.unbind(0), fc1, fc2, ACT[cfg["activation"]], gated)
    y = dsm._sparse_decode(torch.stack(outs).view(E * C, H), slots, gates, T)
    aux = deepspeed_losses(cfg, l_aux)
    ((y * dy).sum() + (aux if aux is not None else 0.0)).backward()
    kept_mask = torch.zeros(T, E, dtype=torch.bool)
    for j in range(indices.shape[0]):
        for t in range(T):
            if int(indices[j, t]) >= 0:
                kept_mask[t, int(indices[j, t])] = True
    capacity = C
    if cfg.get("token_dispatch") == "capacity":
        k = cfg["num_experts_per_token"]
        with deepspeed_math(lift=False):
            capacity = int(dsm._capacity(logits, torch.tensor(cfg["capacity_factor"] * k),
                                         torch.tensor(cfg.get("min_capacity", 0))))
    doc = {"config": cfg, "x": rounded(x), "router_weight": rounded(wr), "fc1_weight": rounded(fc1),
           "fc2_weight": rounded(fc2), "dy": rounded(dy)}
    exp = {"y": rounded(y)}
    exp.update(deepspeed_counts(cfg, kept_mask, exp_counts, capacity, T))
    exp.update({"aux_loss": None if aux is None else float(aux), "z_loss": None,
                "grad_x": rounded(x.grad), "grad_router_weight": rounded(wr.grad),
                "grad_fc1_weight": rounded(fc1.grad), "grad_fc2_weight": rounded(fc2.grad)})
    return {"kind": "layer", "name": name, "input": doc, "expected": exp, "tolerance": TOLERANCE,
            "source": source}


def ds_config(E, k, S, B, **kw):
    c = base_config(E, k, S, B, semantics="deepspeed", pre_softmax=True, router_z_loss_coeff=0.0,
                    capacity_formula="deepspeed", token_dispatch="capacity",
                    drop_policy="position" if k <= 2 else "probs")
    c.update(kw)
    return c


DS = "deepspeed.moe.sharded_moe"


def ds_route_cases(E, S, B):
    """(name, config, H or None, source) of the DeepSpeed route fixtures of one set."""
    c = lambda k, **kw: ds_config(E, k, S, B, **kw)  # noqa: E731
    return [
        ("ds_top2_capacity", c(2, capacity_factor=0.75), None,
         f"{DS}.top2gating (no 2nd-expert sampling); l_aux x coeff; autograd"),
        ("ds_top2_min_capacity", c(2, capacity_factor=0.5, min_capacity=3), None,
         f"{DS}.top2gating with min_capacity"),
        ("ds_top2_dropless", c(2, token_dispatch="dropless"), None,
         f"{DS}.top2gating drop_tokens=False"),
        ("ds_top2_no_aux", c(2, capacity_factor=1.0, load_balancing_type="none",
                             load_balance_loss_coeff=0.0), None, f"{DS}.top2gating, no aux loss"),
        ("ds_top1", c(1, capacity_factor=float(E)), None,
         f"{DS}.top1gating (no random token selection), no expert over-full"),
        ("ds_top1_dropless", c(1, token_dispatch="dropless", load_balance_loss_coeff=0.1), None,
         f"{DS}.top1gating drop_tokens=False"),
        ("ds_topk3_probs", c(3, capacity_factor=0.75), None, f"{DS}.topkgating k=3 drop_policy probs"),
        ("ds_topk3_position", c(3, capacity_factor=0.75, drop_policy="position"), None,
         f"{DS}.topkgating k=3 drop_policy position"),
        ("ds_topk4_probs_min", c(4, capacity_factor=0.5, min_capacity=5), None,
         f"{DS}.topkgating k=4 drop_policy probs, min_capacity"),
        ("ds_topk3_dropless", c(3, token_dispatch="dropless"), None, f"{DS}.topkgating drop_tokens=False"),
        ("ds_linear_top2", c(2, capacity_factor=1.0), 5, f"x W^T; {DS}.top2gating; autograd to x, W"),
    ]


def ds_layer_cases(E, S, B, H, F):
    cases = [
        ("layer_ds_top2_silu_glu", dict(num_experts_per_token=2, capacity_factor=0.75,
                                        activation="silu", gated=True)),
        ("layer_ds_topk3_gelu_ffn", dict(num_experts_per_token=3, capacity_factor=0.75,
                                         drop_policy="probs", activation="gelu", gated=False)),
        ("layer_ds_top1_relu_ffn", dict(num_experts_per_token=1, token_dispatch="dropless",
                                        drop_policy="position", activation="relu", gated=False)),
    ]
    out = []
    for name, kw in cases:
        cfg = ds_config(E, kw["num_experts_per_token"], S, B, hidden_size=H, ffn_hidden_size=F)
        cfg.update(kw)
        out.append((name, cfg, f"torch layer as {DS}.MOELayer.forward: x W_r^T, TopKGate gating "
                               f"(sparse routes), _route_slots, _sparse_encode, experts, _sparse_decode; autograd"))
    return out


TOPK = "moe_utils.topk_routing_with_score_function via TopKRouter.routing"
LOSSES = "compute_routing_scores_for_aux_loss + switch_load_balancing_loss_func"


def route_cases(E, k, S, B, groups, gtopk, gk):
    """(name, config, H or None, training, source) of the route fixtures of one set."""
    bias = [((i * 37) % 11 - 5) / 64.0 for i in range(E)]  # exact in float32
    c = lambda **kw: base_config(E, k, S, B, **kw)  # noqa: E731
    cases = [
        ("softmax_topk", c(), None, True, f"{TOPK}; aux_loss ({LOSSES}); z_loss_func"),
        ("softmax_pre", c(pre_softmax=True), None, True, f"{TOPK} use_pre_softmax; aux_loss; z_loss"),
        ("softmax_pre_k1", base_config(E, 1, S, B, pre_softmax=True), None, True,
         f"{TOPK} use_pre_softmax k=1; aux_loss; z_loss"),
        ("softmax_scaling", c(topk_scaling_factor=2.5, router_z_loss_coeff=0.0), None, True,
         f"{TOPK} scaling_factor; aux_loss"),
        ("sigmoid_topk", c(score_function="sigmoid"), None, True,
         f"{TOPK} sigmoid; aux_loss over sigmoid scores; z_loss"),
        ("sigmoid_k1", base_config(E, 1, S, B, score_function="sigmoid"), None, True,
         f"{TOPK} sigmoid k=1; aux_loss; z_loss"),
        ("sigmoid_bias_scaling", c(score_function="sigmoid", enable_expert_bias=True, expert_bias=bias,
                                   topk_scaling_factor=2.5, load_balancing_type="none",
                                   load_balance_loss_coeff=0.0), None, True,
         f"{TOPK} sigmoid, expert_bias, scaling_factor; z_loss"),
        ("group_softmax", base_config(E, gk, S, B, num_groups=groups, group_topk=gtopk), None, True,
         f"{TOPK} group_limited_topk; aux_loss; z_loss"),
        ("group_pre_softmax", base_config(E, gk, S, B, num_groups=groups, group_topk=gtopk,
                                          pre_softmax=True), None, True,
         f"{TOPK} group_limited_topk use_pre_softmax; aux_loss; z_loss"),
        ("group_sigmoid_bias", base_config(E, gk, S, B, num_groups=groups, group_topk=gtopk,
                                           score_function="sigmoid", enable_expert_bias=True,
                                           expert_bias=bias, topk_scaling_factor=1.5,
                                           load_balancing_type="seq_aux_loss",
                                           load_balance_loss_coeff=0.001), None, True,
         f"{TOPK} group_limited_topk sigmoid expert_bias scaling; seq_aux_loss; z_loss"),
        ("sinkhorn_k1", base_config(E, 1, S, B, load_balancing_type="sinkhorn",
                                    load_balance_loss_coeff=0.0), None, True,
         "TopKRouter.sinkhorn_load_balancing (moe_utils.sinkhorn) k=1; z_loss"),
        ("sinkhorn_k2", c(load_balancing_type="sinkhorn", load_balance_loss_coeff=0.0,
                          router_z_loss_coeff=0.0), None, True,
         "TopKRouter.sinkhorn_load_balancing (moe_utils.sinkhorn) k>1"),
        ("sinkhorn_eval", c(load_balancing_type="sinkhorn", load_balance_loss_coeff=0.0), None, False,
         "TopKRouter.sinkhorn_load_balancing, not training (plain top-k of softmax)"),
        ("capacity_probs", c(token_dispatch="capacity", capacity_factor=1.0), None, True,
         f"{TOPK}; apply_router_token_dropping probs policy; aux_loss; z_loss"),
        ("capacity_probs_k1", base_config(E, 1, S, B, pre_softmax=True, token_dispatch="capacity",
                                          capacity_factor=0.75), None, True,
         f"{TOPK} use_pre_softmax k=1; apply_router_token_dropping probs; aux_loss; z_loss"),
        ("capacity_probs_pad", c(token_dispatch="capacity", capacity_factor=1.0, pad_to_capacity=True),
         None, True, f"{TOPK}; apply_router_token_dropping probs pad_to_capacity; aux_loss; z_loss"),
        ("capacity_sigmoid_pad", c(score_function="sigmoid", token_dispatch="capacity",
                                   capacity_factor=0.8, pad_to_capacity=True), None, True,
         f"{TOPK} sigmoid; apply_router_token_dropping probs pad_to_capacity; aux_loss; z_loss"),
        ("seq_aux_loss", c(load_balancing_type="seq_aux_loss"), None, True,
         f"{TOPK}; seq_aux_loss ([seq, batch] order); z_loss"),
        ("seq_aux_loss_sigmoid", c(score_function="sigmoid", load_balancing_type="seq_aux_loss",
                                   load_balance_loss_coeff=0.1), None, True,
         f"{TOPK} sigmoid; seq_aux_loss ([seq, batch] order); z_loss"),
        ("global_aux_loss", c(load_balancing_type="global_aux_loss", load_balance_loss_coeff=0.05),
         None, True, f"{TOPK}; global_aux_loss (one micro-batch); z_loss"),
        ("linear_softmax", c(), 6, True, f"x W^T; {TOPK}; aux_loss; z_loss; autograd to x, W"),
        ("linear_sigmoid_capacity", c(score_function="sigmoid", token_dispatch="capacity",
                                      capacity_factor=1.0, load_balancing_type="seq_aux_loss"), 5, True,
         f"x W^T; {TOPK} sigmoid; apply_router_token_dropping probs; seq_aux_loss; z_loss"),
        # C > T: Megatron's apply_router_token_dropping keeps every token (an all-ones capacity
        # mask), so the padded map has T rows per expert; Switchyard reports min(C, T).
        ("capacity_pad_over_tokens", c(token_dispatch="capacity", capacity_factor=5.0,
                                       pad_to_capacity=True), None, True,
         f"{TOPK}; apply_router_token_dropping pad_to_capacity with capacity > tokens; aux_loss; z_loss"),
    ]
    return cases


def layer_cases(E, k, S, B, H, F, groups, gtopk, gk):
    bias = [((i * 29) % 7 - 3) / 32.0 for i in range(E)]
    routings = [
        ("softmax_aux_z", dict(num_experts_per_token=k)),
        ("sigmoid_bias_scaling", dict(num_experts_per_token=k, score_function="sigmoid",
                                      enable_expert_bias=True, expert_bias=bias, topk_scaling_factor=2.0,
                                      load_balancing_type="none", load_balance_loss_coeff=0.0)),
        ("pre_softmax_k1", dict(num_experts_per_token=1, pre_softmax=True)),
        ("capacity_probs", dict(num_experts_per_token=k, token_dispatch="capacity", capacity_factor=1.0)),
        ("seq_aux_loss", dict(num_experts_per_token=k, load_balancing_type="seq_aux_loss")),
        ("group_limited", dict(num_experts_per_token=gk, num_groups=groups, group_topk=gtopk)),
        ("sinkhorn_k2", dict(num_experts_per_token=k, load_balancing_type="sinkhorn",
                             load_balance_loss_coeff=0.0)),
        ("capacity_pad_sigmoid", dict(num_experts_per_token=k, score_function="sigmoid",
                                      token_dispatch="capacity", capacity_factor=1.0,
                                      pad_to_capacity=True, load_balancing_type="global_aux_loss")),
    ]
    out = []
    i = 0
    for gated in (False, True):
        for act in ("gelu", "gelu_tanh", "relu", "silu"):
            rname, rk = routings[i % len(routings)]
            i += 1
            cfg = base_config(E, k, S, B, hidden_size=H, ffn_hidden_size=F, activation=act, gated=gated)
            cfg.update(rk)
            name = f"layer_{act}_{'glu' if gated else 'ffn'}_{rname}"
            src = (f"torch layer: x W_r^T, Megatron TopKRouter.routing ({rname}), moe_utils.permute, "
                   f"{'GLU' if gated else 'FFN'} experts with {act}, moe_utils.unpermute; autograd")
            out.append((name, cfg, src))
    return out


def combined_loss_cases(E, k, S, B, H, F):
    """Megatron's list form of moe_router_load_balancing_type / moe_aux_loss_coeff: several aux
    losses at once, each with its coefficient (a zero one is off). (route cases as route_cases
    gives them, layer cases as layer_cases gives them)."""
    c = lambda **kw: base_config(E, k, S, B, **kw)  # noqa: E731
    routes = [
        ("combined_aux_seq", c(load_balancing_type=["aux_loss", "seq_aux_loss"],
                               load_balance_loss_coeff=[0.01, 0.001]), None, True,
         f"{TOPK}; aux_loss and seq_aux_loss (list form); z_loss"),
        ("combined_seq_global_sigmoid", c(score_function="sigmoid",
                                          load_balancing_type=["seq_aux_loss", "global_aux_loss"],
                                          load_balance_loss_coeff=[0.1, 0.05]), None, True,
         f"{TOPK} sigmoid; seq_aux_loss and global_aux_loss (list form); z_loss"),
        ("combined_linear_capacity", c(load_balancing_type=["global_aux_loss", "aux_loss", "seq_aux_loss"],
                                       load_balance_loss_coeff=[0.02, 0.01, 0.0],
                                       token_dispatch="capacity", capacity_factor=1.0), 5, True,
         f"x W^T; {TOPK}; apply_router_token_dropping probs; global_aux_loss and aux_loss "
         "(seq_aux_loss with coefficient 0); z_loss; autograd to x, W"),
    ]
    cfg = base_config(E, k, S, B, hidden_size=H, ffn_hidden_size=F, activation="silu", gated=True,
                      load_balancing_type=["aux_loss", "seq_aux_loss", "global_aux_loss"],
                      load_balance_loss_coeff=[0.01, 0.001, 0.02])
    layers = [("layer_silu_glu_combined_losses", cfg,
               "torch layer: x W_r^T, Megatron TopKRouter.routing (aux_loss, seq_aux_loss and "
               "global_aux_loss in list form), moe_utils.permute, GLU experts with silu, "
               "moe_utils.unpermute; autograd")]
    return routes, layers


def position_cases(E, k, S, B):
    """Drops by position, where every routed token of an over-full expert ties in torch.topk over
    the 0/1 routing column: Megatron's apply_router_token_dropping with drop_policy "position"
    and DeepSpeed's top1gating (random token selection off). Megatron cases as route_cases gives
    them; DeepSpeed ones (name, config, H, source) as ds_route_cases."""
    c = lambda **kw: base_config(E, k, S, B, **kw)  # noqa: E731
    megatron = [
        ("capacity_position", c(token_dispatch="capacity", capacity_factor=0.5,
                                drop_policy="position"), None, True,
         f"{TOPK}; apply_router_token_dropping position (torch.topk over the routing map); "
         "aux_loss; z_loss"),
        ("capacity_position_pad_sigmoid", c(score_function="sigmoid", token_dispatch="capacity",
                                            capacity_factor=0.75, drop_policy="position",
                                            pad_to_capacity=True), None, True,
         f"{TOPK} sigmoid; apply_router_token_dropping position pad_to_capacity; aux_loss; z_loss"),
    ]
    deepspeed = [
        ("ds_top1_drops", ds_config(E, 1, S, B, capacity_factor=1.0), None,
         f"{DS}.top1gating (no random token selection), over-full experts: torch.topk over the "
         "one-hot mask"),
    ]
    return megatron, deepspeed


def shared_expert_cases(E, k, S, B, H, F):
    """Layers with Megatron-Core's shared expert (moe_shared_expert_intermediate_size, optionally
    moe_shared_expert_gate) beside the routed experts, as layer_cases gives them."""
    c = lambda **kw: base_config(E, k, S, B, hidden_size=H, ffn_hidden_size=F, **kw)  # noqa: E731
    src = ("torch layer: x W_r^T, Megatron TopKRouter.routing, moe_utils.permute, {e} experts, "
           "moe_utils.unpermute, + Megatron SharedExpertMLP.forward ({g}); autograd")
    return [
        ("layer_silu_glu_shared_gated", c(activation="silu", gated=True,
                                          shared_expert_intermediate_size=2 * F,
                                          shared_expert_gate=True),
         src.format(e="GLU silu", g="sigmoid gate")),
        ("layer_gelu_ffn_capacity_shared", c(activation="gelu", gated=False, token_dispatch="capacity",
                                             capacity_factor=1.0, shared_expert_intermediate_size=F + 1),
         src.format(e="FFN gelu, capacity (probs)", g="no gate")),
    ]


SETS = {
    # seed, experts, k, seq, batch, hidden, ffn, groups, group_topk, k for group routing
    "set1": dict(seed=1234, E=8, k=2, S=8, B=2, H=6, F=5, groups=4, gtopk=2, gk=4),
    "set2": dict(seed=98765, E=12, k=3, S=5, B=3, H=4, F=3, groups=4, gtopk=2, gk=3),
}


# ---------------------------------------------------------------------------------------------
# Random configurations (--random N): combinations the hand-written cases above do not list
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


# Sizes of the random draws: the committed set stays small (2.5 MiB in all); --large draws longer
# batches, more experts, larger k and wider layers for campaigns outside the repository.
SIZES = dict(E=[4, 6, 8, 12, 16, 32], groups=(2, 3, 4), S=8, B=4, k=6, H=6, F=5, ds_E=[4, 6, 8, 12], ds_S=6, ds_k=4)
LARGE_SIZES = dict(E=[4, 8, 16, 32, 64, 128], groups=(2, 4, 8), S=96, B=4, k=8, H=24, F=16, ds_E=[4, 8, 16, 32],
                   ds_S=64, ds_k=6)


AUX_TYPES = ("aux_loss", "seq_aux_loss", "global_aux_loss")


def random_megatron_config(rng, layer, lists_rng=None, policy_rng=None, shared_rng=None):
    """A config Megatron-Core and Switchyard both accept, drawn over the fields of
    megatron_router()'s mapping: sizes, k, score function, pre-softmax, groups, expert bias,
    scaling, balancing type and coefficients (with lists_rng, a quarter of the aux-loss draws
    combine 2 or 3 aux losses in the list form), z-loss, capacity and padding, and (with
    policy_rng) the drop policy, probs or position, and (with shared_rng, layers only) a shared
    expert in half of the draws, gated in half of those. The list, policy and shared choices draw
    from their own streams so that the other draws stay the same."""
    E = rng.choice(SIZES["E"])
    score = rng.choice(["softmax", "sigmoid"])
    S, B = rng.randint(1, SIZES["S"]), rng.randint(1, SIZES["B"])
    sinkhorn = not layer and rng.random() < 0.12
    groups = gtopk = None
    if sinkhorn:
        # Sinkhorn has its own weights, no aux loss and no capacity (REFERENCE §3).
        E = min(E, 16)
        score, k = "softmax", rng.randint(1, min(E, 4))
    elif rng.random() < 0.35:
        groups = rng.choice([g for g in SIZES["groups"] if E % g == 0])
        gtopk = rng.randint(1, groups)
        # Megatron scores a group by its top k // group_topk, so k >= group_topk.
        k = rng.randint(gtopk, max(gtopk, min(gtopk * (E // groups), SIZES["k"])))
    else:
        k = rng.randint(1, min(E, SIZES["k"]))
    pre = not sinkhorn and score == "softmax" and (k == 1 or rng.random() < 0.3)
    lbt = "sinkhorn" if sinkhorn else rng.choice(["aux_loss", "seq_aux_loss", "global_aux_loss", "none"])
    c = base_config(E, k, S, B, score_function=score, pre_softmax=pre, load_balancing_type=lbt,
                    load_balance_loss_coeff=0.0 if lbt in ("none", "sinkhorn")
                    else rng.choice([0.0, 0.01, 0.1]),
                    router_z_loss_coeff=rng.choice([0.0, 0.001, 0.05]))
    if lists_rng is not None and lbt in AUX_TYPES and lists_rng.random() < 0.25:
        types = lists_rng.sample(AUX_TYPES, lists_rng.randint(2, 3))
        c.update(load_balancing_type=types,
                 load_balance_loss_coeff=[lists_rng.choice([0.0, 0.01, 0.1]) for _ in types])
    if groups:
        c.update(num_groups=groups, group_topk=gtopk)
    if lbt != "sinkhorn":
        if score == "sigmoid" and rng.random() < 0.5:
            c.update(enable_expert_bias=True,
                     expert_bias=[rng.randint(-8, 8) / 32.0 for _ in range(E)])
        if rng.random() < 0.4:
            c["topk_scaling_factor"] = rng.choice([0.5, 1.5, 2.5])
    if not sinkhorn and rng.random() < 0.45:
        c.update(token_dispatch="capacity", capacity_factor=rng.choice([0.5, 0.75, 1.0, 1.25, 2.0]),
                 pad_to_capacity=rng.random() < 0.4)
        if policy_rng is not None:
            c["drop_policy"] = policy_rng.choice(["probs", "position"])
    if layer:
        c.update(hidden_size=rng.randint(2, SIZES["H"]), ffn_hidden_size=rng.randint(2, SIZES["F"]),
                 activation=rng.choice(ACTIVATIONS), gated=rng.random() < 0.5)
        if shared_rng is not None and shared_rng.random() < 0.5:
            c.update(shared_expert_intermediate_size=shared_rng.randint(1, SIZES["F"] + 2),
                     shared_expert_gate=shared_rng.random() < 0.5)
    return c


def random_deepspeed_config(rng, layer):
    E = rng.choice(SIZES["ds_E"])
    k = rng.randint(1, min(E, SIZES["ds_k"]))
    S, B = rng.randint(2, SIZES["ds_S"]), rng.randint(1, 3)
    c = ds_config(E, k, S, B)
    if k == 1 or rng.random() < 0.3:
        # top1gating picks among an over-full expert's tokens by torch.topk over the one-hot
        # mask (Switchyard replays torch's CPU choice: position_by_topk).
        c["token_dispatch"] = "dropless" if k == 1 and rng.random() < 0.5 else c["token_dispatch"]
        c["capacity_factor"] = rng.choice([0.5, 1.0, float(E)]) if k == 1 else rng.choice([0.5, 1.0, 1.5])
    else:
        c["capacity_factor"] = rng.choice([0.5, 0.75, 1.0, 1.5])
    if rng.random() < 0.3:
        c["min_capacity"] = rng.randint(0, 4)
    if k > 2:
        c["drop_policy"] = rng.choice(["probs", "position"])
    if rng.random() < 0.25:
        c.update(load_balancing_type="none", load_balance_loss_coeff=0.0)
    else:
        c["load_balance_loss_coeff"] = rng.choice([0.01, 0.1, 1.0])
    if layer:
        c.update(hidden_size=rng.randint(2, SIZES["H"]), ffn_hidden_size=rng.randint(2, SIZES["F"]),
                 activation=rng.choice(ACTIVATIONS), gated=rng.random() < 0.5)
    return c


def random_fixtures(n, seed, shared=False):
    """n fixtures of random configs, about 40 % Megatron routes, 25 % Megatron layers, 20 %
    DeepSpeed routes, 15 % DeepSpeed layers. A draw whose float32 and float64 peers disagree (a
    near tie) or that a peer cannot run is drawn again; the reasons are counted and printed."""
    import random

    def too_long(*_):
        raise TimeoutError("over 20 s")

    signal.signal(signal.SIGALRM, too_long)
    rng = random.Random(seed)
    lists_rng = random.Random(seed + 1)
    policy_rng = random.Random(seed + 2)
    shared_rng = random.Random(seed + 3) if shared else None
    gen = torch.Generator().manual_seed(seed)
    out, skipped = [], {}
    while len(out) < n:
        i = len(out)
        u = rng.random()
        layer = 0.4 <= u < 0.65 or u >= 0.85
        deepspeed = u >= 0.65
        cfg = random_deepspeed_config(rng, layer) if deepspeed else random_megatron_config(rng, layer, lists_rng, policy_rng, shared_rng)
        T = cfg["sequence_length"] * cfg["batch_size_per_gpu"]
        name = f"random{i:03d}"
        src = ("random config (generate.py --random), "
               + ("DeepSpeed " if deepspeed else "Megatron-Core ") + ("layer" if layer else "route"))
        signal.alarm(20)  # Megatron's sinkhorn loops until converged, without a cap
        try:
            if deepspeed and layer:
                fx = ds_layer_fixture(f"layer_{name}", cfg, gen, T, source=src)
            elif deepspeed:
                fx = ds_route_fixture(name, cfg, gen, T, H=rng.choice([None, None, 3]), source=src)
            elif layer:
                fx = layer_fixture(f"layer_{name}", cfg, gen, T, cfg["sequence_length"],
                                   cfg["batch_size_per_gpu"], source=src)
            else:
                training = cfg["load_balancing_type"] == "sinkhorn" or rng.random() < 0.85
                fx = route_fixture(name, cfg, gen, T, cfg["sequence_length"],
                                   cfg["batch_size_per_gpu"], H=rng.choice([None, None, 4]),
                                   training=training, source=src)
        except Exception as e:  # noqa: BLE001 - a near tie or a config a peer rejects: draw again
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        finally:
            signal.alarm(0)
        out.append(fx)
    for why, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        print(f"  drawn again {count}x: {why}")
    return out


# ---------------------------------------------------------------------------------------------
# Process groups: Megatron-Core's RankGenerator (parallel_state.py)
# ---------------------------------------------------------------------------------------------

def layout_fixtures():
    """The groups Megatron-Core's initialize_model_parallel builds for tp x ep x dp x pp (cp = 1,
    expert tensor parallel = tp): the dense decoder RankGenerator(tp, ep=1, dp·ep, pp,
    "tp-cp-ep-dp-pp") gives tensor, pipeline and (dense) data-parallel groups, the expert decoder
    RankGenerator(tp, ep, dp, pp, "tp-ep-dp-pp") the expert-parallel and expert-data-parallel
    groups. Switchyard's Layout (switchyard plan's "groups") must hold the same sets of ranks.
    Each case also holds the expert-parallel and expert-data-parallel groups DeepSpeed builds for
    the same world (deepspeed.utils.groups._get_expert_parallel_ranks, the E + D topology it uses
    by default: tensor parallel innermost, pipeline stages outermost), which Switchyard's Layout
    must match as well."""
    from megatron.core.parallel_state import RankGenerator
    from deepspeed.utils.groups import _get_expert_parallel_ranks
    cases = []
    for tp in (1, 2, 4):
        for ep in (1, 2, 4, 8):
            for dp in (1, 2, 3):
                for pp in (1, 2):
                    if tp * ep * dp * pp > 64:
                        continue
                    dense = RankGenerator(tp=tp, ep=1, dp=dp * ep, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
                    expert = RankGenerator(tp=tp, ep=ep, dp=dp, pp=pp, cp=1, order="tp-ep-dp-pp")
                    ds_ep, ds_edp = _get_expert_parallel_ranks(tp * ep * dp * pp, tp, ep, pp)
                    cases.append({
                        "tensor_parallel_size": tp, "expert_parallel_size": ep,
                        "data_parallel_size": dp, "pipeline_parallel_size": pp,
                        "groups": {
                            "tensor_parallel": dense.get_ranks("tp"),
                            "pipeline_parallel": dense.get_ranks("pp"),
                            "dense_data_parallel": dense.get_ranks("dp"),
                            "expert_parallel": expert.get_ranks("ep"),
                            "expert_data_parallel": expert.get_ranks("dp"),
                        },
                        "deepspeed_groups": {
                            "expert_parallel": ds_ep,
                            "expert_data_parallel": ds_edp,
                        }})
    return {"kind": "layouts", "source": "megatron.core.parallel_state.RankGenerator (dense and "
            "expert decoders of initialize_model_parallel, cp = 1, expert tensor parallel = tp); "
            "deepspeed.utils.groups._get_expert_parallel_ranks (deepspeed_groups)",
            "versions": versions(), "layouts": cases}


# The committed random set (tests/conformance/data/random); --random N --random-seed S --out DIR
# writes larger ones elsewhere, and the conformance test reads them with SY_CONFORMANCE_DATA=DIR.
RANDOM = {"count": 30, "seed": 20261201}


def write_fixtures(d, name, fixtures, manifest):
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.endswith(".json"):
            os.remove(os.path.join(d, f))
    vers = versions()
    files = []
    for fx in fixtures:
        fx["versions"] = vers
        fname = f"{fx['kind']}_{fx['name']}.json" if not fx["name"].startswith("layer_") else f"{fx['name']}.json"
        with open(os.path.join(d, fname), "w") as fh:
            json.dump(fx, fh, separators=(",", ":"))
            fh.write("\n")
        files.append(fname)
    manifest = {"set": name, **manifest, "versions": vers,
                "generator": "tools/conformance/generate.py", "fixtures": files}
    with open(os.path.join(d, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    return files


def write_set(out_dir, name, p):
    gen = torch.Generator().manual_seed(p["seed"])
    T = p["S"] * p["B"]
    fixtures = []
    for cname, cfg, H, training, src in route_cases(p["E"], p["k"], p["S"], p["B"], p["groups"],
                                                     p["gtopk"], p["gk"]):
        fixtures.append(route_fixture(cname, cfg, gen, T, p["S"], p["B"], H=H, training=training,
                                      source=src))
    for lname, cfg, src in layer_cases(p["E"], p["k"], p["S"], p["B"], p["H"], p["F"], p["groups"],
                                       p["gtopk"], p["gk"]):
        fixtures.append(layer_fixture(lname, cfg, gen, T, p["S"], p["B"], source=src))
    # DeepSpeed's fixtures draw from their own stream, so the Megatron ones above stay as they were.
    ds_gen = torch.Generator().manual_seed(p["seed"] + 1)
    for cname, cfg, H, src in ds_route_cases(p["E"], p["S"], p["B"]):
        fixtures.append(ds_route_fixture(cname, cfg, ds_gen, T, H=H, source=src))
    for lname, cfg, src in ds_layer_cases(p["E"], p["S"], p["B"], p["H"], p["F"]):
        fixtures.append(ds_layer_fixture(lname, cfg, ds_gen, T, source=src))
    # The list-form losses draw from a third stream, so the fixtures above stay as they were.
    lists_gen = torch.Generator().manual_seed(p["seed"] + 2)
    routes, layers = combined_loss_cases(p["E"], p["k"], p["S"], p["B"], p["H"], p["F"])
    for cname, cfg, H, training, src in routes:
        fixtures.append(route_fixture(cname, cfg, lists_gen, T, p["S"], p["B"], H=H,
                                      training=training, source=src))
    for lname, cfg, src in layers:
        fixtures.append(layer_fixture(lname, cfg, lists_gen, T, p["S"], p["B"], source=src))
    # Drops by position draw from a fourth stream, so the fixtures above stay as they were.
    position_gen = torch.Generator().manual_seed(p["seed"] + 3)
    megatron, deepspeed = position_cases(p["E"], p["k"], p["S"], p["B"])
    for cname, cfg, H, training, src in megatron:
        fixtures.append(route_fixture(cname, cfg, position_gen, T, p["S"], p["B"], H=H,
                                      training=training, source=src))
    for cname, cfg, H, src in deepspeed:
        fixtures.append(ds_route_fixture(cname, cfg, position_gen, T, H=H, source=src))
    # Shared experts draw from a fifth stream, so the fixtures above stay as they were.
    shared_gen = torch.Generator().manual_seed(p["seed"] + 4)
    for lname, cfg, src in shared_expert_cases(p["E"], p["k"], p["S"], p["B"], p["H"], p["F"]):
        fixtures.append(layer_fixture(lname, cfg, shared_gen, T, p["S"], p["B"], source=src))
    manifest = {"seed": p["seed"], "tokens": T, "sequence_length": p["S"],
                "batch_size_per_gpu": p["B"], "num_experts": p["E"]}
    return write_fixtures(os.path.join(out_dir, name), name, fixtures, manifest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "tests", "conformance", "data"))
    ap.add_argument("--sets", nargs="*", default=list(SETS) + ["random", "layouts"],
                    help=f"sets to write: {', '.join(SETS)}, random and/or layouts")
    ap.add_argument("--random", type=int, default=RANDOM["count"], metavar="N",
                    help="fixtures of the random set (random configurations)")
    ap.add_argument("--random-seed", type=int, default=RANDOM["seed"])
    ap.add_argument("--large", action="store_true",
                    help="random draws with longer batches, more experts, larger k and wider "
                         "layers (LARGE_SIZES; over 2.5 MiB: use with --out)")
    ap.add_argument("--shared-experts", action="store_true",
                    help="random Megatron-Core layers get a shared expert in half of the draws "
                         "(gated in half of those; for campaigns: the committed set has none)")
    args = ap.parse_args()
    if args.large:
        SIZES.update(LARGE_SIZES)
    total = 0
    for name in args.sets:
        if name == "layouts":
            os.makedirs(args.out, exist_ok=True)
            path, doc = os.path.join(args.out, "layouts.json"), layout_fixtures()
            with open(path, "w") as fh:
                json.dump(doc, fh, separators=(",", ":"))
                fh.write("\n")
            total += os.path.getsize(path)
            print(f"layouts: {len(doc['layouts'])} layouts, {os.path.getsize(path) / 1024:.0f} KiB")
            continue
        if name == "random":
            fixtures = random_fixtures(args.random, args.random_seed, args.shared_experts)
            files = write_fixtures(os.path.join(args.out, name), name, fixtures,
                                   {"seed": args.random_seed})
        else:
            files = write_set(args.out, name, SETS[name])
        size = sum(os.path.getsize(os.path.join(args.out, name, f)) for f in files)
        total += size
        print(f"{name}: {len(files)} fixtures, {size / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB; versions {versions()}")
    if total > 2.5 * 1024 * 1024 and os.path.abspath(args.out) == os.path.abspath(ap.get_default("out")):
        sys.exit("fixtures exceed 2.5 MiB")


if __name__ == "__main__":
    main()
