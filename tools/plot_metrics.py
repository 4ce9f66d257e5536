#!/usr/bin/env python3
"""Plots the JSONL metrics of `switchyard train --metrics FILE`: the loss, the aux and z-losses,
the dropped fraction, the load CV with the EP ranks' imbalance (and the steps after which
experts migrated), and the per-expert load of each MoE layer over the steps as a heat map.

    python3 tools/plot_metrics.py build/quickstart.jsonl -o quickstart.png [--title TEXT]

Needs matplotlib (pip install matplotlib); the training itself does not."""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="JSONL written by switchyard train --metrics")
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.metrics)]
    steps = [r["step"] for r in rows]
    layers = len(rows[0]["tokens_per_expert"])
    fig, axes = plt.subplots(2 + (layers + 1) // 2, 2, figsize=(11, 3.2 * (2 + (layers + 1) // 2)),
                             squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue")
    ax.set_title("task loss (MSE)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax = axes[0][1]
    if rows[0]["aux_loss"] is not None:
        ax.plot(steps, [r["aux_loss"] for r in rows], label="aux loss")
    if rows[0]["z_loss"] is not None:
        ax.plot(steps, [r["z_loss"] for r in rows], label="z-loss")
    ax.set_title("router losses (α and c_z included, all MoE layers)")
    ax.set_xlabel("step")
    ax.legend()
    ax = axes[1][0]
    ax.plot(steps, [100 * r["dropped_fraction"] for r in rows], color="tab:red")
    ax.set_title("dropped routes (%)")
    ax.set_xlabel("step")
    ax = axes[1][1]
    ax.plot(steps, [r["load_cv"] for r in rows], color="tab:green", label="load CV of the experts")
    title = "load CV (mean over MoE layers)"
    if rows[0].get("rank_load_imbalance"):  # EP ranks' imbalance (expert migration acts on it)
        ax.plot(steps, [sum(r["rank_load_imbalance"]) / len(r["rank_load_imbalance"])
                        for r in rows], color="tab:purple", label="EP ranks' imbalance")
        moved = [s for s, r in zip(steps, rows) if r.get("expert_migrations", 0) > 0]
        if moved:
            ax.plot(moved, [0] * len(moved), "|", color="black", markersize=8,
                    label="experts migrated")
        title = "load CV and EP-rank imbalance (layer mean)"
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel("step")
    for layer in range(layers):
        ax = axes[2 + layer // 2][layer % 2]
        load = [[r["tokens_per_expert"][layer][e] for r in rows]
                for e in range(len(rows[0]["tokens_per_expert"][layer]))]
        im = ax.imshow(load, aspect="auto", cmap="viridis", interpolation="nearest",
                       extent=[steps[0] - 0.5, steps[-1] + 0.5, len(load) - 0.5, -0.5])
        ax.set_title(f"MoE layer {layer}: tokens per expert")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax)
    if layers % 2 == 1:
        axes[2 + layers // 2][1].axis("off")
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.output, dpi=90)


if __name__ == "__main__":
    main()
