"""Where an output came from: package version, git commit, command line and the inputs' content hashes.

Every command of both packages writes this beside its results (fit.json, run.json, embeddings'
parquet metadata, metrics.json), so that a number in a paper can be traced to the code and the exact
input files that made it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["file_digest", "git_commit", "command_line", "invoked", "provenance"]

_DIGESTS: dict = {}


def file_digest(path) -> str:
    """SHA-1 of a file's bytes (hex), remembered per (path, size, mtime) within a process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree the packages run from (with ``+dirty`` for uncommitted changes),
    or None outside a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


_INVOKED: list = []  # (prog, argv) of the command the CLI runner is running, if any


def command_line(prog: str) -> str:
    """``python -m PROG ARGS`` of the command being run (the CLI runner records it, also when its
    ``main`` is called from Python), else ``(Python API)``."""
    if _INVOKED and _INVOKED[-1][0] == prog:
        return shlex.join(["python", "-m", prog] + list(_INVOKED[-1][1]))
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in (prog, f"{prog}.__main__"):
        return shlex.join(["python", "-m", prog] + sys.argv[1:])
    return "(Python API)"


@contextlib.contextmanager
def invoked(prog: str, argv):
    """Within the block, :func:`command_line` reports ``python -m prog argv``."""
    _INVOKED.append((prog, [str(a) for a in argv]))
    try:
        yield
    finally:
        _INVOKED.pop()


def provenance(prog: str, inputs: dict | None = None, *, command: bool = True) -> dict:
    """``{"package", "version", "git_commit", "command", "inputs_sha1"}`` for an output of ``prog``;
    ``inputs`` ``{name: path}`` (files only; None values and non-files are left out). ``command=False``
    withholds the command line (its paths may name patients, as with ``--hash-ids``)."""
    from . import __version__

    files = {name: str(p) for name, p in (inputs or {}).items() if p is not None and Path(str(p)).is_file()}
    return {"package": prog, "version": __version__, "git_commit": git_commit(),
            "command": command_line(prog) if command else "(withheld: --hash-ids)",
            "inputs_sha1": {name: file_digest(p) for name, p in files.items()}}
