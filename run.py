"""
The files of a run and the process that owns them: one run per out_dir, held with a lock that the kernel releases
when the process ends, however it ends; the checks before a run starts or resumes there; its log.csv; and the stop
signals, which save the state before the run ends.
"""
import csv
import dataclasses
import errno
import fcntl
import io
import os
import re
import signal
import sys

import torch

from checkpoint import check_attributes, load_checkpoint
from cli import MissingFile, UserError, save_atomic

RUN_FILES = ("ckpt.pt", "last.pt")  # a folder holding one of these holds a run
# the files a run writes into its out_dir, and their temporary names while save_atomic writes them
RUN_FILE = re.compile(r"ckpt\.pt|last\.pt|log\.csv|(metrics|predictions|failures)_\w+\.(json|csv|png)|similarity\.(png|csv)|"
                      r"thresholds_\w+\.csv")
TMP_NAME = re.compile(rf"({RUN_FILE.pattern})\.tmp")


_held = {}  # folder (real path) -> the open file whose lock this process holds, until it exits


def writable_folder(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out_dir={out} is a file; expected a folder")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out_dir={out} is not writable ({e.strerror})") from None


def hold_folder(out):
    """Makes out a writable folder and holds it for this process until the process exits: an exclusive flock on
    out/.lock, which also names our pid for anyone refused. Another live process holding it is a one-line error.
    Then, as the one owner, we remove the temporary files a killed run of ours left behind, and no other files."""
    writable_folder(out)
    if os.path.realpath(out) not in _held:  # (else a main() before this one in the same process holds it)
        fd = os.open(os.path.join(out, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if e.errno != errno.EWOULDBLOCK:  # (some network file systems)
                os.close(fd)
                raise UserError(f"{out}: its file system does not support file locks ({errno.errorcode[e.errno]}), so "
                                f"no run can hold it; choose an --out_dir on a local disk") from None
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{out} is in use by a live run (pid {pid}); wait for it to end, or choose another "
                            f"--out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[os.path.realpath(out)] = fd
    for f in os.listdir(out):
        if TMP_NAME.fullmatch(f):
            os.remove(os.path.join(out, f))  # a file of ours, half written when a run was killed


def prepare_out_dir(cfg):
    """Holds out_dir for this run and makes sure it holds no other run, unless we resume it or replace it. Nothing is
    removed here: a run to be replaced stays until the new run has passed its checks (see remove_replaced_run)."""
    out = cfg.out_dir
    hold_folder(out)
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if cfg.resume and "last.pt" not in held:
        raise MissingFile(f"--resume=True: {os.path.join(out, 'last.pt')} not found, so there is nothing to resume")
    if held and not cfg.resume and not cfg.overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume=True, or choose "
                        f"another --out_dir, or replace it with --overwrite=True")


def remove_replaced_run(cfg):
    """With --overwrite=True, once every check has passed and the new run is about to write: the replaced run's
    checkpoints and reports are removed, so that none of them passes for the new run's; nothing else is."""
    out = cfg.out_dir
    replaced = sorted(f for f in os.listdir(out) if RUN_FILE.fullmatch(f)) if cfg.overwrite else []
    if replaced:
        print(f"--overwrite=True: this run replaces the one in {out}; removed {', '.join(replaced)}")
        for f in replaced:
            os.remove(os.path.join(out, f))


def check_resume(ckpt, path, model, attr_names, prompts, head):
    check_attributes(ckpt, path, attr_names, "use another --out_dir")
    trained = ckpt.get("head", "sequencepar")
    if trained != head:
        raise UserError(f"{path} holds a model of --head={trained}, not --head={head}; resume with --head={trained}, "
                        f"or use another --out_dir")
    # (the linear head reads no prompts and has no decoder)
    text = head != "linear"
    changed = [(n, then, now) for n, then, now in zip(attr_names, ckpt["prompts"], prompts) if then != now and text]
    if changed:
        n, then, now = changed[0]
        raise UserError(f"{path} was trained with another prompt for {n} ({then!r}, now {now!r})"
                        + (f" and for {len(changed) - 1} more attributes" if len(changed) > 1 else "")
                        + "; restore prompts.csv, or use another --out_dir")
    now = {**dataclasses.asdict(model.clip.config), **(dataclasses.asdict(model.config) if text else {})}
    then = {**ckpt["clip_config"], **ckpt["decoder_config"]}
    changed = [f"{k} {then.get(k)} (now {v})" for k, v in now.items() if then.get(k) != v and k != "dropout"]
    if changed:
        raise UserError(f"{path} holds another model: {', '.join(changed)}; resume with the options it was trained "
                        f"with, or use another --out_dir")


def run_steps(cfg, n_train):
    """The length of a run in steps: --epochs passes over the n_train training images in batches of --batch_size."""
    return max(1, round(cfg.epochs * (n_train // cfg.batch_size)))


def finished_at(out_dir):
    """The step at which the run in out_dir ended its training, if it was tested, else None. The test row of log.csv
    is the last thing a run writes, after every report, so a run killed during its test is not finished."""
    rows = CSVLog.rows(os.path.join(out_dir, "log.csv"))
    evals = [r for r in rows if r["kind"] == "eval"]
    return int(evals[-1]["step"]) if rows and rows[-1]["kind"] == "test" and evals else None


def resume(path, model, optimizer, data, cfg, eval_split, log=print):
    """Loads the state of an interrupted run at `path` into model and optimizer, once it is known to be the same model
    on the same attributes. Returns the run's state (step, best_mA, selected, train_s, eval_s, rng, aug_rng, and
    evaluated: the step, or -1 for a state a stop signal saved), or None for a run that trained all its steps and was
    tested."""
    ckpt = load_checkpoint(path)
    lacks = sorted({"optimizer", "metrics", "best_mA", "selected", "train_s", "eval_s", "rng", "aug_rng"}
                   - ckpt.keys())
    if lacks:
        raise UserError(f"{path} lacks the training state {', '.join(lacks)}, which train.py saves in last.pt; start "
                        f"again with --overwrite=True, or score its ckpt.pt with evaluate.py")
    check_resume(ckpt, path, model, data.attr_names, data.prompts, cfg.head)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    step, evaluated = ckpt["step"], ckpt["metrics"] is not None
    if step >= run_steps(cfg, len(data.splits["train"])) and finished_at(cfg.out_dir) == step:
        log(f"{path} is a finished run (step {step}, tested: {os.path.join(cfg.out_dir, 'metrics_test.json')}); "
            f"nothing to resume: more --epochs train it further, python evaluate.py "
            f"--ckpt={os.path.join(cfg.out_dir, 'ckpt.pt')} scores it again")
        return None
    if evaluated and ckpt["selected"] == step:
        # this state was selected when it was evaluated, and ckpt.pt is written after last.pt: a run killed between the
        # two writes left an older ckpt.pt, so we write it again
        best = os.path.join(cfg.out_dir, "ckpt.pt")
        kept = {k: v for k, v in ckpt.items() if k not in ("optimizer", "rng", "aug_rng")}
        save_atomic(best, lambda f: torch.save(kept, f))
    log(f"resumed from {path} at step {step} (" + (f"best {eval_split} mA so far {ckpt['best_mA']:.2f}"
        if ckpt["best_mA"] >= 0 else f"model selected at step {ckpt['selected']}" if ckpt["selected"] >= 0
        else "not evaluated yet") + f", {ckpt['train_s']:.1f} s of training)")
    return dict(step=step, evaluated=step if evaluated else -1, aug_rng=ckpt["aug_rng"],
                **{k: ckpt[k] for k in ("best_mA", "selected", "train_s", "eval_s", "rng")})


class CSVLog:
    """out_dir/log.csv: a row per logged step and per evaluation, appended as training goes. A fresh run starts it
    anew; a resumed run keeps the rows up to the step it resumes from."""
    FIELDS = ["kind", "step", "epoch", "loss", "lr", "head_lr", "img_per_s", "split", "mA", "Acc", "Prec", "Rec", "F1",
              "F1_hm", "mAP"]

    def __init__(self, path, resume_step=None):
        self.path = path
        rows = [r for r in self.rows(path) if int(r["step"]) <= resume_step] if resume_step is not None else []
        save_atomic(path, lambda f: f.write(self.lines([dict(zip(self.FIELDS, self.FIELDS))] + rows).encode()))

    @staticmethod
    def rows(path):
        # the rows of a log.csv, without a last line that a kill cut short
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if r.get("kind") and (r.get("step") or "").isdigit()]

    def lines(self, rows):
        out = io.StringIO()
        csv.DictWriter(out, self.FIELDS, restval="").writerows(rows)
        return out.getvalue()

    def write(self, **row):
        with open(self.path, "a") as f:
            f.write(self.lines([{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}]))


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; code is the exit status a shell gives a process killed by it, 128 + its number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.code = 128 + signum


class Interrupt:
    """While training, the first stop signal asks the loop to stop at the next step, where the state is whole and can
    be saved: Ctrl-C (SIGINT), and SIGTERM and SIGHUP, which `kill`, a cluster's preemption and a closed terminal
    send. A second one stops at once."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, last_path):
        self.requested, self.signum, self.last_path = False, signal.SIGINT, last_path
        self.at_once = None  # where the run is when a signal must end it at once, not at the next step (the test)
        self.previous = {s: signal.signal(s, self.handler) for s in self.SIGNALS}

    def handler(self, signum, frame):
        if self.at_once:
            self.signum = signum
            raise self.stopped(self.at_once)
        if self.requested:
            kept = f"{self.last_path} holds the last saved state" if os.path.exists(self.last_path) else "nothing saved"
            raise Interrupted(f"interrupted without saving; {kept}", signum)
        self.requested, self.signum = True, signum
        name, again = ("interrupt", "Ctrl-C again") if signum == signal.SIGINT else (signal.Signals(signum).name,
                                                                                      "a second signal")
        print(f"\n{name}: saving the state at the next step ({again} to quit without saving)", file=sys.stderr)

    def stopped(self, where):
        """The exception that ends the run once its state is saved: `where` says at which step and how to resume."""
        by = "" if self.signum == signal.SIGINT else f" by {signal.Signals(self.signum).name}"
        return Interrupted(f"interrupted{by} {where}", self.signum)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s, previous in self.previous.items():
            signal.signal(s, previous)
