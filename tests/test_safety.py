"""The shell around the model: no code from files, nothing of the user's lost, bad input caught before training,
one-line errors, and a run that survives Ctrl-C, a full disk and a kill."""
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import ROOT, run_script, start_script, tiny_args


class Exploit:
    # a pickle that runs a shell command when loaded
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bad_files(folder):
    """Files a user might hand us as a checkpoint: name -> path. None of them may run anything or crash loudly."""
    folder.mkdir(exist_ok=True)
    files = {"empty": folder / "empty.pt", "random": folder / "random.pt", "truncated": folder / "truncated.pt",
             "exploit": folder / "exploit.pt", "not_ours": folder / "not_ours.pt"}
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save({"model": {"w": torch.zeros(1000)}, "step": 3}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:700])
    torch.save({"model": Exploit(folder / "exploited")}, files["exploit"])
    torch.save({"weights": torch.zeros(3)}, files["not_ours"])
    return files


def test_bad_checkpoints_are_one_line_errors_and_run_nothing(trained_run, synth_root, tiny_clip_file, tmp_path):
    import sample
    files = bad_files(tmp_path / "files")
    for name, path in files.items():
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is (not a .*checkpoint|empty: not a checkpoint)") as e:
            sample.main(["x.jpg", f"--ckpt={path}"])
        assert "\n" not in str(e.value), name
        out = tmp_path / f"run_{name}"  # the same file as the last.pt of a run to resume
        out.mkdir()
        shutil.copy(path, out / "last.pt")
        with pytest.raises(ValueError, match=r"last\.pt is (not a .*checkpoint|empty: not a checkpoint)") as e:
            train.main(tiny_args(synth_root, tiny_clip_file, out, "--resume=True"))
        assert "\n" not in str(e.value), name
    assert "Unsupported global" in str(e.value) or name != "exploit"
    assert not (tmp_path / "files" / "exploited").exists()
    with pytest.raises(ValueError, match=r"is a folder; expected a checkpoint file such as .*ckpt\.pt"):
        sample.main(["x.jpg", f"--ckpt={tmp_path}"])


def test_a_checkpoint_of_another_model_version_is_one_line(trained_run, tmp_path):
    import sample
    ckpt = torch.load(os.path.join(trained_run[0], "ckpt.pt"), weights_only=True)
    del ckpt["model"]["prompt_embedding"]  # as an older version of SequencePAR saved it
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt does not fit this code's model \(Error\(s\) in loading state_dict "
                                         r"for SequencePAR: Missing key\(s\) in state_dict: \"prompt_embedding\"") as e:
        sample.main(["x.jpg", f"--ckpt={tmp_path / 'old.pt'}"])
    assert "\n" not in str(e.value)


def test_files_that_would_run_code_run_nothing(trained_run, synth_root, tmp_path):
    # a TorchScript archive whose torch.jit.load would create a file (see test_clip.py), and a pickle that would run
    # a command, handed to each of --clip, --ckpt and --resume
    import warnings

    import sample
    from test_clip import FileWriter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(FileWriter(str(tmp_path / "written"))).save(str(tmp_path / "archive.pt"))
    torch.save({"model": Exploit(tmp_path / "ran")}, tmp_path / "pickle.pt")
    for name in ("archive.pt", "pickle.pt"):
        path = tmp_path / name
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:? ") as e:
            train.main(["--dataset=synth", f"--root={synth_root}", f"--clip={path}", f"--out_dir={tmp_path / 'a'}",
                        "--workers=0"])
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not a checkpoint we can read safely"):
            sample.main(["x.jpg", f"--ckpt={path}"])
        out = tmp_path / f"resume_{name}"
        out.mkdir()
        shutil.copy(path, out / "last.pt")
        with pytest.raises(ValueError, match=r"last\.pt is not a checkpoint we can read safely"):
            train.main(["--dataset=synth", f"--root={synth_root}", f"--out_dir={out}", "--resume=True", "--workers=0"])
    assert not (tmp_path / "written").exists() and not (tmp_path / "ran").exists()


def test_a_fresh_run_never_replaces_another_runs_checkpoints(trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _, _ = trained_run
    used = tmp_path / "used"
    shutil.copytree(out, used)
    before = {f: (used / f).read_bytes() for f in ("ckpt.pt", "last.pt")}
    with pytest.raises(ValueError, match=r"used already holds a run \(ckpt\.pt, last\.pt\); continue it with "
                                         r"--resume=True, or choose another --out_dir, or replace it with --overwrite"):
        train.main(tiny_args(synth_root, tiny_clip_file, used))
    assert {f: (used / f).read_bytes() for f in before} == before
    # asked for explicitly, a new run replaces the old one; a temporary file a killed run left is cleaned
    (used / "last.pt.tmp").write_bytes(b"half a checkpoint")
    (used / "notes.tmp").write_bytes(b"the user's")
    train.main(tiny_args(synth_root, tiny_clip_file, used, "--overwrite=True", "--epochs=1"))
    assert torch.load(used / "last.pt", weights_only=True)["step"] == 8
    assert not (used / "last.pt.tmp").exists() and (used / "notes.tmp").read_bytes() == b"the user's"


def csv_set(root, splits, missing=()):
    root.mkdir()
    rows = ["image,split,hat,bag"] + [f"{i}.png,{s},{i % 2},{i % 3 == 0:d}" for i, s in enumerate(splits)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(len(splits)):
        if i not in missing:
            Image.new("RGB", (8, 16), (i, 0, 0)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("extra, message", [
    (["--epochs=0"], r"--epochs=0.0: expected a positive number"),
    (["--log_interval=0"], r"--log_interval=0: expected a positive number of steps"),
    (["--beam_size=0"], r"--beam_size=0: expected 1 or more, and 1 with --rule=chain \(it has no beam\)"),
    (["--n_layer=0"], r"--n_layer=0: expected 1 or more"),
    (["--n_head=3"], r"--n_head=3 does not divide the decoder's width 32 \(CLIP's embedding width\)"),
    (["--device=cuda:99"], r"--device=cuda:99: this machine has \d+ CUDA GPUs"),
    (["--device=gpu"], r"--device=gpu: expected auto, cpu, cuda or cuda:N"),
    (["--warmup_epochs=5.0"], r"--warmup_epochs=5.0: expected between 0 and --epochs=2"),
    (["--preset=fast"], r"--preset=fast: expected auto, paper or synth"),
    (["--resume=True"], r"--resume=True: .*last\.pt not found, so there is nothing to resume"),
    (["--resume=True", "--overwrite=True"], r"contradict each other"),
])
def test_bad_options_fail_before_anything_is_written(synth_root, tiny_clip_file, tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        train.main(tiny_args(synth_root, tiny_clip_file, out, *extra))
    assert "\n" not in str(e.value)
    assert not out.exists() or os.listdir(out) in ([], [".lock"])  # (the lock a run holds on its folder)


def test_bad_output_folders(synth_root, tiny_clip_file, tmp_path):
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(ValueError, match=r"--out_dir=.*a_file is a file; expected a folder"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "a_file"))
    with pytest.raises(ValueError, match=r"--out_dir=.*a_file/run is not writable \(Not a directory\)"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path / "a_file" / "run"))
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("splits, missing, message", [
    (["train"] * 40, (), r"the test split is empty or missing"),
    (["train"] * 30 + ["val"] * 5, (), r"the test split is empty or missing"),
    (["test"] * 10, (), r"the train split is empty or missing"),
    (["train"] * 40 + ["test"] * 8, (43, 45), r"^2 of 48 images are missing: .*43\.png, .*45\.png$"),
    (["train"] * 10 + ["test"] * 8, (), r"the train split has 10 images, fewer than --batch_size=32"),
])
def test_bad_data_fails_before_training(tiny_clip_file, tmp_path, splits, missing, message):
    root = csv_set(tmp_path / "set", splits, missing)
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.main(["--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", f"--out_dir={out}", "--workers=0"])
    assert os.listdir(out) == [".lock"]


def test_an_image_over_the_pixel_limit_is_refused_before_training(tiny_clip_file, tmp_path):
    from conftest import write_png
    root = csv_set(tmp_path / "set", ["train"] * 40 + ["test"] * 8)
    write_png(root / "3.png", np.zeros((1, 1, 3)), size=(40000, 40000))  # over Pillow's pixel limit, by its header
    for preload in ("False", "True"):
        r = run_script("train.py", "--dataset=csv", f"--root={root}", f"--clip={tiny_clip_file}", "--workers=1",
                       f"--out_dir={tmp_path / preload}", f"--preload={preload}", "--warmup_epochs=0.0")
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr[-3000:]
        assert re.fullmatch(r"error: 1 of 48 images are missing or unreadable: .*/set/3\.png \(Image size \(1600000000 "
                            r"pixels\) exceeds .*\); mend or remove them .*\n", r.stderr), r.stderr
        assert "step 1/" not in r.stdout and not os.path.exists(tmp_path / preload / "last.pt")


def test_resume_refuses_another_model_shape(trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _, _ = trained_run
    os.link(os.path.join(out, "last.pt"), tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"last\.pt holds another model: n_layer 6 \(now 3\); resume with the options "
                                         r"it was trained with, or use another --out_dir"):
        train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--resume=True", "--n_layer=3"))


def test_resume_continues_at_the_batch_where_it_stopped():
    full = train.EpochBatches(n=50, batch_size=4, seed=7)
    first = [b for _, b in zip(range(30), full)]  # 12 batches an epoch: into the third epoch
    assert all(len(b) == 4 for b in first) and sorted(sum(first[:12], [])) == sorted(set(sum(first[:12], [])))
    assert first[:12] != first[12:24]  # each epoch its own order
    for start in (0, 5, 12, 17):
        resumed = train.EpochBatches(n=50, batch_size=4, seed=7, start_step=start)
        assert [b for _, b in zip(range(30 - start), resumed)] == first[start:]
    # two processes share each batch of the one-process order's epoch, without overlap
    shards = [train.EpochBatches(n=50, batch_size=2, seed=7, rank=r, world=2) for r in range(2)]
    a, b = ([x for _, x in zip(range(12), s)] for s in shards)
    assert all(not set(x) & set(y) for x, y in zip(a, b))


def test_seeds_share_no_epochs_order():
    # each epoch's order comes from the pair (seed, epoch): seed 1's epoch e is not seed 0's epoch e + 1, nor any other
    n, size, epochs = 96, 8, 12
    batches = {s: [frozenset(b) for _, b in zip(range(epochs * n // size), train.EpochBatches(n, size, seed=s))]
               for s in (0, 1, 2)}
    for s in (0, 1, 2):
        for t in (0, 1, 2):
            if s < t:
                assert not set(batches[s]) & set(batches[t]), (s, t)  # not one batch in common over 12 epochs
    orders = [tuple(b) for s in (0, 1, 2) for b in batches[s]]
    assert len(set(orders)) == len(orders)


def save_fails_at(limit):
    # in the child: files larger than `limit` bytes cannot be written (EFBIG), as on a full disk; root included
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_file_size


def test_a_failed_save_keeps_the_previous_checkpoint(trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _, _ = trained_run
    for f in ("ckpt.pt", "last.pt"):
        shutil.copy(os.path.join(out, f), tmp_path / f)
    before = (tmp_path / "last.pt").read_bytes()
    args = tiny_args(synth_root, tiny_clip_file, tmp_path, "--resume=True", "--epochs=3")
    p = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=save_fails_at(len(before) // 2))
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert re.match(r"error: cannot write .*last\.pt \(File too large\); the previous file, if any, is unchanged",
                    p.stderr)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no half-written file left behind
    assert (tmp_path / "last.pt").read_bytes() == before
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 16


def interrupt_when(pattern, args, log):
    """Runs train.py with its log going to a file (not a pipe: lines must reach it as they are printed), presses
    Ctrl-C as soon as the log matches `pattern`, and returns the exit code, stderr and the log."""
    p = start_script("train.py", *args, stdout=log)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None and not re.search(pattern, open(log).read(), re.M):
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    return p.returncode, err, open(log).read()


def test_ctrl_c_saves_and_resume_continues_at_that_step(synth_root, tiny_clip_file, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(synth_root, tiny_clip_file, out, "--epochs=40", "--batch_size=8", "--eval_interval=10000")
    rc, err, log = interrupt_when(r"^step 3/1280 ", args, tmp_path / "log1.txt")
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    # the log was complete when it showed step 3 (a block-buffered log would show nothing before ~80 lines)
    assert 3 <= step < 40, log
    assert rc == 130 and err.splitlines()[-1] == f"interrupted at step {step}: saved {out}/last.pt; continue with --resume=True"
    assert not (out / "ckpt.pt").exists()  # no evaluation happened: only the interrupted state was saved
    rc, err, log = interrupt_when(rf"^step {step + 2}/1280 ", args + ["--resume=True"], tmp_path / "log2.txt")
    assert rc == 130 and f"resumed from {out}/last.pt at step {step}" in log
    assert re.findall(r"^step (\d+)/1280", log, re.M)[0] == str(step + 1)


def test_bad_values_and_paths_are_one_line_errors_of_the_scripts(tmp_path):
    cases = [("train.py", "--epochs=0"), ("train.py", "--n_head=5"), ("train.py", f"--out_dir={ROOT}/train.py"),
             ("sample.py", "x.jpg", f"--ckpt={tmp_path}"), ("sample.py", "x.jpg", "--batch_size=0"),
             ("data.py", "--dataset=csv", f"--root={tmp_path}"), ("evaluate.py", f"--ckpt={tmp_path}")]
    for args in cases:
        r = run_script(*args)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
