#!/usr/bin/env python3
"""Expert migration in the main job: with sharding_strategy Dynamic (or enable_expert_migration)
the MoE layers' experts, with their AdamW moments, move between the EP ranks after a step whose
EP-rank imbalance (rank_load_imbalance: the busiest rank's kept tokens over the mean, minus 1) is
above migration_threshold. Moving an expert changes where it runs, not what it computes, so the
model trains as without migration:
- EP 2 on 2, EP 4 and DP 2 x EP 2 and TP 2 x EP 2 on 4 (AdamW, no aux loss so the loads drift):
  the losses and the tokens per expert of every step are those of the same layout without
  migration (to 1e-6 relative: an expert's rows reach another rank's GEMM calls in another
  split), the experts do move (threshold 0.02), and no more layers move after a step than
  were above the threshold in it;
- threshold 1 over 2 ranks (an imbalance above it is impossible): nothing moves.
Usage: check_migration.py MPIEXEC SWITCHYARD BASE_CONFIG WORK_DIR"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_accumulation import close, run  # noqa: E402

STEPS = 10


def main():
    mpiexec, exe, base_path, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(base_path))
    base.update(load_balance_loss_coeff=0.0)
    cases = ((2, dict(expert_parallel_size=2)),
             (4, dict(expert_parallel_size=4)),
             (4, dict(expert_parallel_size=2, data_parallel_size=2)),
             (4, dict(expert_parallel_size=2, tensor_parallel_size=2)))
    for np, layout in cases:
        common = dict(base, **layout)
        name = f"np{np}_" + "_".join(f"{k.split('_')[0]}{v}" for k, v in layout.items())
        threshold = 0.02
        moving, text = run(mpiexec, exe, dict(common, sharding_strategy="Dynamic",
                                               migration_threshold=threshold), np,
                           f"{name}_dynamic", work, steps=STEPS)
        fixed, _ = run(mpiexec, exe, common, np, f"{name}_fixed", work, steps=STEPS)
        assert "experts migrate when the EP ranks' imbalance is above 0.02" in text, text
        migrations = 0
        for a, b in zip(moving, fixed):
            assert close(a["loss"], b["loss"], 1e-6), (name, a["step"], a["loss"], b["loss"])
            assert a["tokens_per_expert"] == b["tokens_per_expert"], (name, a["step"])
            # A layer moves only when it was above the threshold (and the balanced placement
            # lowers its busiest rank, which the JSONL does not show).
            above = sum(v > threshold for v in a["rank_load_imbalance"])
            assert a["expert_migrations"] <= above, (name, a)
            assert b["expert_migrations"] == 0
            migrations += a["expert_migrations"]
        assert migrations > 0, f"{name}: no expert moved"
        assert "experts migrated in" in text, text
        print(f"{name}: {migrations} layer migrations over {STEPS} steps, loss "
              f"{moving[-1]['loss']:.6f} vs {fixed[-1]['loss']:.6f} without; largest gap "
              f"{max(abs(a['loss'] - b['loss']) / b['loss'] for a, b in zip(moving, fixed)):.1e}")

    rows, _ = run(mpiexec, exe, dict(base, expert_parallel_size=2, enable_expert_migration=True,
                                     migration_threshold=1.0), 2, "np2_threshold1", work,
                  steps=STEPS)
    assert all(r["expert_migrations"] == 0 for r in rows), rows
    print("threshold 1 over 2 ranks: nothing moved")


if __name__ == "__main__":
    main()
