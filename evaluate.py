"""
Score a checkpoint of train.py on a split of its dataset.

    python evaluate.py --ckpt=out/ckpt.pt                 # the test split of the dataset it was trained on
    python evaluate.py --ckpt=out/ckpt.pt --split=val --rule=greedy --beam_size=3
    python evaluate.py --ckpt=out/ckpt.pt --rule=chain --threshold=0.3
    python evaluate.py --ckpt=out/ckpt.pt --split=val --choose_thresholds=True   # each attribute's, written to a file

Decodes as the checkpoint's training run did unless told otherwise (--rule, --unweight, --beam_size), and decides each
attribute at the threshold the run chose for it on val, unless --threshold (one for all) or --thresholds (a file)
says otherwise. The chain rule's scores, and mAP, do not depend on the threshold: its prefix is decided at 0.5.
Prints the standard PAR metrics (and mAP where the scores cover every attribute: the chain rule, the query and linear
heads), the predicted and true attributes per image, and a table per attribute, and writes beside the checkpoint (or
in --out_dir) what a paper table or an analysis starts from: metrics_<split>.json, every prediction and its score in
predictions_<split>.csv, the attribute tokens' similarity matrix as similarity.png and similarity.csv (SequencePAR's
and the query head's; the linear head has no attribute tokens) and the images it gets most wrong in
failures_<split>.png. Every training run ends with the same `evaluate` on its test split.

Shapes: N images, A attributes.
"""
import csv
import io
import json
import os
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import cli
from cli import UserError, save_atomic
from checkpoint import check_attributes, load_checkpoint, model_from_checkpoint
from data import load_dataset
from decoder import AttributeDecoder, SequencePAR
from dataset import PARImages, check_images, read_image
from run import hold_folder


def metrics(gt, pred):
    """The PAR metrics of 0/1 arrays gt and pred of shape (N, A), in percent, eps = 1e-20 in every denominator:
    label-based mA (per attribute the mean of positive and negative recall, averaged over attributes) and
    instance-based Acc (I / U per image), Prec (I / |pred|), Rec (I / |gt|), F1 (mean of per-image F1, as SequencePAR
    reports it) and F1_hm (the harmonic mean of Prec and Rec, the Rethinking-of-PAR convention)."""
    gt, pred, eps = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool), 1e-20
    tp, tn = (gt & pred).sum(0), (~gt & ~pred).sum(0)
    ma = ((tp / (gt.sum(0) + eps) + tn / ((~gt).sum(0) + eps)) / 2).mean()
    inter, union = (gt & pred).sum(1), (gt | pred).sum(1)
    prec_i, rec_i = inter / (pred.sum(1) + eps), inter / (gt.sum(1) + eps)
    prec, rec = prec_i.mean(), rec_i.mean()
    result = dict(mA=ma, Acc=(inter / (union + eps)).mean(), Prec=prec, Rec=rec,
                  F1=(2 * prec_i * rec_i / (prec_i + rec_i + eps)).mean(), F1_hm=2 * prec * rec / (prec + rec + eps))
    return {k: 100 * float(v) for k, v in result.items()}


def format_metrics(m):
    return " | ".join(f"{k} {v:.2f}" for k, v in m.items())


def average_precision(gt, scores):
    """Per attribute j of gt (N, A) in {0, 1} and scores (N, A), in percent: the area under its precision-recall curve,
    sum over the distinct scores t, from the highest, of (recall at t - recall at the previous t) x precision at t
    (images scoring t or more are predicted positive; ties enter together). NaN for an attribute without positives."""
    gt, scores = np.asarray(gt).astype(bool), np.asarray(scores, dtype=np.float64)
    ap = []
    for g, s in zip(gt.T, scores.T):
        order = np.argsort(-s, kind="stable")
        g, s = g[order], s[order]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last image of each run of equal scores
        tp = np.cumsum(g)[last]
        precision, recall = tp / (last + 1), tp / max(1, g.sum())
        ap.append(100 * float(np.sum(np.diff(np.r_[0, recall]) * precision)) if g.any() else float("nan"))
    return ap


def mean_ap(ap):
    # mAP: the mean AP of the attributes that have positives
    known = [a for a in ap if not np.isnan(a)]
    return float(np.mean(known)) if known else float("nan")


DECODING = ("beam_size", "rule", "threshold", "unweight")  # the options of every script that decides how to decode


def decoding_options(cfg):
    """The keyword arguments of generate that a script's config chooses (beam_size, rule, threshold, unweight),
    checked: one-line errors for values that cannot work."""
    rules = ("chain", "greedy")
    if cfg.rule not in rules:
        raise UserError(f"--rule={cfg.rule}: expected chain (each attribute's probability, by the chain rule) or "
                        f"greedy (the paper's: the most probable next attribute)")
    if not 0 <= cfg.threshold <= 1:
        raise UserError(f"--threshold={cfg.threshold}: expected a probability from 0 to 1")
    if cfg.beam_size < 1 or (cfg.beam_size > 1 and cfg.rule == "chain"):
        raise UserError(f"--beam_size={cfg.beam_size}: expected 1 or more, and 1 with --rule=chain (it has no beam)")
    if cfg.unweight and cfg.rule != "chain":
        raise UserError("--unweight=True reads the chain rule's probabilities without the loss weights: it needs "
                        "--rule=chain")
    return dict(beam_size=cfg.beam_size, rule=cfg.rule, threshold=cfg.threshold, unweight=cfg.unweight)


def scores_every_attribute(model, decoding):
    # the query and linear heads score every attribute, and so does SequencePAR under the chain rule; greedy decoding
    # gives a score only to what it emits
    return not isinstance(model, SequencePAR) or decoding["rule"] == "chain"


# The chain rule scores attribute m given the attributes before it, and those are decided as it goes: at 0.5, always.
# The scores are then the model's alone, the same whatever threshold (or thresholds, one per attribute) later decides
# what is reported; so is mAP, which reads the scores only.
CHAIN_PREFIX = 0.5


def generate_options(model, decoding):
    """The keyword arguments of the model's generate for a decoding (see decoding_options): the query and linear heads
    take none (their sigmoids have no rule, beam or weights to undo), and the chain rule's prefix is CHAIN_PREFIX's."""
    if not isinstance(model, SequencePAR):
        return {}
    return dict(rule=decoding["rule"], beam_size=decoding["beam_size"], unweight=decoding["unweight"],
                threshold=CHAIN_PREFIX)


def applied(model, decoding):
    # the decoding as it was applied, for the records: the multi-label heads' is their threshold alone
    return decoding if isinstance(model, SequencePAR) else dict(rule="sigmoid", threshold=decoding["threshold"])


@torch.no_grad()
def generate(model, images, decoding, thresholds=None):
    """(pred (B, A) uint8, scores (B, A)) for a batch: the model's generate, then, where the scores cover every
    attribute, each attribute present where its score is above its threshold (strictly): `thresholds`, one per
    attribute, or else decoding's one threshold. Greedy decoding's pred is what it emitted."""
    pred, scores = model.generate(images, **generate_options(model, decoding))
    return decide(pred, scores, scores_every_attribute(model, decoding), decoding, thresholds), scores


def decide(pred, scores, every, decoding, thresholds=None):
    # where every attribute is scored: each present above its threshold (one each, or decoding's one); else pred
    if not every:
        return pred
    t = decoding["threshold"] if thresholds is None else thresholds
    return (scores > torch.as_tensor(t, dtype=scores.dtype, device=scores.device)).to(torch.uint8)


@torch.no_grad()
def predict(model, batches, device, ctx, decoding, thresholds=None):
    """Decodes every batch of (images, labels) with generate(model, images, decoding, thresholds): returns pred (N, A)
    uint8, scores (N, A) and gt (N, A) as numpy."""
    was_training = model.training
    model.eval()
    preds, scores, gts = [], [], []
    for images, labels in batches:
        with ctx:
            pred, score = generate(model, images.to(device, non_blocking=True), decoding, thresholds)
        preds.append(pred.cpu())
        scores.append(score.float().cpu())
        gts.append(labels.cpu())
    model.train(was_training)
    return torch.cat(preds).numpy(), torch.cat(scores).numpy(), torch.cat(gts).numpy()


def choose_thresholds(gt, scores, default=0.5):
    """Per attribute j of gt (N, A) in {0, 1} and scores (N, A): the threshold t at which "score > t" has the highest
    balanced accuracy (mA_j) on these images, searched exactly over the distinct scores (and 0 and the default: every
    decision these images allow). Where the default reaches the best too, or the attribute has no positive or no
    negative here, it keeps the default; among other ties, the t nearest the default. Returns the thresholds (A,), the
    balanced accuracy each reaches here, in percent, and for each attribute that kept the default why: "one-sided" or
    "tie" (the default is as good), else None."""
    gt, scores = np.asarray(gt).astype(bool), np.asarray(scores)
    thresholds, accuracies, kept = [], [], []
    for g, s in zip(gt.T, scores.T):
        P, N = int(g.sum()), int((~g).sum())
        if P == 0 or N == 0:
            thresholds.append(default)
            recalls = ((s > default)[g].mean() if P else 0.0, (s <= default)[~g].mean() if N else 0.0)
            accuracies.append(100 * float(sum(recalls)) / 2)
            kept.append("one-sided")
            continue
        pos, neg = np.sort(s[g]), np.sort(s[~g])
        t = np.unique(np.r_[s, 0.0, default]).astype(s.dtype)
        tp = P - np.searchsorted(pos, t, side="right")  # positives above t
        tn = np.searchsorted(neg, t, side="right")  # negatives at or below t
        ba = tp * N + tn * P  # balanced accuracy x 2PN: integers, so that ties are exact
        at_default = ba[np.searchsorted(t, s.dtype.type(default))]
        best = np.flatnonzero(ba == ba.max())
        if at_default == ba.max():
            choice, why = s.dtype.type(default), "tie"
        else:
            choice, why = t[best[np.argmin(np.abs(t[best].astype(np.float64) - default))]], None
        thresholds.append(float(choice))
        accuracies.append(100 * float(ba.max()) / (2 * P * N))
        kept.append(why)
    return thresholds, accuracies, kept


def read_thresholds(path, names):
    """Per-attribute thresholds from a CSV file of attribute,threshold rows (a header first, if any), one row for each
    attribute of `names`, in any order; in names' order. Anything else is a one-line error."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except FileNotFoundError:
        raise cli.MissingFile(f"--thresholds={path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--thresholds={path}: cannot read it ({e})") from None
    if rows and rows[0][0] not in names:  # a header
        rows = rows[1:]
    given = {}
    for r in rows:
        if len(r) != 2 or r[0] not in names or r[0] in given:
            what = "an attribute named twice" if len(r) == 2 and r[0] in given else f"not attribute,threshold for one " \
                f"of the model's {len(names)} attributes"
            raise UserError(f"--thresholds={path}: row {','.join(r)} is {what}")
        try:
            t = float(r[1])
        except ValueError:
            t = float("nan")
        if not 0 <= t <= 1:
            raise UserError(f"--thresholds={path}: the threshold of {r[0]} is {r[1]}; expected a number from 0 to 1")
        given[r[0]] = t
    missing = [n for n in names if n not in given]
    if missing:
        raise UserError(f"--thresholds={path}: {len(given)} thresholds for the model's {len(names)} attributes; "
                        f"missing {', '.join(missing[:5])}" + (", ..." if len(missing) > 5 else ""))
    return [given[n] for n in names]


def thresholds_csv(names, thresholds):
    return "attribute,threshold\n" + "".join(f"{n},{t!r}\n" for n, t in zip(names, thresholds))


def attribute_metrics(gt, pred):
    """Per attribute j of 0/1 arrays (N, A), in percent: its positive rate in gt, mA_j (the mean of its positive
    recall, here `recall`, and its negative recall), precision and F1."""
    gt, pred, eps = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool), 1e-20
    tp, fp, tn = (gt & pred).sum(0), (~gt & pred).sum(0), (~gt & ~pred).sum(0)
    pos_recall, neg_recall = tp / (gt.sum(0) + eps), tn / ((~gt).sum(0) + eps)
    precision = tp / (tp + fp + eps)
    f1 = 2 * precision * pos_recall / (precision + pos_recall + eps)
    columns = dict(rate=gt.mean(0), mA=(pos_recall + neg_recall) / 2, recall=pos_recall, neg_recall=neg_recall,
                   precision=precision, F1=f1)
    return [{k: 100 * float(v[j]) for k, v in columns.items()} for j in range(gt.shape[1])]


def set_sizes(gt, pred):
    """How many attributes the model predicts per image, against how many are true, on average: a model that stops too
    early or runs on shows here first."""
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    return dict(predicted=float(pred.sum(1).mean()), true=float(gt.sum(1).mean()))


def one_sided(names, gt):
    """The attributes of which gt (N, A) holds no positive, and those of which it holds no negative: their mA_j is
    at most 50 whatever the model does, and they pull the mean mA down with it."""
    gt = np.asarray(gt).astype(bool)
    return dict(without_positives=[n for n, k in zip(names, gt.sum(0)) if k == 0],
                without_negatives=[n for n, k in zip(names, gt.sum(0)) if k == len(gt)])


def report(names, gt, pred, ap=None, thresholds=None):
    """The overall metrics (with mAP, given each attribute's AP), the set sizes and the per-attribute table (with each
    attribute's threshold, given them), as Markdown that also reads aligned; an attribute without positives (or
    negatives) here is named under the metrics and marked * in the table."""
    m, s, capped = metrics(gt, pred), set_sizes(gt, pred), one_sided(names, gt)
    if ap is not None:
        m["mAP"] = mean_ap(ap)
    notes = [f"note: mA averages in attributes {k.replace('_', ' ')} here (their mA is at most 50; marked *): "
             + ", ".join(v) for k, v in capped.items() if v]
    marked = set(sum(capped.values(), []))
    width = max(len("attribute"), *(len(n) + 2 * (n in marked) for n in names))
    head = ["rate", "mA", "recall", "neg_recall", "precision", "F1"] + (["AP"] if ap is not None else []) \
        + (["threshold"] if thresholds is not None else [])
    lines = [f"| {'attribute':<{width}} | " + " | ".join(f"{h:>10}" for h in head) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 11 + ":" for _ in head) + "|"]
    for j, (name, row) in enumerate(zip(names, attribute_metrics(gt, pred))):
        row = {**row, "AP": ap[j]} if ap is not None else row
        row = {**row, "threshold": 100 * thresholds[j]} if thresholds is not None else row  # (in percent, as the rest)
        name = name + " *" if name in marked else name
        lines.append(f"| {name:<{width}} | " + " | ".join(f"{row[h]:>10.2f}" for h in head) + " |")
    return "\n".join([format_metrics(m), f"attributes per image: {s['predicted']:.2f} predicted, {s['true']:.2f} true",
                      *notes, ""] + lines)


def predictions_csv(paths, names, pred, scores, gt):
    """One row per image: its path, then for every attribute the 0/1 prediction and its probability (the linear head:
    its sigmoid; SequencePAR: by the chain rule, every attribute's probability; by greedy decoding, the probability an
    attribute had when emitted, 0 if it was not), then the ground truth."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["image"] + [f"{k}:{n}" for n in names for k in ("pred", "prob")] + [f"gt:{n}" for n in names])
    for i, path in enumerate(paths):
        # 9 significant digits give a float32 back exactly: a decision recomputed from the file is the one made
        w.writerow([path] + [v for j in range(len(names)) for v in (int(pred[i, j]), f"{scores[i, j]:.9g}")]
                   + [int(x) for x in gt[i]])
    return out.getvalue()


def similarity_figure(names, tokens, cell=16):
    """The cosine similarity of every pair of attribute tokens (the rows of the model's token table) as an A x A
    heatmap with the names on both axes, red for similar and blue for opposite (the paper's Fig. 4). Returns the
    picture and the matrix."""
    t = F.normalize(tokens.detach().float().cpu(), dim=-1)
    sim = (t @ t.T).numpy()  # (A, A)
    A, margin = len(names), 6 * max(len(n) for n in names) + 10
    img = Image.new("RGB", (margin + A * cell, margin + A * cell), "white")
    draw = ImageDraw.Draw(img)
    for i in range(A):
        for j in range(A):
            v = float(np.clip(sim[i, j], -1, 1))
            fade = round(255 * (1 - abs(v)))
            colour = (255, fade, fade) if v > 0 else (fade, fade, 255)
            draw.rectangle((margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
                            margin + (i + 1) * cell - 1), fill=colour)
        draw.text((4, margin + i * cell + 2), names[i], fill="black")
        label = Image.new("RGB", (margin, cell), "white")  # column names: written sideways, reading upwards
        ImageDraw.Draw(label).text((4, 2), names[i], fill="black")
        img.paste(label.rotate(90, expand=True), (margin + i * cell, 0))
    return img, sim


def worst_images(gt, pred, count):
    """Indices of the `count` images with the most wrong attributes (ties in split order), and their error counts."""
    errors = (np.asarray(gt) != np.asarray(pred)).sum(1)
    order = [int(i) for i in np.argsort(-errors, kind="stable")[:count] if errors[i] > 0]
    return order, [int(errors[i]) for i in order]


def failures_figure(images, names, gt, pred, scores, height=160, per_row=4):
    """A gallery of (path-or-PIL-image, index) pairs, each beside its predicted attributes (with the probability the
    model gave them; wrong ones in red, marked x) and its true ones (those the model missed in red, marked -): the
    paper's Fig. 8, for the images it gets most wrong."""
    tiles = []
    for img, i in images:
        img = img.resize((max(1, round(img.width * height / img.height)), height))
        tile = Image.new("RGB", (img.width + 330, max(height, 14 * (2 + max(gt[i].sum(), pred[i].sum())))), "white")
        tile.paste(img, (0, 0))
        draw = ImageDraw.Draw(tile)
        draw.text((img.width + 8, 2), "predicted", fill="black")
        draw.text((img.width + 170, 2), "true", fill="black")
        for k, j in enumerate(np.flatnonzero(pred[i])):
            wrong = not gt[i, j]
            draw.text((img.width + 8, 18 + 14 * k), f"{'x' if wrong else ' '} {scores[i, j]:.2f} {names[j]}"[:26],
                      fill="red" if wrong else "black")
        for k, j in enumerate(np.flatnonzero(gt[i])):
            missed = not pred[i, j]
            draw.text((img.width + 170, 18 + 14 * k), f"{'-' if missed else ' '} {names[j]}"[:26],
                      fill="red" if missed else "black")
        tiles.append(tile)
    width, rows = max(t.width for t in tiles), [tiles[k:k + per_row] for k in range(0, len(tiles), per_row)]
    sheet = Image.new("RGB", (per_row * width, sum(max(t.height for t in r) for r in rows)), (220, 220, 220))
    y = 0
    for r in rows:
        for k, t in enumerate(r):
            sheet.paste(t, (k * width, y))
        y += max(t.height for t in r)
    return sheet

# -----------------------------------------------------------------------------
# the files of an evaluation


def describe(model, decoding, per_attribute=None):
    # how the predictions were decided, in a few words; per_attribute: where each attribute's threshold came from
    at = per_attribute or f"threshold {decoding['threshold']:g}"
    if not isinstance(model, SequencePAR):
        return f"sigmoids, {at}"
    if decoding["rule"] == "greedy":
        return "greedy decoding" if decoding["beam_size"] == 1 else f"beam search {decoding['beam_size']}"
    return f"chain rule, {at}" + (", unweighted" if decoding["unweight"] else "")


def thresholds_to_use(ckpt, model, decoding, given, names):
    """What decides each attribute in evaluate.py and sample.py, and the words that say it (None: decoding's one
    threshold): --thresholds=FILE, else --threshold=T (one for all), else the thresholds the training run chose, where
    they were chosen for these scores (the same rule and unweighting)."""
    if given.get("thresholds") and "threshold" in given:
        raise UserError("--threshold and --thresholds: give one threshold for every attribute, or a file of them")
    if not scores_every_attribute(model, decoding):
        if given.get("thresholds"):
            raise UserError("--thresholds: greedy decoding scores only the attributes it emits, so it has nothing to "
                            "decide at a threshold; they need --rule=chain")
        return None, None
    if given.get("thresholds"):
        return read_thresholds(given["thresholds"], names), f"each attribute's threshold from {given['thresholds']}"
    run = ckpt.get("thresholds")
    if "threshold" in given or not run:
        return None, None
    scored = applied(model, decoding)
    if (run["rule"], run.get("unweight", False)) != (scored["rule"], scored.get("unweight", False)):
        return None, None  # chosen for other scores
    return run["values"], f"each attribute's threshold, chosen on {run['split']}"


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_text(path, text):
    save_atomic(path, lambda f: f.write(text.encode()))


def save_picture(img, path):
    save_atomic(path, lambda f: img.save(f, format="PNG"))


def evaluate(model, data, split, batches, out_dir, source, decoding, device="cpu", ctx=nullcontext(), pictures=16,
             log=print, title=None, thresholds=None, chosen_on=None, predicted=None):
    """Decodes a split's batches (see generate), prints the report (under `title`, by default the checkpoint and its
    step) and writes the files of an evaluation into out_dir, each one atomically; `source` (the checkpoint, its step,
    the dataset's name) goes into metrics_<split>.json. With `thresholds`, one per attribute (from `chosen_on`, a few
    words), the attributes are decided at those, and the metrics at decoding's one threshold are printed first and
    kept too. predicted: what predict returned for these batches, if it has run. Returns the overall metrics at the
    thresholds used, with mAP where the scores cover every attribute."""
    every = scores_every_attribute(model, decoding)
    thresholds = thresholds if every else None  # (greedy decoding has no score for what it did not emit)
    pred, scores, gt = predicted or predict(model, batches, device, ctx, decoding)
    indices, names = data.splits[split], data.attr_names
    ap = average_precision(gt, scores) if every else None
    at_default = None
    if thresholds is not None:
        at_default = metrics(gt, pred)
        pred = (scores > np.asarray(thresholds, dtype=scores.dtype)).astype(np.uint8)
    title = title or f"{source['checkpoint']}, step {source['step']}"
    line = f"{split} ({title}, {len(indices)} images, " + "{}): "
    if at_default is not None:
        log(line.format(describe(model, decoding)) + format_metrics({**at_default, "mAP": mean_ap(ap)}))
    log(line.format(describe(model, decoding, chosen_on)) + report(names, gt, pred, ap, thresholds))
    written = [f"metrics_{split}.json", f"predictions_{split}.csv"]
    if isinstance(model, AttributeDecoder):  # the attribute tokens of SequencePAR or the query head (linear: none)
        with torch.no_grad():
            picture, sim = similarity_figure(names, model.attribute_tokens())
        save_picture(picture, os.path.join(out_dir, "similarity.png"))
        rows = [["attribute"] + names] + [[n] + [f"{v:.6f}" for v in r] for n, r in zip(names, sim)]
        save_text(os.path.join(out_dir, "similarity.csv"), "".join(",".join(r) + "\n" for r in rows))
        written += ["similarity.png", "similarity.csv"]
    worst, errors = worst_images(gt, pred, pictures)
    if worst:
        gallery = failures_figure([(read_image(data.image_paths[indices[i]]), i) for i in worst], names, gt, pred,
                                  scores)
        save_picture(gallery, os.path.join(out_dir, f"failures_{split}.png"))
        written.append(f"failures_{split}.png")
    overall, per_attribute = metrics(gt, pred), attribute_metrics(gt, pred)
    if ap is not None:
        overall["mAP"] = mean_ap(ap)
        per_attribute = [{**row, "AP": a} for row, a in zip(per_attribute, ap)]
    if at_default is not None:
        at_default["mAP"] = overall["mAP"]
    used = dict(thresholds=dict(zip(names, thresholds)), thresholds_from=chosen_on, overall_at_threshold=at_default) \
        if thresholds is not None else {}
    result = dict(**source, split=split, **applied(model, decoding), **used, images=len(indices), commit=git_commit(),
                  overall=overall,
                  set_size=set_sizes(gt, pred), attributes=dict(zip(names, per_attribute)), **one_sided(names, gt),
                  failures=[dict(image=data.image_paths[indices[i]], errors=e) for i, e in zip(worst, errors)])
    # the metrics last: whoever finds them finds the predictions they were computed from
    save_text(os.path.join(out_dir, f"predictions_{split}.csv"),
              predictions_csv([data.image_paths[i] for i in indices], names, pred, scores, gt))
    save_text(os.path.join(out_dir, f"metrics_{split}.json"), json.dumps(result, indent=1))
    log(f"wrote {', '.join(written)} in {out_dir}")
    return result["overall"]

# -----------------------------------------------------------------------------
# python evaluate.py


@dataclass
class EvalConfig:
    ckpt: str = "out/ckpt.pt"     # a checkpoint of train.py
    split: str = "test"           # train, val or test
    out_dir: str = ""             # where the files go; "" is the checkpoint's folder
    # the dataset: by default the one the checkpoint was trained on, read from where it was read then
    dataset: str = ""
    root: str = ""
    pkl: str = ""
    images: str = ""
    partition: int = 0
    # the decoding: by default as the checkpoint's training run decoded (train.py's options of the same names)
    rule: str = "chain"
    threshold: float = 0.5
    unweight: bool = False
    beam_size: int = 1
    thresholds: str = ""          # a CSV file of attribute,threshold rows, one per attribute ("": the run's own, if it
                                  # chose them on val, unless --threshold is given)
    choose_thresholds: bool = False  # choose each attribute's threshold on --split, write thresholds_<split>.csv
    batch_size: int = 64
    workers: int = 4              # DataLoader processes
    pictures: int = 16            # images in the gallery of failures (0: no gallery)
    device: str = "auto"          # cuda when there is one
    PATHS = ("ckpt", "out_dir", "root", "pkl", "images", "thresholds")


def main(argv):
    given = cli.parse_overrides(argv, EvalConfig)
    cfg = EvalConfig(**given)
    for name, ok, expected in (("split", cfg.split in ("train", "val", "test"), "train, val or test"),
                               ("batch_size", cfg.batch_size >= 1, "1 or more"), ("workers", cfg.workers >= 0, "0 or more"),
                               ("pictures", cfg.pictures >= 0, "0 or more"), ("partition", cfg.partition >= 0, "0 or more")):
        if not ok:
            raise UserError(f"--{name}={getattr(cfg, name)}: expected {expected}")
    if int(os.environ.get("RANK", -1)) != -1:
        raise UserError("evaluate.py runs in one process: start it with python, not torchrun")
    device = cli.resolve_device(cfg.device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    ckpt = load_checkpoint(cfg.ckpt)
    # the decoding given here, else the one the checkpoint's training run used
    decoding = decoding_options(EvalConfig(**{k: given[k] if k in given else ckpt["config"].get(k, getattr(cfg, k))
                                              for k in DECODING}))
    source = {k: ckpt["config"][k] for k in ("dataset", "root", "pkl", "images", "partition")}
    if "dataset" in given:  # another dataset: what is not given is its default
        source = {k: getattr(EvalConfig, k) for k in source}
    dataset = {**source, **{k: v for k, v in given.items() if k in source}}
    out_dir = cfg.out_dir or os.path.dirname(os.path.abspath(cfg.ckpt))
    hold_folder(out_dir)
    data = load_dataset(dataset["dataset"], dataset["root"] or None, pkl=dataset["pkl"], images=dataset["images"],
                        partition=dataset["partition"])
    check_attributes(ckpt, cfg.ckpt, data.attr_names, f"evaluate it on the dataset it was trained on ({ckpt['dataset']})")
    if len(data.splits.get(cfg.split, [])) == 0:
        raise UserError(f"{dataset['dataset']} has no {cfg.split} split; its splits: {', '.join(data.splits)}")
    check_images([data.image_paths[i] for i in data.splits[cfg.split]])
    model = model_from_checkpoint(ckpt, cfg.ckpt).to(device)
    not_applied = [f"--{k}" for k in ("rule", "beam_size", "unweight") if k in given and not isinstance(model, SequencePAR)]
    if not_applied:
        print(f"note: {', '.join(not_applied)} do not apply to {cfg.ckpt}: the {ckpt.get('head')} head scores each "
              "attribute with a sigmoid")
    if cfg.choose_thresholds and not scores_every_attribute(model, decoding):
        raise UserError("--choose_thresholds=True: greedy decoding scores only the attributes it emits; choosing "
                        "thresholds needs --rule=chain")
    thresholds, chosen_on = thresholds_to_use(ckpt, model, decoding, given, data.attr_names)
    print(f"scoring {cfg.ckpt} (step {ckpt['step']}) on {dataset['dataset']} {cfg.split}: "
          f"{len(data.splits[cfg.split])} images, {describe(model, decoding, chosen_on)}")
    batches = torch.utils.data.DataLoader(PARImages(data, data.splits[cfg.split], model.clip.config.image_resolution,
                                                    train=False), cfg.batch_size, num_workers=cli.worker_count(cfg.workers))
    predicted = None
    if cfg.choose_thresholds:
        predicted = predict(model, batches, device, ctx, decoding)
        thresholds, _, kept = choose_thresholds(predicted[2], predicted[1], decoding["threshold"])
        chosen_on = f"each attribute's threshold, chosen on this {cfg.split} split (so its metrics flatter it)"
        path = os.path.join(out_dir, f"thresholds_{cfg.split}.csv")
        save_text(path, thresholds_csv(data.attr_names, thresholds))
        print(f"chose each attribute's threshold on {cfg.split} ({sum(k is not None for k in kept)} kept at "
              f"{decoding['threshold']:g}: " + (", ".join(f"{n} ({k})" for n, k in zip(data.attr_names, kept) if k)
                                                  or "none") + f"); wrote {path}, for --thresholds={path}")
    return evaluate(model, data, cfg.split, batches, out_dir, dict(checkpoint=cfg.ckpt, step=ckpt["step"],
                    dataset=dataset["dataset"]), decoding, device, ctx, cfg.pictures, thresholds=thresholds,
                    chosen_on=chosen_on, predicted=predicted)


if __name__ == "__main__":
    cli.run(main, EvalConfig, __doc__)
