"""Run one function over many chunks of voxels on several cores: forked processes where safe, else threads.

A block fit is a few hundred numpy calls, many of them short (a row of a running sum, a 3 x 3 solve
per voxel). In threads each call takes the GIL back, and two threads fitting blocks run only about
1.2x faster than one; two processes run 1.9x faster. Forked processes inherit the input without a
copy, and write their results into a shared anonymous mapping that the parent reads: only the
chunk bounds travel between processes.
"""

from __future__ import annotations

import mmap
import multiprocessing
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

__all__ = ["use_processes", "shared_empty", "for_each_chunk", "MIN_VOXELS_FOR_PROCESSES"]

MIN_VOXELS_FOR_PROCESSES = 50_000  # below this, starting processes costs more than it saves

_job = None  # the function a forked worker runs; set by its initializer, inherited from the parent


def _start_worker(job):
    global _job
    _job = job
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # the processes are the parallelism: one BLAS thread each, no oversubscription


def _run_chunks(chunks):
    for chunk in chunks:
        _job(chunk)


def _can_fork() -> bool:
    """Linux, no other Python thread running (a child could inherit its locks held), and not inside a
    daemonic process (which may not have children)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
    )


def use_processes(workers: int, n_voxels: int) -> bool:
    """Whether :func:`for_each_chunk` should fork ``workers`` processes for ``n_voxels`` voxels."""
    return workers > 1 and n_voxels >= MIN_VOXELS_FOR_PROCESSES and _can_fork()


def shared_empty(shape, dtype=float) -> np.ndarray:
    """An uninitialised array in an anonymous shared mapping: what forked workers write there, the
    parent sees."""
    dtype = np.dtype(dtype)
    size = max(int(np.prod(shape)) * dtype.itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def for_each_chunk(job, chunks, workers: int, processes: bool) -> None:
    """Call ``job(chunk)`` for every chunk on ``workers`` cores; ``job`` writes its own results.

    With ``processes`` (see :func:`use_processes`) the workers are forked and inherit ``job``, a closure
    included, without pickling; its results must go to arrays from :func:`shared_empty`.
    """
    workers = min(int(workers), len(chunks))
    if workers <= 1:
        for chunk in chunks:
            job(chunk)
        return
    if not processes:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(job, chunks))
        return
    # a few tasks per worker, so that one slow task does not leave the other cores idle
    bounds = np.linspace(0, len(chunks), min(len(chunks), 4 * workers) + 1).astype(int)
    tasks = [chunks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with warnings.catch_warnings():
        # Python >= 3.12 warns on any fork of a process with threads (BLAS keeps some): the workers
        # run numpy alone, and _can_fork excluded other Python threads
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as pool:
            list(pool.map(_run_chunks, tasks))
