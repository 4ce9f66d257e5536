#!/usr/bin/env python3
"""Gradient accumulation in the main job: `switchyard train` with enable_gradient_accumulation and
gradient_accumulation_steps n runs n micro-batches per optimizer step, scales the summed gradients
by 1/n (as Megatron scales each micro-batch's loss), reduces them once, updates the aux-loss-free
expert bias once from the step's summed counts, and reports the mean losses and the summed counts.
Micro-batch m of token rank r holds the tokens rank m*R + r holds with n times the data-parallel
ranks, so with the losses that are sums or means over tokens (MSE, z-loss, dropless or per-rank
capacity, expert-bias counts, the sequence aux loss) accumulating n micro-batches trains as n
times the data-parallel ranks with one, to float rounding: 1 process against DP 2 on 2, EP 2 on 2
against DP 2 x EP 2 on 4, TP 2 on 2 against DP 2 x TP 2 on 4, 3 micro-batches with a dense block
against DP 3 on 3.
SGD, so a wrong gradient scale shows (AdamW would hide it). Then the quick start with its aux loss
and 2 micro-batches per step trains (the loss halves) and reports what it ran.
Usage: check_accumulation.py MPIEXEC SWITCHYARD BASE_CONFIG QUICKSTART_CONFIG WORK_DIR"""
import json
import os
import subprocess
import sys

STEPS = 5
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")


def run(mpiexec, exe, cfg, np, name, work, steps=STEPS):
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    out = os.path.join(work, f"{name}.jsonl")
    cmd = [exe, "train", path, "--steps", str(steps), "--seed", "91", "--metrics", out]
    if np > 1:
        cmd = [mpiexec, "-np", str(np), "--oversubscribe"] + cmd
    text = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True,
                          timeout=300).stdout
    assert f"on {np} rank(s)" in text, text
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == steps, f"{name}: {len(rows)} rows for {steps} steps"
    return rows, text


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-12


# (processes, EP, TP, micro-batches, config changes): each against DP x micro-batches with one.
CASES = (
    (1, 1, 1, 2, {}),
    (2, 2, 1, 2, {}),
    (2, 1, 2, 2, {}),
    # n = 3 (1/3 is not exact), a dense block between two MoE blocks, the sequence aux loss
    # (a mean over the group's sequences, so it sums over micro-batches as over ranks).
    (1, 1, 1, 3, dict(num_layers=3, moe_layer_pattern=[1, 0, 1], load_balancing_type="seq_aux_loss",
                      load_balance_loss_coeff=0.01)),
)


def main():
    mpiexec, exe, base_path, quick_path, work = sys.argv[1:6]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(base_path))
    # No aux loss (its counts are per micro-batch, so it differs from the larger group's);
    # z-loss, capacity dispatch and the expert bias (sigmoid scores) stay on.
    base.update(load_balance_loss_coeff=0.0, load_balancing_type="none", optimizer="SGD",
                token_dispatch="capacity", capacity_factor=1.0,
                learning_rate=0.05, score_function="sigmoid", enable_expert_bias=True,
                expert_bias_update_rate=0.01)
    for np, ep, tp, n, changes in CASES:
        common = dict(base, expert_parallel_size=ep, tensor_parallel_size=tp, **changes)
        acc_cfg = dict(common, enable_gradient_accumulation=True, gradient_accumulation_steps=n)
        name = f"ep{ep}_tp{tp}_n{n}"
        acc, text = run(mpiexec, exe, acc_cfg, np, f"{name}_np{np}_accumulate", work)
        dp, _ = run(mpiexec, exe, common, n * np, f"{name}_np{n * np}_dp", work)
        assert f"{n} micro-batches per step" in text, text
        keys = ["loss", "z_loss"] + (["aux_loss"] if "load_balancing_type" in changes else [])
        for ra, rb in zip(acc, dp):
            assert ra["micro_batches"] == n and rb["micro_batches"] == 1, (ra, rb)
            assert ra["tokens"] == rb["tokens"], (ra["tokens"], rb["tokens"])
            # Routing follows the weights: the same counts at every step means the same updates
            # (with the expert bias updated from the step's summed counts). The sums run in
            # another order (micro-batches, then ranks), so a near-tie could in principle flip
            # a route; the runs are deterministic and none does.
            assert ra["tokens_per_expert"] == rb["tokens_per_expert"], (ra["step"], ra, rb)
            assert ra["kept_per_expert"] == rb["kept_per_expert"], (ra["step"], ra, rb)
            for key in keys:
                assert close(ra[key], rb[key], 1e-6), \
                    f"{name} step {ra['step']} {key}: {ra[key]} vs {rb[key]}"
        assert any(r["dropped_fraction"] > 0 for r in dp), "capacity dropped nothing"
        assert dp[0]["loss"] - dp[-1]["loss"] > 1e-3, "SGD did not lower the loss"
        print(f"EP {ep} TP {tp}: {n} micro-batches on {np} process(es) = DP x{n} on {n * np}, "
              f"{STEPS} steps: loss {acc[0]['loss']:.6f} -> {acc[-1]['loss']:.6f} vs "
              f"{dp[0]['loss']:.6f} -> {dp[-1]['loss']:.6f}")

    # The quick start (AdamW, aux and z-loss) with 2 micro-batches per step trains too.
    quick = json.load(open(quick_path))
    quick.update(enable_gradient_accumulation=True, gradient_accumulation_steps=2)
    rows, _ = run(mpiexec, exe, quick, 1, "quickstart_accumulate2", work, steps=60)
    assert all(r["aux_loss"] is not None and r["tokens"] == 2 * 256 for r in rows)
    assert all(sum(r["tokens_per_expert"][0]) == 2 * 256 * 2 for r in rows)
    print(f"quick start, 2 micro-batches per step: loss {rows[0]['loss']:.4f} -> "
          f"{rows[-1]['loss']:.4f}")
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], "with accumulation the loss did not halve"
    # global_aux_loss keeps its running counts over the step's micro-batches: its first
    # micro-batch is the Switch aux loss, the second uses both micro-batches' counts, so the
    # step's aux loss differs from aux_loss's while the first step's MSE (same weights) does not.
    glob, _ = run(mpiexec, exe, dict(quick, load_balancing_type="global_aux_loss"), 1,
                  "quickstart_global_accumulate2", work, steps=2)
    assert close(glob[0]["loss"], rows[0]["loss"], 1e-12), (glob[0], rows[0])
    assert not close(glob[0]["aux_loss"], rows[0]["aux_loss"], 1e-9), (glob[0], rows[0])
    print(f"global_aux_loss over 2 micro-batches: aux {glob[0]['aux_loss']:.9f} vs aux_loss "
          f"{rows[0]['aux_loss']:.9f}")
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
