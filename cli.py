"""
The command line of every script, in one grammar: --key=value options against the script's config dataclass.

    python train.py --dataset=peta --batch_size=64 --compile=True

A value is read as a literal of the field's type: strings need no quotes, bools are True or False, numbers are
numbers. The options that name files or folders (the dataclass's PATHS) get ~ expanded. `--help` prints the options
with their defaults and the comments beside the fields, read off the dataclass's source, so the help and the code
cannot disagree. An option renamed since an earlier version (the dataclass's RENAMED) is refused with its new name.
`run` is every script's __main__: a user's mistake (a bad option, a missing file, a corrupt image) ends in one line,
"error: ...", and exit status 1; Ctrl-C in "interrupted" and status 130.
"""
import ast
import dataclasses
import inspect
import os
import re
import sys

import torch

EXPECTED = {bool: "True or False", int: "an integer", float: "a number"}


def script_of(config_class):
    module = sys.modules[config_class.__module__]
    return os.path.basename(getattr(module, "__file__", None) or config_class.__module__ + ".py")


def parse_overrides(argv, config_class):
    """{field: value} of the --key=value arguments in argv, checked against the fields of config_class."""
    types = {f.name: f.type for f in dataclasses.fields(config_class)}
    renamed, paths = getattr(config_class, "RENAMED", {}), getattr(config_class, "PATHS", ())
    overrides = {}
    for arg in argv:
        key, eq, text = arg[2:].partition("=")
        if key in renamed:
            raise ValueError(f"--{key}: {renamed[key]}")
        if arg.startswith("--") and not eq and types.get(key) is bool:
            raise ValueError(f"--{key}: expected --{key}=True or --{key}=False")
        if not arg.startswith("--") or not eq:
            raise ValueError(f"bad argument {arg!r}: expected --key=value (python {script_of(config_class)} --help "
                             f"lists the options)")
        if key not in types:
            raise ValueError(f"unknown option --{key}; valid options: {', '.join(types)}")
        try:
            value = text if types[key] is str else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if types[key] is float and type(value) is int:
            value = float(value)
        if type(value) is not types[key]:
            raise ValueError(f"--{key}={text}: expected {EXPECTED.get(types[key], types[key].__name__)}")
        overrides[key] = os.path.expanduser(value) if key in paths else value
    return overrides


def parse(argv, config_class, positional=False):
    """config_class with the --key=value arguments of argv applied; with positional=True, (config, the arguments that
    do not start with --), for the scripts that take file names (sample.py's images)."""
    rest = [a for a in argv if not a.startswith("--")] if positional else []
    config = config_class(**parse_overrides([a for a in argv if a not in rest], config_class))
    return (config, [os.path.expanduser(a) for a in rest]) if positional else config


def usage(config_class, doc, epilog=""):
    """The script's docstring, then one line per option: --name=default and the field's comment; a comment on a line
    of its own (a section heading, or a comment's second line) is kept where it stands."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    lines = [doc.strip(), "", "options (--key=value):"]
    for line in inspect.getsource(config_class).splitlines()[1:]:
        field = re.match(r"\s*(\w+): [\w.]+ = [^#]*?(?:# (.*))?$", line)
        comment = re.match(r"\s*# (.*)", line)
        if field and field[1] in defaults:
            lines.append((f"  --{field[1]}={defaults[field[1]]}".ljust(34) + (field[2] or "")).rstrip())
        elif comment:
            deep = len(line) - len(line.lstrip()) > 4  # a field comment's second line, aligned under the first
            lines.append((" " * 34 if deep else "  # ") + comment[1])
    return "\n".join(lines + (["", epilog.strip()] if epilog else []))


def run(main, config_class, doc, epilog=""):
    """A script's __main__: --help prints its usage; otherwise main(argv), whose return value is the exit status.
    Errors a user can mend are one line; so is a closed pipe (| head), which ends quietly."""
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")  # a log in a file is whole to its last line
    argv = sys.argv[1:]
    try:
        if "--help" in argv or "-h" in argv:
            print(usage(config_class, doc, epilog))
            sys.exit(0)
        status = main(argv)  # (train.py's main returns its test metrics)
        sys.exit(status if isinstance(status, int) else 0)
    except BrokenPipeError:  # the reader stopped reading: we stop too, without a word
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush would fail again)
        sys.exit(1)
    except (FileNotFoundError, ValueError, OSError, FloatingPointError) as e:
        # a DataLoader worker's error arrives with its traceback as text: its last line is the message
        message = (str(e).strip() or type(e).__name__).splitlines()[-1]
        sys.exit("error: " + re.sub(r"^\w+Error: ", "", message))
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(getattr(e, "code", None) or 130)  # a run stopped by a signal exits as the signal would have it


def resolve_device(name):
    """The --device option of every script: auto (cuda when there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name != "cpu" and not m:
        raise ValueError(f"--device={name}: expected auto, cpu, cuda or cuda:N")
    if m and int(m[1] or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    return name
