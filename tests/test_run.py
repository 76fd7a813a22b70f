"""run.py: one run per out_dir, the stop signals that save, a resume that can always finish, the log.csv a run
and its resume write (CSVLog)."""
import csv
import json
import os
import re
import shutil
import signal
import sys
import time

import pytest
import torch

import evaluate
import train
from conftest import start_script, tiny_args


def start(args, log):
    # train.py with its log going to a file, line by line, and its stderr to a pipe
    return start_script("train.py", *args, stdout=log)


def wait_for(pattern, p, log, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None and not re.search(pattern, open(log).read(), re.M):
        time.sleep(0.02)
    assert p.poll() is None, (p.returncode, p.stderr.read()[-2000:], open(log).read()[-2000:])


def log_rows(path):
    with open(path, newline="") as f:
        return [(r["kind"], r["step"]) for r in csv.DictReader(f)]


def test_two_runs_started_at_once_into_one_folder_one_trains(synth_root, tiny_clip_file, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(synth_root, tiny_clip_file, out, "--epochs=3")
    runs = [start(args, tmp_path / f"log{k}.txt") for k in range(2)]
    results = [p.communicate(timeout=240)[1] for p in runs]
    assert sorted(p.returncode for p in runs) == [0, 1], results
    winner, loser = sorted(range(2), key=lambda k: runs[k].returncode)
    assert results[winner] == ""
    assert results[loser] == (f"error: {out} is in use by a live run (pid {runs[winner].pid}); wait for it to end, "
                              f"or choose another --out_dir\n")
    # the files are the winner's alone, and whole: one log of one run, its checkpoints, its test report
    best = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert log_rows(out / "log.csv") == [r for e in range(3) for r in [("train", str(s)) for s in range(8 * e + 1, 8 * e + 9)]
                                         + [("eval", str(8 * e + 8))]] + [("test", str(best))]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 24
    assert json.loads((out / "metrics_test.json").read_text())["step"] == best
    assert open(tmp_path / f"log{winner}.txt").read().count("eval step") == 3


def test_starts_into_a_live_runs_folder_leave_it_alone(synth_root, tiny_clip_file, tmp_path):
    # a run that saves at every step; meanwhile a new run, a resume and an evaluation into its folder are refused,
    # and the live run's saves in progress survive them
    out = tmp_path / "out"
    args = tiny_args(synth_root, tiny_clip_file, out, "--epochs=4", "--eval_interval=1")
    live = start(args, tmp_path / "log.txt")
    try:
        wait_for(r"^eval step 2 ", live, tmp_path / "log.txt")
        refused = rf"^{re.escape(str(out))} is in use by a live run \(pid {live.pid}\); wait for it to end"
        for extra in ([], ["--resume=True"], ["--overwrite=True"]):
            with pytest.raises(ValueError, match=refused):
                train.main(args + extra)
        with pytest.raises(ValueError, match=refused):
            evaluate.main([f"--ckpt={out}/ckpt.pt", "--workers=0"])
        _, err = live.communicate(timeout=240)
    finally:
        live.kill()
    assert live.returncode == 0 and err == "", err[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 32 and (out / "metrics_test.json").exists()
    # what every run ends with: evaluate.py's files for the test split, the same set as `python evaluate.py` writes
    assert {"metrics_test.json", "predictions_test.csv", "similarity.png", "similarity.csv", "failures_test.png"} <= \
        set(os.listdir(out))


def children(pid):
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == pid:
            kids.append(int(d))
    return kids


def ended(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended, unreaped
    except OSError:
        return True


def all_end_within(pids, seconds):
    t0 = time.time()
    while time.time() - t0 < seconds and not all(map(ended, pids)):
        time.sleep(0.05)
    return all(map(ended, pids))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_saves_and_the_resume_continues_at_the_next_batch(synth_root, tiny_clip_file, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(synth_root, tiny_clip_file, out, "--epochs=40", "--batch_size=8", "--eval_interval=10000",
                     "--workers=2")
    p = start(args, tmp_path / "log1.txt")
    try:
        wait_for(r"^step 3/1280 ", p, tmp_path / "log1.txt")
        workers = children(p.pid)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert p.returncode == 128 + signal.SIGTERM and 3 <= step < 40, err
    assert err.splitlines()[-1] == f"interrupted by SIGTERM at step {step}: saved {out}/last.pt; continue with --resume=True"
    assert len(workers) == 2 and all_end_within(workers, 5)
    p = start(args + ["--resume=True"], tmp_path / "log2.txt")
    try:
        wait_for(rf"^step {step + 2}/1280 ", p, tmp_path / "log2.txt")
        workers = children(p.pid)
        p.kill()  # SIGKILL: the workers end with the main process, at once
        p.wait(timeout=60)
        assert len(workers) == 2 and all_end_within(workers, 2)
    finally:
        p.kill()
    log = open(tmp_path / "log2.txt").read()
    assert re.search(rf"^resumed from {re.escape(str(out))}/last.pt at step {step} \(not evaluated yet, [\d.]+ s of "
                     r"training\)$", log, re.M), log
    assert re.findall(r"^step (\d+)/1280", log, re.M)[0] == str(step + 1)


def interrupted_run(synth_root, tiny_clip_file, out, step, *extra):
    """A run's folder as a stop signal at `step` leaves it: last.pt holds the state and no metrics, and nothing else
    is there, since no evaluation happened yet."""
    torch.manual_seed(0)
    args = tiny_args(synth_root, tiny_clip_file, out, *extra)
    cfg = train.parse_config(args)
    data, _ = train.read_data(cfg, log=lambda *a: None)
    model = train.build_model(cfg, data)
    optimizer, _ = train.configure_optimizer(model, cfg)
    out.mkdir()
    augmentation = torch.Generator().manual_seed(cfg.seed)  # as the run seeds it, before its first batch
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, best_mA=-1.0, selected=-1,
                    train_s=0.0, eval_s=0.0, rng=torch.get_rng_state(), aug_rng=augmentation.get_state(), metrics=None,
                    config=vars(cfg), clip_config=vars(model.clip.config),
                    decoder_config=vars(model.config), attr_names=data.attr_names, prompts=data.prompts,
                    dataset="synth"), out / "last.pt")
    return args


def test_a_run_stopped_at_its_last_step_before_any_evaluation_finishes(synth_root, tiny_clip_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = interrupted_run(synth_root, tiny_clip_file, out, 8, "--epochs=1")
    m = train.main(args + ["--resume=True"])
    log = capsys.readouterr().out
    assert "at step 8 (not evaluated yet, 0.0 s of training)" in log and "eval step 8 " in log and set(m) >= {"mA", "F1"}
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 8 and (out / "metrics_test.json").exists()
    # resumed again, the finished run says so and tests nothing
    assert train.main(args + ["--resume=True"]) is None
    log = capsys.readouterr().out
    assert re.search(rf"^{re.escape(str(out))}/last.pt is a finished run \(step 8, tested: .*metrics_test.json\); "
                     r"nothing to resume", log, re.M) and "test (" not in log


def test_resume_refuses_changed_prompts(synth_root, tiny_clip_file, tmp_path):
    root = tmp_path / "synth"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".images-*"))
    out = tmp_path / "out"
    args = interrupted_run(str(root), tiny_clip_file, out, 3)
    (root / "prompts.csv").write_text("attribute,prompt\nHat,A person whose head is covered by a hat\n")
    with pytest.raises(ValueError, match=r"last\.pt was trained with another prompt for Hat \('A pedestrian wearing a "
                                         r"hat', now 'A person whose head is covered by a hat'\); restore prompts\.csv, "
                                         r"or use another --out_dir$"):
        train.main(args + ["--resume=True"])


def test_overwrite_removes_the_replaced_runs_files_and_only_those(trained_run, synth_root, tiny_clip_file, tmp_path,
                                                                   capsys):
    out = tmp_path / "used"
    shutil.copytree(trained_run[0], out)
    old = {"metrics_val.json": "{}", "failures_val.png": "png", "similarity.png": "png", "similarity.csv": "a",
           "predictions_val.csv": "a"}
    for name, text in old.items():
        (out / name).write_text(text)
    (out / "notes.txt").write_text("the user's")
    (out / "metrics.json").write_text("the user's too")
    train.main(tiny_args(synth_root, tiny_clip_file, out, "--overwrite=True", "--epochs=1"))
    log = capsys.readouterr().out
    assert re.search(r"--overwrite=True: this run replaces the one in .*used; removed ckpt\.pt, failures_test\.png, "
                     r"failures_val\.png, last\.pt, log\.csv, metrics_test\.json, metrics_val\.json", log)
    # removed, or written anew by this run (similarity.png and .csv: every run's evaluation writes them)
    assert all(not (out / name).exists() or (out / name).read_bytes() != text.encode() for name, text in old.items())
    assert {"similarity.png", "similarity.csv"} <= set(os.listdir(out))
    assert (out / "notes.txt").read_text() == "the user's" and (out / "metrics.json").read_text() == "the user's too"
    assert log_rows(out / "log.csv")[-1] == ("test", "8")


def log_records(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_log_csv_after_a_run_and_a_resume(trained_run, synth_root, tiny_clip_file, tmp_path):
    out, _, result = trained_run
    rows = log_records(os.path.join(out, "log.csv"))
    best = str(torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"])  # the test row is the selected model's
    assert [(r["kind"], r["step"]) for r in rows] == [("train", str(s)) for s in range(1, 9)] + [("eval", "8")] + \
        [("train", str(s)) for s in range(9, 17)] + [("eval", "16"), ("test", best)]
    assert float(rows[0]["loss"]) > 0 and float(rows[0]["img_per_s"]) > 0 and float(rows[0]["lr"]) > 0
    assert rows[8]["split"] == "val" and float(rows[-1]["mA"]) == pytest.approx(result["mA"], abs=1e-4)
    for f in ("ckpt.pt", "last.pt", "log.csv"):
        shutil.copy(os.path.join(out, f), tmp_path / f)
    with open(tmp_path / "log.csv", "a") as f:  # rows a killed run logged after its last save are dropped
        f.write("train,17,2.125,0.5,0.001,0.001,100,,,,,,,\n")
    train.main(tiny_args(synth_root, tiny_clip_file, tmp_path, "--epochs=3", "--resume=True"))
    rows = [(r["kind"], r["step"]) for r in log_records(tmp_path / "log.csv")]
    assert rows[:19] == [(r["kind"], r["step"]) for r in log_records(os.path.join(out, "log.csv"))]  # the whole history
    best = str(torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"])
    assert rows[19:] == [("train", str(s)) for s in range(17, 25)] + [("eval", "24"), ("test", best)]


class Killed(BaseException):
    """What a SIGKILL right after a write would do to train.main: end it there, with nothing else written."""


REPORTED = {"last.pt", "ckpt.pt", "similarity.png", "similarity.csv", "failures_test.png", "predictions_test.csv",
            "metrics_test.json", "thresholds_val.csv"}


def kill_after(monkeypatch, nth, writes):
    """Hooks every write of an evaluation and of the final report (the saves of last.pt and ckpt.pt, the report files,
    the eval and test rows of log.csv): each is appended to `writes`, and the nth (1-based) ends the run right after."""
    import cli
    import run

    def done(name):
        writes.append(name)
        if len(writes) == nth:
            raise Killed(name)

    def save_atomic(path, write, tmp=None):
        cli.save_atomic(path, write, tmp)
        if os.path.basename(path) in REPORTED:
            done(os.path.basename(path))

    row = run.CSVLog.write

    def write_row(self, **fields):
        row(self, **fields)
        if fields["kind"] in ("eval", "test"):
            done(f"log.csv {fields['kind']} {fields['step']}")
    for module in (train, evaluate, run):
        monkeypatch.setattr(module, "save_atomic", save_atomic)
    monkeypatch.setattr(run.CSVLog, "write", write_row)


KILLS = 13  # the writes of the run below: at step 8 its log row, last.pt and ckpt.pt; at 16 its row and last.pt (not
# better: no ckpt.pt); ckpt.pt again with the thresholds chosen on val, and their thresholds_val.csv; the report's five
# files and the test row


@pytest.fixture(scope="module")
def left_alone(synth_root, tiny_clip_file, tmp_path_factory):
    """The run left alone, its writes counted: two evaluations (val at steps 8 and 16) and the test. Returns its
    writes, its test metrics and the eval and test rows of its log.csv."""
    writes, reference = [], tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        kill_after(mp, 0, writes)
        train.main(tiny_args(synth_root, tiny_clip_file, reference))
    expected = json.loads((reference / "metrics_test.json").read_text())
    return writes, expected, [r for r in log_rows(reference / "log.csv") if r[0] != "train"]


def test_the_run_left_alone_writes_what_the_kills_are_placed_after(left_alone):
    writes, expected, _ = left_alone
    assert writes[:5] == ["log.csv eval 8", "last.pt", "ckpt.pt", "log.csv eval 16", "last.pt"], writes
    assert writes[5:7] == ["ckpt.pt", "thresholds_val.csv"], writes  # the thresholds, before the test is reported
    assert sorted(writes[7:-1]) == sorted(REPORTED - {"last.pt", "ckpt.pt", "thresholds_val.csv"}), writes  # metrics last
    assert writes[-2:] == ["metrics_test.json", f"log.csv test {expected['step']}"] and len(writes) == KILLS


@pytest.mark.parametrize("nth", range(1, KILLS + 1))  # (one case each, so that the workers of make test share them)
def test_a_kill_after_any_write_of_an_evaluation_or_the_report_changes_nothing_the_run_reports(
        left_alone, nth, synth_root, tiny_clip_file, tmp_path, monkeypatch, capsys):
    _, expected, evals = left_alone
    out, killed = tmp_path / f"killed-{nth}", []
    kill_after(monkeypatch, nth, killed)
    args = tiny_args(synth_root, tiny_clip_file, out)
    with pytest.raises(Killed):
        train.main(args)
    kill_after(monkeypatch, 0, [])
    # the resume, as a user would: with --resume=True where the run saved last.pt, else afresh
    train.main(args + (["--resume=True"] if (out / "last.pt").exists() else []))
    got = json.loads((out / "metrics_test.json").read_text())
    assert (got["step"], got["overall"]) == (expected["step"], expected["overall"]), killed[-1]
    assert (got["thresholds"], got["overall_at_threshold"]) == (expected["thresholds"], expected["overall_at_threshold"])
    assert torch.load(out / "ckpt.pt", weights_only=True)["thresholds"]["values"] == list(expected["thresholds"].values())
    assert [r for r in log_rows(out / "log.csv") if r[0] != "train"] == evals, killed[-1]
    assert REPORTED <= set(os.listdir(out)), killed[-1]
    # and a further resume finds the run finished
    assert train.main(args + ["--resume=True"]) is None
    capsys.readouterr()


def test_the_time_line_of_a_resumed_run_adds_the_training_time_of_every_start(synth_root, tiny_clip_file, tmp_path,
                                                                              monkeypatch, capsys):
    out = tmp_path / "out"
    args = tiny_args(synth_root, tiny_clip_file, out)
    kill_after(monkeypatch, 2, [])  # right after last.pt at the first evaluation (step 8)
    with pytest.raises(Killed):
        train.main(args)
    before = torch.load(out / "last.pt", weights_only=True)["train_s"]
    assert before > 0
    kill_after(monkeypatch, 0, [])
    capsys.readouterr()
    train.main(args + ["--resume=True"])
    line = re.search(r"^time: ([\d.]+) s training \(([\d.]+) s of it before --resume=True\), ([\d.]+) s evaluating on "
                     r"val, [\d.]+ s on test$", capsys.readouterr().out, re.M)
    assert line and float(line[2]) == round(before, 1) and float(line[1]) > float(line[2]), line
    assert float(line[1]) == pytest.approx(torch.load(out / "last.pt", weights_only=True)["train_s"], abs=0.05)


def test_a_folder_whose_file_system_cannot_lock_is_one_line(tmp_path, monkeypatch):
    import errno
    import fcntl

    import run

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'nfs'))}: its file system does not support file "
                                         r"locks \(ENOLCK\), so no run can hold it; choose an --out_dir on a local disk$"):
        run.hold_folder(str(tmp_path / "nfs"))
