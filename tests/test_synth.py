"""synth.py: the synthetic pedestrian set is deterministic, shaped like real data, and never touches a user's files."""
import hashlib
import os
import subprocess
import sys

import pytest
from PIL import Image

import data
import synth
from conftest import ROOT


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
    d = data.load_dataset("synth", str(tmp_path / "s"))
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


def test_command_line(tmp_path):
    r = subprocess.run([sys.executable, "synth.py", f"--root={tmp_path / 's'}", "--n=20", "--seed=1"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tmp_path / "s" / "images")) == 20
    r = subprocess.run([sys.executable, "synth.py", "--n=many"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == "error: --n=many: expected an integer\n" and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "synth.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "python synth.py [--root=data/synth] [--n=40000] [--seed=0]" in r.stdout
