"""Shared fixtures: a small synthetic set, a tiny CLIP saved as a state dict, and one short training run."""
import os
import signal
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# make test runs one pytest worker per core (pytest-xdist): each works on one thread, and so do the scripts it starts,
# or the workers' threads would outnumber the cores and wait on each other
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import clip  # noqa: E402
import synth  # noqa: E402

TINY = clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=1,
                       vision_patch_size=8, transformer_width=64, transformer_heads=1, transformer_layers=2)


def pytest_configure(config):
    # pytest-xdist's mark, known also where xdist is not loaded (pytest -p no:xdist)
    config.addinivalue_line("markers", "xdist_group(name): the tests of a group run on one worker (--dist loadgroup)")


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    # the preload cache goes to $XDG_CACHE_HOME/sequencepar: a folder of the test session's, not the user's
    folder, before = str(tmp_path_factory.mktemp("cache")), os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = folder
    yield folder
    if before is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "synth")
    synth.make_synthetic(root, 320, seed=3, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    # heads = width // 64, as build_model infers them from a state dict
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")
    torch.save(clip.CLIP(TINY).state_dict(), path)
    return path


def tiny_args(synth_root, clip_file, out_dir, *extra):
    # --preset=paper: the tests run the paper's recipe (an evaluation each epoch, images read by the loader), only smaller
    return ["--dataset=synth", "--preset=paper", f"--root={synth_root}", f"--clip={clip_file}", f"--out_dir={out_dir}", "--epochs=2",
            "--batch_size=32", "--warmup_epochs=0.2", "--log_interval=1", "--workers=0",
            "--lr=3e-3", *extra]


@pytest.fixture(scope="session")
def trained_run(synth_root, tiny_clip_file, tmp_path_factory):
    """One short run of train.main (2 epochs of 8 steps): its output folder and what it printed."""
    import io
    from contextlib import redirect_stdout

    import train
    out = str(tmp_path_factory.mktemp("run"))
    buf = io.StringIO()
    with redirect_stdout(buf):
        result = train.main(tiny_args(synth_root, tiny_clip_file, out))
    return out, buf.getvalue(), result


def write_png(path, pixels, bit_depth=8, size=None):
    """A PNG written byte by byte (Pillow cannot write 16-bit colour): pixels (H, W, 3) or (H, W) in 0..2^bit_depth-1;
    size=(width, height) overrides the header, to make a file that claims to be huge."""
    import struct
    import zlib

    import numpy as np
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    width, height = size or (width, height)
    rows = b"".join(b"\x00" + row.astype(">u2" if bit_depth == 16 else "u1").tobytes() for row in pixels)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = 2 if pixels.ndim == 3 else 0  # RGB or grey
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


class Started:
    """A script started by the zygote, as subprocess.Popen has it: pid, poll, wait, communicate, send_signal, kill,
    returncode, and stdout and stderr to read where they were asked for as subprocess.PIPE (files the child writes)."""

    def __init__(self, args):
        import tempfile
        import threading
        self.args, self.pid, self.returncode = [sys.executable, *args], None, None
        self.folder = tempfile.mkdtemp(prefix="zygote-")
        self.started, self.ended = threading.Event(), threading.Event()
        self.stdout = self.stderr = None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        return tuple(f.read() if f else None for f in (self.stdout, self.stderr))

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def __del__(self):
        import shutil
        for f in (self.stdout, self.stderr):
            if f:
                f.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class Zygote:
    """The worker's zygote.py, started with the first script a test runs and asked for every one after."""
    process = start_env = None
    children, count = {}, 0
    # what an interpreter reads as it starts, or torch as it is imported: a child forked after that cannot take
    # another value of them, and runs in a new interpreter instead (PYTHONIOENCODING and PYTHONUNBUFFERED it takes)
    FIXED_AT_START = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH", "LD_", "MALLOC")
    TAKEN = ("PYTHONIOENCODING", "PYTHONUNBUFFERED")

    @classmethod
    def can_run(cls, args, env):
        before = cls.start_env or os.environ
        fixed = {k for k in {*env, *before} if k.startswith(cls.FIXED_AT_START) and k not in cls.TAKEN}
        return args[0].endswith(".py") and all(env.get(k) == before.get(k) for k in fixed)

    @classmethod
    def listen(cls):
        import json
        for line in cls.process.stdout:
            message = json.loads(line)
            if "id" in message:
                child = cls.children.pop(message["id"])
                child.pid = message["pid"]
                cls.children[child.pid] = child
                child.started.set()
            else:
                child = cls.children.pop(message["exit"])
                child.returncode = message["status"]
                child.ended.set()

    @classmethod
    def start(cls, args, env, stdout, stderr, text):
        import json
        import threading
        if cls.process is None:
            cls.process = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "zygote.py")], cwd=ROOT,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            cls.start_env = dict(os.environ)
            threading.Thread(target=cls.listen, daemon=True).start()
        child = Started(args)
        # a stream asked for as PIPE goes to a file of the child's folder, read back by the test as the pipe would be
        piped = [where == subprocess.PIPE for where in (stdout, stderr)]
        paths = [os.path.join(child.folder, name) if pipe else os.fspath(where)
                 for name, where, pipe in zip(("stdout", "stderr"), (stdout, stderr), piped)]
        for path in paths:  # empty and there once we return, as Popen leaves a file it writes to
            open(path, "w").close()
        child.stdout, child.stderr = (open(path, "r" if text else "rb") if pipe else None
                                      for path, pipe in zip(paths, piped))
        cls.count += 1
        cls.children[cls.count] = child
        request = {"id": cls.count, "argv": list(args), "cwd": ROOT, "env": dict(env), "stdout": paths[0],
                   "stderr": paths[1]}
        cls.process.stdin.write(json.dumps(request) + "\n")
        cls.process.stdin.flush()
        if not child.started.wait(60):
            raise RuntimeError(f"the zygote did not start {args}")
        return child


def start_script(*args, env=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True):
    """`python *args` started from the repository's root, as subprocess.Popen (stdout and stderr: PIPE or a path).
    A script whose environment changes nothing an interpreter or torch reads as it starts runs in a child of the
    worker's zygote: the same, less the interpreter's start and torch's import; `-m`, `-c` and the other environments
    in a new interpreter, in its own session, so that a hang can kill torchrun's workers too."""
    env = dict(os.environ if env is None else env)
    if Zygote.can_run(args, env):
        return Zygote.start(args, env, stdout, stderr, text)
    files = [open(where, "w") if where != subprocess.PIPE else where for where in (stdout, stderr)]
    try:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=files[0], stderr=files[1], text=text,
                                env=env, start_new_session=True)
    finally:
        for f in files:
            if f != subprocess.PIPE:
                f.close()


def run_script(*args, env=None, text=True, timeout=240):
    """`python *args` from the repository's root, run to its end: its exit status, stdout and stderr."""
    p = start_script(*args, env=env, text=text)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def stderr_of(r):
    # a failed torchrun: a worker's own error comes first, torchrun's summary of the failure last
    return r.stderr if len(r.stderr) < 6000 else r.stderr[:4000] + "\n[...]\n" + r.stderr[-2000:]


def round_trip(out, synth_root, tmp_path, capsys):
    """A run's checkpoint (in `out`) through `python evaluate.py` and `python sample.py --json=True`, rebuilt from the
    checkpoint alone: returns evaluate's metrics, the model with its attribute names, three images, what generate
    predicts for them (pred, scores) and what sample.py printed for them."""
    import json

    import evaluate
    import sample
    again = evaluate.main([f"--ckpt={out / 'ckpt.pt'}", "--dataset=synth", f"--root={synth_root}",
                           f"--out_dir={tmp_path / 'eval'}", "--workers=0"])
    model, names = sample.load_model(str(out / "ckpt.pt"))
    folder = os.path.join(synth_root, "images")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:3]]
    capsys.readouterr()
    assert sample.main([*paths, f"--ckpt={out / 'ckpt.pt'}", "--json=True", "--workers=0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    images = torch.stack([sample.Images(paths, 32)[i][1] for i in range(3)])
    pred, probs = model.generate(images)
    # a run that chose each attribute's threshold on val: sample.py decides at those, and says them
    chosen = torch.load(out / "ckpt.pt", weights_only=True).get("thresholds")
    if chosen:
        pred = (probs > torch.tensor(chosen["values"])).to(torch.uint8)
        assert all(row["thresholds"] == dict(zip(names, chosen["values"])) for row in printed)
    for row, p, q in zip(printed, pred, probs):  # the predicted attributes, with the head's own probabilities
        assert row["attributes"] == pytest.approx({names[j]: q[j].item() for j in p.nonzero().flatten().tolist()})
    return again, model, names, paths, images, pred, probs, printed
