"""Checked before anything is replaced: a run that replaces another one touches the old files only once every check
has passed, a folder the user names is never filled with a drawn set, and what the summaries and the small options
say."""
import os
import re
import shutil

import numpy as np
import pytest
import torch
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


def noise_jpeg(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path, quality=95)


def test_empty_files_and_files_that_are_no_image_are_caught_before_training_in_one_message(tiny_clip_file, tmp_path):
    root = csv_set(tmp_path / "set", ["train"] * 40 + ["test"] * 8)
    (root / "5.png").write_bytes(b"")
    (root / "7.png").write_text("a text file, named as an image")
    r = run_script("train.py", "--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", "--workers=0",
                   f"--out_dir={tmp_path / 'out'}")
    assert r.returncode == 1 and "step 1/" not in r.stdout, r.stderr
    assert re.fullmatch(r"error: 2 of 48 images are missing or unreadable: .*/5\.png \(an empty file\), .*/7\.png \("
                        r"cannot identify image file\); mend or remove them \(--decode=True opens every image in full, "
                        r"and finds the rest\)\n", r.stderr), r.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_fails_during_training_stops_the_run_with_its_state_saved(tiny_clip_file, tmp_path, workers):
    # a JPEG whose header is sound and whose data is cut passes the checks, then fails when the batch holding it is read
    root = csv_set(tmp_path / "set", ["train"] * 40 + ["test"] * 8)
    rows = (root / "labels.csv").read_text().replace("\n3.png,train", "\n3.jpg,train")
    (root / "labels.csv").write_text(rows)
    noise_jpeg(root / "3.jpg", 3)
    whole = (root / "3.jpg").read_bytes()
    (root / "3.jpg").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "out"
    args = ["--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", f"--workers={workers}", f"--out_dir={out}",
            "--batch_size=8", "--epochs=2", "--warmup_epochs=0.2", "--log_interval=1"]
    r = run_script("train.py", *args)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    m = re.fullmatch(rf"error: cannot read image {re.escape(str(root))}/3\.jpg: image file is truncated .*; stopped at "
                     rf"step (\d), saved {re.escape(str(out))}/last\.pt: mend or remove the image, then continue with "
                     r"--resume=True\n", r.stderr)
    assert m, r.stderr
    step = int(m[1])
    assert torch.load(out / "last.pt", weights_only=True)["step"] == step and step < 5  # within the first epoch
    assert re.findall(r"^step (\d+)/10 ", r.stdout, re.M) == [str(s) for s in range(1, step + 1)]
    noise_jpeg(root / "3.jpg", 3)  # mended
    r = run_script("train.py", *args, "--resume=True")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.findall(r"^step (\d+)/10 ", r.stdout, re.M)[0] == str(step + 1)
    assert re.search(r"^test \(", r.stdout, re.M)


def test_a_short_run_scales_the_warm_up_and_a_tiny_clip_at_the_papers_rate_is_warned(tmp_path, capsys):
    assert train.parse_config(["--dataset=peta", "--epochs=0.5"]).warmup_epochs == pytest.approx(0.05)  # 5 of 50
    assert train.parse_config(["--dataset=synth", "--epochs=1"]).warmup_epochs == pytest.approx(0.6)  # 3.6 of 6
    assert train.parse_config(["--dataset=peta", "--epochs=20"]).warmup_epochs == 5.0  # as before where it fits
    with pytest.raises(ValueError, match=r"^--warmup_epochs=5.0: expected between 0 and --epochs=0.5 \(left out, it is "
                                         r"the preset's fraction of the run\)$"):
        train.check_config(train.parse_config(["--dataset=peta", "--epochs=0.5", "--warmup_epochs=5"]))
    root = csv_set(tmp_path / "set", ["train"] * 16 + ["test"] * 8)
    train.main(["--dataset=csv", f"--root={root}", "--clip=tiny", "--epochs=1", "--batch_size=8", "--workers=0",
                f"--out_dir={tmp_path / 'out'}"])
    log = capsys.readouterr().out
    assert "warning: --clip=tiny is a CLIP trained from scratch, and at --lr=1e-06 (a rate for fine-tuning a released " \
           "CLIP) it learns next to nothing; --preset=synth sets the demo's options, which do learn" in log
    assert "training 2 steps: 1 epoch of 2 batches of 8 images" in log


def test_loaders_take_at_most_the_cores_there_are(trained_run, synth_root, monkeypatch, capsys):
    import warnings

    import sample
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a one-core machine, as torch sees it too
    image = os.path.join(synth_root, "images", sorted(os.listdir(os.path.join(synth_root, "images")))[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sample.main([image, f"--ckpt={trained_run[0]}/ckpt.pt", "--workers=4"]) == 0
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]


def test_a_large_image_is_one_line_of_ours_not_pillows_warning(tmp_path, monkeypatch, capsys):
    import warnings

    import dataset
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # (Pillow warns over it, and refuses over twice it)
    Image.new("RGB", (40, 30)).save(tmp_path / "large.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert dataset.read_image(str(tmp_path / "large.png")).size == (40, 30)
        assert dataset.image_problem(str(tmp_path / "large.png")) is None
    assert caught == []
    assert capsys.readouterr().err == f"warning: image {tmp_path}/large.png is 40 x 30 pixels, over Pillow's warning " \
                                      f"limit of 1,000; read anyway, slowly\n"  # once


def test_every_scripts_help_keeps_each_comment_apart_from_its_default():
    import cli
    from test_cli import config_classes
    for script, config in config_classes().items():
        for line in cli.usage(config, "doc").splitlines():
            if line.startswith("  --"):  # an option, then at least two spaces, or its comment on the next line
                assert re.fullmatch(r"  --\w+=\S*( {2,}\S.*)?", line) or re.fullmatch(r"  --\w+=.*", line) and \
                    len(line) < 34, (script, line)


def test_sample_says_pictures_were_written_only_when_they_were(trained_run, tmp_path, capsys):
    import sample
    assert sample.main([str(tmp_path / "missing.jpg"), f"--ckpt={trained_run[0]}/ckpt.pt",
                        f"--out_dir={tmp_path / 'pictures'}", "--workers=0"]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "written" not in err
