"""The one error path of the command line: every failure a user can cause is one line on stderr and exit code 2.

``run_command`` calls a command function and turns what it raises into that line:

* ``ValueError`` (with ``UserError``, ``CheckpointError``), ``FileNotFoundError`` / ``PermissionError`` and other
  ``OSError`` (a full disk, an unreadable file), ``RuntimeError`` (no GPU, out of memory) and
  ``FloatingPointError`` (NaN or Inf in the weights or the logits): ``faststar CMD: error: ...``, exit 2.
  Messages are folded to one line; a checkpoint whose keys do not match keeps its key listing under that line.
* ``KeyboardInterrupt``: ``faststar CMD: interrupted``, exit 130 (files are written atomically, so none is left).
* ``BrokenPipeError`` on stdout (``faststar generate ... | head -1``): no traceback and no message; exit 141 as a
  process ended by SIGPIPE. What was written before (the video) is complete and stays.

``FASTSTAR_DEBUG=1`` re-raises instead, to show the traceback.
"""
from __future__ import annotations

import os
import sys

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class UserError(ValueError):
    """A problem with what the user gave (a flag's value, an input file); the message names the flag or file."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (whitespace runs folded); a key-mismatch report keeps its listing."""
    from .checkpoint import KeyMismatchError
    text = str(e)
    if isinstance(e, KeyMismatchError):
        return text.rstrip()
    if isinstance(e, OSError) and e.strerror:          # not "[Errno 28] ...": the reason, and the file if named
        text = e.strerror if e.filename is None or str(e.filename) in e.strerror else f"{e.strerror}: {e.filename}"
    return " ".join(text.split()) or type(e).__name__


def _kind(e: BaseException) -> str:
    """A prefix naming the class where the class itself says something (not for plain value errors)."""
    from .checkpoint import CheckpointError
    if isinstance(e, (UserError, CheckpointError)) or type(e) is ValueError or (isinstance(e, OSError) and e.strerror):
        return ""
    if isinstance(e, FloatingPointError):
        return "numerical failure: "
    return f"{type(e).__name__}: "


def guard_std_fds() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr (``faststar generate ... >&-``): otherwise the next file
    opened (the video) would get that descriptor, and anything printed would land inside it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _quiet_stdout():
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def run_command(cmd: str, fn, args) -> int:
    """Run ``fn(args)`` and return its exit code, turning the errors a user can cause into one line."""
    try:
        rc = fn(args)
        if sys.stdout is not None:
            sys.stdout.flush()             # a closed pipe shows here, not in the interpreter's last flush
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"faststar {cmd}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        if os.environ.get("FASTSTAR_DEBUG"):
            raise
        from .checkpoint import CheckpointError
        known = (UserError, CheckpointError, OSError, FloatingPointError)
        hint = "" if isinstance(e, known) else "  (FASTSTAR_DEBUG=1 shows the traceback)"
        try:
            print(f"faststar {cmd}: error: {_kind(e)}{one_line(e)}{hint}", file=sys.stderr)
        except (OSError, ValueError):      # stderr itself closed: the exit code still tells
            pass
        return EXIT_ERROR
