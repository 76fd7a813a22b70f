"""experiments.py: the corruptions change exactly what they say and never the test split; --quick=True writes every
file it promises, and a second run re-runs nothing."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

import data
import experiments
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
    order = list(reversed(range(len(base.attr_names))))
    labels, _ = experiments.flip_labels(base.labels, base.splits["train"], 0.1, np.random.default_rng(0))
    folder = experiments.write_variant(str(tmp_path / "v"), base, labels, base.splits, order)
    v = data.load_dataset("csv", folder)
    assert v.attr_names == [base.attr_names[j] for j in order]
    assert [os.path.realpath(p) for p in v.image_paths] == [os.path.realpath(p) for p in base.image_paths]
    assert (v.labels == labels[:, order]).all()
    assert all((v.splits[s] == base.splits[s]).all() for s in base.splits)


def test_quick_experiments_write_every_promised_file(tmp_path):
    out = tmp_path / "exp"
    r = run_script("experiments.py", "--quick=True", f"--out_dir={out}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("results.csv", "results.md", "results.png"):
        assert os.path.getsize(out / name) > 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["experiment"] for r in rows} == set(experiments.EXPERIMENTS)
    conditions = {(r["experiment"], r["condition"], r["head"]) for r in rows}
    for head in ("sequencepar", "linear"):
        assert {("heads", "weighted", head), ("noise", "symmetric 0.3", head), ("noise", "missing 0.4", head),
                ("imbalance", "rare 0.01", head)} <= conditions
    assert ("heads", "weighted, equal time", "linear") in conditions and ("depth", "6 layers", "sequencepar") in conditions
    assert {r["steps"] for r in rows if "equal time" not in r["condition"]} == {"4"}
    assert all(0 <= float(r["mA"]) <= 100 for r in rows)
    md = (out / "results.md").read_text()
    assert all(f"### {t}" in md for t in ("Heads", "Label noise", "Imbalance", "SequencePAR's decoder depth",
                                          "Decoding", "The order"))
    # a second run finds every run in results.csv and trains nothing
    again = run_script("experiments.py", "--quick=True", f"--out_dir={out}")
    assert again.returncode == 0 and " start " not in again.stdout
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_experiments_refuse_bad_options():
    r = run_script("experiments.py", "--only=heads,nope")
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: --only=heads,nope: unknown experiment 'nope'; expected some of heads,noise,imbalance,depth,beam,order")


def test_a_run_that_finished_but_was_not_recorded_is_recorded_from_its_files(trained_run, synth_root, tmp_path,
                                                                             monkeypatch):
    # stopped while a finished run was still alive (its test written, its exit not seen): the next start records it
    # from its own files and trains nothing
    cfg = experiments.ExperimentsConfig(out_dir=str(tmp_path), root=synth_root)
    run = experiments.Run("heads/weighted/sequencepar/s0", "heads", "weighted", "sequencepar", 0, 16, synth_root)
    shutil.copytree(trained_run[0], experiments.run_dir(cfg, run.key))
    monkeypatch.setattr(experiments.subprocess, "Popen", lambda *a, **k: pytest.fail("a finished run was started again"))
    base = data.load_dataset("synth", synth_root)
    results = str(tmp_path / "results.csv")
    assert experiments.execute(cfg, [run], results, base, log=lambda *a: None) == []
    row = experiments.read_results(results)[run.key]
    m = json.loads(open(os.path.join(trained_run[0], "metrics_test.json")).read())
    assert row["mA"] == f"{m['overall']['mA']:.2f}" and float(row["train_s"]) == pytest.approx(m["train_s"], abs=0.05)
    # a run of fewer steps than the plan's is not the planned run: it is trained again
    longer = experiments.Run("heads/weighted/linear/s0", "heads", "weighted", "linear", 0, 24, synth_root)
    shutil.copytree(trained_run[0], experiments.run_dir(cfg, longer.key))
    with pytest.raises(pytest.fail.Exception, match="started again"):
        experiments.execute(cfg, [longer], results, base, log=lambda *a: None)
