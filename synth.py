"""
The synthetic pedestrian set: stylised people drawn with Pillow, so that the demo trains and tests anywhere.

Real PAR data is licensed and cannot be downloaded by code, so we draw our own: a head, hair, hat and glasses,
upper and lower garments with colours and patterns, shoes, bags, three views and three age groups, on noisy street-like
backgrounds with random scale, shift and occlusion. The labels are sampled like real ones: exclusive groups (exactly
one age group and one view), dependencies (skirts mostly with long hair, shorts rarely with boots), positive rates
from about 5% to 60%, and a few attributes that are only weakly visible, so that context from the others helps.

    python synth.py [--root=data/synth] [--n=40000] [--seed=0]
    python synth.py --hidden=0.5            # half the people behind a car, a crate or a wall that hides their legs
    python synth.py --ceiling               # the best any model can do on what those hide; draws nothing

writes root/images/000000.png ... and root/labels.csv in the csv layout that data.py reads (image, split, then one
0/1 column per attribute; the first 80% train, then 10% val and 10% test). Image i depends on (seed, i) only.

With --hidden, that fraction of the people stand behind an object that hides everything below their upper garment:
the lower garment and the shoes, so Trousers, Shorts, Skirt and Boots (HIDDEN, the last columns) can only be inferred
from the attributes still in view, through the dependencies of the label sampler. Which images are hidden depends on
(seed, i) only; root/hidden.csv lists them (a header, image, then one image path per row, as in labels.csv), and their
labels are the true ones. Every other image is drawn exactly as without --hidden. `ceiling` computes, from the label
sampler alone, the best mA and instance F1 any model can reach on the hidden attributes of a hidden image;
`ceiling_by_rule` what a perfect model reaches there under each head's own decision rule.
"""
import csv
import functools
import math
import multiprocessing
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

import cli
from cli import UserError

ATTRS = ["Female", "AgeLess18", "Age18-60", "AgeOver60", "Front", "Back", "Side", "Hat", "Glasses", "LongHair",
               "Backpack", "HandBag", "ShoulderBag", "ShortSleeve", "LongSleeve", "UpperStripe", "UpperLogo",
               "LongCoat", "Trousers", "Shorts", "Skirt", "Boots"]
GROUPS = [("AgeLess18", "Age18-60", "AgeOver60"), ("Front", "Back", "Side"), ("ShortSleeve", "LongSleeve"),
                ("Trousers", "Shorts", "Skirt")]  # exactly one attribute of each group holds
HIDDEN = ("Trousers", "Shorts", "Skirt", "Boots")  # what the object in front of a hidden image covers
N = 40_000  # data volume, not epochs, decides what a small model learns here: many distinct images
COLOURS = [(200, 30, 30), (30, 60, 190), (40, 150, 60), (230, 200, 40), (235, 235, 235), (25, 25, 25), (128, 128, 128),
           (20, 30, 80), (110, 70, 40), (240, 130, 180), (120, 50, 150), (240, 130, 20)]
HAIR = [(20, 15, 10), (60, 35, 20), (110, 70, 35), (200, 170, 90)]
SKIN = [(250, 215, 180), (225, 180, 140), (180, 130, 90), (120, 80, 55)]


def _labels(r):  # one person's attributes, with dependencies and imbalance like those of real data
    a = dict.fromkeys(ATTRS, False)
    female = a["Female"] = r.random() < 0.45
    age = r.choices(GROUPS[0], (0.2, 0.6, 0.2))[0]
    view = r.choices(GROUPS[1], (0.4, 0.35, 0.25))[0]
    a[age] = a[view] = True
    child, old = age == "AgeLess18", age == "AgeOver60"
    a["LongHair"] = r.random() < (0.75 if female else 0.07)
    a["Hat"] = r.random() < (0.3 if old else 0.1)
    a["Glasses"] = view != "Back" and r.random() < (0.3 if old else 0.06)  # nobody can see glasses from behind
    a["LongCoat"] = r.random() < (0.2 if old else 0.06)
    a["LongSleeve"] = a["LongCoat"] or r.random() < 0.55
    a["ShortSleeve"] = not a["LongSleeve"]
    a["Skirt"] = r.random() < (0.45 if female else 0.01)
    a["Shorts"] = not a["Skirt"] and not a["LongCoat"] and r.random() < (0.08 if a["LongSleeve"] else 0.45)
    a["Trousers"] = not a["Skirt"] and not a["Shorts"]
    a["Boots"] = r.random() < (0.3 if a["Skirt"] else 0.02 if a["Shorts"] else 0.12)
    a["Backpack"] = r.random() < (0.5 if child else 0.04 if old else 0.18)
    a["ShoulderBag"] = r.random() < (0.04 if a["Backpack"] else 0.2)
    a["HandBag"] = r.random() < (0.25 if female else 0.03)
    a["UpperStripe"] = r.random() < (0.3 if child else 0.12)
    a["UpperLogo"] = r.random() < (0.3 if child else 0.12)
    return a


# _labels draws the hidden attributes from these visible ones alone, and no visible attribute from a hidden one, so
# given these, the other visible attributes say nothing more about the hidden ones (tests/test_synth.py checks it)
PARENTS = ("Female", "LongSleeve", "LongCoat")


@functools.lru_cache(maxsize=4)
def _draws(sample, n, seed):  # n draws of sample: their attribute names, and a (n, names) 0/1 matrix
    r = random.Random(seed)
    rows = [sample(r) for _ in range(n)]
    keys = list(rows[0])
    return keys, np.array([[a[k] for k in keys] for a in rows], np.int64)


def _codes(sample, names, n, seed):  # n draws of sample, attribute j of `names` in bit j of an integer per draw
    keys, draws = _draws(sample, n, seed)  # (ceiling and ceiling_by_rule share their draws)
    return (draws[:, [keys.index(k) for k in names]] << np.arange(len(names))).sum(1)


def _f1(gt, pred):  # per image (the last axis) F1 of 0/1 arrays, as evaluate.metrics has it (eps = 1e-20)
    inter, eps = (gt & pred).sum(-1), 1e-20
    prec, rec = inter / (pred.sum(-1) + eps), inter / (gt.sum(-1) + eps)
    return 2 * prec * rec / (prec + rec + eps)


def _ma(gt, pred):  # label-based mA of 0/1 arrays (N, A), as evaluate.metrics has it
    eps = 1e-20
    return (((gt & pred).sum(0) / (gt.sum(0) + eps) + (~gt & ~pred).sum(0) / ((~gt).sum(0) + eps)) / 2).mean()


def ceiling(sample=_labels, hidden=HIDDEN, given=PARENTS, n=200_000, seed=0):
    """The best mA and instance F1 (in percent, as evaluate.metrics defines them, over the hidden attributes alone)
    that any model can reach on the `hidden` attributes of an image that shows only the attributes `given`, for labels
    drawn by `sample(r) -> {name: bool}` (given=None: every attribute that is not hidden). We estimate
    P(set of hidden attributes | given) from n draws, then score on n other draws, so that the estimate's own noise
    counts against it: (a) per attribute, 1 iff P(y_j = 1 | given) exceeds its positive rate, the decision that
    maximises balanced accuracy, hence mA; (b) per image, the set of hidden attributes, out of all 2^len(hidden), that
    maximises the expected F1, hence F1; F1_config is the same out of the sets the sampler draws, for a model that
    keeps to them (one of Trousers, Shorts and Skirt: hedging with two of them pays in F1, as no true set ever has
    them both). An image whose true and predicted sets are both empty counts F1 = 0, as in evaluate.metrics (with
    HIDDEN it never happens). blind_mA, blind_F1 and blind_F1_config are the same decisions made from the rates alone
    (blind_mA is 50, as for any decision blind to the image)."""
    if given is None:
        given = [k for k in sample(random.Random(seed)) if k not in hidden]
    k, names = len(hidden), list(hidden) + list(given)  # the hidden ones in the low bits
    if k > 12 or len(names) > 62:
        raise ValueError(f"{k} hidden and {len(given)} given attributes: at most 12 hidden, 62 in all")
    fit, test = (_codes(sample, names, n, f"ceiling/{seed}/{part}") for part in ("fit", "test"))
    sets = (np.arange(2 ** k)[:, None] >> np.arange(k) & 1).astype(bool)  # (C, k): the C = 2^k sets of hidden ones
    prior = np.bincount(fit & (2 ** k - 1), minlength=2 ** k) / n  # (C,)
    seen, row = np.unique(fit >> k, return_inverse=True)  # the patterns of the given attributes, and each draw's
    counts = np.zeros((len(seen), 2 ** k))
    np.add.at(counts, (row.ravel(), fit & (2 ** k - 1)), 1)
    # a pattern seen a few times leans on the marginal (one pseudo-draw of it), one never seen is the marginal
    post = (counts + prior) / (counts.sum(1, keepdims=True) + 1)  # (patterns, C): P(set | pattern)
    at = np.minimum(np.searchsorted(seen, test >> k), len(seen) - 1)
    p = np.where((seen[at] == test >> k)[:, None], post[at], prior)  # (n, C) for the test draws
    gt = sets[test & (2 ** k - 1)]  # (n, k)
    table = _f1(sets[None], sets[:, None])  # (C, C): F1 of predicted set s (rows) on true set t (columns)

    def scores(p):  # P(set | what the decision sees) (n, C) -> the scores of decisions (a) and (b)
        expected = p @ table.T  # (n, C): the expected F1 of predicting each set
        best, config = (sets[np.where(allowed, expected, -1).argmax(1)] for allowed in (True, prior > 0))
        return [100 * float(_ma(gt, p @ sets > prior @ sets)), 100 * float(_f1(gt, best).mean()),
                100 * float(_f1(gt, config).mean())]

    keys = ["mA", "F1", "F1_config"]
    return dict(zip(keys + ["blind_" + key for key in keys], scores(p) + scores(np.broadcast_to(prior, p.shape))))


def ceiling_by_rule(sample=_labels, hidden=HIDDEN, given=PARENTS, order=ATTRS, n=200_000, seed=0):
    """What a perfect model, one that knows P(hidden attributes | given) exactly and every other attribute of the image,
    scores on the `hidden` attributes (mA and F1 in percent, over them alone) when its decisions are made by each
    head's own rule rather than by the best decision for the metric. `order` is the columns' order, the order in which
    SequencePAR writes the attributes; every attribute not hidden is a visible one, drawn with its true value. The
    rules, each a dict of mA and F1:
    - "mA_optimal": each attribute where P(y_j = 1 | given) exceeds its rate (ceiling's mA decision: what thresholds
      chosen on val aim at); "F1_optimal": the set of best expected F1 (ceiling's F1 decision);
    - "bce_at_0.5": the minimiser of the weighted BCE (a positive of j weighs exp(1 - r_j), a negative exp(r_j)) read
      at 0.5: positive where P > sigmoid(2 r_j - 1), r_j the positive rate; "plain_at_0.5": P > 0.5;
    - "chain" and "greedy": the minimiser of the weighted NLL (next id k weighs w_k = exp(1 - r_k), <eos> 1), whose
      next-id distribution is the true one q tilted to w_k q_k / sum of w q, read by the chain rule with its prefix at
      0.5 or by greedy decoding; "chain_unweighted" and "greedy_unweighted" the same with q itself.
    Fitted on n draws and scored on n others, as ceiling."""
    names = list(hidden) + [a for a in order if a not in hidden]  # bit j: names[j]
    k, A = len(hidden), len(order)
    fit, test = (_codes(sample, names, n, f"ceiling/{seed}/{part}") for part in ("fit", "test"))
    cols = np.array([order.index(a) for a in names])  # the column of each bit
    bits = lambda codes: (codes[:, None] >> np.arange(len(names)) & 1).astype(bool)  # (n, names)
    rate = np.zeros(A)
    rate[cols] = bits(fit).mean(0)
    weight = np.append(np.exp(1 - rate), 1.0)  # (A + 1,): every attribute, then <eos> at index A
    sets = (np.arange(2 ** k)[:, None] >> np.arange(k) & 1).astype(bool)  # (C, k)
    g = [names.index(a) for a in given]
    pattern = lambda codes: sum(((codes >> j & 1) << i for i, j in enumerate(g)), np.zeros_like(codes))
    prior = np.bincount(fit & (2 ** k - 1), minlength=2 ** k) / n
    counts = np.zeros((2 ** len(g), 2 ** k))
    np.add.at(counts, (pattern(fit), fit & (2 ** k - 1)), 1)
    post = (counts + prior) / (counts.sum(1, keepdims=True) + 1)  # P(set | given), as ceiling
    p = post[pattern(test)]  # (n, C)
    truth = bits(test)
    gt = truth[:, :k]
    visible = np.zeros((n, A), bool)  # the image's visible attributes; the hidden ones are a set c of `sets`
    visible[:, cols[k:]] = truth[:, k:]
    hcol = cols[:k]

    def first_positive(after, rows):  # (R,) columns -> (R, C) the first positive column after each, were the hidden
        later = visible[rows] & (np.arange(A) > after[:, None])  # set c; A (<eos>) if none
        seen = np.where(later.any(1), later.argmax(1), A)
        hidden = np.where(sets[None] & (hcol > after[:, None, None]), hcol, A).min(-1)
        return np.minimum(seen[:, None], hidden)

    def chain(w):
        consistent, pred, every = np.ones((n, 2 ** k), bool), np.zeros((n, k), bool), np.arange(n)
        for h in np.argsort(hcol):  # the hidden ones in column order; a visible one is decided right (its score 0 or 1)
            mass = p * consistent  # sets that disagree with a decision made are out
            at = first_positive(np.full(n, hcol[h] - 1), every)  # the first positive from this column on, per set
            score = (mass * sets[:, h] * w[hcol[h]]).sum(1) / (mass * w[at]).sum(1)
            pred[:, h] = score > 0.5
            consistent &= sets[None, :, h] == pred[:, h:h + 1]
        return pred

    def greedy(w):
        consistent, pred = np.ones((n, 2 ** k), bool), np.zeros((n, k), bool)
        last, rows = np.full(n, -1), np.arange(n)  # rows: the images still decoding
        while rows.size:
            nxt, mass = first_positive(last[rows], rows), p[rows] * consistent[rows]  # (R, C)
            q = np.zeros((rows.size, A + 1))  # the probability of each next id
            for c in range(2 ** k):
                q[np.arange(rows.size), nxt[:, c]] += mass[:, c]
            emit = (q * w).argmax(1)  # the most probable next id after the tilt
            consistent[rows] &= nxt == emit[:, None]  # the sets whose next positive is the one emitted
            pred[rows] |= hcol == emit[:, None]
            last[rows] = emit
            rows = rows[emit != A]
        return pred

    marginal = p @ sets  # (n, k): P(y_j = 1 | given)
    table = _f1(sets[None], sets[:, None])
    rules = {"mA_optimal": marginal > prior @ sets, "F1_optimal": sets[(p @ table.T).argmax(1)],
             "bce_at_0.5": marginal > 1 / (1 + np.exp(1 - 2 * rate[hcol])), "plain_at_0.5": marginal > 0.5,
             "chain": chain(weight), "chain_unweighted": chain(np.ones(A + 1)),
             "greedy": greedy(weight), "greedy_unweighted": greedy(np.ones(A + 1))}
    return {rule: {"mA": 100 * float(_ma(gt, pred)), "F1": 100 * float(_f1(gt, pred).mean())}
            for rule, pred in rules.items()}


def _jitter(r, c, k=25):
    return tuple(min(255, max(0, v + r.randint(-k, k))) for v in c)


def _box(d, x0, y0, x1, y1, fill, **kw):  # a rectangle given by any two corners
    d.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=fill, **kw)


def _image(r, a, rng, cover=None):  # person `a` in a square street scene, drawn at 128x128, stored at 64x64
    # Square, so the model's pad-to-square adds no black bars: the person is as large as in a 128x64 crop, with street
    # around it instead of padding.
    W, H = 128, 128
    grad = np.linspace([r.randint(30, 225) for _ in "rgb"], [r.randint(30, 225) for _ in "rgb"], H)
    img = Image.fromarray(np.repeat(grad[:, None, :], W, axis=1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(r.randint(1, 5)):  # walls, windows, cars
        x, y = r.randint(-20, W), r.randint(-20, H)
        _box(d, x, y, x + r.randint(6, 40), y + r.randint(6, 60), _jitter(r, (128, 128, 128), 100))
    child, old, female, side = a["AgeLess18"], a["AgeOver60"], a["Female"], a["Side"]
    h = H * (r.uniform(0.55, 0.7) if child else r.uniform(0.78, 0.94))  # body height: children are smaller
    feet, cx = r.uniform(h + 2, H - 2), W / 2 + r.uniform(-7, 7)
    _box(d, 0, feet - r.uniform(0, 8), W, H, _jitter(r, (90, 90, 90), 50))  # the ground
    top, hh = feet - h, h * (0.2 if child else 0.14)  # head height: a child's head is large for its body
    hw, neck = hh * 0.8, top + hh
    sw = h * (0.27 if child else 0.25 if female else 0.29) * (0.6 if side else 1)  # shoulders: women's are narrower
    hip = neck + (feet - neck) * 0.42
    knee, x0, x1 = hip + (feet - hip) * 0.5, cx - sw / 2, cx + sw / 2  # x0..x1: the torso
    face = r.choice((-1, 1)) if side else 0  # side views face left or right, so a flip keeps every label true
    skin = _jitter(r, r.choice(SKIN), 10)
    hair = _jitter(r, (190, 190, 190), 30) if old and r.random() < 0.85 else _jitter(r, r.choice(HAIR), 15)
    upper = _jitter(r, r.choice(COLOURS[9:11] if female and r.random() < 0.4 else COLOURS))  # a weak cue to Female
    lower, bag = _jitter(r, r.choice(COLOURS)), _jitter(r, r.choice(COLOURS), 40)
    contrast = (245, 245, 235) if sum(upper) < 400 else (15, 15, 25)  # for stripes and logos
    if a["LongHair"] and not a["Back"]:  # behind the head and shoulders
        _box(d, cx - hw * (0.68 + face * 0.3), top + hh * 0.3, cx + hw * (0.68 - face * 0.3), neck + h * 0.11, hair)
    if a["Backpack"] and a["Front"]:  # from the front only its edges and straps show
        _box(d, x0 - 2, neck + 3, x1 + 2, hip - 4, bag)
    if a["Backpack"] and side:
        _box(d, cx - face * sw / 2, neck + h * 0.03, cx - face * (sw / 2 + h * 0.1), hip - h * 0.03, bag)
    hidden_handbag = a["HandBag"] and r.random() < 0.5  # mostly behind the body: a weakly visible attribute
    if hidden_handbag:
        _box(d, x1 - sw * 0.3, hip - h * 0.03, x1 + h * 0.03, hip + h * 0.09, bag)
    lw = sw * (0.75 if side else 0.4)
    for left in ([cx - lw / 2] if side else [cx - lw - 1, cx + 1]):  # legs, then what covers them
        _box(d, left, hip, left + lw, feet, skin)
        if a["Trousers"] or a["Shorts"]:
            _box(d, left, hip, left + lw, feet - h * 0.03 if a["Trousers"] else knee - h * 0.02, lower)
        shoe = _jitter(r, (40, 30, 25), 20) if a["Boots"] else _jitter(r, r.choice(COLOURS[4:9]), 20)
        toe = (min(face, 0) * 3, max(face, 0) * 3)  # shoes stick out forwards
        _box(d, left - 1 + toe[0], feet - h * (0.14 if a["Boots"] else 0.03), left + lw + 1 + toe[1], feet, shoe)
    if a["Skirt"]:
        bottom = knee + h * r.uniform(-0.04, 0.08)
        d.polygon([(x0 + sw * 0.1, hip - 2), (x1 - sw * 0.1, hip - 2), (x1 + sw * 0.1, bottom),
                   (x0 - sw * 0.1, bottom)], fill=lower)
    end = knee + h * 0.06 if a["LongCoat"] else hip + h * 0.03
    d.polygon([(x0, neck), (x1, neck), (x1 + (end - hip) * 0.15, end), (x0 - (end - hip) * 0.15, end)], fill=upper)
    for y in np.arange(neck + 3, end - 2, 7) if a["UpperStripe"] else []:
        _box(d, x0, y, x1, y + 3, contrast)
    if a["UpperLogo"]:
        lx, ly, s = cx + face * sw * 0.15, neck + (hip - neck) * 0.3, h * 0.05
        _box(d, lx - s, ly - s, lx + s, ly + s, contrast)
    if a["Backpack"] and a["Back"]:
        _box(d, x0 + sw * 0.12, neck + h * 0.03, x1 - sw * 0.12, hip - h * 0.02, bag, outline=(20, 20, 20))
    for sx in (cx - sw * 0.3, cx + sw * 0.3) if a["Backpack"] and a["Front"] else []:  # straps
        _box(d, sx - 1.5, neck, sx + 1.5, neck + (hip - neck) * 0.55, bag)
    if a["ShoulderBag"]:  # a strap across the chest, the bag at the opposite hip
        sgn = face or r.choice((-1, 1))
        d.line((cx - sgn * sw * 0.4, neck + 1, cx + sgn * sw * 0.5, hip - h * 0.02), fill=bag, width=3)
        _box(d, cx + sgn * sw * 0.4, hip - h * 0.06, cx + sgn * (sw * 0.4 + h * 0.12), hip + h * 0.07, bag)
    aw = h * 0.06  # arms: sleeves in the upper garment's colour, then skin
    for ax in ([cx + face * sw * 0.1 - aw / 2] if side else [x0 - aw, x1]):
        _box(d, ax, neck + 1, ax + aw, hip + h * 0.03, skin)
        _box(d, ax, neck + 1, ax + aw, hip if a["LongSleeve"] else neck + (hip - neck) * 0.35, upper)
    if a["HandBag"] and not hidden_handbag:  # in the hand
        bx = cx + face * sw * 0.1 if side else x1 + aw / 2
        _box(d, bx - h * 0.07, hip + h * 0.01, bx + h * 0.07, hip + h * 0.12, bag)
    if old and r.random() < 0.35:  # a walking stick
        d.line((x1 + aw / 2, hip + h * 0.02, x1 + aw / 2 + h * 0.05, feet), fill=(90, 60, 30), width=2)
    hx, ey = cx + face * hw * 0.1, top + hh * 0.55
    d.ellipse((hx - hw / 2, top, hx + hw / 2, neck), fill=hair if a["Back"] else skin)
    if not a["Back"]:
        d.chord((hx - hw / 2 - 1, top - 1, hx + hw / 2 + 1, top + hh * 0.8), 180, 360, fill=hair)
        if side:  # the back of the head is hair too
            _box(d, hx, top + hh * 0.3, hx - face * hw / 2, top + hh * 0.7, hair)
        for ex in ([hx + face * hw * 0.28] if side else [hx - hw * 0.2, hx + hw * 0.2]):
            _box(d, ex - 1, ey - 1, ex + 1, ey + 1, (30, 20, 20))
        if a["Glasses"]:  # thin: small head details stay hard, as in real data
            gx0, gx1 = (hx + face * hw * 0.05, hx + face * hw * 0.52) if side else (hx - hw * 0.38, hx + hw * 0.38)
            _box(d, gx0, ey - hh * 0.09, gx1, ey + hh * 0.09, (10, 10, 10))
    if a["LongHair"] and a["Back"]:
        _box(d, hx - hw * 0.6, top + hh * 0.4, hx + hw * 0.6, neck + h * 0.11, hair)
    if a["Hat"]:  # a crown that raises the head's outline, and a brim
        hat = _jitter(r, r.choice(COLOURS[:5] + COLOURS[9:]), 30)  # bright: hats are hard enough to see
        _box(d, hx - hw * 0.45, top - hh * 0.3, hx + hw * 0.45, top + hh * 0.28, hat)
        _box(d, hx - hw * (0.75 - 0.3 * face), top + hh * 0.16, hx + hw * (0.75 + 0.3 * face), top + hh * 0.32, hat)
    if r.random() < 0.25:  # something in front of the person: a car, a bin, a bench
        ox = r.uniform(-20, W - 10)
        _box(d, ox, feet - h * r.uniform(0.1, 0.4), ox + r.uniform(15, 50), H, _jitter(r, (128,) * 3, 100))
    if r.random() < 0.1:  # a pole
        px = r.uniform(0, W)
        _box(d, px, 0, px + r.uniform(3, 6), H, _jitter(r, (100,) * 3, 60))
    if cover:  # a hidden image: an object in front from just above the hem of the upper garment to the bottom edge
        # Its own random stream (`cover`), so the rest of the scene is the one drawn without it. Its top follows the
        # hem, so a long coat still shows as long; it is wider than a skirt's flare and a shoe's toe, and opaque.
        top, kind = end - cover.uniform(2, h * 0.06), cover.choice(("car", "crate", "wall"))
        ox0, ox1 = x0 - sw * 0.2 - cover.uniform(4, 50), x1 + sw * 0.2 + cover.uniform(4, 50)
        body = _jitter(cover, cover.choice(COLOURS), 30)
        dark = tuple(v // 2 for v in body)
        _box(d, ox0, top, ox1, H, body, outline=dark)
        if kind == "car":  # a window line along the top and the wheels below the door
            _box(d, ox0, top + 3, ox1, top + 6, (40, 50, 60))
            for wx in (ox0 + 6, ox1 - 22):
                d.ellipse((wx, H - 14, wx + 16, H + 2), fill=(20, 20, 20))
        for px in np.arange(ox0 + 7, ox1 - 3, 9) if kind == "crate" else []:  # planks
            _box(d, px, top + 2, px + 1, H, dark)
        for py in np.arange(top + 6, H, 6) if kind == "wall" else []:  # courses of bricks
            _box(d, ox0, py, ox1, py, dark)
    x = np.asarray(img.reduce(2), dtype=np.float32) * r.uniform(0.7, 1.2)  # 2x2 averages anti-alias; lighting
    x += rng.normal(0, r.uniform(1.5, 5), x.shape)  # sensor noise
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _chunk(job):
    folder, seed, n, start, stop, hidden = job
    rows, covered = [], []
    for i in range(start, stop):
        r = random.Random(f"{seed}/{i}")  # image i depends on (seed, i) only, not on which worker draws it
        a = _labels(r)
        name = f"images/{i:06d}.png"
        # whether to hide the legs, and the object that does, from a stream of their own: with hidden=0 (or an image
        # that stays visible) r and rng draw exactly what they draw without the option
        cover = random.Random(f"{seed}/{i}/hidden")
        cover = cover if cover.random() < hidden else None
        img = _image(r, a, np.random.default_rng([seed, i]), cover)
        img.save(os.path.join(folder, name), compress_level=0)  # uncompressed: zlib costs more time than it saves
        split = "train" if i < 0.8 * n else "val" if i < 0.9 * n else "test"  # 80 / 10 / 10
        rows.append([name, split] + [int(a[k]) for k in ATTRS])
        covered += [name] if cover else []
    return rows, covered


MARKER = ".synth"  # in every folder we draw: the only folders make_synthetic may ever replace or delete


def _ours(folder):
    return os.path.isfile(os.path.join(folder, MARKER))


def _remove_stale_drafts(parent):
    # the half-drawn folders of runs that were killed: ours by their marker, dead by the process id it holds
    for name in os.listdir(parent):
        draft = os.path.join(parent, name)
        if name.startswith(".synth-") and _ours(draft):
            with open(os.path.join(draft, MARKER)) as f:
                pid = int(f.read().split("pid=")[-1].split()[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(draft, ignore_errors=True)
            except PermissionError:  # alive, another user's
                pass


def make_synthetic(root, n, seed, workers=None, hidden=0.0):
    """Draws n synthetic pedestrians into root/images/*.png and writes root/labels.csv; with hidden > 0, about that
    fraction stand behind an object that hides their legs and feet, listed in root/hidden.csv. An existing root is
    replaced only if we drew it (it holds our marker file); a folder with anything else in it is refused."""
    root = os.path.abspath(root)
    if os.path.exists(root) and not (os.path.isdir(root) and (_ours(root) or not os.listdir(root))):
        raise UserError(f"{root} is not empty and was not drawn by synth.py; choose an empty or new folder")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_drafts(parent)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".synth-")  # filled, then renamed: a half-drawn set never loads
    try:
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(f"drawn by synth.py: n={n} seed={seed} hidden={hidden} pid={os.getpid()}\n")
        os.mkdir(os.path.join(tmp, "images"))
        workers = workers or os.cpu_count() or 1
        size = max(1, min(500, math.ceil(n / (4 * workers))))  # several jobs a worker, so none waits on the last
        jobs = [(tmp, seed, n, s, min(s + size, n), hidden) for s in range(0, n, size)]
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                chunks = pool.map(_chunk, jobs)
        else:
            chunks = [_chunk(job) for job in jobs]
        with open(os.path.join(tmp, "labels.csv"), "w", newline="") as f:
            csv.writer(f).writerows([["image", "split"] + ATTRS] + [row for rows, _ in chunks for row in rows])
        if hidden > 0:  # data.py reads labels.csv alone; an evaluation splits the hidden images off with this list
            with open(os.path.join(tmp, "hidden.csv"), "w", newline="") as f:
                csv.writer(f).writerows([["image"]] + [[name] for _, names in chunks for name in names])
        if os.path.isdir(root):  # an earlier set of ours, or an empty folder: swap it out, then delete it
            os.rename(root, tmp + "-old")
        os.rename(tmp, root)
        shutil.rmtree(tmp + "-old", ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class SynthConfig:
    root: str = os.path.join("data", "synth")  # the folder to draw into (an earlier set of ours there is replaced)
    n: int = N                    # images
    seed: int = 0
    hidden: float = 0.0           # the fraction of images whose legs and feet an object hides (listed in hidden.csv)
    ceiling: bool = False         # print the best scores possible on what that object hides, and draw nothing
    PATHS = ("root",)


def main(argv):
    cfg = cli.parse(argv, SynthConfig)
    if cfg.n < 1:
        raise UserError(f"--n={cfg.n}: expected 1 or more images")
    if not 0 <= cfg.hidden <= 1:
        raise UserError(f"--hidden={cfg.hidden}: expected a fraction from 0 to 1")
    if not cfg.ceiling:
        print(f"drawing {cfg.n} images into {cfg.root} ...", flush=True)
        try:
            make_synthetic(cfg.root, cfg.n, cfg.seed, hidden=cfg.hidden)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("interrupted: nothing was kept") from None
        print("done")
    if cfg.ceiling or cfg.hidden > 0:
        c = ceiling()
        print(f"ceiling on {', '.join(HIDDEN)} of a hidden image, from the label sampler: mA {c['mA']:.2f}, "
              f"F1 {c['F1']:.2f} ({c['F1_config']:.2f} predicting one garment) from the attributes in view; "
              f"mA {c['blind_mA']:.2f}, F1 {c['blind_F1']:.2f} ({c['blind_F1_config']:.2f}) blind to them")


if __name__ == "__main__":
    cli.run(main, SynthConfig, __doc__)
