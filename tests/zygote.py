"""The tests' launcher of scripts: a process that imports torch and the other libraries once, then forks a child for
each `python script.py args` a test runs (conftest.start_script). The child is a process of its own (its own pid,
session, exit status and signals) with the working directory, environment and command line asked for, its stdout and
stderr going to files (made empty by the asker, so that they are there as soon as the child is); it runs the script as
`python script.py` does, as __main__ with the script's folder first on sys.path, and ends as the interpreter would.
What it skips is the interpreter's start and those imports: about 2.5 s of CPU for torch, 5 s with torch._dynamo
(which a training run imports with its optimizer), most of what a script the tests run for a second costs. Our own
modules are not imported here: each child imports them afresh.

Requests come on stdin, one JSON object a line ({"id", "argv", "cwd", "env", "stdout", "stderr"}: paths for the two);
answers go to stdout, one JSON object a line: {"id", "pid"} once a child is started, {"exit": pid, "status"} once it
has ended (a negative status: killed by that signal, as subprocess reports it). The zygote works on one thread (a fork
copies no other thread's half-held lock); SIGCHLD wakes it."""
import atexit
import json
import os
import runpy
import select
import signal
import sys
import threading

import numpy  # noqa: F401
import PIL.Image  # noqa: F401
import scipy.io  # noqa: F401
import torch  # noqa: F401
import torch._dynamo  # noqa: F401
import torchvision.transforms  # noqa: F401


def open_streams():
    # the standard streams as a new interpreter opens them on files: stdout block-buffered, stderr line-buffered with
    # backslashreplace, the encoding and stdout's error handler from PYTHONIOENCODING, written through under
    # PYTHONUNBUFFERED
    encoding, _, errors = os.environ.get("PYTHONIOENCODING", "").partition(":")
    encoding, errors = encoding or sys.stdout.encoding, errors or sys.stdout.errors
    through = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, errors=errors, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, errors=errors, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False)
    sys.stdout.reconfigure(write_through=through)
    sys.stderr.reconfigure(line_buffering=True, write_through=through)


def child(request, wakeup):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in wakeup:
        os.close(fd)
    os.setsid()  # as subprocess's start_new_session: a test that times out kills the child's whole group
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    open_streams()
    script = os.path.abspath(request["argv"][0])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as e:  # as the interpreter ends on sys.exit(code)
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException:  # an uncaught exception: its traceback from the script's first frame on, status 1
        kind, e, tb = sys.exc_info()
        while tb.tb_next and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        sys.excepthook(kind, e.with_traceback(tb), tb)
        status = 1
    # what the interpreter does at its exit: wait for the threads that are not daemons, run the atexit functions,
    # flush stdout and stderr (a failed flush of stdout: status 120)
    threading._shutdown()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except Exception:
        status = 120
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(status)


def say(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    wakeup = os.pipe()
    for fd in wakeup:
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that the wakeup fd hears of it
    signal.set_wakeup_fd(wakeup[1])
    pending = b""
    while True:
        ready, _, _ = select.select([0, wakeup[0]], [], [])
        if wakeup[0] in ready:
            try:
                while os.read(wakeup[0], 4096):
                    pass
            except BlockingIOError:
                pass
        while True:  # every child that has ended, whatever woke us
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            say({"exit": pid, "status": os.waitstatus_to_exitcode(wait_status)})
        if 0 in ready:
            data = os.read(0, 1 << 16)
            if not data:  # the tests are done
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    try:
                        child(request, wakeup)
                    finally:
                        os._exit(1)  # (child never returns: this only keeps a bug above from running the loop)
                say({"id": request["id"], "pid": pid})


if __name__ == "__main__":
    main()
