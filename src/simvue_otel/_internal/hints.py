"""Commands printed as hints ("send them with: simvue-otel send --cache DIR"), written so that
they work when pasted into a POSIX shell: the program named as that shell can reach it, and
every argument quoted, with paths made absolute so the working directory does not matter."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["command", "program"]

PROGRAM = "simvue-otel"


def program() -> str:
    """This installation's ``simvue-otel`` as a shell reaches it: by name when ``PATH`` finds
    this very script; else by the full path of the script installed beside the interpreter (a
    virtual environment used without activating it, as the README does); else by name when
    ``PATH`` finds one; else through the interpreter (``python -m simvue_otel``)."""
    found = shutil.which(PROGRAM)
    beside = Path(sys.executable).parent / PROGRAM if sys.executable else None
    if beside is not None and beside.is_file():
        if found and _same_file(found, beside):
            return PROGRAM
        return shlex.quote(str(beside.absolute()))
    if found or not sys.executable:
        return PROGRAM
    return f"{shlex.quote(sys.executable)} -m simvue_otel"


def command(*args: str | Path) -> str:
    """``simvue-otel ARGS...`` as one pasteable line; :class:`~pathlib.Path` arguments are
    made absolute, since the command may be pasted in another directory."""
    words = [str(a.absolute()) if isinstance(a, Path) else a for a in args]
    return " ".join([program(), *(shlex.quote(w) for w in words)])


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
