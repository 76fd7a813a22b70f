"""experiments/generation.py: the corruptions change exactly what they say and never the test split; a run's row holds the
metrics of its predictions (the exclusive groups, the hidden attributes on hidden and visible images); --quick=True
writes every file it promises, decodes after training, and a second run re-runs nothing."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

import data
import synth
from experiments import generation as experiments
from conftest import run_script


@pytest.fixture
def split_labels():
    rng = np.random.default_rng(1)
    labels = (rng.random((1000, 6)) < [0.05, 0.1, 0.2, 0.3, 0.5, 0.6]).astype(np.uint8)
    train, test = np.arange(0, 800), np.arange(800, 1000)
    return labels, train, test


def test_flip_labels_flips_that_many_train_cells_and_nothing_else(split_labels):
    labels, train, test = split_labels
    out, (rows, cols) = experiments.flip_labels(labels, train, 0.2, np.random.default_rng(0))
    changed = out != labels
    assert changed.sum() == round(0.2 * 800 * 6) == len(set(zip(rows, cols)))  # each chosen cell flipped once
    assert not changed[test].any() and (out[changed] == 1 - labels[changed]).all()
    # symmetric: both kinds of cell flip, in proportion to how many there are
    flipped_pos = (labels[changed] == 1).mean()
    assert abs(flipped_pos - labels[train].mean()) < 0.03


def test_drop_positives_zeroes_that_fraction_of_train_positives(split_labels):
    labels, train, test = split_labels
    out, _ = experiments.drop_positives(labels, train, 0.4, np.random.default_rng(0))
    positives = int(labels[train].sum())
    assert (labels[train] - out[train]).sum() == round(0.4 * positives)
    assert ((out == 1) <= (labels == 1)).all()  # only ones became zeros
    assert (out[test] == labels[test]).all()


def test_subsample_positives_reaches_the_rate_and_keeps_test(split_labels):
    labels, train, test = split_labels
    kept, removed = experiments.subsample_positives(labels, train, [2, 3], 0.03, np.random.default_rng(0))
    assert len(kept) + len(removed) == len(train) and set(kept) | set(removed) == set(train)
    assert set(kept) <= set(train) and not set(kept) & set(test)
    assert labels[removed][:, [2, 3]].any(1).all()  # only images positive for a chosen attribute were removed
    for j in (2, 3):
        assert labels[kept, j].mean() == pytest.approx(0.03, abs=0.004)


def test_write_variant_is_a_csv_dataset_of_the_same_images(synth_root, tmp_path):
    base = data.load_dataset("synth", synth_root)
    labels, _ = experiments.flip_labels(base.labels, base.splits["train"], 0.1, np.random.default_rng(0))
    folder = experiments.write_variant(str(tmp_path / "v"), base, labels, base.splits)
    v = data.load_dataset("csv", folder)
    assert v.attr_names == base.attr_names
    assert [os.path.realpath(p) for p in v.image_paths] == [os.path.realpath(p) for p in base.image_paths]
    assert (v.labels == labels).all()
    assert all((v.splits[s] == base.splits[s]).all() for s in base.splits)


def write_predictions(folder, names, gt, pred, paths, prob=None, thresholds=None):
    os.makedirs(folder, exist_ok=True)
    prob = np.full(pred.shape, 0.5) if prob is None else prob
    with open(os.path.join(folder, "predictions_test.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"] + [f"{k}:{n}" for n in names for k in ("pred", "prob")] + [f"gt:{n}" for n in names])
        for path, g, p, q in zip(paths, gt, pred, prob):
            w.writerow([path] + [v for j in range(len(names)) for v in (p[j], q[j])] + list(g))
    m = dict(overall=dict(mA=1.0, Acc=2.0, Prec=3.0, Rec=4.0, F1=5.0), commit="abc", threshold=0.5,
             attributes={n: dict(mA=10.0 * (j + 1)) for j, n in enumerate(names)})
    if thresholds is not None:
        m["thresholds"] = dict(zip(names, thresholds))
    with open(os.path.join(folder, "metrics_test.json"), "w") as f:
        json.dump(m, f)


def test_result_row_counts_exclusive_groups_and_scores_hidden_attributes_where_they_are_hidden(tmp_path):
    names = synth.ATTRS
    root = tmp_path / "set"
    os.makedirs(root)
    with open(root / "hidden.csv", "w") as f:
        f.write("image\nimages/0.png\nimages/1.png\n")
    paths = [str(root / "images" / f"{i}.png") for i in range(4)]
    gt, pred = np.zeros((4, len(names)), int), np.zeros((4, len(names)), int)
    one_each = [names.index(n) for n in ("Age18-60", "Front", "LongSleeve", "Trousers")]
    gt[:, one_each] = pred[:, one_each] = 1
    pred[1, names.index("Shorts")] = 1  # two lower garments: image 1 breaks a group
    pred[2, names.index("Front")] = 0   # no view: image 2 breaks a group
    pred[3, names.index("Trousers")] = 0  # image 3 visible, Trousers missed: the visible images' Trousers recall 1/2
    run = experiments.Run("hidden/linear/s0", "hidden", "linear", 0, 4, ("synth", str(root)))
    write_predictions(tmp_path / "r", names, gt, pred, paths)
    row = experiments.result_row(run, str(tmp_path / "r"))
    assert row["one_per_group"] == "25.00" and row["mAP"] == "" and row["train_s"] == ""
    assert row["mA"] == f"{experiments.metrics(gt, pred)['mA']:.2f}" and "t_mA" not in row  # no thresholds chosen
    # the rare attributes, never true and never predicted here: each (0 + 1) / 2
    assert row["rare_mA"] == "50.00"
    # hidden images 0, 1 on Trousers, Shorts, Skirt, Boots: image 0 all right; image 1 adds Shorts, a false positive.
    # Per attribute (positive recall + negative recall) / 2, an attribute with no positives has positive recall 0:
    # Trousers (1 + 0) / 2, Shorts (0 + 1/2) / 2, Skirt (0 + 1) / 2, Boots (0 + 1) / 2; F1 image 0: 1, image 1: 2/3
    assert float(row["hidden_mA_on_hidden"]) == pytest.approx(100 * (0.5 + 0.25 + 0.5 + 0.5) / 4, abs=0.01)
    assert float(row["hidden_F1_on_hidden"]) == pytest.approx(100 * (1 + 2 / 3) / 2, abs=0.01)
    # visible images 2, 3: Trousers recall 1/2, the rest all negative and predicted negative; F1: image 2 1, image 3 0
    assert float(row["hidden_mA_on_visible"]) == pytest.approx(100 * (0.25 + 0.5 + 0.5 + 0.5) / 4, abs=0.01)
    assert float(row["hidden_F1_on_visible"]) == pytest.approx(50, abs=0.01)
    # another condition has no hidden columns
    row = experiments.result_row(experiments.Run("clean/linear/s0", "clean", "linear", 0, 4), str(tmp_path / "r"))
    assert "hidden_mA_on_hidden" not in row
    # a run that chose thresholds on val: pred is at those (t_*), and at 0.5 it is read again from the scores
    prob = np.where(pred == 1, 0.7, 0.2)
    prob[0, names.index("Hat")] = 0.45  # above its threshold 0.4, below 0.5
    write_predictions(tmp_path / "t", names, gt, pred | (np.arange(len(names)) == names.index("Hat")) * [[1], [0], [0], [0]],
                      paths, prob=prob, thresholds=[0.4 if n == "Hat" else 0.5 for n in names])
    row = experiments.result_row(run, str(tmp_path / "t"))
    at_t = pred.copy()
    at_t[0, names.index("Hat")] = 1
    assert row["mA"] == f"{experiments.metrics(gt, pred)['mA']:.2f}" and row["t_mA"] == f"{experiments.metrics(gt, at_t)['mA']:.2f}"
    assert row["mA"] != row["t_mA"] and row["t_hidden_F1_on_hidden"] != ""


def test_paired_differences_and_their_verdicts():
    def rows(group, *values):
        return {"rows": [{"seed": str(i), "mA": str(v)} for i, v in enumerate(values)]}
    stats = {"clean/sequencepar": rows("clean/sequencepar", 91.0, 90.0, 92.0),
             "clean/query": rows("clean/query", 90.0, 90.5, 90.5), "clean/linear": rows("clean/linear", 89.0, 89.2, 88.0)}
    d = experiments.paired_differences(stats, "clean/sequencepar", "clean/query", "mA")
    assert d == {"0": 1.0, "1": -0.5, "2": 1.5} and experiments.verdict(list(d.values())) == "mixed"
    assert experiments.verdict(list(experiments.paired_differences(stats, "clean/query", "clean/linear", "mA")
                                    .values())) == "+"  # 1.0, 1.3, 2.5: every seed
    assert experiments.verdict([0.3, -0.4, 0.1]) == "level" and experiments.verdict([-0.6, -2.0, -0.1]) == "-"
    # a seed one side lacks is left out, not compared with another seed
    stats["clean/linear"]["rows"].pop(0)
    assert list(experiments.paired_differences(stats, "clean/query", "clean/linear", "mA")) == ["1", "2"]


def test_quick_experiments_write_every_promised_file(tmp_path):
    out = tmp_path / "exp"
    r = run_script("experiments/generation.py", "--quick=True", "--only=hidden", f"--out_dir={out}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("results.csv", "results.md"):
        assert os.path.getsize(out / name) > 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    variants = {(r["condition"], r["variant"]) for r in rows}
    assert variants == {("hidden", v) for v in ("sequencepar", "sequencepar-greedy", "query", "linear")}
    assert {r["steps"] for r in rows} == {"4"} and all(0 <= float(r["mA"]) <= 100 for r in rows)
    assert all((r["mAP"] == "") == (r["variant"].endswith(("greedy", "beam3"))) for r in rows)
    assert all((r["t_mA"] == "") == (r["variant"].endswith(("greedy", "beam3"))) for r in rows)
    assert "### Paired differences" in (out / "results.md").read_text()
    assert all(r["hidden_F1_on_hidden"] != "" and r["hidden_mA_on_visible"] != "" for r in rows)
    # a decoding starts once the run it decodes is done
    lines = r.stdout.splitlines()
    start = {line.split()[2]: i for i, line in enumerate(lines) if " start " in line}
    done = {line.split()[2].rstrip(":"): i for i, line in enumerate(lines) if " done " in line}
    assert done["hidden/sequencepar/s0"] < start["hidden/sequencepar-greedy/s0"]
    md = (out / "results.md").read_text()
    assert all(t in md for t in ("### Every condition", "### The hidden variant", "| blind: the mA optimum",
                                 "| the weighted NLL's optimum, the chain rule at 0.5 | "))
    assert "| hidden | query head | 1 | " in md
    # a second run finds every run in results.csv and trains nothing
    again = run_script("experiments/generation.py", "--quick=True", "--only=hidden", f"--out_dir={out}")
    assert again.returncode == 0 and " start " not in again.stdout
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_the_plan_pairs_seeds_and_runs_each_variant_where_it_belongs():
    cfg = experiments.ExperimentsConfig(steps=7)
    datasets = {c: ("csv", f"/sets/{c}") for c in experiments.CONDITIONS}
    runs = experiments.plan(cfg, [0, 1], datasets, ["clean", "symmetric-0.2"])
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)) == 2 * (5 + 6)  # clean: 4 + beam 3; symmetric-0.2: 4 + unweighted and greedy
    assert {r.variant for r in runs if r.condition == "symmetric-0.2"} == {
        "sequencepar", "sequencepar-greedy", "query", "linear", "sequencepar-unweighted", "sequencepar-unweighted-greedy"}
    for r in runs:
        assert r.steps == 7 and r.dataset == datasets[r.condition] and r.key == f"{r.condition}/{r.variant}/s{r.seed}"
        trained = experiments.VARIANTS[r.variant].get("decodes")
        assert r.after == (f"{r.condition}/{trained}/s{r.seed}" if trained else "")  # decodes its own seed's run
        assert not r.after or keys.index(r.after) < keys.index(r.key)
    args, _ = experiments.command(cfg, [r for r in runs if r.key == "symmetric-0.2/sequencepar-greedy/s1"][0])
    assert args[1].endswith("evaluate.py") and "--rule=greedy" in args and any(
        a.startswith("--ckpt=") and a.endswith("symmetric-0.2-sequencepar-s1/ckpt.pt") for a in args)


def test_experiments_refuse_bad_options(tmp_path):
    r = run_script("experiments/generation.py", "--only=clean,nope")
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: --only=clean,nope: unknown condition 'nope'; expected some of "
        "clean,hidden,symmetric-0.2,missing-0.4,rare-0.01,symmetric-0.3")
    (tmp_path / "results.csv").write_text("key,experiment,condition\n")  # an older version's results
    r = run_script("experiments/generation.py", "--quick=True", f"--out_dir={tmp_path}", f"--root={tmp_path / 'synth'}")
    assert r.returncode == 1 and r.stderr.strip().startswith(f"error: {tmp_path / 'results.csv'}: not the results")


def test_a_run_that_finished_but_was_not_recorded_is_recorded_from_its_files(trained_run, synth_root, tmp_path,
                                                                             monkeypatch):
    # stopped while a finished run was still alive (its test written, its exit not seen): the next start records it
    # from its own files and trains nothing
    cfg = experiments.ExperimentsConfig(out_dir=str(tmp_path), root=synth_root)
    run = experiments.Run("clean/sequencepar/s0", "clean", "sequencepar", 0, 16, ("synth", synth_root))
    shutil.copytree(trained_run[0], experiments.run_dir(cfg, run.key))
    monkeypatch.setattr(experiments.subprocess, "Popen", lambda *a, **k: pytest.fail("a finished run was started again"))
    results = str(tmp_path / "results.csv")
    assert experiments.execute(cfg, [run], results, log=lambda *a: None) == []
    row = experiments.read_results(results)[run.key]
    m = json.loads(open(os.path.join(trained_run[0], "metrics_test.json")).read())
    assert row["t_mA"] == f"{m['overall']['mA']:.2f}" and row["mA"] == f"{m['overall_at_threshold']['mA']:.2f}"
    assert float(row["train_s"]) == pytest.approx(m["train_s"], abs=0.05)
    # a run of fewer steps than the plan's is not the planned run: it is trained again
    longer = experiments.Run("clean/linear/s0", "clean", "linear", 0, 24, ("synth", synth_root))
    shutil.copytree(trained_run[0], experiments.run_dir(cfg, longer.key))
    with pytest.raises(pytest.fail.Exception, match="started again"):
        experiments.execute(cfg, [longer], results, log=lambda *a: None)


def test_the_readme_chapter_is_what_the_committed_results_give(tmp_path):
    """The committed results.md is what generation.py writes from the committed results.csv, and every cell of the
    README's table in "Does generation pay?" is a paired difference computed here from results.csv: per seed the first
    head's value minus the second's, their mean, and the verdict (+ or - where every seed agrees, level where every
    seed's difference is under 0.5, mixed otherwise)."""
    here = os.path.join(experiments.ROOT, "experiments")
    experiments.report(experiments.ExperimentsConfig(results=str(tmp_path)), os.path.join(here, "results.csv"))
    with open(os.path.join(here, "results.md")) as f:
        assert (tmp_path / "results.md").read_text() == f.read()
    with open(os.path.join(here, "results.csv"), newline="") as f:
        rows = {(r["condition"], r["variant"], r["seed"]): r for r in csv.DictReader(f)}

    def paired(condition, a, b, field):
        diffs = [float(rows[condition, a, s][field]) - float(rows[condition, b, s][field]) for s in "012"]
        word = ("level" if max(map(abs, diffs)) < 0.5 else "+" if min(diffs) > 0 else "-" if max(diffs) < 0
                else "mixed")
        return f"{sum(diffs) / 3:+.2f} ({word})"

    readme = open(os.path.join(experiments.ROOT, "README.md")).read()
    chapter = readme[readme.index("### Does generation pay?"):readme.index("## Deviations")]
    table = [line.strip("| ").split(" | ") for line in chapter.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0][1:] == ["generation: SequencePAR - query head, mA at t / mAP",
                            "cross-attention: query - linear head, mA at t / mAP",
                            "decision rule: greedy - chain rule, mA / F1 at 0.5"]
    conditions = {"clean": "clean", "hidden": "hidden", "symmetric noise 0.2": "symmetric-0.2",
                  "symmetric noise 0.3": "symmetric-0.3", "missing positives 0.4": "missing-0.4",
                  "rare 1% (mA: the 3 rare attributes)": "rare-0.01"}
    columns = [("sequencepar", "query", "t_mA", "mAP"), ("query", "linear", "t_mA", "mAP"),
               ("sequencepar-greedy", "sequencepar", "mA", "F1")]
    assert [row[0] for row in table[1:]] == list(conditions)
    for label, *cells in table[1:]:
        c = conditions[label]
        for (a, b, *fields), cell in zip(columns, cells, strict=True):
            if c == "rare-0.01":
                fields = ["t_rare_mA" if f == "t_mA" else "rare_mA" if f == "mA" else f for f in fields]
            assert cell == " / ".join(paired(c, a, b, f) for f in fields), (label, a, b)


