"""The one command-line grammar of every script (cli.py): --key=value and --key value against the script's dataclass,
--help read off that dataclass and its comments, renamed options refused with their new name, one-line errors for a
user's mistakes and tracebacks for our bugs."""
import dataclasses
import os
import re
from dataclasses import dataclass

import pytest

import cli
from conftest import run_script

# every script, and an option line its --help must show: the default and the comment beside the field
SCRIPTS = {"train.py": r"--preset=auto\s+synth: the demo's small model",
           "evaluate.py": r"--out_dir=\s+where the files go; \"\" is the checkpoint's folder",
           "sample.py": r"--json=False\s+one JSON document instead of text",
           "bench.py": r"--batch_size=0\s+images per call",
           "export.py": r"--out_dir=\s+\"\": onnx/ beside the checkpoint",
           "synth.py": r"--n=40000\s+images",
           "data.py": r"--decode=False\s+open every image",
           "experiments/generation.py": r"--steps=3000\s+training steps of every run"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help_and_a_bad_option_in_the_same_form(script):
    r = run_script(script, "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "\n\noptions (--key=value or --key value; a bool alone is True):\n" in r.stdout and re.search("^  " + SCRIPTS[script], r.stdout, re.M), r.stdout
    r = run_script(script, "--nope=1")
    assert r.returncode == 1 and re.fullmatch(r"error: unknown option --nope; valid options: \w+(, \w+)*\n", r.stderr), \
        r.stderr


@dataclass
class Example:
    name: str = "x"               # a string
    size: int = 2                 # a count; this comment goes on
                                  # on a second line
    # a heading
    rate: float = 0.5
    flag: bool = False
    path: str = "~/here"
    PATHS = ("path",)


def test_values_are_literals_of_the_fields_type():
    cfg = cli.parse(["--name=a b", "--size=3", "--rate=1", "--flag=True", "--path=~/there"], Example)
    assert (cfg.name, cfg.size, cfg.rate, cfg.flag) == ("a b", 3, 1.0, True) and type(cfg.rate) is float
    assert cfg.path.endswith("/there") and not cfg.path.startswith("~")  # a path: ~ expanded
    assert cli.parse([], Example) == Example() and cli.parse(["--name=True"], Example).name == "True"
    cfg, rest = cli.parse(["a.jpg", "--size=4", "~/b.jpg"], Example, positional=True)
    assert cfg.size == 4 and rest[0] == "a.jpg" and rest[1].endswith("/b.jpg") and "~" not in rest[1]


@pytest.mark.parametrize("argv, message", [
    (["--size=2.5"], r"^--size=2\.5: expected an integer$"),
    (["--size", "2.5"], r"^--size=2\.5: expected an integer$"),
    (["--rate=fast"], r"^--rate=fast: expected a number$"),
    (["--flag=maybe"], r"^--flag=maybe: expected True or False \(or yes, no, 1, 0\)$"),
    (["--nope=1"], r"^unknown option --nope; valid options: name, size, rate, flag, path$"),
    (["--nope", "1"], r"^unknown option --nope; valid options: name, size, rate, flag, path$"),
    (["size=3"], r"^bad argument 'size=3': expected --key=value or --key value \(python test_cli\.py --help lists the "
                 r"options\)$"),
    (["--size"], r"^--size: expected a value, --size=VALUE or --size VALUE$"),  # a value missing at the end
    (["--size", "--rate=1"], r"^--size: expected a value, --size=VALUE or --size VALUE$"),  # or before an option
])
def test_bad_arguments_are_one_line_errors(argv, message):
    with pytest.raises(cli.UserError, match=message):
        cli.parse(argv, Example)


def test_key_space_value_is_key_equals_value_and_a_bool_alone_is_true():
    assert cli.parse(["--name", "a b", "--size", "3", "--rate", "1", "--path", "~/there"], Example) == \
        cli.parse(["--name=a b", "--size=3", "--rate=1", "--path=~/there"], Example)
    assert cli.parse(["--flag"], Example).flag is True and cli.parse(["--flag=False"], Example).flag is False
    assert cli.parse(["--flag", "False"], Example).flag is False and cli.parse(["--flag", "True"], Example).flag is True
    # a bool alone never takes the next argument unless it is True or False: an image name stays an image name
    cfg, rest = cli.parse(["--flag", "img.jpg", "--size", "4", "True.jpg"], Example, positional=True)
    assert (cfg.flag, cfg.size, rest) == (True, 4, ["img.jpg", "True.jpg"])
    cfg, rest = cli.parse(["a.jpg", "--flag", "False", "b.jpg"], Example, positional=True)
    assert (cfg.flag, rest) == (False, ["a.jpg", "b.jpg"])
    # yes, no, 1 and 0 are bools too, as people type them (a word, in any case, also after a space)
    for text, value in (("yes", True), ("No", False), ("1", True), ("0", False), ("TRUE", True)):
        assert cli.parse([f"--flag={text}"], Example).flag is value
    assert cli.parse(["--flag", "no"], Example).flag is False
    cfg, rest = cli.parse(["--flag", "0", "1"], Example, positional=True)  # a digit after a space is an argument
    assert (cfg.flag, rest) == (True, ["0", "1"])


def config_classes():
    import bench
    import data
    import evaluate
    import export
    import sample
    import synth
    import train
    from experiments import generation
    return {"train.py": train.TrainConfig, "evaluate.py": evaluate.EvalConfig, "sample.py": sample.SampleConfig,
            "bench.py": bench.BenchConfig, "export.py": export.ExportConfig, "synth.py": synth.SynthConfig,
            "data.py": data.DataConfig,
            "experiments/generation.py": generation.ExperimentsConfig}


@pytest.mark.parametrize("script", SCRIPTS)
def test_both_forms_give_the_same_config_in_every_script(script):
    # every option of the script, given a value of its type that is not its default, in both forms
    config_class = config_classes()[script]
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 0.5, str: lambda v: v + "x"}
    values = {f.name: other[f.type](f.default) for f in dataclasses.fields(config_class)}
    equals = [f"--{k}={v}" for k, v in values.items()]
    spaced = [a for k, v in values.items() for a in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]
    assert cli.parse_overrides(spaced, config_class) == cli.parse_overrides(equals, config_class)
    assert cli.parse_overrides(spaced, config_class) == {k: os.path.expanduser(v) if isinstance(v, str) else v
                                                         for k, v in values.items()}


def test_train_py_takes_dataset_peta_as_people_type_it(tmp_path):
    import train
    assert train.parse_config(["--dataset", "peta"]) == train.parse_config(["--dataset=peta"])
    root = tmp_path / "peta"
    spaced, joined = run_script("train.py", "--dataset", "peta", "--root", str(root)), \
        run_script("train.py", "--dataset=peta", f"--root={root}")
    assert spaced.returncode == joined.returncode == 1 and spaced.stderr == joined.stderr
    assert re.fullmatch(r"error: .*peta/PETA\.mat not found: the peta reader expects .*\n", spaced.stderr), spaced.stderr


INJECTED = """
import runpy, sys
import {module}
def bug(*args, **kwargs):
    raise {error}("operands could not be broadcast together with shapes (3,) (4,)")
{module}.{function} = bug
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("script, module, function, error, args", [
    ("sample.py", "checkpoint", "load_checkpoint", "ValueError", ["--ckpt=x.pt", "img.jpg"]),
    ("data.py", "cli", "parse", "OSError", ["--dataset=peta"]),
    ("train.py", "data", "load_dataset", "FloatingPointError", ["--dataset=peta"]),
])
def test_a_bug_keeps_its_traceback_while_a_user_error_is_one_line(script, module, function, error, args):
    # a programming error deep inside (here injected where the script calls into our code) is not a user's to mend:
    # it ends with its traceback, not one line that hides where it came from
    r = run_script("-c", INJECTED.format(module=module, function=function, error=error, script=script, args=args))
    assert r.returncode == 1 and r.stderr.startswith("Traceback (most recent call last):"), r.stderr
    assert r.stderr.rstrip().endswith(f"{error}: operands could not be broadcast together with shapes (3,) (4,)")
    assert "error: " not in r.stderr.splitlines()[-1][:7]


def test_help_is_read_off_the_dataclass():
    lines = cli.usage(Example, "Example: what it does.", "the end").splitlines()
    assert lines[:3] == ["Example: what it does.", "", "options (--key=value or --key value; a bool alone is True):"]
    assert lines[3:] == ["  --name=x".ljust(34) + "a string", "  --size=2".ljust(34) + "a count; this comment goes on",
                         " " * 34 + "on a second line", "  # a heading", "  --rate=0.5", "  --flag=False",
                         "  --path=~/here", "", "the end"]


PROBE = """
import atexit, os, sys, threading, time
print("stdout, no newline", end="")
print("stderr", file=sys.stderr)
atexit.register(lambda: print(" at exit"))
print(" args", sys.argv[1:], __name__, os.getcwd(), sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print(" é", os.environ.get("PROBE"), file=sys.stderr)
# (started after the prints above, so that on a busy machine too its line comes after them)
threading.Thread(target=lambda: (time.sleep(0.2), print(" a thread's last"))).start()
mode = sys.argv[1]
if mode == "message":
    sys.exit("a message")
if mode == "status":
    sys.exit(3)
if mode == "bug":
    import json
    json.loads("{")  # a traceback through a library's frames
"""


@pytest.mark.parametrize("args", [["message"], ["status"], ["bug"], ["none", "é x"], ["train.py", "--nope=1"],
                                  ["sample.py", "--help"]])
def test_a_script_run_by_the_zygote_ends_as_in_a_new_interpreter(args, tmp_path):
    # conftest.run_script runs a script in a child forked from a process that has imported torch (tests/zygote.py):
    # its exit status, stdout and stderr are those of `python script.py args` started anew
    import subprocess
    import sys

    from conftest import ROOT, Started, start_script
    if not args[0].endswith(".py"):
        (tmp_path / "probe.py").write_text(PROBE)
        args = [str(tmp_path / "probe.py"), *args]
    env = dict(os.environ, PROBE="set")
    p = start_script(*args, env=env)
    assert isinstance(p, Started)  # (not a new interpreter: then this test would compare one with itself)
    out, err = p.communicate(timeout=120)
    new = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (p.returncode, out, err) == (new.returncode, new.stdout, new.stderr)
    assert new.stdout or new.stderr
