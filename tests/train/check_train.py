#!/usr/bin/env python3
"""Runs `switchyard train` on the shipped configs and checks what seed 003 describes:
the quick start's loss falls below half of its start; a load-balancing coefficient of 0.01
ends with a lower load CV than 0 on the same seed; a larger capacity factor drops fewer tokens;
global_aux_loss (alone, and in the list form) trains as aux_loss with one micro-batch per step;
moe_layer_pattern [1, 0] trains as moe_layer_frequency 2.
Usage: check_train.py SWITCHYARD CONFIG_DIR WORK_DIR"""
import json
import subprocess
import sys


def run(exe, cfg, out, steps):
    subprocess.run([exe, "train", cfg, "--steps", str(steps), "--seed", "1234", "--metrics", out],
                   check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == steps, f"{out}: {len(rows)} rows for {steps} steps"
    for key in ("step", "loss", "aux_loss", "z_loss", "dropped_fraction", "load_cv",
                "tokens_per_second", "tokens_per_expert"):
        assert key in rows[0], f"{out}: no '{key}' in the metrics"
    return rows


def derived(configs, work, name, **fields):
    """The quick start's config with `fields` changed, written to WORK_DIR/name.json."""
    cfg = json.load(open(f"{configs}/quickstart.json"))
    cfg.update(fields)
    path = f"{work}/{name}.json"
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    return path


def same_run(a, b, rel):
    """Each step's loss and aux loss of runs a and b agree within rel (relative)."""
    for ra, rb in zip(a, b):
        for key in ("loss", "aux_loss"):
            x, y = ra[key], rb[key]
            assert abs(x - y) <= rel * abs(y), f"step {ra['step']}: {key} {x!r} vs {y!r}"


def tail_mean(rows, key, n=20):
    return sum(r[key] for r in rows[-n:]) / n


def main():
    exe, configs, work = sys.argv[1:4]
    q = run(exe, f"{configs}/quickstart.json", f"{work}/quickstart.jsonl", 100)
    print(f"quickstart: loss {q[0]['loss']:.4f} -> {q[-1]['loss']:.4f}")
    assert q[-1]["loss"] < 0.5 * q[0]["loss"], "the quick start's loss did not fall below half"
    on = run(exe, f"{configs}/balance_on.json", f"{work}/balance_on.jsonl", 200)
    off = run(exe, f"{configs}/balance_off.json", f"{work}/balance_off.jsonl", 200)
    cv_on, cv_off = tail_mean(on, "load_cv"), tail_mean(off, "load_cv")
    print(f"load CV over the last 20 steps: coefficient 0.01 {cv_on:.4f}, 0 {cv_off:.4f}")
    assert cv_on < cv_off, "the aux loss did not lower the load CV"
    c1 = run(exe, f"{configs}/capacity_1.0.json", f"{work}/capacity_1.0.jsonl", 200)
    c2 = run(exe, f"{configs}/capacity_2.0.json", f"{work}/capacity_2.0.jsonl", 200)
    d1, d2 = tail_mean(c1, "dropped_fraction"), tail_mean(c2, "dropped_fraction")
    print(f"dropped fraction over the last 20 steps: capacity factor 1.0 {d1:.4f}, 2.0 {d2:.4f}")
    assert d1 > d2, "a larger capacity factor did not lower the dropped fraction"
    # With one micro-batch per global batch the global aux loss is each layer's Switch aux loss,
    # so training follows the aux_loss run step for step; each MoE layer keeps its own running
    # counts (as each Megatron router does). The list form gives the same loss in two halves.
    aux = run(exe, derived(configs, work, "aux", load_balancing_type="aux_loss"),
              f"{work}/aux.jsonl", 10)
    glob = run(exe, derived(configs, work, "global", load_balancing_type="global_aux_loss"),
               f"{work}/global.jsonl", 10)
    halves = run(exe, derived(configs, work, "halves",
                              load_balancing_type=["global_aux_loss", "aux_loss"],
                              load_balance_loss_coeff=[0.005, 0.005]),
                 f"{work}/halves.jsonl", 10)
    same_run(glob, aux, 1e-12)
    same_run(halves, aux, 1e-6)
    print(f"global_aux_loss and [global_aux_loss, aux_loss] halves follow aux_loss: aux "
          f"{aux[-1]['aux_loss']:.6g}, {glob[-1]['aux_loss']:.6g}, {halves[-1]['aux_loss']:.6g}")
    # A gated shared expert beside the routed ones (DeepSeek / Qwen-MoE shape): it trains too,
    # and it is part of the model (another loss from the first step on).
    shared = run(exe, derived(configs, work, "shared", shared_expert_intermediate_size=64,
                              shared_expert_gate=True), f"{work}/shared.jsonl", 100)
    print(f"shared expert: loss {shared[0]['loss']:.4f} -> {shared[-1]['loss']:.4f}")
    assert shared[0]["loss"] != q[0]["loss"], "the shared expert did not change the model"
    assert shared[-1]["loss"] < 0.5 * shared[0]["loss"], "with a shared expert the loss did not halve"
    # Megatron's moe_layer_freq list form: the pattern [1, 0] is frequency 2, step for step;
    # [0, 1] puts the MoE layer second (one layer of counts, another model).
    freq2 = run(exe, derived(configs, work, "freq2", moe_layer_frequency=2), f"{work}/freq2.jsonl", 10)
    pattern = run(exe, derived(configs, work, "pattern", moe_layer_pattern=[1, 0]),
                  f"{work}/pattern.jsonl", 10)
    same_run(pattern, freq2, 1e-12)
    second = run(exe, derived(configs, work, "second", moe_layer_pattern=[0, 1]),
                 f"{work}/second.jsonl", 10)
    assert len(pattern[0]["tokens_per_expert"]) == len(second[0]["tokens_per_expert"]) == 1
    assert second[0]["loss"] != pattern[0]["loss"], "moe_layer_pattern [0, 1] gave the [1, 0] model"
    print(f"moe_layer_pattern [1, 0] follows moe_layer_frequency 2: loss {pattern[-1]['loss']:.6f}; "
          f"[0, 1]: {second[-1]['loss']:.6f}")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
