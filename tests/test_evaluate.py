"""evaluate.py: the metrics and per-attribute metrics by hand, the report, the files an evaluation writes, recomputed
from scratch, and what it refuses."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate
import sample


def test_metrics_by_hand():
    gt = [[1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]]
    pred = [[1, 1, 0], [0, 0, 0], [1, 1, 0], [1, 1, 1]]
    m = evaluate.metrics(np.array(gt), np.array(pred))
    # per attribute (pos recall + neg recall) / 2: (1 + 1) / 2, (1 + 1/3) / 2, (0 + 2/3) / 2
    assert m["mA"] == pytest.approx(100 * (1 + 2 / 3 + 1 / 3) / 3)
    # per sample I/U: 1/3, 0 (empty gt and pred: 0 / eps), 1, 1/3
    assert m["Acc"] == pytest.approx(100 * 5 / 12)
    assert m["Prec"] == pytest.approx(100 * (1 / 2 + 0 + 1 + 1 / 3) / 4)
    assert m["Rec"] == pytest.approx(100 * (1 / 2 + 0 + 1 + 1) / 4)
    assert m["F1"] == pytest.approx(100 * (1 / 2 + 0 + 1 + 1 / 2) / 4)
    prec, rec = 11 / 24, 5 / 8
    assert m["F1_hm"] == pytest.approx(100 * 2 * prec * rec / (prec + rec))
    assert list(m) == ["mA", "Acc", "Prec", "Rec", "F1", "F1_hm"]


def test_metrics_eps_edge_cases():
    # an attribute no sample has: its positive recall is 0 / eps = 0, so it scores at most 50
    gt = np.array([[0, 1], [0, 0]])
    m = evaluate.metrics(gt, gt)
    assert m["mA"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    # a sample with no prediction: precision 0 / eps = 0, not a division error; no negatives: neg recall 0 too
    m = evaluate.metrics(np.array([[1, 1]]), np.array([[0, 0]]))
    assert m == {"mA": 0.0, "Acc": 0.0, "Prec": 0.0, "Rec": 0.0, "F1": 0.0, "F1_hm": 0.0}
    m = evaluate.metrics(np.ones((3, 4)), np.ones((3, 4)))
    assert m["Acc"] == pytest.approx(100) and m["F1"] == pytest.approx(100) and m["mA"] == pytest.approx(50)


def test_attribute_metrics_by_hand():
    gt = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]])
    pred = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [1, 1, 1]])
    rows = evaluate.attribute_metrics(gt, pred)
    # attribute 1: positive in image 2 only (rate 25%); predicted in images 0, 2, 3: TP 1, FP 2, TN 1 of 3 negatives
    assert rows[1]["rate"] == pytest.approx(25) and rows[1]["recall"] == pytest.approx(100)
    assert rows[1]["neg_recall"] == pytest.approx(100 / 3) and rows[1]["precision"] == pytest.approx(100 / 3)
    assert rows[1]["mA"] == pytest.approx((100 + 100 / 3) / 2) and rows[1]["F1"] == pytest.approx(50)
    # attribute 2: its one positive missed, one false positive: recall 0, precision 0, F1 0, neg recall 2/3
    assert (rows[2]["recall"], rows[2]["precision"], rows[2]["F1"]) == (0, 0, 0)
    assert rows[2]["neg_recall"] == pytest.approx(200 / 3)
    assert np.mean([r["mA"] for r in rows]) == pytest.approx(evaluate.metrics(gt, pred)["mA"])
    assert evaluate.set_sizes(gt, pred) == pytest.approx(dict(predicted=7 / 4, true=5 / 4))
    table = evaluate.report(["hat", "hair", "bag"], gt, pred).splitlines()
    assert table[0].startswith("mA 66.67 | Acc 41.67") and table[1] == "attributes per image: 1.75 predicted, 1.25 true"
    assert re.fullmatch(r"\| hair +\| +25\.00 \| +66\.67 \| +100\.00 \| +33\.33 \| +33\.33 \| +50\.00 \|", table[-2])
    assert len({len(line) for line in table[3:]}) == 1  # aligned, and a Markdown table


def test_the_report_names_attributes_without_positives(tmp_path):
    gt = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    pred = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1]])
    lines = evaluate.report(["hat", "bag", "coat"], gt, pred).splitlines()
    assert lines[2] == "note: mA averages in attributes without positives here (their mA is at most 50; marked *): bag"
    assert lines[3] == "note: mA averages in attributes without negatives here (their mA is at most 50; marked *): coat"
    assert re.match(r"\| bag \* +\| +0\.00 \| +33\.33 \|", lines[-2]) and len({len(x) for x in lines[5:]}) == 1
    assert evaluate.one_sided(["hat", "bag", "coat"], gt) == dict(without_positives=["bag"], without_negatives=["coat"])
    m = evaluate.metrics(gt, pred)  # still the standard mA: the mean over every attribute
    assert m["mA"] == pytest.approx(np.mean([(1 / 2 + 1) / 2, (0 + 2 / 3) / 2, (1 + 0) / 2]) * 100)


def read_predictions(path, names):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    pred = np.array([[int(r[f"pred:{n}"]) for n in names] for r in rows])
    prob = np.array([[float(r[f"prob:{n}"]) for n in names] for r in rows])
    gt = np.array([[int(r[f"gt:{n}"]) for n in names] for r in rows])
    return [r["image"] for r in rows], pred, prob, gt


def test_evaluate_writes_what_a_table_is_built_from(trained_run, synth_root, tiny_clip_file, tmp_path, capsys):
    import data
    out, _, _ = trained_run
    shutil.copy(os.path.join(out, "ckpt.pt"), tmp_path / "ckpt.pt")
    # the dataset is the one the checkpoint was trained on; the files go beside the checkpoint
    m = evaluate.main([f"--ckpt={tmp_path / 'ckpt.pt'}", "--split=val", "--workers=0", "--pictures=5"])
    log = capsys.readouterr().out
    d = data.load_dataset("synth", synth_root)
    paths, pred, prob, gt = read_predictions(tmp_path / "predictions_val.csv", d.attr_names)
    # the predictions are the model's, the ground truth the dataset's, the metrics recomputed from both
    assert paths == [d.image_paths[i] for i in d.splits["val"]] and (gt == d.labels[d.splits["val"]]).all()
    model, _ = sample.load_model(str(tmp_path / "ckpt.pt"))
    images = torch.stack([sample.Images(paths, 32)[i][1] for i in range(len(paths))])
    # decoded as the run decoded: by the chain rule, which scores every attribute, each attribute decided at the
    # threshold the run chose for it on val
    _, expected_scores = model.generate(images, rule="chain")
    chosen = torch.load(tmp_path / "ckpt.pt", weights_only=True)["thresholds"]
    assert chosen["split"] == "val" and chosen["rule"] == "chain" and len(chosen["values"]) == len(d.attr_names)
    expected_pred = (expected_scores > torch.tensor(chosen["values"])).to(torch.uint8)
    assert (pred == expected_pred.numpy()).all() and np.allclose(prob, expected_scores.numpy(), atol=1e-5)
    assert (prob > 0).all()
    assert {k: v for k, v in m.items() if k != "mAP"} == evaluate.metrics(d.labels[d.splits["val"]], pred)
    # mAP, written plainly: per attribute the mean, over its positives, of the precision among the images scored at
    # least as high (from the model's scores, in case two of them differ less than the file's digits say)
    exact = expected_scores.numpy()
    aps = [np.mean([(gt[exact[:, j] >= exact[i, j], j]).mean() for i in np.flatnonzero(gt[:, j])])
           for j in range(gt.shape[1]) if gt[:, j].any()]
    assert m["mAP"] == pytest.approx(100 * np.mean(aps))
    result = json.loads((tmp_path / "metrics_val.json").read_text())
    assert result["overall"] == pytest.approx(m)
    assert set(result) >= {"checkpoint", "step", "dataset", "split", "beam_size", "rule", "threshold", "unweight",
                           "images", "commit", "overall", "set_size", "attributes", "failures"}
    step = torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"]
    assert (result["step"], result["dataset"], result["split"], result["beam_size"], result["rule"],
            result["threshold"], result["images"]) == (step, "synth", "val", 1, "chain", 0.5, 32)
    assert result["checkpoint"] == str(tmp_path / "ckpt.pt") and re.fullmatch(r"[0-9a-f]{40}", result["commit"] or "0" * 40)
    assert list(result["attributes"]) == d.attr_names
    for j, name in enumerate(d.attr_names):
        g, p = gt[:, j].astype(bool), pred[:, j].astype(bool)
        recall = (g & p).sum() / max(g.sum(), 1e-20)
        assert result["attributes"][name]["recall"] == pytest.approx(100 * recall)
        assert result["attributes"][name]["rate"] == pytest.approx(100 * g.mean())
    assert result["set_size"]["predicted"] == pytest.approx(pred.sum(1).mean())
    # the gallery: the images with the most wrong attributes
    errors = (gt != pred).sum(1)
    assert [f["errors"] for f in result["failures"]] == sorted(errors, reverse=True)[:5]
    assert all(errors[paths.index(f["image"])] == f["errors"] for f in result["failures"])
    assert (tmp_path / "failures_val.png").stat().st_size > 0 and (tmp_path / "similarity.png").stat().st_size > 0
    # the similarity matrix: cosine similarity of the attribute tokens, computed here from the token table
    with open(tmp_path / "similarity.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == d.attr_names and [r[0] for r in rows[1:]] == d.attr_names
    with torch.no_grad():
        tokens = F.normalize(model.token_table()[3:], dim=-1)
    assert np.allclose(np.array([[float(x) for x in r[1:]] for r in rows[1:]]), (tokens @ tokens.T).numpy(), atol=1e-5)
    assert "| Female " in log and "attributes per image: " in log and "wrote" in log and "| mAP " in log
    assert result["thresholds"] == dict(zip(d.attr_names, chosen["values"]))
    assert "images, chain rule, threshold 0.5): mA " in log  # the metrics at the one threshold first, then at theirs
    assert "images, chain rule, each attribute's threshold, chosen on val): mA " in log
    # --threshold decides every attribute at one threshold; the scores, and mAP, stay the model's
    again = evaluate.main([f"--ckpt={tmp_path / 'ckpt.pt'}", "--split=val", "--workers=0", "--pictures=0",
                           "--threshold=0.3"])
    _, pred3, prob3, _ = read_predictions(tmp_path / "predictions_val.csv", d.attr_names)
    assert (pred3 == (prob3 > 0.3)).all() and np.array_equal(prob3, prob) and again["mAP"] == m["mAP"]
    assert "thresholds" not in json.loads((tmp_path / "metrics_val.json").read_text())
    assert "images, chain rule, threshold 0.3): mA " in capsys.readouterr().out
    # greedy decoding scores only what it emits: no mAP, and the probability an attribute had when emitted
    m = evaluate.main([f"--ckpt={tmp_path / 'ckpt.pt'}", "--split=val", "--workers=0", "--pictures=0", "--rule=greedy"])
    _, pred, prob, _ = read_predictions(tmp_path / "predictions_val.csv", d.attr_names)
    assert "mAP" not in m and ((prob > 0) == (pred == 1)).all() and "images, greedy decoding)" in capsys.readouterr().out
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_evaluate_takes_the_dataset_from_the_checkpoint(trained_run, tmp_path, capsys):
    shutil.copy(os.path.join(trained_run[0], "ckpt.pt"), tmp_path / "ckpt.pt")
    m = evaluate.main([f"--ckpt={tmp_path}/ckpt.pt", "--workers=0", "--pictures=0"])
    assert set(m) >= {"mA"} and "on synth test: 32 images" in capsys.readouterr().out


def test_evaluate_refuses_another_dataset_and_torchrun(trained_run, tmp_path, tiny_clip_file, monkeypatch):
    out, _, _ = trained_run
    root = tmp_path / "other"
    root.mkdir()
    (root / "labels.csv").write_text("image,split,hat,bag\n0.png,test,1,0\n")
    Image.new("RGB", (8, 16)).save(root / "0.png")
    with pytest.raises(ValueError, match=r"ckpt\.pt was trained on 22 other attributes \(Female, .*\) than this "
                                         r"dataset's 2; evaluate it on the dataset it was trained on \(synth\)"):
        evaluate.main(["--dataset=csv", f"--root={root}", f"--ckpt={out}/ckpt.pt", f"--out_dir={tmp_path}"])
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"evaluate.py runs in one process: start it with python, not torchrun"):
        evaluate.main(["--dataset=csv", f"--root={root}", f"--ckpt={out}/ckpt.pt"])




def test_average_precision_by_hand():
    gt = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.2, 0.1], [0.1, 0.1, 0.0]])
    ap = evaluate.average_precision(gt, scores)
    # attribute 0: positives at ranks 1 and 3, precision 1 and 2/3 there
    assert ap[0] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # attribute 1: a tie at 0.5 enters together (recall 1/2 at precision 1/2), then 0.2 (recall 1 at precision 2/3)
    assert ap[1] == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 2 / 3))
    assert np.isnan(ap[2]) and evaluate.mean_ap(ap) == pytest.approx((ap[0] + ap[1]) / 2)  # no positives: left out
    assert evaluate.average_precision(gt[:, :1], gt[:, :1] * 0.9 + 0.05)[0] == pytest.approx(100)  # a perfect order


@pytest.mark.parametrize("options, message", [
    (dict(rule="beam"), r"^--rule=beam: expected chain \(each attribute's probability, by the chain rule\) or greedy"),
    (dict(threshold=1.5), r"^--threshold=1\.5: expected a probability from 0 to 1$"),
    (dict(beam_size=3), r"^--beam_size=3: expected 1 or more, and 1 with --rule=chain \(it has no beam\)$"),
    (dict(rule="greedy", unweight=True), r"^--unweight=True reads the chain rule's probabilities without the loss "
                                         r"weights: it needs --rule=chain$"),
])
def test_decoding_options_that_cannot_work_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        evaluate.decoding_options(evaluate.EvalConfig(**options))
    assert evaluate.decoding_options(evaluate.EvalConfig(rule="greedy", beam_size=3))["beam_size"] == 3
