"""synth.py: the synthetic pedestrian set is deterministic, shaped like real data, and never touches a user's files."""
import csv
import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from PIL import Image

import data
import synth
from conftest import run_script


def hashes(root):
    files = sorted(os.listdir(os.path.join(root, "images")))
    return [hashlib.sha256(open(os.path.join(root, "images", f), "rb").read()).hexdigest() for f in files]


def test_synthetic_is_deterministic(tmp_path):
    synth.make_synthetic(str(tmp_path / "a"), 40, seed=3, workers=1)
    synth.make_synthetic(str(tmp_path / "b"), 40, seed=3, workers=2)
    synth.make_synthetic(str(tmp_path / "c"), 40, seed=4, workers=2)
    assert len(hashes(tmp_path / "a")) == 40 and hashes(tmp_path / "a") == hashes(tmp_path / "b")
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "b" / "labels.csv").read_bytes()
    assert len(set(hashes(tmp_path / "a")) & set(hashes(tmp_path / "c"))) == 0


def test_synthetic_statistics(tmp_path):
    synth.make_synthetic(str(tmp_path / "s"), 2000, seed=0)
    d = data.load_dataset("synth", str(tmp_path / "s"))
    assert d.attr_names == synth.ATTRS and len(d.attr_names) >= 16
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 1600, "val": 200, "test": 200}
    with Image.open(d.image_paths[0]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    assert d.prompts[d.attr_names.index("Skirt")] == "A pedestrian wearing a skirt"
    y = {k: d.labels[:, j].astype(bool) for j, k in enumerate(d.attr_names)}
    rates = d.labels.mean(0)
    assert rates.min() >= 0.04 and rates.max() <= 0.65, dict(zip(d.attr_names, rates.round(3)))
    for group in synth.GROUPS:
        assert (sum(y[k].astype(int) for k in group) == 1).all(), group
    assert y["Female"][y["Skirt"]].mean() > 0.9  # skirts go with women, and long hair with women
    assert y["LongHair"][y["Female"]].mean() > 0.6 and y["LongHair"][~y["Female"]].mean() < 0.15
    assert not (y["Glasses"] & y["Back"]).any() and (y["Shorts"] & y["Boots"]).mean() < 0.01
    assert y["Backpack"][y["AgeLess18"]].mean() > 2 * y["Backpack"][y["AgeOver60"]].mean()


def test_first_use_and_atomic_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "N", 30)
    d = data.load_dataset("synth", str(tmp_path / "s"), draw=True)
    assert len(d.image_paths) == 30 and "drawing 30 images" in capsys.readouterr().out
    real = synth._chunk

    def interrupted(job):
        if job[3] > 0:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.make_synthetic(str(tmp_path / "t"), 30, seed=0, workers=1)
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no half set, no temporary folder left behind
    monkeypatch.setattr(synth, "_chunk", real)
    synth.make_synthetic(str(tmp_path / "s"), 20, seed=1, workers=1)  # a set of ours is replaced
    assert len(os.listdir(tmp_path / "s" / "images")) == 20 and sorted(os.listdir(tmp_path)) == ["s"]


def test_a_users_folder_is_never_touched(tmp_path):
    # a folder laid out like a synthetic set, but the user's own: their images and labels must survive
    user = tmp_path / "mine"
    (user / "images").mkdir(parents=True)
    Image.new("RGB", (8, 16), (1, 2, 3)).save(user / "images" / "000000.png")
    (user / "labels.csv").write_text("image,split,hat\nimages/000000.png,train,1\n")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"mine is not empty and was not drawn by synth\.py"):
        synth.make_synthetic(str(user), 10, seed=0, workers=1)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    (tmp_path / "a file").write_text("mine too")
    with pytest.raises(ValueError, match=r"a file is not empty and was not drawn"):
        synth.make_synthetic(str(tmp_path / "a file"), 10, seed=0, workers=1)
    assert (tmp_path / "a file").read_text() == "mine too"
    (tmp_path / "empty").mkdir()
    synth.make_synthetic(str(tmp_path / "empty"), 10, seed=0, workers=1)  # an empty folder may be filled
    assert len(os.listdir(tmp_path / "empty" / "images")) == 10


def test_a_killed_draws_folder_is_removed_next_time(tmp_path):
    # what a kill -9 leaves: a hidden draft with our marker and the id of a process that no longer runs
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    draft = tmp_path / ".synth-killed"
    (draft / "images").mkdir(parents=True)
    (draft / synth.MARKER).write_text(f"drawn by synth.py: n=10 seed=0 pid={int(dead.stdout)}\n")
    alive = tmp_path / ".synth-running"  # a draw still in progress (this process) is left alone
    alive.mkdir()
    (alive / synth.MARKER).write_text(f"drawn by synth.py: n=10 seed=0 pid={os.getpid()}\n")
    other = tmp_path / ".synth-not-ours"  # no marker: not ours to delete
    other.mkdir()
    synth.make_synthetic(str(tmp_path / "s"), 10, seed=0, workers=1)
    assert sorted(os.listdir(tmp_path)) == [".synth-not-ours", ".synth-running", "s"]


def test_hidden_zero_draws_the_images_and_labels_of_before(tmp_path):
    synth.make_synthetic(str(tmp_path / "s"), 20, seed=0, workers=1, hidden=0.0)
    # labels.csv of 20 images, seed 0, as synth.py drew it before it could hide anything (Python's seeded random is
    # the same on every platform, so these bytes are too)
    labels = (tmp_path / "s" / "labels.csv").read_bytes()
    assert hashlib.sha256(labels).hexdigest() == "f65c130771262341c615e33a8f8bbb1e67459967cb820ad4d2f635640ca4d467"
    assert not (tmp_path / "s" / "hidden.csv").exists()
    # the images: each one from its own stream, as before; the choice to hide must not draw from it
    for i in range(0, 20, 4):
        r = random.Random(f"0/{i}")
        want = np.asarray(synth._image(r, synth._labels(r), np.random.default_rng([0, i])))
        with Image.open(tmp_path / "s" / "images" / f"{i:06d}.png") as img:
            assert (np.asarray(img) == want).all(), i


class Stateless:
    """A random source whose every draw depends on the seed and the draw's arguments alone, not on the draws before
    it: two people who differ only below the waist get the same scene, view, colours, lighting and the rest, although
    drawing a skirt or boots takes draws that trousers and shoes do not."""

    def __init__(self, seed):
        self.seed = seed

    def random(self):
        return random.Random(f"{self.seed}/random").random()

    def uniform(self, a, b):
        return random.Random(f"{self.seed}/uniform/{a}/{b}").uniform(a, b)

    def randint(self, a, b):
        return random.Random(f"{self.seed}/randint/{a}/{b}").randint(a, b)

    def choice(self, seq):
        return random.Random(f"{self.seed}/choice/{seq}").choice(seq)


def test_hidden_images_show_nothing_of_the_legs_and_feet():
    # one person with each lower garment, with and without boots, in a long coat and not: behind the object their
    # images must be the same to the last pixel, and without it not (else this test could not fail; some pairs look
    # alike anyway: a long coat covers shorts and most skirts, an obstacle of the scene may cover the shoes)
    for seed in range(40):
        a = synth._labels(random.Random(seed))
        for coat in (False, True):
            a |= {"LongCoat": coat, "LongSleeve": coat or a["LongSleeve"]}
            a["ShortSleeve"] = not a["LongSleeve"]
            people = [a | dict.fromkeys(synth.GROUPS[3], False) | {lower: True, "Boots": boots}
                      for lower in synth.GROUPS[3] for boots in (False, True)]
            images = [np.asarray(synth._image(Stateless(seed), b, np.random.default_rng(seed), cover and cover()))
                      for cover in (lambda: random.Random(seed), None) for b in people]
            hidden, shown = images[:len(people)], images[len(people):]
            assert all((x == hidden[0]).all() for x in hidden[1:]), (seed, coat)
            assert any((x != shown[0]).any() for x in shown[1:]), (seed, coat)


def test_hidden_list_and_what_it_leaves_unchanged(tmp_path):
    synth.make_synthetic(str(tmp_path / "a"), 200, seed=3, workers=1, hidden=0.5)
    synth.make_synthetic(str(tmp_path / "b"), 200, seed=3, workers=2, hidden=0.5)
    synth.make_synthetic(str(tmp_path / "c"), 200, seed=3, workers=2, hidden=0.0)
    synth.make_synthetic(str(tmp_path / "d"), 200, seed=3, workers=2, hidden=0.2)
    listed = (tmp_path / "a" / "hidden.csv").read_bytes()
    assert listed == (tmp_path / "b" / "hidden.csv").read_bytes() and hashes(tmp_path / "a") == hashes(tmp_path / "b")
    rows = list(csv.reader(open(tmp_path / "a" / "hidden.csv")))
    hidden = {r[0] for r in rows[1:]}
    assert rows[0] == ["image"] and len(hidden) == len(rows) - 1 and 70 <= len(hidden) <= 130
    fewer = {r[0] for r in list(csv.reader(open(tmp_path / "d" / "hidden.csv")))[1:]}
    assert fewer < hidden and 20 <= len(fewer) <= 60  # a smaller fraction hides some of the same people
    assert "hidden=0.5 " in (tmp_path / "a" / synth.MARKER).read_text()
    # the labels are the true ones, and an image that is not hidden is the one drawn without the option
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "c" / "labels.csv").read_bytes()
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    for name, x, y in zip(names, hashes(tmp_path / "a"), hashes(tmp_path / "c")):
        assert (x != y) == (f"images/{name}" in hidden), name
    # data.py reads the folder as before: labels.csv alone
    d, c = data.load_dataset("synth", str(tmp_path / "a")), data.load_dataset("synth", str(tmp_path / "c"))
    assert d.attr_names == c.attr_names and (d.labels == c.labels).all() and d.prompts == c.prompts
    assert [os.path.relpath(p, tmp_path / "a") for p in d.image_paths] == [f"images/{i:06d}.png" for i in range(200)]
    assert synth.ATTRS[-len(synth.HIDDEN):] == list(synth.HIDDEN)  # after the attributes that inform them


def test_ceiling_on_samplers_computed_by_hand():
    def copy(r):  # h is v nine times in ten
        v = r.random() < 0.5
        return {"v": v, "h": v if r.random() < 0.9 else not v}

    def pair(r):  # exactly one of h1, h2; h1 is v nine times in ten
        a = copy(r)
        return {"v": a["v"], "h1": a["h"], "h2": not a["h"]}

    def rare(r):  # h is rarer than one half even when v holds: the decision for mA compares with its rate, 0.25
        v = r.random() < 0.5
        return {"v": v, "h": r.random() < (0.4 if v else 0.1)}

    def noise(r):  # v says nothing about h
        return {"v": r.random() < 0.5, "h": r.random() < 0.3}

    # An image with no true hidden attribute scores F1 0 whatever we predict, so with one hidden attribute we always
    # predict it and F1 is its rate. With an exclusive pair, predicting both scores 2/3 on every image, which beats
    # a guess right less than 2/3 of the time (the blind decision), but is no set the sampler draws.
    for sample, hidden, given, want in [  # mA, F1, F1_config, then the same blind
            (copy, ["h"], None, (90, 50, 50, 50, 50, 50)),
            (pair, ["h1", "h2"], ["v"], (90, 90, 90, 50, 200 / 3, 50)),
            (rare, ["h"], None, ((0.2 / 0.25 + 0.45 / 0.75) / 2 * 100, 25, 25, 50, 25, 25)),  # recall of h, of not h
            (noise, ["h"], None, (50, 30, 30, 50, 30, 30)),
            (pair, ["h1", "h2"], (), (50, 200 / 3, 50, 50, 200 / 3, 50))]:
        got = synth.ceiling(sample, hidden, given, n=20_000, seed=1)
        keys = ["mA", "F1", "F1_config", "blind_mA", "blind_F1", "blind_F1_config"]
        assert got == pytest.approx(dict(zip(keys, want)), abs=1.5), sample.__name__


@pytest.mark.parametrize("order", [["v", "h"], ["h", "v"]])
def test_each_heads_rule_on_a_sampler_computed_by_hand(order):
    # v holds half the time; h (rate 0.25) holds with P 0.4 where v does, 0.1 where it does not. Weights exp(1 - r):
    # w_h = e^0.75 = 2.117, w_v = e^0.5 = 1.649, <eos> 1. Predicting h exactly where v holds scores mA (0.2 / 0.25 +
    # 0.45 / 0.75) / 2 = 70 and F1 0.2 (the images with h and v); predicting it nowhere mA 50, F1 0; everywhere mA 50,
    # F1 0.25 (the F1 decision with one hidden attribute: an image without h scores 0 whatever we predict).
    def sample(r):
        v = r.random() < 0.5
        return {"v": v, "h": r.random() < (0.4 if v else 0.1)}

    where_v, nowhere = {"mA": 70, "F1": 20}, {"mA": 50, "F1": 0}
    # the weighted BCE's 0.5 is P > sigmoid(2 * 0.25 - 1) = 0.378: 0.4 passes. Its NLL tilts the next id: with v
    # written first, the chain rule asks h against <eos>: 0.4 * 2.117 / (0.4 * 2.117 + 0.6) = 0.59 > 0.5, and greedy
    # takes h (0.85 against 0.6); with h first, against v: 0.4 * 2.117 / (0.4 * 2.117 + 0.6 * 1.649) = 0.46 < 0.5, and
    # greedy takes v (0.99 against 0.85), after which only <eos> is left. Unweighted, 0.4 loses to 0.6 both ways.
    tilted = where_v if order == ["v", "h"] else nowhere
    want = {"mA_optimal": where_v, "F1_optimal": {"mA": 50, "F1": 25}, "bce_at_0.5": where_v, "plain_at_0.5": nowhere,
            "chain": tilted, "greedy": tilted, "chain_unweighted": nowhere, "greedy_unweighted": nowhere}
    got = synth.ceiling_by_rule(sample, ["h"], ["v"], order, n=20_000, seed=1)
    assert got.keys() == want.keys()
    for rule in want:
        assert got[rule] == pytest.approx(want[rule], abs=1.5), rule


def test_the_chain_rule_and_greedy_part_ways_on_an_exclusive_group():
    # exactly one of a, b, c, with P 0.45, 0.3, 0.25, nothing seen: greedy writes the most probable, a; the chain rule
    # asks a (0.45 < 0.5: no), then b against c (0.3 / 0.55 = 0.55: yes). Tilted by the weights exp(1 - r) the same:
    # 0.78, 0.60, 0.53, and b against c 0.60 / 1.13 = 0.53. Always b scores mA 50 and F1 0.3, always a F1 0.45.
    def sample(r):
        x = r.choices("abc", (0.45, 0.3, 0.25))[0]
        return {k: k == x for k in "abc"}

    got = synth.ceiling_by_rule(sample, list("abc"), [], list("abc"), n=20_000, seed=1)
    for rule, want in [("chain", 30), ("chain_unweighted", 30), ("greedy", 45), ("greedy_unweighted", 45)]:
        assert got[rule] == pytest.approx({"mA": 50, "F1": want}, abs=1.5), rule


def test_the_metrics_are_evaluates():
    import evaluate  # torch and the model: only here

    rng = np.random.default_rng(0)
    gt, pred = rng.random((300, 4)) < 0.3, rng.random((300, 4)) < 0.4
    gt[:5], pred[:3] = False, False  # images with nothing true, and with nothing predicted
    m = evaluate.metrics(gt, pred)
    assert 100 * synth._ma(gt, pred) == pytest.approx(m["mA"])
    assert 100 * synth._f1(gt, pred).mean() == pytest.approx(m["F1"])


def test_ceiling_of_the_label_sampler():
    c = synth.ceiling()
    assert c["blind_mA"] == 50 and c["mA"] > 65 and c["F1"] > c["blind_F1"] + 5, c
    assert c["F1_config"] > c["blind_F1_config"] + 1 and c["F1_config"] < c["F1"], c
    # ceiling conditions on PARENTS alone: that is exact only if, given them, the hidden attributes are independent
    # of every other visible one. A G-test per visible attribute, within each pattern of the parents.
    r = random.Random(0)
    y = np.array([[a[k] for k in synth.ATTRS] for a in (synth._labels(r) for _ in range(50_000))])
    col = {k: y[:, j] for j, k in enumerate(synth.ATTRS)}
    hidden = sum(col[k] << j for j, k in enumerate(synth.HIDDEN))

    def p_independent(u, given):
        g, dof = 0.0, 0
        pattern = sum(col[k] << j for j, k in enumerate(given))
        for p in np.unique(pattern):
            table = np.zeros((16, 2))
            np.add.at(table, (hidden[pattern == p], col[u][pattern == p].astype(int)), 1)
            table = table[table.sum(1) > 0][:, table.sum(0) > 0]
            expected = table.sum(1, keepdims=True) * table.sum(0) / table.sum()
            g += 2 * (table * np.log(np.where(table > 0, table / expected, 1))).sum()
            dof += (table.shape[0] - 1) * (table.shape[1] - 1)
        return scipy.stats.chi2.sf(g, max(dof, 1))

    for u in set(synth.ATTRS) - set(synth.HIDDEN) - set(synth.PARENTS):
        assert p_independent(u, synth.PARENTS) > 1e-4, u
    assert p_independent("Female", ["LongSleeve", "LongCoat"]) < 1e-10  # the test sees a dependence that is there


def test_command_line(tmp_path):
    r = run_script("synth.py", f"--root={tmp_path / 's'}", "--n=20", "--seed=1")
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tmp_path / "s" / "images")) == 20
    r = run_script("synth.py", "--n=many")
    assert r.returncode == 1 and r.stderr == "error: --n=many: expected an integer\n" and r.stderr.count("\n") == 1
    r = run_script("synth.py", "--help")
    assert r.returncode == 0 and "python synth.py [--root=data/synth] [--n=40000] [--seed=0]" in r.stdout


def test_hidden_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "ceiling", lambda: dict(mA=71.234, F1=68.5, F1_config=61, blind_mA=50, blind_F1=58.9,
                                                       blind_F1_config=58.91))
    line = ("ceiling on Trousers, Shorts, Skirt, Boots of a hidden image, from the label sampler: mA 71.23, F1 68.50 "
            "(61.00 predicting one garment) from the attributes in view; mA 50.00, F1 58.90 (58.91) blind to them\n")
    synth.main([f"--root={tmp_path / 'h'}", "--n=10", "--hidden=0.5"])
    assert capsys.readouterr().out.endswith("done\n" + line) and (tmp_path / "h" / "hidden.csv").exists()
    synth.main([f"--root={tmp_path / 'c'}", "--ceiling"])
    assert capsys.readouterr().out == line and not (tmp_path / "c").exists()
    synth.main([f"--root={tmp_path / 'v'}", "--n=10"])
    assert "ceiling" not in capsys.readouterr().out and not (tmp_path / "v" / "hidden.csv").exists()
    with pytest.raises(synth.UserError, match=r"^--hidden=1.5: expected a fraction from 0 to 1$"):
        synth.main(["--hidden=1.5"])
