"""The one command-line grammar of every script (cli.py): --key=value against the script's dataclass, --help read off
that dataclass and its comments, renamed options refused with their new name, one-line errors."""
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
           "synth.py": r"--n=40000\s+images",
           "data.py": r"--decode=False\s+open every image",
           "experiments.py": r"--steps=1500\s+training steps of every run"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help_and_a_bad_option_in_the_same_form(script):
    r = run_script(script, "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "\n\noptions (--key=value):\n" in r.stdout and re.search("^  " + SCRIPTS[script], r.stdout, re.M), r.stdout
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
    RENAMED = dict(old="it is --name now")


def test_values_are_literals_of_the_fields_type():
    cfg = cli.parse(["--name=a b", "--size=3", "--rate=1", "--flag=True", "--path=~/there"], Example)
    assert (cfg.name, cfg.size, cfg.rate, cfg.flag) == ("a b", 3, 1.0, True) and type(cfg.rate) is float
    assert cfg.path.endswith("/there") and not cfg.path.startswith("~")  # a path: ~ expanded
    assert cli.parse([], Example) == Example() and cli.parse(["--name=True"], Example).name == "True"
    cfg, rest = cli.parse(["a.jpg", "--size=4", "~/b.jpg"], Example, positional=True)
    assert cfg.size == 4 and rest[0] == "a.jpg" and rest[1].endswith("/b.jpg") and "~" not in rest[1]


@pytest.mark.parametrize("argv, message", [
    (["--size=2.5"], r"^--size=2\.5: expected an integer$"),
    (["--rate=fast"], r"^--rate=fast: expected a number$"),
    (["--flag=yes"], r"^--flag=yes: expected True or False$"),
    (["--flag"], r"^--flag: expected --flag=True or --flag=False$"),
    (["--old=1"], r"^--old: it is --name now$"),
    (["--nope=1"], r"^unknown option --nope; valid options: name, size, rate, flag, path$"),
    (["size=3"], r"^bad argument 'size=3': expected --key=value \(python test_cli\.py --help lists the options\)$"),
    (["--size"], r"^bad argument '--size': expected --key=value"),
])
def test_bad_arguments_are_one_line_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        cli.parse(argv, Example)


def test_help_is_read_off_the_dataclass():
    lines = cli.usage(Example, "Example: what it does.", "the end").splitlines()
    assert lines[:3] == ["Example: what it does.", "", "options (--key=value):"]
    assert lines[3:] == ["  --name=x".ljust(34) + "a string", "  --size=2".ljust(34) + "a count; this comment goes on",
                         " " * 34 + "on a second line", "  # a heading", "  --rate=0.5", "  --flag=False",
                         "  --path=~/here", "", "the end"]
