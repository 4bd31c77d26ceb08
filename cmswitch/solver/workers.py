"""Solver worker processes: the chosen segments' MIPs (`cim-allocate`'s stages 2 and 3,
`cmswitch.solver.mip.solve_segment`) solved on all local cores.

Each segment MIP is independent of the others once stage 1 has priced it, and most of
its cost is Pyomo (model build, LP file) and `glpsol` — so `cim-allocate` hands them to
a `concurrent.futures.ProcessPoolExecutor` and collects the answers in segment order
(the plan is byte-identical to an in-process run: the solves are deterministic and
nothing depends on which process ran them).

`cmswitch.api.compile` starts the workers first (`prestart`): forked before the model
is imported, each imports Pyomo (~0.4 s, `python -X importtime`) while the compile
imports the model and runs the DP — at most cores - 1 at a time, so the compile keeps
a core — and the compiling process itself never imports Pyomo.  Forked only while the
process runs one thread (a fork copies no lock another thread holds); workers ignore
Ctrl-C (the compile handles it) and exit when the compiling process is gone.

``jobs``: worker processes; 0 = ``$CMSWITCH_JOBS`` if set, else every core this
process may run on (`os.sched_getaffinity`).  One job, one segment to solve, a
platform without ``fork``, or a process already running threads solves in-process.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait

from cmswitch.errors import CMSwitchError

JOBS_ENV = "CMSWITCH_JOBS"
PRELOAD = ["pyomo.environ", "cmswitch.solver.mip"]
"""What each worker imports when it starts (Pyomo with its solver plugins, the segment
MIP)."""

_POOL: tuple[int, ProcessPoolExecutor] | None = None
"""This process's worker pool and its size: an execution resource shared by every
compile of the process (no solver state: answers are cached per compile in
`cmswitch.solver.mip.SolveCache`)."""


def local_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int = 0) -> int:
    """Worker processes for `jobs` (0: ``$CMSWITCH_JOBS``, else `local_cores`).
    Raises CMSwitchError if ``$CMSWITCH_JOBS`` is not a positive integer."""
    if jobs > 0:
        return jobs
    text = os.environ.get(JOBS_ENV, "").strip()
    if not text:
        return local_cores()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise CMSwitchError(f"{JOBS_ENV}={text!r}: must be a positive integer")
    return int(text)


def _pool(jobs: int) -> ProcessPoolExecutor | None:
    """The process's pool of `jobs` workers (started if need be), or None where
    workers are not used (see the module docstring)."""
    global _POOL
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    if _POOL is not None and _POOL[0] == jobs:
        return _POOL[1]
    shutdown()
    if threading.active_count() > 1:
        return None
    context = multiprocessing.get_context("fork")
    # the compiling process keeps one core: at most cores - 1 workers import at once
    importing = context.BoundedSemaphore(max(1, local_cores() - 1))
    _POOL = (jobs, ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                       initializer=_preload, initargs=(importing,)))
    # stopped before the interpreter tears modules down: a pool collected during
    # teardown prints "Exception ignored in ... weakref_cb" from concurrent.futures
    atexit.unregister(shutdown)
    atexit.register(shutdown)
    return _POOL[1]


def shutdown() -> None:
    """Stop this process's workers (the next solve starts new ones)."""
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=True, cancel_futures=True)
        _POOL = None


def abort() -> None:
    """Stop this process's workers at once, with the solver processes they run (each
    worker leads its own process group): after a failed solve, the solves queued or
    running for the same compile are not waited for."""
    global _POOL
    if _POOL is None:
        return
    pool = _POOL[1]
    _POOL = None
    for pid in list(getattr(pool, "_processes", {}) or {}):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    pool.shutdown(wait=True, cancel_futures=True)


def _preload(importing) -> None:
    """Worker start: lead a process group of its own (its glpsol runs go with it when
    it is stopped), leave Ctrl-C to the compiling process, exit when that is gone
    (killed: nothing else would stop an idle worker), and import `PRELOAD` while
    holding a slot of `importing`."""
    import importlib

    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    with importing:
        for name in PRELOAD:
            importlib.import_module(name)


def _exit_with(sentinel: int) -> None:
    """Block until the parent process's `sentinel` is ready (it exited), then stop
    this worker's process group: the worker and any solver it is running."""
    wait([sentinel])
    os.killpg(0, signal.SIGKILL)


def _ready() -> int:
    return os.getpid()


def prestart(jobs: int = 0) -> None:
    """Start the forkserver and its `jobs` workers in the background (returns at once):
    by the time `cim-allocate` needs them, Pyomo is imported.  Does nothing where
    workers would not be used."""
    pool = _pool(resolve_jobs(jobs))
    if pool is not None:
        for _ in range(pool._max_workers):  # one warm-up call per worker
            pool.submit(_ready)


def run_all(fn, calls: list[tuple], jobs: int = 0) -> list:
    """``[fn(*args) for args in calls]``, in that order, on the worker processes.

    `fn` and the arguments must pickle (module-level functions, plain data).  An
    exception raised by `fn` is re-raised here as it was raised (CMSwitchError
    messages are kept).  If the pool breaks (a worker killed), the calls are run
    in-process instead.  One call goes to the workers only if they are running
    already (`prestart`): the compiling process then never imports Pyomo."""
    pool = _pool(resolve_jobs(jobs)) if len(calls) > 1 or _POOL is not None else None
    if pool is None:
        return [fn(*args) for args in calls]
    futures: list[Future] = []
    try:
        futures = [pool.submit(fn, *args) for args in calls]
        return [f.result() for f in futures]
    except BrokenProcessPool:
        shutdown()
        return [fn(*args) for args in calls]
    except BaseException:
        # the first failure decides: the other solves are stopped, so an error (or
        # Ctrl-C) is not followed by every other solve running to its time limit
        abort()
        raise
