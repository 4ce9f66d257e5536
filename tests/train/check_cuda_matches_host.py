#!/usr/bin/env python3
"""`switchyard train --backend cuda` against the host backend (needs a GPU): the same configs,
seed and steps on both, the MoE blocks on the device in one run and on the host in the other.
The first MoE block's routing at step 1 must agree exactly and every step's loss, aux loss and z loss to 1e-3 relative
(float32 on both sides: cuBLAS against the host GEMMs, over a few AdamW steps). Exits 77 (CTest's
skip) where no CUDA device is visible.
Usage: check_cuda_matches_host.py SWITCHYARD WORK_DIR CONFIG.json [CONFIG.json ...]"""
import json
import os
import subprocess
import sys

STEPS = 5


def run(exe, config, backend, work):
    out = os.path.join(work, f"{os.path.basename(config)}.{backend}.jsonl")
    p = subprocess.run([exe, "train", config, "--steps", str(STEPS), "--seed", "5", "--backend",
                        backend, "--metrics", out], capture_output=True, text=True, timeout=300)
    if backend == "cuda" and "no CUDA device is visible" in p.stdout + p.stderr:
        print("no CUDA device is visible: skipped")
        sys.exit(77)
    if p.returncode != 0:
        sys.exit(f"{backend} run of {config} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return [json.loads(line) for line in open(out)]


def main():
    exe, work, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(work, exist_ok=True)
    for config in configs:
        host, cuda = run(exe, config, "host", work), run(exe, config, "cuda", work)
        assert len(host) == len(cuda) == STEPS, (len(host), len(cuda))
        # The first MoE block routes the same inputs (later blocks see float32 differences).
        assert host[0]["tokens_per_expert"][0] == cuda[0]["tokens_per_expert"][0], (host[0], cuda[0])
        worst = 0.0
        for h, c in zip(host, cuda):
            for key in ("loss", "aux_loss", "z_loss"):
                gap = abs(h[key] - c[key]) / max(1e-12, abs(h[key]))
                worst = max(worst, gap)
                assert gap <= 1e-3, f"{config} step {h['step']} {key}: host {h[key]}, cuda {c[key]}"
        print(f"{os.path.basename(config)}: {STEPS} steps, loss host {host[-1]['loss']:.6f}, "
              f"cuda {cuda[-1]['loss']:.6f}, largest relative gap {worst:.2e}")


if __name__ == "__main__":
    main()
