"""Run one function over many chunks of voxels on several cores: forked processes where safe, else threads.

The processes are a :class:`~concurrent.futures.ProcessPoolExecutor` on the fork context: the workers
inherit the job and its input (no pickling) and take chunks from a shared counter; the first error
stops the others after their current chunk and arrives with its traceback, and a worker that dies
stops the work with a RuntimeError that says so.

A block fit is a few hundred numpy calls, many of them short (a row of a running sum, a 3 x 3 solve
per voxel). In threads each call takes the GIL back, and two threads fitting blocks run only about
1.2x faster than one; two independent processes run 1.9x faster. Forked processes inherit the input
without a copy and write their results into a shared anonymous mapping that the parent reads.

Two things cost the workers a third of their speed on a virtual machine, and are avoided here:

- with glibc's defaults a block's few 2 MB temporaries went back to the system and were faulted in
  again, about a thousand page faults per block: the workers keep the memory they free
  (:func:`_keep_freed_memory`), and this process, whose allocator is the user's, does not fit;
- OpenBLAS's threads spin for about 0.1 s after they start or work (and a fork restarts them), taking
  a core from the workers: this process holds one BLAS thread, which the workers inherit, until
  they end.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import sys
import threading
import warnings
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .errors import KineticsInputError

__all__ = ["check_engine", "choose_engine", "fork_blocker", "use_processes", "shared_zeros", "for_each_chunk", "ENGINES",
           "MIN_VOXELS_FOR_PROCESSES"]

MIN_VOXELS_FOR_PROCESSES = 50_000  # below this, starting processes costs more than it saves

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory in this process (a worker that exits when done) instead
    of returning it to the system: arrays below 32 MiB come from the heap and the heap is not trimmed.
    A no-op where the C library has no ``mallopt`` (it is a hint, not a requirement)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest allowed value
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


_JOB: tuple | None = None  # (job, chunks, counter, lock) of the running for_each_chunk: workers inherit it
_IN_WORKER = False  # True in a worker process of for_each_chunk
_LOCK_TIMEOUT_S = 60.0  # the counter is held for microseconds; this long means its holder died


def _start_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    _keep_freed_memory()


def _next_index(counter, lock, *, stop_at=None) -> int:
    """The next chunk's index (and the counter moved on), or, with ``stop_at``, the counter set there."""
    if not lock.acquire(timeout=_LOCK_TIMEOUT_S):
        raise RuntimeError("a worker process stopped while it held the chunk counter.")
    try:
        i = int(counter[0])
        counter[0] = i + 1 if stop_at is None else stop_at
    finally:
        lock.release()
    return i


def _take_chunks() -> None:
    """In a worker: run the inherited job on chunks taken one at a time from the shared counter until
    none are left; on an error, move the counter to the end first, so that the others stop."""
    job, chunks, counter, lock = _JOB
    try:
        while (i := _next_index(counter, lock)) < len(chunks):
            job(chunks[i])
    except BaseException:
        _next_index(counter, lock, stop_at=len(chunks))
        raise


ENGINES = ("auto", "processes", "threads", "serial")


def _os_threads() -> int | None:
    """Threads of this process as the kernel sees them (Linux), or None where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _foreign_threads() -> int:
    """OS threads besides this one and OpenBLAS's workers (which survive a fork: OpenBLAS has fork
    handlers): those of an OpenMP runtime, pyarrow's, and other libraries'."""
    count = _os_threads()
    if count is None:
        return 0
    from threadpoolctl import threadpool_info

    blas = sum(max(int(info.get("num_threads", 1)) - 1, 0) for info in threadpool_info()
               if info.get("internal_api") == "openblas" and info.get("threading_layer") == "pthreads")
    return max(count - 1 - blas, 0)


def _blas_on_openmp() -> str | None:
    """The threading layer of a loaded BLAS when it runs on GNU OpenMP (MKL's gnu layer, an OpenMP
    build of OpenBLAS), else None. A forked child that calls such a BLAS while the parent's
    OpenMP threads exist can wait for ever on a lock they held (GNU libgomp is not fork-safe)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        layer = info.get("threading_layer")
        if info.get("user_api") == "blas" and layer in ("gnu", "openmp"):  # Intel's libiomp has fork handlers
            return str(layer)
    return None


def fork_blocker() -> str | None:
    """Why this process should not fork workers now, or None when it may."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return f"fork is not safe on {sys.platform}"
    if multiprocessing.current_process().daemon or _IN_WORKER:
        return "this is a worker process (of dask, multiprocessing or this engine)"
    if threading.active_count() > 1:  # a child could inherit one of their locks, held
        return f"{threading.active_count() - 1} other Python thread(s) are running (Jupyter, dask, a GUI)"
    layer = _blas_on_openmp()
    if layer is not None:
        foreign = _foreign_threads()
        if foreign:
            return (f"numpy's BLAS runs on OpenMP ({layer}) and {foreign} other thread(s) are running: a forked "
                    "worker could wait for ever on a lock they hold")
    return None


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else one sentence."""
    if engine not in ENGINES:
        raise KineticsInputError(f"engine: unknown engine {engine!r}; expected one of {list(ENGINES)}.")
    return engine


def choose_engine(engine: str, workers: int, n_voxels: int, data=None) -> tuple[str, str]:
    """``(engine, why)``: the engine :func:`for_each_chunk` runs ``n_voxels`` voxels of ``data`` on.

    ``engine``: ``"auto"`` (forked processes where safe and worth it, else threads), ``"processes"``
    (refused with the reason where forking is not safe), ``"threads"``, or ``"serial"`` (this process
    alone: for debugging, or inside another parallel engine). Processes only for numpy arrays
    (memory-mapped ones included): file handles such as HDF5's may not be used across a fork.
    """
    check_engine(engine)
    if engine == "serial" or workers <= 1:
        return "serial", "asked for" if engine == "serial" else "one worker"
    if engine == "threads":
        return "threads", "asked for"
    if engine == "processes":
        if data is not None and not isinstance(data, np.ndarray):
            raise KineticsInputError("engine: processes need a numpy array (a file handle such as HDF5's must not "
                                     "cross a fork); use threads.")
        blocker = fork_blocker()
        if blocker is not None:
            raise KineticsInputError(f"engine: processes cannot be used here: {blocker}.")
        return "processes", "asked for"
    if data is not None and not isinstance(data, np.ndarray):
        return "threads", "the data is not a numpy array (a file handle must not cross a fork)"
    if n_voxels < MIN_VOXELS_FOR_PROCESSES:
        return "threads", f"{n_voxels} voxels: starting processes would cost more than it saves"
    blocker = fork_blocker()  # last: it asks the OS and threadpoolctl (milliseconds)
    if blocker is not None:
        return "threads", blocker
    return "processes", f"{n_voxels} voxels on {workers} cores"


def use_processes(workers: int, n_voxels: int, data=None) -> bool:
    """Whether :func:`for_each_chunk` should fork ``workers`` processes for ``n_voxels`` voxels of ``data``
    (``choose_engine("auto", ...)`` says processes)."""
    return choose_engine("auto", workers, n_voxels, data)[0] == "processes"


def shared_zeros(shape, dtype=float) -> np.ndarray:
    """A zero-filled array in an anonymous shared mapping: what forked workers write there, the
    parent sees."""
    dtype = np.dtype(dtype)
    size = max(int(np.prod(shape)) * dtype.itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def for_each_chunk(job, chunks, workers: int, processes: bool, on_progress=None) -> None:
    """Call ``job(chunk)`` for every chunk on ``workers`` cores; ``job`` writes its own results.

    With ``processes`` (see :func:`use_processes`) ``workers`` forked processes run the chunks while this
    one waits. They inherit ``job``, a closure included, without pickling; its results must go to
    arrays from :func:`shared_zeros`. This process does not fit, so that its memory allocator keeps its
    settings (the workers change theirs); it would not start faster anyway, as after the fork its
    writes copy pages as the workers' do. An error in any worker stops the others after their
    current chunk and is raised here. ``on_progress(n)``, if given, hears how many chunks are done
    (started, with processes).
    """
    workers = min(int(workers), len(chunks))
    if workers <= 1:
        for done, chunk in enumerate(chunks, 1):
            job(chunk)
            if on_progress is not None:
                on_progress(done)
        return
    if not processes:
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(job, chunks), 1):
                if on_progress is not None:
                    on_progress(done)
        return
    _in_processes(job, chunks, workers, on_progress)


def _in_processes(job, chunks, workers: int, on_progress) -> None:
    """:func:`for_each_chunk` on ``workers`` forked processes of a ProcessPoolExecutor, each taking
    chunks from a shared counter (the pool's own queue would need this process between chunks, and
    it competes for the cores with the workers: a linear fit ran 24-44% slower that way)."""
    from threadpoolctl import threadpool_limits

    global _JOB
    context = multiprocessing.get_context("fork")
    counter = shared_zeros((1,), np.int64)
    # the processes are the parallelism: they inherit one BLAS thread each (set here, before the fork,
    # once rather than in each child), so as not to oversubscribe the cores; and this process keeps
    # one until they are done, because OpenBLAS's idle threads spin for about 0.1 s after a change
    limits = threadpool_limits(1)
    lock = context.Lock()
    _JOB = (job, chunks, counter, lock)
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
            try:
                with warnings.catch_warnings():
                    # Python >= 3.12 warns on any fork of a process with threads (BLAS keeps some): the
                    # workers run numpy alone, and fork_blocker excluded other Python threads
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    futures = [pool.submit(_take_chunks) for _ in range(workers)]  # the workers fork here
                pending = futures
                while pending:
                    done, pending = wait(pending, timeout=0.05, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()  # a worker's error, raised here with its traceback as the cause
                    if on_progress is not None:
                        on_progress(min(int(counter[0]), len(chunks)))
            except BaseException as err:
                held = lock.acquire(timeout=1.0)  # not held: its holder died; the counter is set anyway
                counter[0] = len(chunks)  # the workers stop after their current chunk
                if held:
                    lock.release()
                if isinstance(err, BrokenProcessPool):
                    raise RuntimeError("a worker process ended abruptly (killed for memory?) before its chunks were "
                                       "done; engine='threads' runs without processes.") from err
                raise
    finally:
        _JOB = None
        limits.restore_original_limits()
