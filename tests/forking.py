"""Tests of forked workers run where forking is allowed: in this process when it may fork, else again
in a fresh one, so that they never skip because an earlier test left a thread running."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

_FRESH = "KINETICS_TEST_FRESH_PROCESS"


def in_a_process_that_can_fork(test):
    """Run ``test`` here if this process may fork, otherwise as its own pytest run in a new process
    (which must pass, and must be able to fork)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        from kinetics import _pool as pool

        blocker = pool.fork_blocker()
        if blocker is None:
            return test(*args, **kwargs)
        if os.environ.get(_FRESH):
            pytest.fail(f"a fresh process cannot fork either: {blocker}")
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        root = Path(__file__).resolve().parents[1]
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node], cwd=root,
                             env=dict(os.environ, **{_FRESH: "1"}), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"in a fresh process (here: {blocker}):\n{run.stdout[-3000:]}"

    return wrapper
