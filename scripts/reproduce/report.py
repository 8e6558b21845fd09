#!/usr/bin/env python3
"""The results of one experiment of scripts/reproduce/: tables, a JSON of every figure and plots.

Usage: report.py EXPERIMENT_JSON RESULTS_DIR

EXPERIMENT_JSON (written by scripts/reproduce/lib.sh) names the experiment, its scale, seeds, the folder of
its runs (OUT) and its models: {"name", "config", "sets", "init_from", "active_params", "total_params"}. Each
model and seed has a run folder OUT/NAME-sSEED with metrics.jsonl (l3c train), eval.json (the last line of
`l3c eval --json`: held-out text, zero-shot tasks, the lens), commands.txt (every command that made it) and
model.safetensors (for the allocation of L3 models).

Writes into RESULTS_DIR: results.md (the tables, markdown), results.json (every figure with the commands that
made it), val_loss.png (validation loss against tokens seen, every model and seed), final.png (held-out bits per
byte, or the final validation loss when there is no held-out figure, mean over seeds with the spread as error
bars), allocation.png (rows per token of each L3 allocation, when a model has L3 layers) and lens.png (the KL
of each layer's lens distribution to the final one, when the evaluations have the lens).

Runs with Debian's python3 (numpy, matplotlib); a missing run or figure is left out and named in results.md.
"""
import json
import math
import os
import struct
import sys

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The zero-shot figure reported per task, as lm-evaluation-harness users usually quote it: length-normalised
# accuracy where the choices differ in length, plain accuracy otherwise.
TASK_METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc_norm", "openbook_qa": "acc_norm",
               "hellaswag": "acc_norm", "winogrande": "acc", "copa": "acc", "lambada": "acc"}


def read_metrics(path):
    """(val points [(tokens, val_loss)], summary or None, tokens per step) from metrics.jsonl."""
    val, summary, tokens_at_step = [], None, {}
    if not os.path.exists(path):
        return val, summary
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line of a run still being written
            if record.get("summary"):
                summary = record
            elif "val_loss" in record:
                val.append((record["step"], record["val_loss"]))
            elif "tokens" in record and "step" in record:
                tokens_at_step[record["step"]] = record["tokens"]
    tokens_per_step = None
    if tokens_at_step:
        step = max(tokens_at_step)
        tokens_per_step = tokens_at_step[step] / step
    points = [(step * tokens_per_step if tokens_per_step else step, loss) for step, loss in val]
    return points, summary


def read_tensor(path, name):
    """One tensor of a safetensors file as a numpy array, reading only its bytes (the file may be large)."""
    dtypes = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "BF16": None}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        if name not in header or dtypes.get(header[name]["dtype"]) is None:
            return None
        begin, end = header[name]["data_offsets"]
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return np.frombuffer(data, dtype=dtypes[header[name]["dtype"]]).reshape(header[name]["shape"])


def mean_sd(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    m = float(np.mean(values))
    return m, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def fmt(m, sd=None, digits=4):
    if m is None:
        return "-"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def zero_shot(evaluation):
    """{task: (value, stderr, metric)} and their average, from an eval.json's tasks section."""
    tasks = (evaluation or {}).get("tasks") or {}
    figures = {}
    for task, result in tasks.items():
        metric = TASK_METRIC.get(task, "acc")
        if metric not in result:
            metric = "acc"
        if metric in result:
            figures[task] = (result[metric], result.get(metric + "_stderr"), metric)
    average = float(np.mean([v for v, _, _ in figures.values()])) if figures else None
    return figures, average


def save_plot(fig, ax, title, name, what, plots, results_dir, legend=True, grid_axis="both"):
    """Titles the plot, adds its legend and grid, writes it as results_dir/name, closes it and lists it in `plots`
    with `what` it shows."""
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    ax.grid(axis=grid_axis, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, name), dpi=110)
    plt.close(fig)
    plots.append((name, what))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py EXPERIMENT_JSON RESULTS_DIR")
    spec = json.load(open(sys.argv[1]))
    results_dir = sys.argv[2]
    os.makedirs(results_dir, exist_ok=True)
    out, seeds, models = spec["out"], spec["seeds"], spec["models"]
    missing = []
    runs = {}  # (model, seed) -> figures
    for model in models:
        for seed in seeds:
            run = os.path.join(out, f"{model['name']}-s{seed}")
            val, summary = read_metrics(os.path.join(run, "metrics.jsonl"))
            evaluation = None
            if os.path.exists(os.path.join(run, "eval.json")):
                evaluation = json.load(open(os.path.join(run, "eval.json")))
            commands = []
            if os.path.exists(os.path.join(run, "commands.txt")):
                commands = [c for c in open(os.path.join(run, "commands.txt")).read().splitlines() if c]
            if summary is None:
                missing.append(f"{model['name']} seed {seed}: not trained to the end")
            elif evaluation is None:
                missing.append(f"{model['name']} seed {seed}: not evaluated")
            text = (evaluation or {}).get("text") or {}
            tasks, average = zero_shot(evaluation)
            runs[(model["name"], seed)] = {
                "run": run, "val_curve": val, "commands": commands,
                "tokens": summary and summary.get("tokens"),
                "final_val_loss": summary and summary.get("final_val_loss"),
                "tokens_per_second": summary and summary.get("tokens_per_second"),
                "heldout_loss": text.get("loss"), "heldout_ppl": text.get("ppl"),
                "heldout_bits_per_byte": text.get("bits_per_byte"),
                "tasks": {t: {"value": v, "stderr": e, "metric": m} for t, (v, e, m) in tasks.items()},
                "zero_shot_average": average,
                "lens": (evaluation or {}).get("lens"),
                "evaluation": evaluation,
            }

    baseline = spec.get("baseline")
    task_names = sorted({t for r in runs.values() for t in r["tasks"]})

    def agg(name, key):
        return mean_sd([runs[(name, s)][key] for s in seeds])

    base_bpb = agg(baseline, "heldout_bits_per_byte")[0] if baseline else None
    base_val = agg(baseline, "final_val_loss")[0] if baseline else None
    rows = []
    for model in models:
        name = model["name"]
        row = {"model": name, "active_params": model.get("active_params"), "total_params": model.get("total_params")}
        for key in ("final_val_loss", "heldout_ppl", "heldout_bits_per_byte", "zero_shot_average", "tokens_per_second",
                    "tokens"):
            row[key] = agg(name, key)
        for task in task_names:
            row[task] = mean_sd([runs[(name, s)]["tasks"].get(task, {}).get("value") for s in seeds])
        rows.append(row)

    # --- results.md ---
    lines = [f"# {spec['experiment']}: {spec['description']}", "",
             f"Scale `{spec['scale']}`, seeds {', '.join(map(str, seeds))}; runs in `{out}`. "
             "Each figure is the mean over seeds, ± the standard deviation between seeds where there are several. "
             "Tokens/s is the training run's own, as it ran: it depends on what else the machine was running "
             "(`l3c bench` compares speeds).", ""]
    lines += ["| model | active | total | tokens | val loss | Δ val vs " + str(baseline) + " | held-out ppl | "
              "held-out bits/byte | Δ bpb | zero-shot avg | tokens/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        dv = row["final_val_loss"][0] - base_val if row["final_val_loss"][0] is not None and base_val else None
        db = (row["heldout_bits_per_byte"][0] - base_bpb
              if row["heldout_bits_per_byte"][0] is not None and base_bpb else None)
        tokens = row["tokens"][0]
        lines.append(
            f"| {row['model']} | {row['active_params'] / 1e6:.2f}M | {row['total_params'] / 1e6:.1f}M | "
            f"{(tokens or 0) / 1e6:.2f}M | {fmt(*row['final_val_loss'])} | {fmt(dv) if dv is not None else '-'} | "
            f"{fmt(*row['heldout_ppl'], digits=2)} | {fmt(*row['heldout_bits_per_byte'])} | "
            f"{fmt(db) if db is not None else '-'} | "
            f"{fmt(*(100 * x if x is not None else None for x in row['zero_shot_average']), digits=2)} | "
            f"{fmt(row['tokens_per_second'][0], digits=0)} |"
            if row["active_params"] else f"| {row['model']} | | | | | | | | | | |")
    if task_names:
        lines += ["", "Zero-shot accuracy (%; " + ", ".join(f"{t}: {TASK_METRIC.get(t, 'acc')}" for t in task_names) +
                  "; chance: 25 for ARC and OpenBookQA, 50 for PIQA, Winogrande and COPA):", "",
                  "| model | " + " | ".join(task_names) + " |", "| --- |" + " ---: |" * len(task_names)]
        for row in rows:
            cells = [fmt(*(100 * x if x is not None else None for x in row[t]), digits=1) for t in task_names]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not in the tables yet: " + "; ".join(missing) + "."]
    plots = []

    # --- val_loss.png ---
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, model in enumerate(models):
        for j, seed in enumerate(seeds):
            curve = runs[(model["name"], seed)]["val_curve"]
            if curve:
                x, y = zip(*curve)
                ax.plot(np.array(x) / 1e6, y, styles[j % len(styles)], color=colors[i % len(colors)],
                        label=f"{model['name']} (seed {seed})" if len(seeds) > 1 else model["name"])
    if ax.lines:
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel("validation loss (nats/token)")
        # The end of training is where the models differ: zoom on the last two thirds.
        ys = [y for line in ax.lines for y in line.get_ydata()[len(line.get_ydata()) // 3:]]
        if ys:
            ax.set_ylim(min(ys) - 0.05, max(ys) + 0.05)
        save_plot(fig, ax, f"{spec['experiment']}: validation loss", "val_loss.png",
                  "validation loss against tokens seen", plots, results_dir)
    else:
        plt.close(fig)

    # --- final.png ---
    key, label = ("heldout_bits_per_byte", "held-out bits per byte")
    if all(row[key][0] is None for row in rows):
        key, label = ("final_val_loss", "final validation loss (nats/token)")
    values = [(row["model"], *row[key]) for row in rows if row[key][0] is not None]
    if values:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(values) + 1), 4))
        names, means, sds = zip(*values)
        ax.bar(range(len(names)), means, yerr=[s or 0 for s in sds], capsize=4,
               color=[colors[i % len(colors)] for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right")
        lo, hi = min(means) - max(s or 0 for s in sds), max(means) + max(s or 0 for s in sds)
        ax.set_ylim(lo - 0.3 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
        ax.set_ylabel(label)
        save_plot(fig, ax, f"{spec['experiment']}: {label} (lower is better)", "final.png",
                  label + ", mean over seeds with the spread", plots, results_dir, legend=False, grid_axis="y")

    # --- allocation.png ---
    allocations = {}
    for model in models:
        path = os.path.join(out, f"{model['name']}-s{seeds[0]}", "model.safetensors")
        if os.path.exists(path):
            counts = read_tensor(path, "model.l3.0.alloc")
            if counts is not None:
                key = counts.tobytes()
                allocations.setdefault(key, (model["name"], counts))
    if allocations:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, counts in allocations.values():
            top = int(counts.max())
            bins = np.unique(np.round(np.logspace(0, math.log10(max(top, 2)), 30)).astype(int))
            ax.hist(counts, bins=np.append(bins, top + 1), histtype="step", linewidth=1.5,
                    label=f"{name}: v = {int(counts.sum())}, max {top} rows")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows owned by a token (n_u)")
        ax.set_ylabel("tokens")
        save_plot(fig, ax, "L3 allocation (first L3 layer)", "allocation.png", "rows per token of each allocation",
                  plots, results_dir)

    # --- lens.png ---
    lens_models = [(m["name"], runs[(m["name"], seeds[0])]["lens"]) for m in models if runs[(m["name"], seeds[0])]["lens"]]
    if lens_models:
        fig, ax = plt.subplots(figsize=(7, 4))
        # x: depth in the stack, decoder layer i at i and an L3 layer after decoder layer i at i + 0.5, so that
        # models with and without L3 layers line up; the last layer's lens is the final distribution (KL 0), which a
        # log scale cannot show, so points with KL 0 are left out.
        depth = lambda l, k: l.get("layer", k) + (0.5 if l.get("l3") else 0.0)
        decoder_layers = set()
        for i, (name, lens) in enumerate(lens_models):
            layers = [(depth(l, k), l) for k, l in enumerate(lens.get("layers", []))]
            decoder_layers.update(int(x) for x, l in layers if not l.get("l3"))
            shown = [(x, l["kl"]) for x, l in layers if l["kl"] > 0]
            ax.plot([x for x, _ in shown], [kl for _, kl in shown], "o-", color=colors[i % len(colors)], label=name)
            for x, l in layers:
                if l.get("l3") and l["kl"] > 0:
                    ax.plot([x], [l["kl"]], "s", color=colors[i % len(colors)], markersize=9, fillstyle="none")
        ticks = sorted(decoder_layers)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"layer {t}" for t in ticks], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("KL(final || lens) (nats)")
        save_plot(fig, ax, "logit lens: KL to the final distribution (squares: L3 layers)", "lens.png",
                  "the logit lens", plots, results_dir)

    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p}` ({what})" for p, what in plots) + "."]
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump({"experiment": spec, "models": rows,
                   "runs": {f"{name}-s{seed}": r for (name, seed), r in runs.items()},
                   "missing": missing, "plots": [p for p, _ in plots]}, f, indent=1, default=str)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
