#!/usr/bin/env python3
"""The PyTorch baseline of bench_gpu (issue 8; docs/benchmarks.md), run in the same call on the
same GPU, with the same cases, shapes, token counts, timing method and input rotation:

  router_topk      softmax over fp32 logits, torch.topk (Megatron's TopKRouter)
  router_sinkhorn  Megatron's sinkhorn() loop, which tests convergence on the host every
                   iteration, then topk and the gathered activation (sinkhorn_load_balancing)
  dispatch_plan    Megatron's permutation plan: routing map, tokens per expert, masked_select
                   of the token indices (moe_utils.permute)
  permute          index_select of the bf16 rows
  unpermute        probs times rows, scatter_add into [T][H] (moe_utils.unpermute), bf16
  grouped_gemm     torch._grouped_mm, bf16 (a per-expert loop of matmuls where it is missing)
  layer_forward    the whole layer in fp32 (router, aux + z loss, permute, SwiGLU experts as a
  layer_backward   per-expert loop, as SequentialMLP, unpermute) and its autograd backward

  python3 bench/gpu/peer_torch.py --out peer_torch.json [--compare bench_gpu.json --md out.md]

--compare reads bench_gpu's JSON and writes the side-by-side table: each case's Switchyard and
PyTorch medians, the speed-up (PyTorch time / Switchyard time) and Switchyard's fraction of its
floor. --device cpu with --tiny is a smoke test of the script itself (no GPU needed).
"""
import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time

import torch

SHAPES = {"mixtral": (4096, 14336, 8, 2), "deepseek": (7168, 2048, 256, 8)}


class Timer:
    """Events on CUDA, perf_counter on the CPU; median of the runs after 2 warm-up runs, at
    least 5 runs and up to 30 or `seconds` of measurement (as bench_gpu)."""

    def __init__(self, device, seconds, l2):
        self.device, self.seconds = device, seconds
        # Written before every timed run: evicts L2 and keeps the GPU busy while the run's
        # launches queue (as bench_gpu's memset).
        self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def run(self, work, before=None):
        cuda = self.device.type == "cuda"
        for i in range(2):
            if before:
                before(i)
            work(i)
        if cuda:
            torch.cuda.synchronize()
        times, total = [], 0.0
        i = 0
        while i < 30 and (i < 5 or total < self.seconds * 1e3):
            if before:
                before(2 + i)
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                self.flush.fill_(i & 0xFF)
                a.record()
                work(2 + i)
                b.record()
                b.synchronize()
                ms = a.elapsed_time(b)
            else:
                t0 = time.perf_counter()
                work(2 + i)
                ms = (time.perf_counter() - t0) * 1e3
            times.append(ms)
            total += ms
            i += 1
        return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def rotations(nbytes, l2):
    return int(min(64, max(1, math.ceil(2 * l2 / max(nbytes, 1)))))


def random_tensor(shape, dtype, device, scale, gen):
    """|v| in [0.25, 1) times scale with a random sign: never zero (as bench_gpu). Drawn in
    place, the signs in chunks, so a large weight needs little more than its own memory."""
    t = torch.empty(shape, dtype=dtype, device=device).uniform_(0.25, 1.0, generator=gen)
    for chunk in t.view(-1).split(1 << 24):
        flip = torch.rand(chunk.numel(), generator=gen, device=device) < 0.5
        chunk.mul_(torch.where(flip, -1.0, 1.0).to(dtype))
    return t.mul_(scale)


def rotating(count, shape, dtype, device, scale, gen):
    return [random_tensor(shape, dtype, device, scale, gen) for _ in range(count)]


def sinkhorn(cost, tol=0.0001):
    """Megatron-Core's moe_utils.sinkhorn: the host reads `error` every iteration."""
    cost = torch.exp(cost)
    d0 = torch.ones(cost.size(0), device=cost.device, dtype=cost.dtype)
    d1 = torch.ones(cost.size(1), device=cost.device, dtype=cost.dtype)
    eps = 0.00000001
    error = 1e9
    d1_old = d1
    iterations = 0
    while error > tol and iterations < 1000:  # Switchyard's cap (the reference has none)
        d0 = (1 / d0.size(0)) * 1 / (torch.sum(d1 * cost, 1) + eps)
        d1 = (1 / d1.size(0)) * 1 / (torch.sum(d0.unsqueeze(1) * cost, 0) + eps)
        error = torch.mean(torch.abs(d1_old - d1))
        d1_old = d1
        iterations += 1
    return d1 * cost * d0.unsqueeze(1), iterations


def plan(idx, T, E):
    """Megatron's permutation plan from top-k indices: routing map [T][E], tokens per expert,
    the token of each row in expert-major order."""
    routing_map = torch.zeros(T, E, dtype=torch.bool, device=idx.device).scatter(1, idx, True)
    tokens_per_expert = routing_map.sum(dim=0)
    rm_t = routing_map.T.contiguous()
    token_indices = torch.arange(T, device=idx.device).unsqueeze(0).expand(E, -1)
    sorted_indices = token_indices.masked_select(rm_t)
    return routing_map, tokens_per_expert, sorted_indices


def unpermute(rows, probs, routing_map, sorted_indices, T, H):
    permuted_probs = probs.T.contiguous().masked_select(routing_map.T.contiguous())
    weighted = rows * permuted_probs.unsqueeze(-1).to(rows.dtype)
    out = torch.zeros(T, H, dtype=rows.dtype, device=rows.device)
    return out.scatter_add_(0, sorted_indices.unsqueeze(1).expand(-1, H), weighted)


def grouped_mm(a, w, counts):
    """a [R][K] x w [E][N][K]^T per expert group: torch._grouped_mm where it runs, else a loop."""
    offs = torch.cumsum(counts, 0).to(torch.int32)
    if hasattr(torch, "_grouped_mm") and a.is_cuda and a.dtype == torch.bfloat16:
        try:
            return torch._grouped_mm(a, w.transpose(-2, -1), offs=offs), "torch._grouped_mm"
        except (RuntimeError, NotImplementedError):
            pass
    return loop_mm(a, w, counts.tolist()), "per-expert loop"


def loop_mm(a, w, counts):
    """a [R][K] x w[e]^T per expert group; w a stacked tensor or a list of per-expert tensors."""
    out, start = [], 0
    for e, n in enumerate(counts):
        out.append(a[start:start + n] @ w[e].T)
        start += n
    return torch.cat(out)


def layer_forward(x, wr, fc1, fc2, k, aux_coeff=0.01, z_coeff=0.001):
    """The fp32 layer as Megatron computes it: top-k of the logits with the softmax over the k
    (its default, not pre-softmax), Switch aux loss over the softmax of all E, z-loss, permute,
    SwiGLU experts one after another (SequentialMLP), unpermute."""
    T, H = x.shape
    E = wr.shape[0]
    logits = x @ wr.T
    top, idx = torch.topk(logits, k, dim=-1)
    probs = torch.softmax(top, dim=-1)
    scores = torch.softmax(logits, dim=-1)
    routing_map, counts, sorted_indices = plan(idx, T, E)
    full_probs = torch.zeros_like(scores).scatter(1, idx, probs)
    aux = aux_coeff * E / (k * T * T) * torch.sum(scores.sum(0) * counts.to(scores.dtype))
    z = z_coeff * torch.mean(torch.logsumexp(logits, dim=-1) ** 2)
    rows = x.index_select(0, sorted_indices)
    c = counts.tolist()
    h = loop_mm(rows, fc1, c)
    gate, up = h.chunk(2, dim=-1)
    rows_out = loop_mm(torch.nn.functional.silu(gate) * up, fc2, c)
    y = unpermute(rows_out, full_probs, routing_map, sorted_indices, T, H)
    return y, aux + z


def run_all(a, device, cuda, l2, timer, gen, case):
    """Every shape, T and case; `case` records each result (and saves the JSON)."""
    for shape in a.shapes.split(","):
        H, F, E, k = SHAPES[shape]
        if a.tiny:
            H, F = H // 64, F // 64
        for T in (int(t) for t in a.tokens.split(",")):
            logits = rotating(rotations(4 * T * E, l2), (T, E), torch.float32, device, 3.0, gen)

            def topk_case():
                def work(i):
                    top, _ = torch.topk(logits[i % len(logits)], k, dim=-1)
                    torch.softmax(top, dim=-1)
                return timer.run(work)
            case("router_topk", shape, T, topk_case)

            def sinkhorn_case():
                iters = []

                def work(i):
                    z = logits[i % len(logits)]
                    norm, n = sinkhorn(z)
                    iters.append(n)
                    _, idx = torch.topk(norm, k, dim=1)
                    torch.gather(torch.softmax(z, dim=-1), 1, idx)
                r = timer.run(work)
                r["note"] = f"iterations {iters[-1]}"
                return r
            case("router_sinkhorn", shape, T, sinkhorn_case)

            top, idx = torch.topk(logits[0], k, dim=-1)
            probs = torch.softmax(top, dim=-1)
            case("dispatch_plan", shape, T, lambda: timer.run(lambda i: plan(idx, T, E)))
            routing_map, counts, sorted_indices = plan(idx, T, E)
            R = int(counts.sum())

            def permute_case():
                x = rotating(rotations(2 * T * H, l2), (T, H), torch.bfloat16, device, 1.0, gen)
                return timer.run(lambda i: x[i % len(x)].index_select(0, sorted_indices))
            case("permute", shape, T, permute_case)

            def unpermute_case():
                full = torch.zeros(T, E, device=device).scatter(1, idx, probs)
                rows = rotating(rotations(2 * R * H, l2), (R, H), torch.bfloat16, device, 1.0,
                                gen)
                return timer.run(lambda i: unpermute(rows[i % len(rows)], full, routing_map,
                                                     sorted_indices, T, H))
            case("unpermute", shape, T, unpermute_case)

            def gemm_case():
                rows = rotating(rotations(2 * R * H, l2), (R, H), torch.bfloat16, device, 1.0,
                                gen)
                w = random_tensor((E, 2 * F, H), torch.bfloat16, device, 1 / math.sqrt(H), gen)
                how = []
                r = timer.run(lambda i: how.append(grouped_mm(rows[i % len(rows)], w, counts)[1]))
                r["note"] = how[-1]
                return r
            case("grouped_gemm", shape, T, gemm_case)

            if a.skip_layer:
                continue
            params = E * H * (1 + 3 * F)
            need = 8 * params + 4 * (6 * R * H + 2 * R * 3 * F + 4 * T * H)
            if cuda:  # what the caching allocator holds from earlier cases is free to us
                gc.collect()
                torch.cuda.empty_cache()
            free = torch.cuda.mem_get_info(device)[0] if cuda else float("inf")

            def layer_setup():
                if need > 0.9 * free:
                    raise MemoryError(f"needs about {need >> 30} GiB, {int(free) >> 30} GiB free")
                wr = random_tensor((E, H), torch.float32, device, 0.02, gen).requires_grad_()
                # One leaf per expert, as SequentialMLP's parameters: slices of one stacked leaf
                # would make autograd zero-fill and add a whole-weight gradient per expert.
                fc1 = [random_tensor((2 * F, H), torch.float32, device, 1 / math.sqrt(H),
                                     gen).requires_grad_() for _ in range(E)]
                fc2 = [random_tensor((H, F), torch.float32, device, 1 / math.sqrt(F),
                                     gen).requires_grad_() for _ in range(E)]
                xs = rotating(rotations(4 * T * H, l2), (T, H), torch.float32, device, 1.0, gen)
                dy = random_tensor((T, H), torch.float32, device, 1e-3, gen)
                return wr, fc1, fc2, xs, dy

            try:
                wr, fc1, fc2, xs, dy = layer_setup()
            except (RuntimeError, MemoryError) as e:
                msg = str(e).splitlines()[0][:300]
                for name in ("layer_forward", "layer_backward"):
                    case(name, shape, T, lambda: {"skipped": msg})
                continue
            note = "fp32, per-expert loop (SequentialMLP)"

            def forward_case():  # a training forward (autograd on), as Switchyard's keeps state
                r = timer.run(lambda i: layer_forward(xs[i % len(xs)], wr, fc1, fc2, k))
                r["note"] = note
                return r
            case("layer_forward", shape, T, forward_case)

            def backward_case():
                one = torch.ones((), device=device)
                out = {}

                def before(i):  # x needs its gradient too, as Switchyard's backward gives dx
                    out.clear()
                    x = xs[i % len(xs)].detach().requires_grad_()
                    out["y"] = layer_forward(x, wr, fc1, fc2, k)

                r = timer.run(lambda i: torch.autograd.backward(list(out["y"]), [dy, one]),
                              before)
                out.clear()
                r["note"] = note + "; dx and every gradient"
                return r
            case("layer_backward", shape, T, backward_case)
            del wr, fc1, fc2, xs, dy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="peer_torch.json")
    ap.add_argument("--shapes", default="mixtral,deepseek")
    ap.add_argument("--tokens", default="128,4096,16384")
    ap.add_argument("--case-seconds", type=float, default=1.5)
    ap.add_argument("--skip-layer", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="shapes divided by 64 (H, F) for a smoke test of this script")
    ap.add_argument("--compare", help="bench_gpu's JSON: write the side-by-side table")
    ap.add_argument("--md", help="where the side-by-side table goes (default stdout)")
    a = ap.parse_args()

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("peer_torch: no CUDA device", file=sys.stderr)
        return 77
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if cuda else 32 << 20
    timer = Timer(device, a.case_seconds, l2)
    gen = torch.Generator(device=device)
    gen.manual_seed(2026)
    results = []

    def save():  # write then rename: a stop mid-write leaves the previous, whole file
        with open(a.out + ".tmp", "w") as f:
            json.dump(dict(info, results=results), f, indent=1)
        os.replace(a.out + ".tmp", a.out)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu"}

    def case(name, shape, T, fn):
        try:
            r = fn()
        except (RuntimeError, MemoryError) as e:
            r = {"skipped": str(e).splitlines()[0][:300]}
            if cuda:
                torch.cuda.empty_cache()
        r.update({"case": name, "shape": shape, "tokens": T})
        results.append(r)
        save()  # after every case: a run stopped at its time limit keeps what it measured
        if "skipped" in r:
            print(f"{name:16} {shape:9} {T:6}  skipped: {r['skipped']}", flush=True)
        else:
            print(f"{name:16} {shape:9} {T:6} {r['median_ms']:10.4f} {r['min_ms']:10.4f} "
                  f"{r['runs']:4}  {r.get('note', '')}", flush=True)

    interrupted = False
    try:
        run_all(a, device, cuda, l2, timer, gen, case)
    except KeyboardInterrupt:  # gpu_checks.sh's time limit: keep what was measured
        interrupted = True
        print("peer_torch: stopped; the JSON and the table hold the cases measured so far",
              file=sys.stderr)
    save()

    doc = dict(info, results=results)
    print(f"wrote {a.out}")
    status = 130 if interrupted else 0
    if a.compare and not os.path.exists(a.compare):
        print(f"peer_torch: no {a.compare} to compare with (did bench_gpu run?)", file=sys.stderr)
        return 1
    if a.compare:
        table = compare(json.load(open(a.compare)), doc)
        if a.md:
            with open(a.md + ".tmp", "w") as f:
                f.write(table)
            os.replace(a.md + ".tmp", a.md)
        else:
            print(table)
    return status


def compare(sy, pt):
    """Markdown: per case Switchyard's median, PyTorch's, the speed-up and the floor fraction."""
    c = sy.get("ceilings", {})
    lines = [f"# GPU benchmark {sy.get('date', '')}, {sy.get('device', {}).get('name', '')}",
             "",
             f"Ceilings measured in the same run: copy {c.get('copy_gbps', 0):.0f} GB/s "
             f"(read + write), bf16 GEMM {c.get('bf16_gemm_tflops', 0):.0f} TFLOP/s, fp32 GEMM "
             f"{c.get('fp32_gemm_tflops', 0):.1f} TFLOP/s. PyTorch {pt.get('torch', '')}.",
             "",
             "| case | shape | T | dtype | Switchyard ms | PyTorch ms | speed-up | of floor | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    theirs = {(r["case"], r["shape"], r["tokens"]): r for r in pt["results"]}
    for r in sy["results"]:
        p = theirs.get((r["case"], r["shape"], r["tokens"]), {})
        if "skipped" in r:
            lines.append(f"| {r['case']} | {r['shape']} | {r['tokens']} | | skipped: "
                         f"{r['skipped']} | | | | |")
            continue
        pm = p.get("median_ms")
        speed = f"{pm / r['median_ms']:.2f}x" if pm else "-"
        pms = f"{pm:.4f}" if pm else p.get("skipped", "-")
        note = "; ".join(n for n in (r.get("note", ""), p.get("note", "")) if n)
        lines.append(f"| {r['case']} | {r['shape']} | {r['tokens']} | {r['dtype']} | "
                     f"{r['median_ms']:.4f} | {pms} | {speed} | "
                     f"{r['fraction_of_floor']:.3g} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
