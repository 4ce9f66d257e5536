#!/usr/bin/env python3
"""Tensor-parallel experts in the main job: `switchyard train` under mpirun with
tensor_parallel_size 2 (each expert's F split over two ranks, the TP ranks on other tokens) trains
the same model on the same tokens as the layout without TP on as many processes (TP 2 against DP 2
on 2 processes, TP 2 x EP 2 against DP 2 x EP 2 on 4): the same routing at step 1 and the same
losses, to float32 reordering of the F sums. Also with a gated shared expert beside the routed
ones (its F split over TP as well; TP 2 against DP 2 on 2 processes, TP 2 x EP 2 on 4).
Usage: check_tensor_parallel.py MPIEXEC SWITCHYARD BASE_CONFIG WORK_DIR"""
import json
import os
import subprocess
import sys

STEPS = 5


def run(mpiexec, exe, cfg, np, name, work):
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    out = os.path.join(work, f"{name}.jsonl")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")
    text = subprocess.run([mpiexec, "-np", str(np), "--oversubscribe", exe, "train", path,
                           "--steps", str(STEPS), "--seed", "77", "--metrics", out],
                          check=True, env=env, capture_output=True, text=True, timeout=240).stdout
    assert f"on {np} rank(s)" in text, text
    if cfg.get("shared_expert_intermediate_size"):
        assert "shared expert F" in text, text
    return [json.loads(line) for line in open(out)]


def main():
    mpiexec, exe, base_path, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    base = json.load(open(base_path))
    shared = {"shared_expert_intermediate_size": 96, "shared_expert_gate": True}
    for np, ep, extra in ((2, 1, {}), (4, 2, {}), (2, 1, shared), (4, 2, shared)):
        plain = dict(base, expert_parallel_size=ep, **extra)
        split = dict(plain, tensor_parallel_size=2)
        tag = f"np{np}{'_shared' if extra else ''}"
        a = run(mpiexec, exe, plain, np, f"{tag}_plain", work)
        b = run(mpiexec, exe, split, np, f"{tag}_tp2", work)
        assert len(a) == len(b) == STEPS
        assert a[0]["tokens_per_expert"] == b[0]["tokens_per_expert"], (a[0], b[0])
        for ra, rb in zip(a, b):
            for key in ("loss", "aux_loss", "z_loss"):
                tol = 1e-4 * max(1.0, abs(ra[key]))
                assert abs(ra[key] - rb[key]) <= tol, f"np {np} step {ra['step']} {key}: {ra[key]} vs {rb[key]}"
        print(f"np {np}{' (shared expert)' if extra else ''}: EP {ep} with and without TP 2, "
              f"{STEPS} steps: loss "
              f"{a[0]['loss']:.6f} -> {a[-1]['loss']:.6f} vs {b[0]['loss']:.6f} -> {b[-1]['loss']:.6f}")


if __name__ == "__main__":
    main()
