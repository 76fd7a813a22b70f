"""Each attribute decided at its own threshold: chosen where its balanced accuracy is best, exactly; kept with the run,
used by evaluate.py and sample.py unless told otherwise; files of thresholds checked; the chain rule's scores the
model's alone, whatever threshold reports them."""
import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

import evaluate
import sample


def brute_force(gt, scores, default):
    """The definition, one attribute and one candidate threshold at a time, in exact fractions: every threshold a
    split allows (its distinct scores, 0 and the default), the balanced accuracy of "score > t" at each; the default
    where it is among the best or the attribute is one-sided, else the best nearest the default (the lower on a tie)."""
    chosen, default = [], float(scores.dtype.type(default))  # (applied to the scores in their own precision)
    for j in range(gt.shape[1]):
        g, s = [bool(x) for x in gt[:, j]], [float(x) for x in scores[:, j]]
        P, N = sum(g), len(g) - sum(g)
        if P == 0 or N == 0:
            chosen.append(default)
            continue

        def balanced(t):
            tp = sum(1 for gi, si in zip(g, s) if gi and si > t)
            tn = sum(1 for gi, si in zip(g, s) if not gi and not si > t)
            return Fraction(tp, P) / 2 + Fraction(tn, N) / 2
        candidates = sorted(set(s) | {0.0, default})
        best = max(balanced(t) for t in candidates)
        if balanced(default) == best:
            chosen.append(default)
        else:
            chosen.append(min((abs(t - default), t) for t in candidates if balanced(t) == best)[1])
    return chosen


def check(gt, scores, default=0.5):
    values, accuracies, kept = evaluate.choose_thresholds(gt, scores, default)
    assert values == pytest.approx(brute_force(gt, scores, default), rel=1e-7)
    # applied, they give the balanced accuracies reported (mA_j of the per-attribute table)
    pred = (scores > np.asarray(values, dtype=scores.dtype)).astype(np.uint8)
    assert [row["mA"] for row in evaluate.attribute_metrics(gt, pred)] == pytest.approx(accuracies)
    return values, kept


def test_hand_made_scores():
    gt = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1]])
    scores = np.array([[0.30, 0.9, 0.2, 0.6], [0.40, 0.1, 0.7, 0.6], [0.20, 0.8, 0.1, 0.4], [0.25, 0.3, 0.9, 0.6]],
                      dtype=np.float32)
    values, kept = check(gt, scores)
    # 0: the positives score 0.30 and 0.40, the negatives 0.20 and 0.25: "> 0.25" separates them (the default 0.5
    # calls every image negative). 1: 0.5 separates them already: kept (a tie). 2: no positive: kept. 3: no negative.
    assert values == [pytest.approx(0.25), 0.5, 0.5, 0.5] and kept == [None, "tie", "one-sided", "one-sided"]


@pytest.mark.parametrize("seed", range(6))
def test_random_scores_with_ties_equal_the_definition(seed):
    rng = np.random.default_rng(seed)
    n, a = rng.integers(5, 40), rng.integers(1, 8)
    gt = (rng.random((n, a)) < rng.random(a)).astype(np.uint8)
    # scores on a coarse grid, so that many tie, related to the labels or not
    scores = np.round(np.clip(0.3 * gt + rng.random((n, a)) * 0.8, 0, 1), 1).astype(np.float32)
    check(gt, scores, default=float(rng.choice([0.5, 0.3, 0.7])))


def test_a_run_keeps_its_thresholds_and_evaluate_and_sample_use_them(trained_run, synth_root, tmp_path, capsys):
    out, log, _ = trained_run
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    chosen = ckpt["thresholds"]
    assert (chosen["split"], chosen["rule"], chosen["default"]) == ("val", "chain", 0.5)
    assert "thresholds chosen on val for each attribute: val mA " in log
    # the run's test report: at 0.5 first, then at the thresholds chosen on val, both kept
    report = json.loads(open(os.path.join(out, "metrics_test.json")).read())
    assert report["thresholds"] == dict(zip(ckpt["attr_names"], chosen["values"]))
    assert report["overall_at_threshold"]["mAP"] == report["overall"]["mAP"]
    assert "chain rule, threshold 0.5): mA " in log and "chain rule, each attribute's threshold, chosen on val): " in log
    with open(os.path.join(out, "thresholds_val.csv")) as f:
        assert evaluate.read_thresholds(f.name, ckpt["attr_names"]) == chosen["values"]
    # evaluate.py chooses them on any split, and takes them from a file; sample.py takes the same file
    folder = tmp_path / "eval"
    evaluate.main([f"--ckpt={out}/ckpt.pt", "--split=test", "--choose_thresholds=True", f"--out_dir={folder}",
                   "--workers=0", "--pictures=0"])
    assert "chose each attribute's threshold on test" in capsys.readouterr().out
    on_test = evaluate.read_thresholds(str(folder / "thresholds_test.csv"), ckpt["attr_names"])
    images = [os.path.join(synth_root, "images", f) for f in sorted(os.listdir(os.path.join(synth_root, "images")))[:3]]
    assert sample.main(images + [f"--ckpt={out}/ckpt.pt", "--json=True", "--workers=0",
                                 f"--thresholds={folder / 'thresholds_test.csv'}"]) == 0
    printed = capsys.readouterr()
    rows = json.loads(printed.out)
    assert "decided at each attribute's threshold from " in printed.err
    for row in rows:
        assert row["thresholds"] == dict(zip(ckpt["attr_names"], on_test))
        assert set(row["attributes"]) == {n for n, t in zip(ckpt["attr_names"], on_test) if row["scores"][n] > t} or \
            all(abs(row["scores"][n] - t) < 1e-6 for n, t in zip(ckpt["attr_names"], on_test)
                if (row["scores"][n] > t) != (n in row["attributes"]))  # (the JSON's scores are rounded)
    # one threshold for all, as asked
    assert sample.main(images + [f"--ckpt={out}/ckpt.pt", "--json=True", "--workers=0", "--threshold=0.9"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and all(r["thresholds"] == 0.9 for r in json.loads(printed.out))


def test_the_chain_rules_scores_do_not_move_with_the_threshold(trained_run, synth_root, capsys):
    out, _, _ = trained_run
    images = [os.path.join(synth_root, "images", f) for f in sorted(os.listdir(os.path.join(synth_root, "images")))[:4]]
    printed = {}
    for t in (0.05, 0.5, 0.95):
        assert sample.main(images + [f"--ckpt={out}/ckpt.pt", "--json=True", "--workers=0", f"--threshold={t}"]) == 0
        printed[t] = json.loads(capsys.readouterr().out)
    assert printed[0.05][0]["scores"] == printed[0.5][0]["scores"] == printed[0.95][0]["scores"]
    for t, rows in printed.items():
        assert all(set(r["attributes"]) == {n for n, v in r["scores"].items() if v > t} for r in rows)


@pytest.mark.parametrize("text, message", [
    ("attribute,threshold\nFemale,0.5\n", r"1 thresholds for the model's 22 attributes; missing AgeLess18, "),
    ("Female,0.5\nBeard,0.5\n", r"row Beard,0.5 is not attribute,threshold for one of the model's 22 attributes$"),
    ("Female,1.5\n", r"the threshold of Female is 1.5; expected a number from 0 to 1$"),
    ("Female,high\n", r"the threshold of Female is high; expected a number from 0 to 1$"),
    ("Female,0.5\nFemale,0.4\n", r"row Female,0.4 is an attribute named twice$"),
])
def test_bad_files_of_thresholds_are_one_line(trained_run, synth_root, tmp_path, text, message):
    out, _, _ = trained_run
    (tmp_path / "t.csv").write_text(text)
    image = os.path.join(synth_root, "images", sorted(os.listdir(os.path.join(synth_root, "images")))[0])
    with pytest.raises(ValueError, match=message) as e:
        sample.main([image, f"--ckpt={out}/ckpt.pt", f"--thresholds={tmp_path / 't.csv'}", "--workers=0"])
    assert "\n" not in str(e.value) and str(e.value).startswith(f"--thresholds={tmp_path / 't.csv'}: ")
    with pytest.raises(FileNotFoundError, match=r"--thresholds=.*nothere\.csv not found$"):
        sample.main([image, f"--ckpt={out}/ckpt.pt", f"--thresholds={tmp_path / 'nothere.csv'}"])
    with pytest.raises(ValueError, match=r"greedy decoding scores only the attributes it emits"):
        sample.main([image, f"--ckpt={out}/ckpt.pt", "--rule=greedy", f"--thresholds={tmp_path / 't.csv'}"])
