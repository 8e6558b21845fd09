#!/usr/bin/env python3
"""Draws the logit lens of `l3c eval --lens` as a PNG: KL(final || lens) per residual-stream point, the L3 layers
marked (the paper's mechanism figure).

    python3 scripts/plot_lens.py LENS.json OUT.png [LENS2.json ...]

Each LENS.json is what `l3c eval --lens --plot` writes beside the plot ({"title", "lens": {...}}), or the JSON object
`l3c eval --lens --json` prints (its "lens" section is used; the title is its checkpoint). Several files draw several
models on one plot. Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    lens = data["lens"]
    title = data.get("title") or data.get("checkpoint") or path
    return title, lens["layers"], lens.get("tokens", 0)


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    inputs, out = [argv[1]] + argv[3:], argv[2]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for path in inputs:
        title, layers, tokens = load(path)
        xs = list(range(len(layers)))
        kl = [p["kl"] for p in layers]
        line, = ax.plot(xs, kl, marker="o", markersize=3, label=f"{title} ({tokens} tokens)")
        l3 = [i for i, p in enumerate(layers) if p["l3"]]
        if l3:
            ax.scatter(l3, [kl[i] for i in l3], s=80, marker="s", facecolors="none", edgecolors=line.get_color(),
                       zorder=3, label=f"L3 layers ({title})" if len(inputs) > 1 else "L3 layers")
    ticks = [p["name"].replace("L3 after layer ", "L3@").replace("layer ", "") for p in layers]
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=90 if len(ticks) > 16 else 0, fontsize=8)
    ax.set_xlabel("residual stream after (decoder layer, or L3@layer)")
    ax.set_ylabel("KL(final || lens), nats")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_ylim(bottom=0)
    ax.set_title("Logit lens")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
