"""
The command line of every script, in one grammar: options against the script's config dataclass.

    python train.py --dataset=peta --batch_size=64 --compile
    python train.py --dataset peta --batch_size 64 --compile=True     # the same

`--key=value` and `--key value` are the same option. A value is read as a literal of the field's type: strings need
no quotes, bools are True or False (yes, no, 1 and 0 too), numbers are numbers. A bool option alone (`--resume`) means True,
and it takes the next argument only when that is a bool, so `sample.py --json img.jpg` still reads img.jpg as an image.
The options that name files or folders (the dataclass's PATHS) get ~ expanded. `--help` prints the options with
their defaults and the comments beside the fields, read off the dataclass's source, so the help and the code cannot
disagree.

`run` is every script's __main__. What a user can mend (a bad option, a missing or corrupt file, a wrong dataset, no
network) is raised as a `UserError` and ends in one line, "error: ...", and exit status 1; so does an error of the
file system that names its file (permission denied, no space left). Anything else is a bug of ours and keeps its
traceback. Ctrl-C ends in "interrupted" and status 130.
"""
import ast
import dataclasses
import inspect
import os
import re
import sys

EXPECTED = {bool: "True or False (or yes, no, 1, 0)", int: "an integer", float: "a number"}
BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


class UserError(ValueError):
    """An error the user can mend: its message is one line that names the file or value and what was expected."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named, or that a dataset needs, is not there."""


def worker_count(workers):
    """--workers, at most one DataLoader process per core this process may run on: more only wait on each other."""
    return min(workers, len(os.sched_getaffinity(0)))


def script_of(config_class):
    module = sys.modules[config_class.__module__]
    return os.path.basename(getattr(module, "__file__", None) or config_class.__module__ + ".py")


def split_args(argv, config_class):
    """({field: value} of the options in argv, checked against the fields of config_class; the other arguments)."""
    types = {f.name: f.type for f in dataclasses.fields(config_class)}
    paths = getattr(config_class, "PATHS", ())
    overrides, rest, args = {}, [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            rest.append(os.path.expanduser(arg))
            continue
        key, eq, text = arg[2:].partition("=")
        if key not in types:
            raise UserError(f"unknown option --{key}; valid options: {', '.join(types)}")
        if not eq and types[key] is bool:  # a bool alone is True; it takes the next argument only if that is a bool
            text = args.pop(0) if args and args[0].lower() in ("true", "false", "yes", "no") else "True"
        elif not eq:
            if not args or args[0].startswith("--"):
                raise UserError(f"--{key}: expected a value, --{key}=VALUE or --{key} VALUE")
            text = args.pop(0)
        try:
            value = text if types[key] is str else BOOLS.get(text.lower()) if types[key] is bool else \
                ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if types[key] is float and type(value) is int:
            value = float(value)
        if type(value) is not types[key]:
            raise UserError(f"--{key}={text}: expected {EXPECTED.get(types[key], types[key].__name__)}")
        overrides[key] = os.path.expanduser(value) if key in paths else value
    return overrides, rest


def parse_overrides(argv, config_class):
    """{field: value} of the options in argv, for a script that takes no other arguments."""
    overrides, rest = split_args(argv, config_class)
    if rest:
        raise UserError(f"bad argument {rest[0]!r}: expected --key=value or --key value (python "
                        f"{script_of(config_class)} --help lists the options)")
    return overrides


def parse(argv, config_class, positional=False):
    """config_class with the options of argv applied; with positional=True, (config, the other arguments), for the
    scripts that take file names (sample.py's images)."""
    if positional:
        overrides, rest = split_args(argv, config_class)
        return config_class(**overrides), rest
    return config_class(**parse_overrides(argv, config_class))


def usage(config_class, doc, epilog=""):
    """The script's docstring, then one line per option: --name=default and the field's comment; a comment on a line
    of its own (a section heading, or a comment's second line) is kept where it stands."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    lines = [doc.strip(), "", "options (--key=value or --key value; a bool alone is True):"]
    for line in inspect.getsource(config_class).splitlines()[1:]:
        field = re.match(r"\s*(\w+): [\w.]+ = [^#]*?(?:# (.*))?$", line)
        comment = re.match(r"\s*# (.*)", line)
        if field and field[1] in defaults:
            option = f"  --{field[1]}={defaults[field[1]]}"
            if len(option) >= 34 and field[2]:  # a long default: its comment on the next line, in the column
                option += "\n" + " " * 34
            lines.append((option.ljust(34) + (field[2] or "")).rstrip())
        elif comment:
            deep = len(line) - len(line.lstrip()) > 4  # a field comment's second line, aligned under the first
            lines.append((" " * 34 if deep else "  # ") + comment[1])
    return "\n".join(lines + (["", epilog.strip()] if epilog else []))


def one_line(e):
    """The message of a UserError. One raised in a DataLoader worker arrives with its traceback as text: its last line
    is "module.Class: message"."""
    lines = (str(e).strip() or type(e).__name__).splitlines()
    return re.sub(r"^[\w.]+: ", "", lines[-1]) if len(lines) > 1 else lines[0]


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
    except UserError as e:
        sys.exit("error: " + one_line(e))
    except OSError as e:
        if e.filename is None:  # not about a file of the user's: a bug of ours, with its traceback
            raise
        sys.exit(f"error: {e.filename}: {e.strerror or e}")
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(getattr(e, "code", None) or 130)  # a run stopped by a signal exits as the signal would have it


def resolve_device(name):
    """The --device option of every script: auto (cuda when there is one), cpu, cuda or cuda:N."""
    import torch  # here, not at the top: the exported model's loop (onnx_decode.py) uses this file without torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name != "cpu" and not m:
        raise UserError(f"--device={name}: expected auto, cpu, cuda or cuda:N")
    if m and int(m[1] or 0) >= torch.cuda.device_count():
        raise UserError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    return name


def save_atomic(path, write, tmp=None):
    """Writes a file through write(f) to path + ".tmp" (or `tmp`), flushed to disk, then renamed over path: a crash
    leaves the old file or the new one, never half of one, and a failed write (a full disk) leaves no temporary file."""
    tmp = tmp or path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = e  # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise UserError(f"cannot write {path} ({cause.strerror or cause}); the previous file, if any, is unchanged") from None
