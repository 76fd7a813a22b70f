"""Checked before anything is replaced: a run that replaces another one touches the old files only once every check
has passed, a folder the user names is never filled with a drawn set, and what the summaries and the small options
say."""
import os
import re
import shutil

import pytest
from PIL import Image

import data
import evaluate
import train
from conftest import run_script, tiny_args


def csv_set(root, splits, missing=()):
    root.mkdir()
    rows = ["image,split,hat,bag"] + [f"{i}.png,{s},{i % 2},{i % 3 == 0:d}" for i, s in enumerate(splits)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(len(splits)):
        if i not in missing:
            Image.new("RGB", (8, 16), (i, 0, 0)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["no dataset there", "unknown dataset", "unknown CLIP", "missing CLIP file",
                                  "not a CLIP file", "a missing image", "no test split"])
def test_overwrite_removes_nothing_until_every_check_has_passed(trained_run, synth_root, tiny_clip_file, tmp_path,
                                                                 capsys, case):
    out = tmp_path / "used"
    shutil.copytree(trained_run[0], out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if not f.startswith(".")}
    (tmp_path / "text.pt").write_text("not a checkpoint")
    args = {"no dataset there": lambda: [f"--root={tmp_path / 'nothere'}"],
            "unknown dataset": lambda: ["--dataset=petaa"], "unknown CLIP": lambda: ["--clip=ViT-X/99"],
            "missing CLIP file": lambda: [f"--clip={tmp_path / 'nothere.pt'}"],
            "not a CLIP file": lambda: [f"--clip={tmp_path / 'text.pt'}"],
            "a missing image": lambda: ["--dataset=csv", f"--root={csv_set(tmp_path / 'set', ['train'] * 40 + ['test'] * 8, [41])}"],
            "no test split": lambda: ["--dataset=csv", f"--root={csv_set(tmp_path / 'set', ['train'] * 40)}"]}[case]()
    capsys.readouterr()
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        train.main(tiny_args(synth_root, tiny_clip_file, out, "--overwrite=True", *args))
    assert "\n" not in str(e.value)
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if not f.startswith(".")} == before
    printed = capsys.readouterr().out
    assert "removed" not in printed
    if case in ("unknown dataset", "unknown CLIP"):  # refused before the config line, as any bad option is
        assert printed == ""


def test_a_root_that_is_not_there_is_an_error_never_a_drawn_set(trained_run, tmp_path, capsys):
    out, _, _ = trained_run
    missing = tmp_path / "nothere"
    with pytest.raises(FileNotFoundError, match=r"nothere/labels\.csv not found: the synth reader expects labels\.csv "
                                                r"and images/ under .*nothere; python synth\.py draws it$"):
        evaluate.main([f"--ckpt={out}/ckpt.pt", f"--root={missing}", f"--out_dir={tmp_path / 'eval'}", "--workers=0"])
    with pytest.raises(FileNotFoundError, match=r"nothere/labels\.csv not found"):
        train.main(["--dataset=synth", f"--root={missing}", f"--out_dir={tmp_path / 'run'}"])
    assert not missing.exists()


def test_the_summary_of_a_set_without_a_test_split_is_said_in_lines(tmp_path):
    root = csv_set(tmp_path / "set", ["train"] * 6)
    r = run_script("data.py", "--dataset=csv", f"--root={root}")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "warning: no test split; train.py needs train and test images" in r.stdout
    r = run_script("train.py", "--dataset=csv", f"--root={root}", f"--out_dir={tmp_path / 'run'}", "--clip=tiny")
    assert r.returncode == 1 and r.stderr == "error: csv: the test split is empty or missing; a run needs train and " \
                                             "test images\n", r.stderr


@pytest.mark.parametrize("header", ["attribute,prompt\n", ""])
def test_prompts_csv_with_or_without_its_header(tmp_path, header):
    root = csv_set(tmp_path / "set", ["train", "test"])
    (root / "prompts.csv").write_text(header + "hat,Someone in a hat\nbag,Someone with a bag\n")
    assert data.load_dataset("csv", str(root)).prompts == ["Someone in a hat", "Someone with a bag"]
