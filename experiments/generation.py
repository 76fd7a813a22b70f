"""
Does generation pay? SequencePAR against the same decoder without generation (the query head) and against a linear
multi-label head on the synthetic set, one mechanism at a time.

    python experiments/generation.py                       # every condition, three paired seeds: hours on two cores
    python experiments/generation.py --only=clean,hidden   # some conditions
    python experiments/generation.py --quick=True          # a tiny version, in a minute or two (make test runs it)

Every run is train.py's synth recipe (a tiny CLIP trained from scratch, the demo's 3,000 steps and schedule) in a
process of its own with one thread, two side by side. A seed pairs the heads: for one seed every head starts from the
same image encoder and sees the same batches, crops and flips; two seeds share no epoch's order. Every cell has the
same three seeds, fixed before any run. Each head is read three ways on the same test split: at 0.5 as trained, at
each attribute's threshold chosen on val by its training run (the columns t_*), and by mAP (no threshold at all).
What is compared:
  sequencepar             SequencePAR, decoded by the chain rule (every attribute scored)
  sequencepar-greedy      the same checkpoints decoded by the paper's greedy rule (evaluate.py; nothing retrained)
  query                   the same decoder without generation (decoder.QueryHead): every attribute token at once, no
                          causal mask, no labels as input, one logit per attribute, weighted BCE
  linear                  the image encoder's pooled vector and a linear layer, weighted BCE
  sequencepar-beam3       (clean) the SequencePAR checkpoints decoded by beam search of 3
  sequencepar-unweighted  (symmetric-0.2) SequencePAR trained without its weighted NLL, chain rule and -greedy
under these conditions (the training labels only; the test labels are always the true ones):
  clean           the synthetic set as drawn
  hidden          synth.py --hidden=0.5: half the people stand behind an object that hides their legs and feet
  symmetric-0.2   a fraction 0.2 (symmetric-0.3: 0.3) of the training label cells flipped 0 <-> 1
  missing-0.4     a fraction 0.4 of the training positives set to 0
  rare-0.01       the training positives of Backpack, UpperStripe and Boots subsampled to 1% of the images, from a
                  larger pool (the set's training images and as many again drawn anew), so that the condition trains
                  on as many images as the others
A run already in results.csv is not run again, so a stopped session continues where it stopped (a run stopped by
Ctrl-C resumes from its last.pt). Writes results.csv (one row per run, as runs finish) and results.md (the tables:
the mean over seeds, +- half their range) beside this file; the runs and the changed sets go to out_dir.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py, evaluate.py, ...
sys.path.insert(0, ROOT)

import cli  # noqa: E402
from cli import UserError, save_atomic  # noqa: E402
import data as D  # noqa: E402
import synth  # noqa: E402
from evaluate import attribute_metrics, metrics  # noqa: E402
from run import finished_at  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class ExperimentsConfig:
    out_dir: str = "out/experiments"  # runs/ (each run's folder) and data/ (the changed sets)
    results: str = HERE           # the folder of results.csv and results.md ("" in --quick=True: out_dir)
    root: str = "data/synth"      # the synthetic set (drawn there on first use)
    only: str = ""                # conditions to run, comma-separated ("": all of CONDITIONS)
    steps: int = 3000             # training steps of every run (the demo's)
    seeds: int = 3                # paired seeds 0, 1, ... in every cell
    jobs: int = 2                 # runs side by side, one thread each
    quick: bool = False           # a tiny version: a small set, a few steps, one seed (out_dir out/experiments-quick)
    PATHS = ("out_dir", "root", "results")


CONDITIONS = ("clean", "hidden", "symmetric-0.2", "missing-0.4", "rare-0.01", "symmetric-0.3")  # the order they run in
RARE = ("Backpack", "UpperStripe", "Boots")  # learned well at their natural rates (about 10-20%), from distinct cues
HIDDEN_FRACTION = 0.5
# what is compared: name -> (train.py's --head and options) or (the trained variant whose checkpoints it decodes and
# evaluate.py's options), and the conditions it runs under
VARIANTS = {
    "sequencepar": dict(head="sequencepar"),
    "sequencepar-greedy": dict(decodes="sequencepar", options=("--rule=greedy",)),
    "query": dict(head="query"),
    "linear": dict(head="linear"),
    "sequencepar-beam3": dict(decodes="sequencepar", options=("--rule=greedy", "--beam_size=3"), only=("clean",)),
    "sequencepar-unweighted": dict(head="sequencepar", options=("--weighted_loss=False",), only=("symmetric-0.2",)),
    "sequencepar-unweighted-greedy": dict(decodes="sequencepar-unweighted", options=("--rule=greedy",),
                                          only=("symmetric-0.2",)),
}
COMPARE = {"query": "sequencepar", "linear": "query", "sequencepar-greedy": "sequencepar",
           "sequencepar-beam3": "sequencepar", "sequencepar-unweighted": "sequencepar",
           "sequencepar-unweighted-greedy": "sequencepar-unweighted"}
METRICS = ("mA", "Acc", "Prec", "Rec", "F1", "mAP")
HIDDEN_FIELDS = tuple(f"hidden_{k}_on_{w}" for w in ("hidden", "visible") for k in ("mA", "F1"))
# the measures read at each attribute's threshold chosen on val as well as at 0.5 (mAP reads no threshold)
AT_BOTH = ("mA", "Acc", "Prec", "Rec", "F1", "one_per_group", "rare_mA", *HIDDEN_FIELDS)
RARE_POOL = 0.7  # the rare condition's extra images, drawn anew, as a fraction of the set: 40% of the pool survive

# -----------------------------------------------------------------------------
# changed training labels: each function changes the train split only and returns what it changed, to be counted


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


def write_variant(folder, base, labels, splits):
    """A csv dataset folder of the base set's images (by absolute path) with other labels or splits; images in no
    split are left out."""
    split_of = {int(i): name for name, idx in splits.items() for i in idx}
    os.makedirs(folder, exist_ok=True)
    rows = [["image", "split"] + base.attr_names]
    rows += [[os.path.realpath(base.image_paths[i]), split_of[i]] + [str(int(v)) for v in labels[i]]
             for i in sorted(split_of)]
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    save_atomic(os.path.join(folder, "labels.csv"), lambda f: f.write(text.getvalue().encode()))
    return folder


@dataclass
class Pool:  # images with labels, as write_variant reads a dataset
    image_paths: list
    labels: np.ndarray
    attr_names: list


def prepare_datasets(cfg, base, chosen):
    """Each condition's dataset as (train.py's --dataset, its folder): the changed copies of the base set's labels
    and the hidden variant are written once, the same for every seed. Returns them and a line on each."""
    rng, train, folder = np.random.default_rng(0), base.splits["train"], os.path.join(cfg.out_dir, "data")
    out, notes = {"clean": ("synth", cfg.root)}, []
    # the random draws in a fixed order, whichever conditions are chosen, so that each condition's labels are the same
    flipped = {p: flip_labels(base.labels, train, p, rng) for p in (0.2, 0.3)}
    missing = drop_positives(base.labels, train, 0.4, rng)
    cols = [base.attr_names.index(n) for n in RARE]
    for p, (labels, (rows, _)) in flipped.items():
        if f"symmetric-{p}" in chosen:
            out[f"symmetric-{p}"] = ("csv", write_variant(os.path.join(folder, f"symmetric-{p}"), base, labels,
                                                          base.splits))
            notes.append(f"symmetric-{p}: {len(rows)} of {base.labels[train].size} train labels flipped")
    if "missing-0.4" in chosen:
        labels, (rows, _) = missing
        out["missing-0.4"] = ("csv", write_variant(os.path.join(folder, "missing-0.4"), base, labels, base.splits))
        notes.append(f"missing-0.4: {len(rows)} of {int(base.labels[train].sum())} train positives set to 0")
    if "rare-0.01" in chosen:
        # Subsampling the positives removes images (40% of them). So that the condition trains on as many images as
        # the others, its pool is the set's training images and more drawn anew (another seed, the same sampler, all
        # of them training candidates); after the subsampling, as many images as the set trains on are kept at random.
        extra_root = os.path.join(folder, "rare-pool")
        if not os.path.exists(os.path.join(extra_root, "labels.csv")):
            n_extra = round(RARE_POOL * len(base.labels))
            print(f"rare-0.01: drawing {n_extra} more images into {extra_root} ...", flush=True)
            synth.make_synthetic(extra_root, n_extra, seed=3 if cfg.quick else 2)
        extra = D.load_dataset("synth", extra_root)
        pool = Pool(base.image_paths + extra.image_paths, np.concatenate([base.labels, extra.labels]), base.attr_names)
        candidates = np.concatenate([train, len(base.labels) + np.arange(len(extra.labels))])
        rare_rng = np.random.default_rng(1)
        kept, removed = subsample_positives(pool.labels, candidates, cols, 0.01, rare_rng)
        if len(kept) < len(train):
            raise UserError(f"rare-0.01: {len(kept)} images left after subsampling, fewer than the {len(train)} the set "
                            "trains on; draw a larger pool (RARE_POOL)")
        kept = np.sort(rare_rng.choice(kept, size=len(train), replace=False))
        out["rare-0.01"] = ("csv", write_variant(os.path.join(folder, "rare-0.01"), pool, pool.labels,
                                                 {**base.splits, "train": kept}))
        rates = ", ".join(f"{n} {pool.labels[kept, j].mean():.1%}" for n, j in zip(RARE, cols))
        notes.append(f"rare-0.01: of {len(candidates)} candidate train images ({len(extra.labels)} drawn anew), "
                     f"{len(removed)} removed and {len(kept)} kept, as many as the set trains on; now {rates}")
    if "hidden" in chosen:
        hidden = os.path.join(folder, "hidden")
        if not os.path.exists(os.path.join(hidden, "hidden.csv")):  # the base set's people, half of them hidden
            print(f"hidden: drawing {len(base.labels)} images into {hidden} ...", flush=True)
            synth.make_synthetic(hidden, len(base.labels), seed=1 if cfg.quick else 0, hidden=HIDDEN_FRACTION)
        out["hidden"] = ("synth", hidden)
        notes.append(f"hidden: {len(hidden_images(hidden))} of {len(base.labels)} images hidden")
    return out, notes


def hidden_images(root):
    with open(os.path.join(root, "hidden.csv"), newline="") as f:
        return {os.path.realpath(os.path.join(root, r["image"])) for r in csv.DictReader(f)}

# -----------------------------------------------------------------------------
# the plan: every run as (key, condition, variant, seed, steps, dataset, the run it waits for)


@dataclass
class Run:
    key: str              # condition/variant/s<seed>
    condition: str
    variant: str
    seed: int
    steps: int
    dataset: tuple = ()   # (train.py's --dataset, its folder)
    after: str = ""       # a decoding: the key of the training run whose checkpoint it decodes


def plan(cfg, seeds, datasets, chosen):
    runs = []
    for condition in CONDITIONS:
        if condition not in chosen:
            continue
        for seed in seeds:
            for name, v in VARIANTS.items():
                if condition in v.get("only", (condition,)):
                    after = f"{condition}/{v['decodes']}/s{seed}" if "decodes" in v else ""
                    runs.append(Run(f"{condition}/{name}/s{seed}", condition, name, seed, cfg.steps,
                                    datasets[condition], after))
    return runs


# -----------------------------------------------------------------------------
# running: train.py and evaluate.py in subprocesses, one thread each; results.csv as the record of what is done


def run_dir(cfg, key):
    return os.path.join(cfg.out_dir, "runs", re.sub(r"[^\w.-]+", "-", key))


@functools.lru_cache(maxsize=None)
def train_size(dataset, root):
    return len(D.load_dataset(dataset, root).splits["train"])  # (read once per folder)


def command(cfg, run):
    out = run_dir(cfg, run.key)
    v = VARIANTS[run.variant]
    if run.after:  # decode the training run's selected checkpoint on test
        return [sys.executable, os.path.join(ROOT, "evaluate.py"), f"--ckpt={run_dir(cfg, run.after)}/ckpt.pt",
                "--split=test", f"--out_dir={out}", "--pictures=0", "--workers=0", *v["options"]], out
    dataset, root = run.dataset
    n_train = train_size(dataset, root)
    if n_train < 64:
        raise UserError(f"{root}: {n_train} training images, fewer than a batch of 64")
    epochs = run.steps / (n_train // 64)  # the preset's batches of 64: exactly run.steps steps
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--preset=synth", f"--head={v['head']}",
            f"--seed={run.seed}", f"--dataset={dataset}", f"--root={root}", f"--out_dir={out}", f"--epochs={epochs!r}",
            f"--warmup_epochs={0.6 * epochs!r}", "--log_interval=100", *v.get("options", ())]
    if os.path.exists(os.path.join(out, "last.pt")):
        return args + ["--resume=True"], out  # stopped half-way by Ctrl-C: continue
    return args + ["--overwrite=True"], out  # a run killed before it saved anything starts again


def read_results(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def result_row(run, out):
    """The run's test metrics, from its metrics_test.json and predictions_test.csv: the standard ones, the share of
    images with exactly one predicted attribute in each exclusive group, the rare attributes' mA, and on the hidden
    variant the hidden attributes' mA and instance F1 on the hidden and on the visible images; each read at 0.5 as
    trained and, where the training run chose them on val (t_*), at each attribute's own threshold."""
    with open(os.path.join(out, "metrics_test.json")) as f:
        m = json.load(f)
    with open(os.path.join(out, "predictions_test.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    names = list(m["attributes"])
    pred = np.array([[int(r[f"pred:{n}"]) for n in names] for r in rows], dtype=np.uint8)
    gt = np.array([[int(r[f"gt:{n}"]) for n in names] for r in rows], dtype=np.uint8)
    readings = {"": pred}
    if m.get("thresholds"):  # pred is at the chosen thresholds; at 0.5 from the scores (written exactly)
        prob = np.array([[np.float32(r[f"prob:{n}"]) for n in names] for r in rows])
        readings = {"": (prob > np.float32(m["threshold"])).astype(np.uint8), "t_": pred}
    t = m.get("train_s")  # (evaluate.py trains nothing)
    row = dict(key=run.key, condition=run.condition, variant=run.variant, seed=run.seed, steps=run.steps,
               train_s=f"{t:.1f}" if t is not None else "", mAP=f"{m['overall']['mAP']:.2f}" if "mAP" in m["overall"] else "")
    hidden = hidden_images(run.dataset[1]) if run.condition == "hidden" else None
    for prefix, p in readings.items():
        overall, per_attribute = metrics(gt, p), attribute_metrics(gt, p)
        one_each = np.all([p[:, [names.index(n) for n in group]].sum(1) == 1 for group in synth.GROUPS], axis=0)
        row.update({prefix + k: f"{overall[k]:.2f}" for k in METRICS if k != "mAP"})
        row[prefix + "one_per_group"] = f"{100 * one_each.mean():.2f}"
        row[prefix + "rare_mA"] = f"{np.mean([per_attribute[names.index(n)]['mA'] for n in RARE]):.2f}"
        if hidden is not None:
            behind = np.array([os.path.realpath(r["image"]) in hidden for r in rows])
            cols = [names.index(n) for n in synth.HIDDEN]
            for where, chosen in (("hidden", behind), ("visible", ~behind)):
                sub = metrics(gt[chosen][:, cols], p[chosen][:, cols])
                row[f"{prefix}hidden_mA_on_{where}"] = f"{sub['mA']:.2f}"
                row[f"{prefix}hidden_F1_on_{where}"] = f"{sub['F1']:.2f}"
        if not prefix:
            row.update({f"mA:{n}": f"{a['mA']:.2f}" for n, a in zip(names, per_attribute)})
    row["commit"] = (m.get("commit") or "")[:10]
    return row


FIELDS = ["key", "condition", "variant", "seed", "steps", "train_s", *METRICS, "one_per_group", "rare_mA",
          *HIDDEN_FIELDS, *[f"t_{k}" for k in AT_BOTH], "commit", *[f"mA:{n}" for n in synth.ATTRS]]


def append_result(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS, restval="")
        if new:
            w.writeheader()
        w.writerow(row)


def finished(run, out):
    if run.after:
        return os.path.exists(os.path.join(out, "metrics_test.json"))
    return finished_at(out) == run.steps


def execute(cfg, runs, results_path, log=print):
    """Runs what results.csv does not hold yet, cfg.jobs at a time, each decoding after its training run. Returns the
    keys that failed (or could not start because the run they decode failed)."""
    done = read_results(results_path)
    todo = [r for r in runs if r.key not in done or done[r.key]["steps"] != str(r.steps)]
    for run in list(todo):  # finished, but stopped before it was recorded: its own files are the record
        out = run_dir(cfg, run.key)
        if finished(run, out):
            append_result(results_path, result_row(run, out))
            todo.remove(run)
            log(f"recorded {run.key} from its files: it had finished")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    live = []
    try:
        return _execute(cfg, todo, live, results_path, env, log)
    finally:  # stopped (Ctrl-C, SIGTERM): every live run saves its last.pt at its next step, and resumes next time
        for _, _, p, _ in live:
            p.send_signal(signal.SIGINT)
        for _, _, p, logf in live:
            p.wait()
            logf.close()


def _execute(cfg, todo, live, results_path, env, log):
    failed, t0, started = [], time.time(), len(todo)
    while todo or live:
        done = read_results(results_path)
        while len(live) < cfg.jobs:
            ready = [r for r in todo if not r.after or r.after in done]
            if not ready:
                break
            run = ready[0]
            todo.remove(run)
            args, out = command(cfg, run)
            os.makedirs(out, exist_ok=True)
            logf = open(os.path.join(out, "run.log"), "a")
            # a session of its own: a Ctrl-C at the terminal reaches the runs once, through us
            live.append((run, out, subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                                    start_new_session=True), logf))
            log(f"[{time.strftime('%H:%M:%S')}] start {run.key}" + (f" ({run.steps} steps)" if not run.after else ""))
        if not live and todo:  # what is left decodes runs that failed
            failed += [r.key for r in todo]
            log(f"not run, as the runs they decode failed: {', '.join(r.key for r in todo)}")
            break
        time.sleep(0.5)
        for item in [x for x in live if x[2].poll() is not None]:
            run, out, p, logf = item
            logf.close()
            live.remove(item)
            if p.returncode == 0:
                row = result_row(run, out)
                append_result(results_path, row)
                left = len(todo) + len(live)
                eta = (time.time() - t0) / (started - left) * left
                log(f"[{time.strftime('%H:%M:%S')}] done  {run.key}: mA {row['mA']}, F1 {row['F1']} "
                    f"({row['train_s'] or '-'} s training); {left} left, about {eta / 60:.0f} min")
            else:
                last = open(os.path.join(out, "run.log")).read().strip().splitlines()[-1:] or ["(no output)"]
                log(f"[{time.strftime('%H:%M:%S')}] FAILED {run.key} (exit {p.returncode}): {last[0]}; see {out}/run.log")
                failed.append(run.key)
    return failed

# -----------------------------------------------------------------------------
# the report: Markdown tables


def summarise(results):
    """condition/variant -> its rows, the number of seeds, and (mean, half the range) of every measure it has."""
    groups = {}
    for r in results.values():
        groups.setdefault(r["key"].rsplit("/", 1)[0], []).append(r)
    stats = {}
    for g, rows in groups.items():
        s = dict(rows=rows, n=len(rows))
        for k in FIELDS[FIELDS.index("train_s"):]:
            values = [float(r[k]) for r in rows if r.get(k) not in (None, "") and k != "commit"]
            if values:
                s[k] = (np.mean(values), np.ptp(values) / 2)
        stats[g] = s
    return stats


def cell(s, k):
    return f"{s[k][0]:.2f} ±{s[k][1]:.2f}" if k in s else "-"


LABEL = {"sequencepar": "SequencePAR, chain rule", "sequencepar-greedy": "SequencePAR, greedy",
         "sequencepar-beam3": "SequencePAR, beam 3", "query": "query head", "linear": "linear head",
         "sequencepar-unweighted": "SequencePAR unweighted, chain rule",
         "sequencepar-unweighted-greedy": "SequencePAR unweighted, greedy"}


def tables(stats, commits, ceiling, by_rule):
    present = [(c, v) for c in CONDITIONS for v in VARIANTS if f"{c}/{v}" in stats]
    lines = [f"Runs of `python experiments/generation.py` (commits {commits}); each cell is the mean over the seeds ± half their "
             "range, in percent, on the synthetic test split (its labels the true ones).", "",
             "### Every condition", "",
             "The metrics at 0.5 as trained; mA, t and F1, t at each attribute's threshold chosen on val by the "
             "training run (greedy decoding has no scores to threshold); mAP reads no threshold. one per group: the "
             "share of test images whose prediction has exactly one attribute of each exclusive group (age, view, "
             "sleeves, lower garment), as every true label set has. training s: as measured, two runs side by side on "
             "one thread each and other work beside them: it measures the load as much as the head (bench.py "
             "measures speed).", "",
             "| condition | head | seeds | " + " | ".join(METRICS) + " | one per group | mA, t | F1, t | training s |",
             "|---|---|---|" + "---|" * (len(METRICS) + 4)]
    for c, v in present:
        s = stats[f"{c}/{v}"]
        lines.append(f"| {c} | {LABEL[v]} | {s['n']} | " + " | ".join(cell(s, k) for k in METRICS)
                     + f" | {cell(s, 'one_per_group')} | {cell(s, 't_mA')} | {cell(s, 't_F1')} | "
                     + (f"{s['train_s'][0]:.0f}" if "train_s" in s else "-") + " |")
    rare = [(c, v) for c, v in present if c in ("clean", "rare-0.01")]
    if any(c == "rare-0.01" for c, _ in rare):
        lines += ["", f"### Rare attributes: {', '.join(RARE)} at their natural rates (clean) and with their "
                  "training positives subsampled to 1% (rare-0.01)", "",
                  "| condition | head | seeds | their mA | their mA, t | " + " | ".join(RARE) + " |",
                  "|---|---|---|---|---|" + "---|" * len(RARE)]
        for c, v in rare:
            s = stats[f"{c}/{v}"]
            lines.append(f"| {c} | {LABEL[v]} | {s['n']} | {cell(s, 'rare_mA')} | {cell(s, 't_rare_mA')} | "
                         + " | ".join(cell(s, f"mA:{n}") for n in RARE) + " |")
    hidden = [(c, v) for c, v in present if c == "hidden"]
    if hidden:
        lines += ["", f"### The hidden variant: {', '.join(synth.HIDDEN)} (behind an object in "
                  f"{HIDDEN_FRACTION:.0%} of the images)", "",
                  "mA and instance F1 over these attributes alone, on the test images where they are hidden and where "
                  "they are visible; t: at each attribute's threshold chosen on val.", "",
                  "| head | seeds | mA, hidden | F1, hidden | mA, visible | F1, visible | mA, hidden, t | F1, hidden, t |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, v in hidden:
            s = stats[f"{c}/{v}"]
            lines.append(f"| {LABEL[v]} | {s['n']} | " + " | ".join(cell(s, k) for k in (
                *HIDDEN_FIELDS, "t_hidden_mA_on_hidden", "t_hidden_F1_on_hidden")) + " |")
        lines += ["", "What a perfect model reaches on hidden images under each decision rule, beside the heads read by "
                  "that rule (mA / F1, hidden, the mean over seeds). A perfect model knows P(hidden attributes | what is "
                  "visible) exactly, computed from the label sampler (synth.ceiling_by_rule), and every visible "
                  "attribute. No decision reaches both ceilings; blind is the best decision without the image.", "",
                  "| decision rule | a perfect model | the heads read by it |", "|---|---|---|"]
        heads = lambda *pairs: "; ".join(
            f"{LABEL[v]} {stats[f'hidden/{v}'][f'{p}mA_on_hidden'][0]:.2f} / "
            f"{stats[f'hidden/{v}'][f'{p}F1_on_hidden'][0]:.2f}"
            for v, p in pairs if f"hidden/{v}" in stats and f"{p}mA_on_hidden" in stats[f"hidden/{v}"]) or "-"
        t, plain = "t_hidden_", "hidden_"
        for words, rule, read in [
                ("each attribute where P exceeds its rate (the mA optimum; thresholds chosen on val aim at it)",
                 "mA_optimal", heads(("sequencepar", t), ("query", t), ("linear", t))),
                ("the weighted BCE's optimum read at 0.5 (P > sigmoid(2 r - 1))", "bce_at_0.5",
                 heads(("query", plain), ("linear", plain))),
                ("the weighted NLL's optimum, the chain rule at 0.5", "chain", heads(("sequencepar", plain))),
                ("the weighted NLL's optimum, greedy", "greedy", heads(("sequencepar-greedy", plain))),
                ("per image the set of best expected F1 (the F1 optimum)", "F1_optimal", "no head")]:
            lines.append(f"| {words} | {by_rule[rule]['mA']:.2f} / {by_rule[rule]['F1']:.2f} | {read} |")
        lines.append(f"| the F1 optimum among the sets the sampler draws | - / {ceiling['F1_config']:.2f} | no head |")
        lines.append(f"| blind: the mA optimum, the F1 optimum | {ceiling['blind_mA']:.2f} / {ceiling['blind_F1']:.2f} | "
                     "(the image unseen) |")
    lines += paired_table(stats)
    return "\n".join(lines)


# the comparisons of the chapter: (what, against what, in words)
PAIRS = (("sequencepar", "query", "generation: SequencePAR against the query head"),
         ("query", "linear", "cross-attention: the query head against the linear head"),
         ("sequencepar-greedy", "sequencepar", "the decision rule: greedy against the chain rule, the same checkpoints"))
PAIRED = ("mA", "t_mA", "F1", "t_F1", "mAP", "rare_mA", "t_rare_mA")  # rare_mA: under the rare condition only
LEVEL = 0.5  # points: a difference under this in every seed is "level"


def verdict(diffs):
    """'+' or '-' where every seed's difference has that sign, 'level' where every one is under LEVEL points, else
    'mixed'."""
    if all(abs(d) < LEVEL for d in diffs):
        return "level"
    if all(d > 0 for d in diffs):
        return "+"
    if all(d < 0 for d in diffs):
        return "-"
    return "mixed"


def paired_differences(stats, a, b, k):
    """Per seed, a's value of measure k minus b's, over the seeds both have it for (the paired design: one seed, the
    same encoder, batches and augmentation for every head). {seed: difference}."""
    rows = {g: {r["seed"]: r for r in s["rows"]} for g, s in stats.items()}
    if a not in rows or b not in rows:
        return {}
    return {seed: float(rows[a][seed][k]) - float(rows[b][seed][k]) for seed in sorted(rows[a], key=int)
            if seed in rows[b] and rows[a][seed].get(k) not in (None, "") and rows[b][seed].get(k) not in (None, "")}


def paired_table(stats):
    lines = ["", "### Paired differences", "",
             "For each comparison and condition, the first head minus the second, seed by seed (the same seed: the same "
             "image encoder at the start, the same batches, crops and flips), then their mean; + or - where every seed "
             f"agrees, level where every seed's difference is under {LEVEL} points, mixed otherwise. t: at each "
             "attribute's threshold chosen on val; rare_mA: the mA of the rare attributes, under the rare condition "
             "only.", "",
             "| comparison | condition | " + " | ".join(PAIRED) + " |", "|---|---|" + "---|" * len(PAIRED)]
    for a, b, words in PAIRS:
        for c in CONDITIONS:
            cells = []
            for k in PAIRED:
                d = paired_differences(stats, f"{c}/{a}", f"{c}/{b}", k) if c.startswith("rare") or \
                    not k.endswith("rare_mA") else {}
                cells.append(f"{np.mean(list(d.values())):+.2f} ({', '.join(f'{x:+.1f}' for x in d.values())}) "
                             f"{verdict(list(d.values()))}" if d else "-")
            if any(x != "-" for x in cells):
                lines.append(f"| {words} | {c} | " + " | ".join(cells) + " |")
    return lines


def report(cfg, results_path):
    results = read_results(results_path)
    commits = ", ".join(sorted({r["commit"] for r in results.values()}))
    hidden, n = any(r["condition"] == "hidden" for r in results.values()), 20_000 if cfg.quick else 200_000
    ceiling, by_rule = (synth.ceiling(n=n), synth.ceiling_by_rule(n=n)) if hidden else (None, None)
    md = os.path.join(cfg.results, "results.md")
    save_atomic(md, lambda f: f.write((tables(summarise(results), commits, ceiling, by_rule) + "\n").encode()))
    return md

# -----------------------------------------------------------------------------


def main(argv):
    overrides = cli.parse_overrides(argv, ExperimentsConfig)
    cfg = ExperimentsConfig(**overrides)
    if cfg.quick:
        cfg.out_dir = overrides.get("out_dir", os.path.join("out", "experiments-quick"))
        cfg.steps, cfg.seeds = overrides.get("steps", 4), overrides.get("seeds", 1)
        cfg.root = overrides.get("root", os.path.join(cfg.out_dir, "synth"))
        cfg.results = overrides.get("results", cfg.out_dir)
    chosen = cfg.only.split(",") if cfg.only else list(CONDITIONS)
    unknown = [c for c in chosen if c not in CONDITIONS]
    if unknown:
        raise UserError(f"--only={cfg.only}: unknown condition {unknown[0]!r}; expected some of {','.join(CONDITIONS)}")
    for name, ok in (("steps", cfg.steps >= 1), ("seeds", cfg.seeds >= 1), ("jobs", cfg.jobs >= 1)):
        if not ok:
            raise UserError(f"--{name}={getattr(cfg, name)}: expected 1 or more")
    os.makedirs(cfg.out_dir, exist_ok=True)
    cfg.out_dir, cfg.root = os.path.abspath(cfg.out_dir), os.path.abspath(cfg.root)  # (the runs work in ROOT)
    cfg.results = os.path.abspath(cfg.results or cfg.out_dir)
    os.makedirs(cfg.results, exist_ok=True)
    results_path = os.path.join(cfg.results, "results.csv")
    if os.path.exists(results_path):
        with open(results_path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != FIELDS:
            raise UserError(f"{results_path}: not the results of this version of generation.py (other columns); "
                            "move it away or choose another --results folder")
    if cfg.quick and not os.path.exists(os.path.join(cfg.root, "labels.csv")):
        synth.make_synthetic(cfg.root, 400, seed=1)  # 320 train images: 5 batches of 64
    base = D.load_dataset("synth", cfg.root, draw=True)
    datasets, notes = prepare_datasets(cfg, base, chosen)
    for note in notes:
        print(note)
    # (the drawing's worker processes are gone: they would inherit these)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill is a Ctrl-C: the runs save, then we stop
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (also when started in the background, where it is ignored)
    t0 = time.time()
    failed = execute(cfg, plan(cfg, range(cfg.seeds), datasets, chosen), results_path)
    print(f"this session of runs took {(time.time() - t0) / 60:.0f} min")
    md = report(cfg, results_path)
    print(f"wrote {results_path} and {md}")
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
