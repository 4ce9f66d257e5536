#!/usr/bin/env python3
"""Switchyard against PyTorch + Megatron-Core on the same CPU, in one run (docs/benchmarks.md).

    python3 bench/peer_cpu.py            # full run (about 10 minutes on 2 cores)
    python3 bench/peer_cpu.py --quick    # smoke run: T = 256 only, short repetitions

1. Uses the venv in $SWITCHYARD_PEER_VENV (default ~/.cache/switchyard/peer-venv), creating it
   from PyPI (torch, megatron-core; not a CI dependency) when it is missing, and re-runs itself
   with its Python.
2. Builds bench_layer and bench_experts (build/bench, host only) and runs them with
   --benchmark_format=json under OMP_NUM_THREADS (and OPENBLAS_NUM_THREADS) = 1 and 2.
3. Times the same shapes in PyTorch with torch.set_num_threads(1 / 2): Megatron-Core's
   moe_utils.topk_routing_with_score_function (the router), apply_router_token_dropping plus the
   index computation of moe_utils.permute (the dispatch plan), moe_utils.permute and unpermute,
   the experts as a per-expert loop of torch matmuls and torch._grouped_mm (where it runs on the
   CPU), one large matmul of the same FLOPs, and a layer forward and forward+backward made of
   those pieces (autograd).
4. Prints Switchyard time, PyTorch time and their ratio per kernel, shape, T and thread count,
   the hardware fractions (permute / unpermute GB/s against memcpy, grouped GEMM against one
   GEMM, peak memory against the kept activations) and each against its target.
5. Writes bench/results/<date>-<cpu>-<n>c.json and .md.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_REQUIREMENTS = ["torch==2.15.0", "megatron-core==0.16.1"]
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "switchyard", "peer-venv")

# The shapes of bench/bench_layer.cpp (keep in step).
SHAPES = {
    0: dict(name="mixtral", H=1024, F=3584, E=8, k=2, score="softmax", groups=None, group_topk=None,
            scaling=None, bias=False, capacity_factor=1.25),
    1: dict(name="deepseek", H=1024, F=256, E=64, k=6, score="sigmoid", groups=8, group_topk=3,
            scaling=2.5, bias=True, capacity_factor=None),
}
TARGETS = {
    "router": ("speedup", 3.0, "≥ 3× PyTorch + Megatron"),
    "dispatch_plan": ("speedup", 3.0, "≥ 3× PyTorch + Megatron"),
    "permute": ("fraction", 0.60, "≥ 60 % of memcpy GB/s"),
    "unpermute": ("fraction", 0.60, "≥ 60 % of memcpy GB/s"),
    "grouped_gemm": ("fraction", 0.85, "≥ 85 % of one GEMM"),
    "layer_forward_backward": ("speedup", 1.0, "≥ 1× PyTorch eager (aim 1.5×)"),
    "layer_memory": ("ratio", 1.3, "peak ≤ 1.3× kept"),
}


# ---- 1. the venv ---------------------------------------------------------------------------------
def ensure_venv():
    venv = os.environ.get("SWITCHYARD_PEER_VENV", DEFAULT_VENV)
    py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    if not os.path.exists(py):
        print(f"peer_cpu: creating {venv} with {' '.join(PEER_REQUIREMENTS)} from PyPI", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "-q", *PEER_REQUIREMENTS])
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


# ---- 2. the Switchyard benchmarks ------------------------------------------------------------
def build(build_dir, jobs):
    if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        subprocess.check_call(["cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
                               "-DCMAKE_BUILD_TYPE=Release", "-DSWITCHYARD_ENABLE_CUDA=OFF",
                               "-DSWITCHYARD_BUILD_BENCH=ON", "-DSWITCHYARD_BUILD_TESTS=OFF",
                               "-DSWITCHYARD_BUILD_EXAMPLES=OFF",
                               # A header-only library is compiled with its user's flags: the
                               # benchmark targets this CPU, as PyTorch's kernels pick theirs at
                               # run time (AVX2 / AVX-512).
                               "-DCMAKE_CXX_FLAGS=-march=native"])
    subprocess.check_call(["cmake", "--build", build_dir, "-j", str(jobs), "--target",
                           "bench_layer", "bench_experts"])


def run_switchyard(build_dir, threads, quick, min_time):
    """{(kernel, shape, T): {"ms": real time per iteration, counters...}} for one thread count."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = {}
    for exe in ("bench_layer", "bench_experts"):
        cmd = [os.path.join(build_dir, "bench", exe), "--benchmark_format=json",
               f"--benchmark_min_time={min_time}"]
        if quick:
            cmd.append("--benchmark_filter=T:256/")
        res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                        text=True).stdout)
        for b in res["benchmarks"]:
            m = re.match(r"(\w+)/shape:(\d)/T:(\d+)", b["name"])
            if not m:
                continue
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
            row = {key: v for key, v in b.items() if isinstance(v, (int, float))}
            row["ms"] = b["real_time"] * scale
            out[(m.group(1), int(m.group(2)), int(m.group(3)))] = row
    return out


# ---- 3. PyTorch + Megatron-Core -------------------------------------------------------------------
def uneven_offsets(E, total):
    """bench_experts.cpp's rows per expert: shares 1 + (e·7 mod 5), the rest to the last."""
    w = [1 + (e * 7) % 5 for e in range(E)]
    s = sum(w)
    off = [0]
    for e in range(E - 1):
        off.append(off[-1] + total * w[e] // s)
    off.append(total)
    return off


def timed(fn, min_time, min_iters=1):
    """Mean wall time of fn() in ms after one warm-up call (as Google Benchmark's real time)."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if n >= min_iters and elapsed >= min_time:
            return 1e3 * elapsed / n


def run_torch(threads, quick, min_time):
    import torch
    import torch.nn.functional as Fn
    from megatron.core.transformer.moe import moe_utils as mu

    torch.set_num_threads(threads)
    out, notes = {}, []
    for shape, s in SHAPES.items():
        H, F, E, k = s["H"], s["F"], s["E"], s["k"]
        bias = torch.zeros(E) if s["bias"] else None
        for T in ([256] if quick else [256, 4096]):
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(T, H, generator=gen)
            wr = 0.02 * torch.randn(E, H, generator=gen)
            a = (6.0 / (H + F)) ** 0.5
            fc1 = (torch.rand(E, 2 * F, H, generator=gen) * 2 - 1) * a
            fc2 = (torch.rand(E, H, F, generator=gen) * 2 - 1) * a
            dy = torch.randn(T, H, generator=gen)

            def route(logits):
                return mu.topk_routing_with_score_function(
                    logits, k, use_pre_softmax=False, num_groups=s["groups"],
                    group_topk=s["group_topk"], scaling_factor=s["scaling"],
                    score_function=s["score"], expert_bias=bias)

            def drop(probs, rmap):
                if s["capacity_factor"] is None:
                    return probs, rmap
                return mu.apply_router_token_dropping(probs, rmap, router_topk=k,
                                                      capacity_factor=s["capacity_factor"],
                                                      drop_policy="probs")

            def plan(probs, rmap):
                # Token dropping, then the index part of moe_utils.permute (non-padded path) and
                # the tokens per expert: what Switchyard's build_plan produces.
                probs, rmap = drop(probs, rmap)
                m = rmap.bool().T.contiguous()
                idx = torch.arange(T).unsqueeze(0).expand(E, -1).masked_select(m)
                return probs, rmap, idx, rmap.sum(0)

            key = lambda name: (name, shape, T)  # noqa: E731
            with torch.no_grad():
                logits = Fn.linear(x, wr)
                out[key("router_linear")] = {"ms": timed(lambda: Fn.linear(x, wr), min_time)}
                out[key("router")] = {"ms": timed(lambda: route(logits), min_time)}
                probs, rmap = route(logits)
                out[key("dispatch_plan")] = {"ms": timed(lambda: plan(probs, rmap), min_time)}
                fprobs, fmap = drop(probs, rmap)
                R = int(fmap.sum())
                out[key("permute")] = {"ms": timed(lambda: mu.permute(x, fmap), min_time)}
                rows, _, sidx = mu.permute(x, fmap)
                out[key("unpermute")] = {"ms": timed(
                    lambda: mu.unpermute(rows, sidx, x.shape, probs=fprobs, routing_map=fmap),
                    min_time)}
                bytes_moved = (T + R) * H * 4
                for name in ("permute", "unpermute"):
                    out[key(name)]["GB/s"] = bytes_moved / out[key(name)]["ms"] * 1e-6

                # Experts: the fc1 GEMM over R = T·k uneven rows, as bench_experts.
                Rg = T * k
                off = uneven_offsets(E, Rg)
                xg = torch.randn(Rg, H, generator=gen)
                w1 = fc1  # [E][2F][H]
                flops = 2.0 * Rg * H * 2 * F

                def loop():
                    return torch.cat([xg[off[e]:off[e + 1]] @ w1[e].T for e in range(E)])

                out[key("grouped_gemm")] = {"ms": timed(loop, min_time)}
                out[key("single_gemm")] = {"ms": timed(lambda: xg @ w1[0].T, min_time)}
                offs = torch.tensor(off[1:], dtype=torch.int32)
                wt = w1.transpose(-2, -1)
                try:
                    ref = loop()
                    got = torch._grouped_mm(xg, wt, offs=offs)
                    err = float((got - ref).abs().max())
                    if err > 1e-2 * float(ref.abs().max()):
                        raise RuntimeError(f"differs from the loop by {err}")
                    out[key("torch_grouped_mm")] = {
                        "ms": timed(lambda: torch._grouped_mm(xg, wt, offs=offs), min_time)}
                except Exception as e:  # noqa: BLE001 - report whatever stops it on this CPU
                    msg = f"torch._grouped_mm on the CPU ({s['name']} T={T}): {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    if msg not in notes:
                        notes.append(msg)
                for name in ("grouped_gemm", "single_gemm", "torch_grouped_mm"):
                    if key(name) in out:
                        out[key(name)]["GFLOP/s"] = flops / out[key(name)]["ms"] * 1e-6

            # The layer: Megatron's routing, dropping, permute and unpermute around torch
            # SwiGLU experts (Megatron's chunk order), autograd for the backward. Each expert
            # has its own weight tensors, as Megatron's SequentialMLP (indexing one stacked
            # tensor would make every expert's backward write a zero gradient of all experts).
            w_r = wr.clone().requires_grad_(True)
            w1 = [fc1[e].clone().requires_grad_(True) for e in range(E)]
            w2 = [fc2[e].clone().requires_grad_(True) for e in range(E)]
            params = [w_r, *w1, *w2]
            xin = x.clone().requires_grad_(True)

            def forward():
                lg = Fn.linear(xin, w_r)
                p, m = route(lg)
                p, m = drop(p, m)
                perm, _, si = mu.permute(xin, m)
                counts = m.sum(0).tolist()
                outs = []
                for e, r in enumerate(torch.split(perm, counts)):
                    g, u = torch.chunk(r @ w1[e].T, 2, dim=-1)
                    outs.append((Fn.silu(g) * u) @ w2[e].T)
                return mu.unpermute(torch.cat(outs), si, xin.shape, probs=p, routing_map=m)

            def forward_backward():
                for t in (xin, *params):
                    t.grad = None
                forward().backward(dy)

            out[key("layer_forward")] = {"ms": timed(forward, min_time)}
            out[key("layer_forward_backward")] = {"ms": timed(forward_backward, min_time)}
            for name in ("layer_forward", "layer_forward_backward"):
                out[key(name)]["tokens/s"] = T / out[key(name)]["ms"] * 1e3
    return out, notes


# ---- 4. the table -------------------------------------------------------------------------------
KERNELS = ["router_linear", "router", "dispatch_plan", "permute", "unpermute", "grouped_gemm",
           "layer_forward", "layer_forward_backward"]


def verdict(kernel, value):
    if kernel not in TARGETS or value is None:
        return ""
    kind, bound, _ = TARGETS[kernel]
    ok = value <= bound if kind == "ratio" else value >= bound
    return "meets" if ok else "short"


def tables(results):
    """Markdown tables: per kernel Switchyard vs PyTorch, and the hardware fractions."""
    lines = ["| kernel | shape | T | threads | Switchyard ms | PyTorch ms | speedup | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    hw = ["| measure | shape | T | threads | value | target |", "| --- | --- | --- | --- | --- | --- |"]
    for threads, r in results.items():
        sy_, pt = r["switchyard"], r["torch"]
        for kernel in KERNELS:
            for shape in SHAPES:
                for T in (256, 4096):
                    a, b = sy_.get((kernel, shape, T)), pt.get((kernel, shape, T))
                    if not a or not b:
                        continue
                    sp = b["ms"] / a["ms"]
                    v = verdict(kernel, sp) if TARGETS.get(kernel, ("",))[0] == "speedup" else ""
                    lines.append(f"| {kernel} | {SHAPES[shape]['name']} | {T} | {threads} | "
                                 f"{a['ms']:.3f} | {b['ms']:.3f} | {sp:.2f}× | {v} |")
        for shape in SHAPES:
            for T in (256, 4096):
                where = f"{SHAPES[shape]['name']} | {T} | {threads}"

                def fraction(label, a, b, unit, target=None):
                    """One row: a's rate over b's (same unit), with the target's verdict."""
                    if not (a and b):
                        return
                    f = a[unit] / b[unit]
                    v = f" {verdict(target, f)} |" if target else " |"
                    hw.append(f"| {label} {unit} ({a[unit]:.1f} / {b[unit]:.1f}) | {where} | "
                              f"{100 * f:.0f} % |{v}")

                mc = sy_.get(("memcpy_rows", shape, T))
                for name in ("permute", "unpermute"):
                    fraction(f"{name} GB/s / memcpy", sy_.get((name, shape, T)), mc, "GB/s", name)
                fraction("grouped GEMM / one GEMM", sy_.get(("grouped_gemm", shape, T)),
                         sy_.get(("single_gemm", shape, T)), "GFLOP/s", "grouped_gemm")
                one = pt.get(("single_gemm", shape, T))
                fraction("PyTorch per-expert loop / one matmul", pt.get(("grouped_gemm", shape, T)),
                         one, "GFLOP/s")
                fraction("torch._grouped_mm / one matmul", pt.get(("torch_grouped_mm", shape, T)),
                         one, "GFLOP/s")
                m = sy_.get(("layer_memory", shape, T))
                if m:
                    hw.append(f"| peak / kept bytes of one forward+backward ({m['peak_bytes'] / 2**20:.1f} / "
                              f"{m['kept_bytes'] / 2**20:.1f} MiB; the forward holds "
                              f"{m['saved_bytes'] / 2**20:.1f} MiB) | {SHAPES[shape]['name']} | {T} | "
                              f"{threads} | {m['peak_over_kept']:.2f}× | "
                              f"{verdict('layer_memory', m['peak_over_kept'])} |")
    return "\n".join(lines), "\n".join(hw)


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model, os.cpu_count()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: T = 256, short repetitions")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile jobs (default 1)")
    ap.add_argument("--no-build", action="store_true", help="use the built executables as they are")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    args = ap.parse_args()
    ensure_venv()

    import torch
    import megatron.core  # noqa: F401
    import importlib.metadata as md

    min_time = 0.05 if args.quick else 0.5
    threads = [int(t) for t in args.threads.split(",")]
    started = time.time()
    if not args.no_build:
        build(args.build_dir, args.jobs)
    results, notes = {}, []
    for n in threads:
        print(f"peer_cpu: {n} thread(s): Switchyard", flush=True)
        sy_ = run_switchyard(args.build_dir, n, args.quick, min_time)
        print(f"peer_cpu: {n} thread(s): PyTorch + Megatron-Core", flush=True)
        pt, nt = run_torch(n, args.quick, min_time)
        notes += [x for x in nt if x not in notes]
        results[n] = {"switchyard": sy_, "torch": pt}

    model, cores = machine()
    date = datetime.date.today().isoformat()
    versions = {"torch": torch.__version__, "megatron-core": md.version("megatron-core"),
                "python": platform.python_version()}
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    main_table, hw_table = tables(results)
    elapsed = time.time() - started
    header = (f"Switchyard {git} vs PyTorch {versions['torch']} + Megatron-Core "
              f"{versions['megatron-core']}, float32, {model} ({cores} logical CPUs), {date}"
              f"{', quick run' if args.quick else ''}; {elapsed / 60:.1f} min.")
    if args.note:
        header += f" {args.note}"
    text = (f"{header}\n\nSpeedup = PyTorch time / Switchyard time.\n\n{main_table}\n\n"
            f"Hardware fractions (Switchyard):\n\n{hw_table}\n")
    if notes:
        text += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + text)

    os.makedirs(args.out, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")
    stem = os.path.join(args.out, f"{date}-{slug}-{cores}c{'-quick' if args.quick else ''}")
    doc = {"date": date, "machine": {"cpu": model, "logical_cpus": cores,
                                     "platform": platform.platform()},
           "git": git, "versions": versions, "quick": args.quick, "note": args.note, "minutes": elapsed / 60,
           "notes": notes, "targets": {k: v[2] for k, v in TARGETS.items()},
           "results": {str(n): {side: [{"kernel": k[0], "shape": SHAPES[k[1]]["name"], "T": k[2],
                                        **v} for k, v in r[side].items()]
                                for side in ("switchyard", "torch")}
                       for n, r in results.items()}}
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(f"# {os.path.basename(stem)}\n\n{text}\nReproduce: `python3 bench/peer_cpu.py"
                f"{' --quick' if args.quick else ''}`\n")
    print(f"peer_cpu: wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
