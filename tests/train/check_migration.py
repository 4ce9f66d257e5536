#!/usr/bin/env python3
"""Expert migration in the main job: with sharding_strategy Dynamic (or enable_expert_migration)
the MoE layers' experts, with their AdamW moments, move between the EP ranks after a step whose
EP-rank imbalance (rank_load_imbalance: the busiest rank's kept tokens over the mean, minus 1) is
above migration_threshold. Moving an expert changes where it runs, not what it computes, so the
model trains as without migration:
- EP 2 on 2, EP 4 and DP 2 x EP 2 and TP 2 x EP 2 on 4 (AdamW, no aux loss so the loads drift),
  and EP 2 with biases, capacity dispatch with drops, 2 micro-batches per step and the sigmoid
  router with the expert bias:
  the losses and the tokens per expert of every step are those of the same layout without
  migration (to 1e-6 relative: an expert's rows reach another rank's GEMM calls in another
  split), the experts do move (threshold 0.02), and no more layers move after a step than
  were above the threshold in it;
- EP 2 with torsh's load_balancing object (a check every 3rd step, loads smoothed by 0.5, at
  most 2 experts moved per check): the same losses, and moves only at the checks;
- EP 4 with torsh's migration object alone (ModelParallel sharding, one MoE block): the
  Periodic trigger, a cooldown of 4 steps, experts at most 1 EP rank away: the same losses,
  and no move in the 4 steps after a move;
- threshold 1 over 2 ranks (an imbalance above it is impossible): nothing moves;
- the shipped examples/configs/migration.json (16 experts over EP 4, threshold 0.1, no aux loss)
  over 100 steps: the EP ranks' mean imbalance is at most 0.6 of the same run without
  migration, with the same final loss.
Usage: check_migration.py MPIEXEC SWITCHYARD BASE_CONFIG MIGRATION_CONFIG WORK_DIR"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_accumulation import close, run  # noqa: E402

STEPS = 10


def main():
    mpiexec, exe, base_path, shipped_path, work = sys.argv[1:6]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(base_path))
    base.update(load_balance_loss_coeff=0.0)
    cases = ((2, dict(expert_parallel_size=2)),
             (4, dict(expert_parallel_size=4)),
             (4, dict(expert_parallel_size=2, data_parallel_size=2)),
             (4, dict(expert_parallel_size=2, tensor_parallel_size=2)),
             # biases (their AdamW moments move too), capacity dispatch with drops, 2
             # micro-batches per step, the sigmoid router with the aux-loss-free expert bias
             (2, dict(expert_parallel_size=2, add_bias_linear=True, token_dispatch="capacity",
                      capacity_factor=1.0, enable_gradient_accumulation=True,
                      gradient_accumulation_steps=2, score_function="sigmoid",
                      enable_expert_bias=True)))
    for np, layout in cases:
        common = dict(base, **layout)
        name = f"np{np}_" + "_".join(f"{k.split('_')[0]}{v}" for k, v in layout.items()
                                     if isinstance(v, int) and not isinstance(v, bool))
        name += "_bias" if layout.get("add_bias_linear") else ""
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

    # torsh's load_balancing object: a check every 3rd step, on loads smoothed by 0.5, at most
    # 2 experts moved per check; the same losses as without migration.
    common = dict(base, expert_parallel_size=2)
    paced, text = run(mpiexec, exe, dict(common, sharding_strategy="Dynamic", load_balancing=dict(
        imbalance_threshold=0.02, check_frequency=3, load_smoothing_factor=0.5,
        max_concurrent_migrations=2)), 2, "np2_ep2_paced", work, steps=STEPS)
    fixed, _ = run(mpiexec, exe, common, 2, "np2_ep2_fixed", work, steps=STEPS)
    assert ("experts migrate when the EP ranks' imbalance is above 0.02 (checked every 3 "
            "step(s) on the loads smoothed by 0.5, at most 2 experts moved per check)") in text, text
    for a, b in zip(paced, fixed):
        assert close(a["loss"], b["loss"], 1e-6), ("paced", a["step"], a["loss"], b["loss"])
        assert a["step"] % 3 == 0 or a["expert_migrations"] == 0, ("paced", a)
    migrations = sum(a["expert_migrations"] for a in paced)
    assert migrations > 0, "paced: no expert moved"
    print(f"np2_ep2 with load_balancing (every 3rd step, smoothing 0.5, at most 2 experts): "
          f"{migrations} layer migrations, at steps "
          f"{sorted({a['step'] for a in paced if a['expert_migrations']})}")

    # torsh's migration object alone asks for migration: Periodic, a cooldown of 4 steps, at
    # most 1 EP rank away, GradualMigration's 2 experts per check.
    common = dict(base, expert_parallel_size=4, num_layers=1)
    spaced, text = run(mpiexec, exe, dict(common, migration=dict(
        enable_migration=True, triggers=["Periodic"], cooldown_period=4,
        max_migration_distance=1)), 4, "np4_ep4_migration_object", work, steps=STEPS)
    fixed, _ = run(mpiexec, exe, common, 4, "np4_ep4_one_block_fixed", work, steps=STEPS)
    assert ("experts migrate at every check where that lowers the busiest EP rank's load "
            "(Periodic trigger) (checked every 1 step(s), at most 2 experts moved per check, no "
            "move within 4 step(s) of the last, experts at most 1 EP rank(s) from where they "
            "were)") in text, text
    for a, b in zip(spaced, fixed):
        assert close(a["loss"], b["loss"], 1e-6), ("object", a["step"], a["loss"], b["loss"])
        assert a["tokens_per_expert"] == b["tokens_per_expert"], ("object", a["step"])
    at = [a["step"] for a in spaced if a["expert_migrations"]]
    assert at and all(later - earlier > 4 for earlier, later in zip(at, at[1:])), at
    print(f"np4_ep4 with the migration object (Periodic, cooldown 4, distance 1): migrations at "
          f"steps {at}")

    rows, _ = run(mpiexec, exe, dict(base, expert_parallel_size=2, enable_expert_migration=True,
                                     migration_threshold=1.0), 2, "np2_threshold1", work,
                  steps=STEPS)
    assert all(r["expert_migrations"] == 0 for r in rows), rows
    print("threshold 1 over 2 ranks: nothing moved")

    shipped = json.load(open(shipped_path))
    assert shipped["sharding_strategy"] == "Dynamic", shipped
    moving, _ = run(mpiexec, exe, shipped, 4, "shipped_dynamic", work, steps=100)
    fixed, _ = run(mpiexec, exe, dict(shipped, sharding_strategy="ModelParallel",
                                      migration_threshold=0.3), 4, "shipped_fixed", work,
                   steps=100)

    def mean_imbalance(rows):
        return sum(sum(r["rank_load_imbalance"]) / len(r["rank_load_imbalance"])
                   for r in rows) / len(rows)

    with_m, without = mean_imbalance(moving), mean_imbalance(fixed)
    assert with_m <= 0.6 * without, (with_m, without)
    assert close(moving[-1]["loss"], fixed[-1]["loss"], 1e-6), (moving[-1], fixed[-1])
    print(f"migration.json, 100 steps over EP 4: mean EP-rank imbalance {with_m:.3f} with "
          f"migration ({sum(r['expert_migrations'] for r in moving)} layer migrations) vs "
          f"{without:.3f} without; final loss {moving[-1]['loss']:.5f} vs {fixed[-1]['loss']:.5f}")


if __name__ == "__main__":
    main()
