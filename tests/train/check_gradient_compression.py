#!/usr/bin/env python3
"""Gradient compression in the main job: with gradient_compression every gradient sum (the MoE
layers' and the dense blocks') runs in bfloat16, so the model trains as without it up to
bfloat16's rounding of the gradients.
- DP 2 on 2 and DP 2 x EP 2 on 4 (AdamW): step 1 (before any update) is the same bit for bit;
  the later steps differ (the gradients were rounded) but stay within 1e-2 of the run without
  compression over 8 steps.
- One process: the gradients are rounded too (a group of one), so the numbers differ from the
  run without compression from step 2 on, by as little.
- The quick start with compression over DP 2 trains: the loss at step 60 is below half of step
  1's.
Usage: check_gradient_compression.py MPIEXEC SWITCHYARD BASE_CONFIG QUICKSTART_CONFIG WORK_DIR"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_accumulation import close, run  # noqa: E402

STEPS = 8


def main():
    mpiexec, exe, base_path, quick_path, work = sys.argv[1:6]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(base_path))
    base.update(num_layers=3, moe_layer_pattern=[1, 0, 1])  # a dense block between two MoE ones
    for np, ep in ((2, 1), (4, 2), (1, 1)):
        common = dict(base, expert_parallel_size=ep)
        name = f"np{np}_ep{ep}"
        packed, text = run(mpiexec, exe, dict(common, gradient_compression=True), np,
                           f"{name}_bf16", work, steps=STEPS)
        plain, _ = run(mpiexec, exe, common, np, f"{name}_plain", work, steps=STEPS)
        assert "gradients summed in bfloat16" in text, text
        assert packed[0] == dict(plain[0], tokens_per_second=packed[0]["tokens_per_second"],
                                 seconds=packed[0]["seconds"]), (packed[0], plain[0])
        gaps = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(packed, plain)]
        assert max(gaps) <= 1e-2, f"{name}: relative loss gaps {gaps}"
        assert any(g > 0 for g in gaps[1:]), f"{name}: compression changed nothing"
        for a, b in zip(packed, plain):
            assert close(a["aux_loss"], b["aux_loss"], 1e-1), (name, a, b)
        print(f"{name}: bfloat16 sums, loss {packed[0]['loss']:.6f} -> {packed[-1]['loss']:.6f} "
              f"vs {plain[0]['loss']:.6f} -> {plain[-1]['loss']:.6f}; relative gaps "
              + " ".join(f"{g:.1e}" for g in gaps))

    quick = json.load(open(quick_path))
    rows, _ = run(mpiexec, exe, dict(quick, gradient_compression=True), 2, "quickstart_bf16",
                  work, steps=60)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.5 * first, f"quick start with compression: {first} -> {last}"
    print(f"quick start over DP 2 with bfloat16 sums: {first:.4f} -> {last:.4f} in 60 steps")


if __name__ == "__main__":
    main()
