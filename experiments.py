"""
Does generation pay? Controlled comparisons of SequencePAR and the linear multi-label head on the synthetic set.

    python experiments.py                        # every experiment, two seeds each: 1.5 hours on two cores
    python experiments.py --only=heads,noise     # some of them
    python experiments.py --quick=True           # a tiny version of each, in seconds (make test runs it)

Every run is train.py's synth recipe (a tiny CLIP trained from scratch) for the same fixed number of steps, in a
process of its own with one thread, two side by side; each changes one thing against the base run:
  heads      SequencePAR and the linear head, each with and without its loss weighting, at equal steps and at equal
             training time (the linear head's step is cheaper: it gets the steps that take SequencePAR's time)
  noise      training labels corrupted, test labels clean: every label flipped with probability 0.1, 0.2, 0.3
             (symmetric noise), or a fraction 0.2, 0.4 of the positives set to 0 (missing labels)
  imbalance  the training positives of a few attributes subsampled to 3% and 1% of the images (test untouched)
  depth      the decoder's depth: 1, 2 (the base), 4, 6 layers
  beam       the base runs decoded with beam search of 3 instead of greedy
  order      the order of the target sequence: column order (the base), rare attributes first, frequent first
A run already in results.csv is not run again, so an interrupted session continues where it stopped (a run stopped by
Ctrl-C resumes from its last.pt). Writes out_dir/results.csv (one row per run, as runs finish), results.md (the
tables: mean over seeds, +- half their range) and results.png (mA under noise and imbalance).
"""
import csv
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

import cli
from cli import UserError
import data as D
import synth
from checkpoint import save_atomic
from run import finished_at

ROOT = os.path.dirname(os.path.abspath(__file__))


@dataclass
class ExperimentsConfig:
    out_dir: str = "out/experiments"  # results.csv/.md/.png, runs/ (each run's folder) and data/ (the corrupted sets)
    root: str = "data/synth"      # the synthetic set (drawn there on first use)
    only: str = ""                # experiments to run, comma-separated ("": all of heads,noise,imbalance,depth,beam,order)
    steps: int = 1500             # training steps of every run (the demo trains 3,000)
    seeds: int = 2                # a third seed is added where two disagree by more than the effect they measure
    jobs: int = 2                 # runs side by side, one thread each
    quick: bool = False           # a tiny version: a small set, a few steps, one seed (out_dir out/experiments-quick)
    PATHS = ("out_dir", "root")


EXPERIMENTS = ("heads", "noise", "imbalance", "depth", "beam", "order")
SYMMETRIC, MISSING, RARE_RATES = (0.1, 0.2, 0.3), (0.2, 0.4), (0.03, 0.01)
RARE = ("Backpack", "UpperStripe", "Boots")  # learned well at their natural rates (about 10-20%), from distinct cues
HEADS = (("sequencepar", "SequencePAR"), ("linear", "linear"))
METRICS = ("mA", "Acc", "Prec", "Rec", "F1")

# -----------------------------------------------------------------------------
# corrupted training labels: each function changes the train split only and returns what it changed, to be counted


def flip_labels(labels, train, p, rng):
    """Symmetric noise: round(p * cells) of the train split's label cells, chosen uniformly, flipped 0 <-> 1."""
    A = labels.shape[1]
    cells = rng.choice(len(train) * A, size=round(p * len(train) * A), replace=False)
    rows, cols = train[cells // A], cells % A
    out = labels.copy()
    out[rows, cols] ^= 1
    return out, (rows, cols)


def drop_positives(labels, train, fraction, rng):
    """Missing labels: round(fraction * P) of the P positive cells of the train split, chosen uniformly, set to 0."""
    rows, cols = np.nonzero(labels[train])
    chosen = rng.choice(len(rows), size=round(fraction * len(rows)), replace=False)
    rows, cols = train[rows[chosen]], cols[chosen]
    out = labels.copy()
    out[rows, cols] = 0
    return out, (rows, cols)


def subsample_positives(labels, train, cols, rate, rng):
    """Imbalance: train images positive for attribute j (each of cols in turn) removed at random until j's positives
    are a fraction `rate` of the remaining train images. Returns the kept and the removed train indices."""
    kept = train
    for j in cols:
        pos, neg = kept[labels[kept, j] == 1], kept[labels[kept, j] == 0]
        keep = min(len(pos), round(rate * len(neg) / (1 - rate)))  # keep / (keep + len(neg)) = rate
        kept = np.sort(np.concatenate([neg, rng.choice(pos, size=keep, replace=False)]))
    return kept, np.setdiff1d(train, kept)


def write_variant(folder, base, labels, splits, order=None):
    """A csv dataset folder of the base set's images (by absolute path) with other labels, splits or column order;
    images in no split are left out."""
    order = list(range(labels.shape[1])) if order is None else list(order)
    split_of = {int(i): name for name, idx in splits.items() for i in idx}
    os.makedirs(folder, exist_ok=True)
    rows = [["image", "split"] + [base.attr_names[j] for j in order]]
    rows += [[os.path.realpath(base.image_paths[i]), split_of[i]] + [str(int(v)) for v in labels[i, order]]
             for i in sorted(split_of)]
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    save_atomic(os.path.join(folder, "labels.csv"), lambda f: f.write(text.getvalue().encode()))
    return folder

# -----------------------------------------------------------------------------
# the plan: every run as (key, experiment, condition, head, seed, steps, dataset folder, extra train.py options)


@dataclass
class Run:
    key: str
    experiment: str
    condition: str
    head: str
    seed: int
    steps: int
    root: str
    options: tuple = ()
    compare: str = ""  # the key prefix (without the seed) of the group this one is compared with
    ckpt: str = ""     # beam: the checkpoint to decode instead of training


def plan(cfg, base, seeds, datasets, equal_time_steps):
    runs, chosen = [], cfg.only.split(",") if cfg.only else EXPERIMENTS
    symmetric, missing, rare_rates, depths = (SYMMETRIC, MISSING, RARE_RATES, (1, 4, 6)) if not cfg.quick else (
        SYMMETRIC[-1:], MISSING[-1:], RARE_RATES[-1:], (6,))  # --quick=True: the strongest of each

    def add(experiment, condition, head, root, options=(), compare="", steps=cfg.steps, ckpt=""):
        group = f"{experiment}/{condition}/{head}"
        for seed in seeds:
            runs.append(Run(f"{group}/s{seed}", experiment, condition, head, seed, steps, root, tuple(options),
                            compare, ckpt))
        return group

    base_root = cfg.root
    both = []  # (experiment, condition, dataset folder, options), each run with both heads
    if "heads" in chosen:
        both += [("heads", "weighted", base_root, ()), ("heads", "unweighted", base_root, ("--weighted_loss=False",))]
    if "noise" in chosen:
        both += [("noise", f"symmetric {p}", datasets[f"symmetric-{p}"], ()) for p in symmetric]
        both += [("noise", f"missing {f}", datasets[f"missing-{f}"], ()) for f in missing]
    if "imbalance" in chosen:
        both += [("imbalance", f"rare {r}", datasets[f"rare-{r}"], ()) for r in rare_rates]
    for experiment, condition, root, options in both:
        for head, other in (("sequencepar", "linear"), ("linear", "sequencepar")):
            add(experiment, condition, head, root, options, compare=f"{experiment}/{condition}/{other}")
    if "heads" in chosen and equal_time_steps:
        for weighting, options in (("weighted", ()), ("unweighted", ("--weighted_loss=False",))):
            add("heads", f"{weighting}, equal time", "linear", base_root, options, steps=equal_time_steps[weighting],
                compare=f"heads/{weighting}/sequencepar")
    if "depth" in chosen:
        for n in depths:
            add("depth", f"{n} layers", "sequencepar", base_root, [f"--n_layer={n}"], compare="heads/weighted/sequencepar")
    if "beam" in chosen:
        for seed in seeds:
            runs.append(Run(f"beam/beam 3/sequencepar/s{seed}", "beam", "beam 3", "sequencepar", seed, cfg.steps,
                            base_root, (), "heads/weighted/sequencepar",
                            ckpt=os.path.join(run_dir(cfg, f"heads/weighted/sequencepar/s{seed}"), "ckpt.pt")))
    if "order" in chosen:
        for name in ("rare first", "frequent first"):
            add("order", name, "sequencepar", datasets[name], compare="heads/weighted/sequencepar")
    return runs


def prepare_datasets(cfg, base, chosen):
    """The corrupted and reordered copies of the base set's labels (written once; the same for every seed)."""
    rng, train, out = np.random.default_rng(0), base.splits["train"], {}
    folder = os.path.join(cfg.out_dir, "data")
    notes = []
    if "noise" in chosen:
        for p in SYMMETRIC:
            labels, (rows, _) = flip_labels(base.labels, train, p, rng)
            out[f"symmetric-{p}"] = write_variant(os.path.join(folder, f"symmetric-{p}"), base, labels, base.splits)
            notes.append(f"symmetric {p}: {len(rows)} of {base.labels[train].size} train labels flipped")
        for f in MISSING:
            labels, (rows, _) = drop_positives(base.labels, train, f, rng)
            out[f"missing-{f}"] = write_variant(os.path.join(folder, f"missing-{f}"), base, labels, base.splits)
            notes.append(f"missing {f}: {len(rows)} of {int(base.labels[train].sum())} train positives set to 0")
    if "imbalance" in chosen:
        cols = [base.attr_names.index(n) for n in RARE]
        for r in RARE_RATES:
            kept, removed = subsample_positives(base.labels, train, cols, r, rng)
            splits = {**base.splits, "train": kept}
            out[f"rare-{r}"] = write_variant(os.path.join(folder, f"rare-{r}"), base, base.labels, splits)
            rates = ", ".join(f"{n} {base.labels[kept, j].mean():.1%}" for n, j in zip(RARE, cols))
            notes.append(f"rare {r}: {len(removed)} of {len(train)} train images removed; now {rates}")
    if "order" in chosen:
        rates = base.labels[train].mean(0)
        for name, order in (("rare first", np.argsort(rates, kind="stable")),
                            ("frequent first", np.argsort(-rates, kind="stable"))):
            out[name] = write_variant(os.path.join(folder, name.replace(" ", "-")), base, base.labels, base.splits, order)
    return out, notes

# -----------------------------------------------------------------------------
# running: train.py in subprocesses, one thread each; results.csv as the record of what is done


def run_dir(cfg, key):
    return os.path.join(cfg.out_dir, "runs", re.sub(r"[^\w.-]+", "-", key))


@functools.lru_cache(maxsize=None)
def train_size(root, is_base):
    return len(D.load_dataset("synth" if is_base else "csv", root).splits["train"])  # (read once per folder)


def command(cfg, run, base_root):
    out = run_dir(cfg, run.key)
    if run.ckpt:  # beam: decode a trained checkpoint on test
        return [sys.executable, os.path.join(ROOT, "evaluate.py"), f"--ckpt={run.ckpt}", "--beam_size=3",
                "--rule=greedy", "--dataset=synth", f"--root={base_root}", f"--out_dir={out}", "--split=test", "--pictures=0"], out
    n_train = train_size(run.root, run.root == base_root)
    if n_train < 64:
        raise UserError(f"{run.root}: {n_train} training images, fewer than a batch of 64")
    epochs = run.steps / (n_train // 64)  # the preset's batches of 64: exactly run.steps steps
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--preset=synth", f"--head={run.head}", f"--seed={run.seed}",
            f"--dataset={'synth' if run.root == base_root else 'csv'}", f"--root={run.root}", f"--out_dir={out}",
            f"--epochs={epochs!r}", f"--warmup_epochs={0.6 * epochs!r}", "--log_interval=100", *run.options]
    if os.path.exists(os.path.join(out, "last.pt")):
        return args + ["--resume=True"], out  # stopped half-way by Ctrl-C: continue
    return args + ["--overwrite=True"], out  # a run killed before it saved anything starts again


FIELDS = ["key", "experiment", "condition", "head", "seed", "steps", "train_s", *METRICS, "F1_hm", "focus_mA", "commit"]


def read_results(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def result_row(run, out, names):
    with open(os.path.join(out, "metrics_test.json")) as f:
        m = json.load(f)
    t = m.get("train_s")  # (an evaluate.py run has no training time)
    attrs = {n: m["attributes"][n]["mA"] for n in names}
    row = dict(key=run.key, experiment=run.experiment, condition=run.condition, head=run.head, seed=run.seed,
               steps=run.steps, train_s=f"{t:.1f}" if t is not None else "", **{k: f"{m['overall'][k]:.2f}" for k in (*METRICS, "F1_hm")},
               focus_mA=f"{np.mean([attrs[n] for n in RARE]):.2f}", commit=(m.get("commit") or "")[:10])
    return {**row, **{f"mA:{n}": f"{attrs[n]:.2f}" for n in names}}


def append_result(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def execute(cfg, runs, results_path, base, log=print):
    """Runs what results.csv does not hold yet, cfg.jobs at a time. Returns the keys that failed."""
    done = read_results(results_path)
    todo = [r for r in runs if r.key not in done or done[r.key]["steps"] != str(r.steps)]
    for run in list(todo):  # finished, but stopped before it was recorded: its own files are the record
        out = run_dir(cfg, run.key)
        if (os.path.exists(os.path.join(out, "metrics_test.json")) if run.ckpt else finished_at(out) == run.steps):
            append_result(results_path, result_row(run, out, base.attr_names))
            todo.remove(run)
            log(f"recorded {run.key} from its files: it had finished")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    live = []
    try:
        failed = _execute(cfg, todo, live, results_path, base, env, log)
    finally:  # stopped (Ctrl-C, SIGTERM): every live run saves its last.pt at its next step, and resumes next time
        for _, _, p, _ in live:
            p.send_signal(signal.SIGINT)
        for _, _, p, logf in live:
            p.wait()
            logf.close()
    return failed


def _execute(cfg, todo, live, results_path, base, env, log):
    failed, t0, finished = [], time.time(), 0
    while todo or live:
        while todo and len(live) < cfg.jobs:
            run = todo.pop(0)
            args, out = command(cfg, run, cfg.root)
            os.makedirs(out, exist_ok=True)
            logf = open(os.path.join(out, "run.log"), "a")
            # a session of its own: a Ctrl-C at the terminal reaches the runs once, through us
            live.append((run, out, subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                                    start_new_session=True), logf))
            log(f"[{time.strftime('%H:%M:%S')}] start {run.key} ({run.steps} steps)")
        time.sleep(0.5)
        for item in [x for x in live if x[2].poll() is not None]:
            run, out, p, logf = item
            logf.close()
            live.remove(item)
            finished += 1
            if p.returncode == 0:
                row = result_row(run, out, base.attr_names)
                append_result(results_path, row)
                left = len(todo) + len(live)
                eta = (time.time() - t0) / finished * left
                log(f"[{time.strftime('%H:%M:%S')}] done  {run.key}: mA {row['mA']}, F1 {row['F1']} "
                    f"({row['train_s'] or '-'} s training); {left} left, about {eta / 60:.0f} min")
            else:
                last = open(os.path.join(out, "run.log")).read().strip().splitlines()[-1:] or ["(no output)"]
                log(f"[{time.strftime('%H:%M:%S')}] FAILED {run.key} (exit {p.returncode}): {last[0]}; see {out}/run.log")
                failed.append(run.key)
    return failed


def third_seeds(runs, results):
    """Groups whose two seeds disagree by more than the effect they measure: the gap in mA between them and the group
    they are compared with. Both groups of such a pair get a third seed."""
    def groups():
        out = {}
        for r in results.values():
            out.setdefault(r["key"].rsplit("/", 1)[0], []).append(float(r["mA"]))
        return out
    g, wanted = groups(), set()
    for run in runs:
        group = run.key.rsplit("/", 1)[0]
        a, b = g.get(group, []), g.get(run.compare, [])
        if len(a) == 2 and len(b) >= 2:
            spread, effect = max(np.ptp(a), np.ptp(b)), abs(np.mean(a) - np.mean(b))
            if spread > effect:
                wanted |= {group, run.compare}
    return wanted

# -----------------------------------------------------------------------------
# the report: Markdown tables and a plot


def summarise(results):
    groups = {}
    for r in results.values():
        groups.setdefault(r["key"].rsplit("/", 1)[0], []).append(r)
    stats = {}
    for g, rows in groups.items():
        s = {k: [float(r[k]) for r in rows] for k in (*METRICS, "focus_mA")}
        s["train_s"] = [float(r["train_s"]) for r in rows if r["train_s"]]
        stats[g] = dict(rows=rows, n=len(rows), steps=rows[0]["steps"],
                        **{k: (np.mean(v), np.ptp(v) / 2) if v else (float("nan"), 0.0) for k, v in s.items()})
    return stats


def cell(v):
    return f"{v[0]:.2f} ±{v[1]:.2f}"


def tables(stats, commit):
    titles = dict(heads="Heads: SequencePAR against the linear multi-label head",
                  noise="Label noise (training labels only; test labels clean)",
                  imbalance=f"Imbalance: the training positives of {', '.join(RARE)} subsampled",
                  depth="SequencePAR's decoder depth", beam="Decoding: greedy against beam search",
                  order="The order of the target sequence")
    head_label = dict(sequencepar="SequencePAR", linear="linear")
    order = ["weighted", "unweighted", "weighted, equal time", "unweighted, equal time",
             *[f"symmetric {p}" for p in SYMMETRIC], *[f"missing {f}" for f in MISSING], *[f"rare {r}" for r in RARE_RATES]]
    lines = [f"Runs of `python experiments.py` (commit {commit}); each cell is the mean over seeds ± half their range, "
             "in percent on the synthetic test split.", ""]
    for exp in EXPERIMENTS:
        rows = [(g, s) for g, s in stats.items() if g.startswith(exp + "/")]
        base = [(g, s) for g, s in stats.items() if g.startswith("heads/weighted/") and exp in ("noise", "imbalance")]
        if exp in ("depth", "beam", "order"):
            base = [(g, s) for g, s in stats.items() if g == "heads/weighted/sequencepar"]
        if not rows:
            continue
        rows.sort(key=lambda gs: (order.index(gs[0].split("/")[1]) if gs[0].split("/")[1] in order else len(order),
                                  gs[0].split("/")[2] != "sequencepar"))
        extra = ["rare attrs' mA"] if exp == "imbalance" else []
        lines += [f"### {titles[exp]}", "", "| condition | head | seeds | steps | " + " | ".join(extra + list(METRICS))
                  + " | training s |", "|---|---|---|---|" + "---|" * (len(METRICS) + len(extra) + 1)]
        for g, s in base + rows:
            _, condition, head = g.split("/")
            if g in dict(base):
                condition = {"depth": "2 layers", "beam": "greedy", "order": "column order"}.get(exp, "clean")
            values = ([cell(s["focus_mA"])] if exp == "imbalance" else []) + [cell(s[k]) for k in METRICS]
            seconds = "-" if np.isnan(s["train_s"][0]) else f"{s['train_s'][0]:.0f}"  # (beam search trains nothing)
            lines.append(f"| {condition} | {head_label[head]} | {s['n']} | {s['steps']} | " + " | ".join(values)
                         + f" | {seconds} |")
        lines.append("")
    return "\n".join(lines)


def plot(stats, path):
    """mA against the amount of symmetric noise, of missing labels and of imbalance (the rare attributes' own mA),
    one line per head, a bar from the lowest to the highest seed."""
    panels = [("symmetric noise: flip rate", "noise/symmetric {}", (0.0,) + SYMMETRIC, "mA"),
              ("missing labels: positives dropped", "noise/missing {}", (0.0,) + MISSING, "mA"),
              ("imbalance: rare attributes' mA", "imbalance/rare {}", ("natural",) + RARE_RATES, "focus_mA")]
    W, H, m = 360, 300, 50
    img = Image.new("RGB", (W * len(panels), H), "white")
    d = ImageDraw.Draw(img)
    colours = dict(sequencepar=(200, 40, 40), linear=(40, 80, 200))
    for k, (title, pattern, levels, metric) in enumerate(panels):
        pts = {}
        for head, _ in HEADS:
            for x, level in enumerate(levels):
                g = f"heads/weighted/{head}" if x == 0 else pattern.format(level) + f"/{head}"
                if g in stats:
                    rows = [float(r[metric]) for r in stats[g]["rows"]]
                    pts.setdefault(head, []).append((x, np.mean(rows), min(rows), max(rows)))
        values = [v for p in pts.values() for _, _, lo, hi in p for v in (lo, hi)]
        if not values:
            continue
        lo, hi = np.floor(min(values) - 1), np.ceil(max(values) + 1)
        x0, y0, w, h = k * W + m, 30, W - m - 15, H - 30 - m

        def at(x, y):
            return x0 + w * x / max(1, len(levels) - 1), y0 + h * (hi - y) / (hi - lo)
        d.text((k * W + 10, 8), title, fill="black")
        d.rectangle((x0, y0, x0 + w, y0 + h), outline="black")
        for t in np.linspace(lo, hi, 5):
            d.text((k * W + 8, at(0, t)[1] - 6), f"{t:.1f}", fill="black")
        for x, level in enumerate(levels):
            d.text((at(x, lo)[0] - 12, y0 + h + 6), str(level), fill="black")
        for head, p in pts.items():
            xy = [at(x, y) for x, y, _, _ in p]
            if len(xy) > 1:
                d.line(xy, fill=colours[head], width=2)
            for (x, _, a, b), (px, py) in zip(p, xy):
                d.line((px, at(x, a)[1], px, at(x, b)[1]), fill=colours[head])
                d.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colours[head])
        for i, (head, name) in enumerate(HEADS):
            d.text((x0 + 8, y0 + h - 30 + 14 * i), name, fill=colours[head])
    save_atomic(path, lambda f: img.save(f, format="PNG"))


def report(cfg, results_path):
    results = read_results(results_path)
    stats = summarise(results)
    commits = sorted({r["commit"] for r in results.values()})
    text = tables(stats, ", ".join(commits))
    md = os.path.join(cfg.out_dir, "results.md")
    save_atomic(md, lambda f: f.write((text + "\n").encode()))
    plot(stats, os.path.join(cfg.out_dir, "results.png"))
    return md

# -----------------------------------------------------------------------------


def main(argv):
    overrides = cli.parse_overrides(argv, ExperimentsConfig)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill is a Ctrl-C: the runs save, then we stop
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (also when started in the background, where it is ignored)
    cfg = ExperimentsConfig(**overrides)
    if cfg.quick:
        cfg.out_dir = overrides.get("out_dir", os.path.join("out", "experiments-quick"))
        cfg.steps, cfg.seeds = overrides.get("steps", 4), overrides.get("seeds", 1)
        cfg.root = overrides.get("root", os.path.join(cfg.out_dir, "synth"))
        if not os.path.exists(os.path.join(cfg.root, "labels.csv")):
            synth.make_synthetic(cfg.root, 400, seed=1)  # 320 train images: 5 batches of 64
    chosen = cfg.only.split(",") if cfg.only else list(EXPERIMENTS)
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        raise UserError(f"--only={cfg.only}: unknown experiment {unknown[0]!r}; expected some of {','.join(EXPERIMENTS)}")
    if "beam" in chosen and "heads" not in chosen:
        chosen.append("heads")  # beam search decodes the heads experiment's checkpoints
    for name, ok in (("steps", cfg.steps >= 1), ("seeds", 1 <= cfg.seeds <= 3), ("jobs", cfg.jobs >= 1)):
        if not ok:
            raise UserError(f"--{name}={getattr(cfg, name)}: expected {'1 to 3' if name == 'seeds' else '1 or more'}")
    cfg.only = ",".join(chosen)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results_path = os.path.join(cfg.out_dir, "results.csv")
    base = D.load_dataset("synth", cfg.root)
    datasets, notes = prepare_datasets(cfg, base, chosen)
    for note in notes:
        print(note)
    seeds = list(range(cfg.seeds))
    failed = []
    # first everything but the runs whose step count depends on measured times
    runs = plan(cfg, base, seeds, datasets, None)
    failed += execute(cfg, [r for r in runs if r.experiment != "beam"], results_path, base)
    failed += execute(cfg, [r for r in runs if r.experiment == "beam"], results_path, base)
    stats = summarise(read_results(results_path))
    if "heads" in chosen:
        # equal time: the linear head gets the steps that take SequencePAR its training time, as both measured here
        equal = {}
        for w in ("weighted", "unweighted"):
            seq, lin = stats.get(f"heads/{w}/sequencepar"), stats.get(f"heads/{w}/linear")
            if seq and lin and seq["train_s"][0] > 0 and lin["train_s"][0] > 0:
                equal[w] = round(cfg.steps * seq["train_s"][0] / lin["train_s"][0])
        runs = plan(cfg, base, seeds, datasets, equal or None)
        failed += execute(cfg, [r for r in runs if "equal time" in r.condition], results_path, base)
    wanted = third_seeds(runs, read_results(results_path)) if cfg.seeds == 2 else set()
    if wanted:
        print(f"a third seed for {len(wanted)} groups whose seeds disagree by more than their difference")
        extra = [r for r in plan(cfg, base, [2], datasets, equal if "heads" in chosen else None)
                 if r.key.rsplit("/", 1)[0] in wanted]
        failed += execute(cfg, [r for r in extra if r.experiment != "beam"], results_path, base)
        failed += execute(cfg, [r for r in extra if r.experiment == "beam"], results_path, base)
    md = report(cfg, results_path)
    print(f"wrote {results_path}, {md} and {os.path.join(cfg.out_dir, 'results.png')}")
    if failed:
        raise SystemExit(f"error: {len(failed)} runs failed: {', '.join(failed)}")
    return 0


def run_all(argv):
    try:
        return main(argv)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted: finished runs are in results.csv; run the same command again to "
                                "continue") from None


if __name__ == "__main__":
    cli.run(run_all, ExperimentsConfig, __doc__)
