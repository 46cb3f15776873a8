"""Running a build's tasks: in this process, on a LocalCluster, or on the dask cluster at ``--scheduler``.

The only module that knows about dask: tasks carry a deterministic key and an estimated peak memory, which the
workers' ``MEM`` resource bounds (memory-aware scheduling); a task whose worker process died on each try
becomes the failure record its ``on_crash`` gives, and the others carry on.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["MEM_RESOURCE", "WORKER_DEATH_RETRIES", "Task", "dask_client", "local_cluster", "one_malloc_arena",
           "run_tasks", "single_threaded", "worker_start_method", "WorkerStartError"]

MEM_RESOURCE = "MEM"
WORKER_DEATH_RETRIES = 1
"""How often a case whose worker process died (SIGKILL, OOM killer, the nanny's memory limit) is started again
on another worker before it becomes a failed row; the local cluster's ``distributed.scheduler.allowed-failures``.
Dask's default, 3, lets one case that does not fit in memory kill four workers in a row."""


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """ITK, zarr and Blosc use one thread inside the block; their previous settings come back after it (so an
    in-process run, ``--workers 0``, leaves the caller's thread settings alone)."""
    import numcodecs.blosc
    import SimpleITK as sitk
    import zarr

    itk = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    blosc = numcodecs.blosc.use_threads
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    numcodecs.blosc.use_threads = False
    try:
        with zarr.config.set({"threading.max_workers": 1}):
            yield
    finally:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(itk)
        numcodecs.blosc.use_threads = blosc


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None, memory_per_worker: int | None = None) -> Iterator[Any]:
    """A client on the cluster at ``scheduler``, or on a new :func:`local_cluster`."""
    from distributed import Client

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with local_cluster(workers, memory_per_worker) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def local_cluster(workers: int | None = None, memory_per_worker: int | None = None) -> Iterator[Any]:
    """A LocalCluster with one single-threaded worker process per core (dashboard off, loopback only) that
    advertises its memory as the ``MEM`` resource for memory-aware scheduling.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers to hand freed memory back to the OS. That
    also freezes glibc's mmap threshold at 128 KiB, so every chunk buffer and slab temporary of a conversion is a
    fresh mmap with page faults: a 512×512×120 CT case took 2.5 s instead of 1.9 s. Our tasks hold no data
    between them, so we leave glibc's adaptive defaults in place.

    Dask's worker profiler is off: no dashboard shows it (ours has none), and the stacks it kept were half of the
    ~0.1-0.2 MiB a worker's memory grew per case. A worker's memory stays flat as cases grow when the calling
    process allocates from one malloc arena before its first thread (:func:`one_malloc_arena`; ``med3d-prep``
    does).

    A worker process that dies (killed for memory) is restarted by its nanny; the case it was converting runs
    once more elsewhere, then becomes a failed row (:data:`WORKER_DEATH_RETRIES`).

    Worker processes are forked (:func:`worker_start_method`), so they start with this process's imports. The
    settings hold for the cluster's whole life: a nanny reads them again when it restarts a worker.
    """
    import dask
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    mem = memory_per_worker or int(_total_memory() * 0.85 / n)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          "distributed.worker.profile.enabled": False,
                          "distributed.scheduler.allowed-failures": WORKER_DEATH_RETRIES,
                          "distributed.worker.multiprocessing-method": worker_start_method()}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                         memory_limit=mem, resources={MEM_RESOURCE: mem}, host="127.0.0.1") as cluster:
        yield cluster


START_METHOD_ENV = "MED3D_WORKER_START"


class WorkerStartError(ValueError):
    """``MED3D_WORKER_START`` names no start method."""


def worker_start_method() -> str:
    """How the local cluster's nannies start worker processes: ``fork`` on Linux, ``spawn`` elsewhere (fork is
    unsafe on macOS), or what ``MED3D_WORKER_START`` says (fork, spawn or forkserver).

    Dask's default, spawn, starts a fresh interpreter that imports numpy, SimpleITK, zarr and the conversion
    modules again in every worker: on 2 cores the 9-case bench build took 9.49 s with spawned workers and 8.46 s
    with forked ones, which start with the parent's imports (medians of 3 interleaved rounds; docs/DECISIONS.md,
    issue 22).
    The workers run no torch and set one ITK and Blosc thread per task, so none of the parent's thread pools is
    needed in them. A nanny restarting a dead worker forks again, from the parent as it is then.
    """
    method = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if method:
        if method not in ("fork", "spawn", "forkserver"):
            raise WorkerStartError(f"{START_METHOD_ENV}={method!r}: use fork, spawn or forkserver (or unset it)")
        return method
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _worker_memory(client) -> int | None:
    """The smallest MEM resource the workers advertise, or None when they advertise none (external cluster
    started without ``--resources MEM=...``): then tasks are submitted without resource constraints, since a
    constraint no worker satisfies would hang forever."""
    info = client.scheduler_info()
    mems = [w.get("resources", {}).get(MEM_RESOURCE) for w in info.get("workers", {}).values()]
    if not mems or any(m is None for m in mems):
        return None
    return int(min(mems))


def _progress(total: int, enabled: bool, unit: str = "case", desc: str = "convert"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True)


@dataclass(frozen=True)
class Task:
    """One unit of work for :func:`run_tasks`: ``fn(*args)`` must be a picklable top-level function that
    never raises for bad input (it returns its own failure record)."""

    key: str
    """Deterministic dask key (content-derived, e.g. source id + params hash)."""
    fn: Callable[..., Any]
    args: tuple
    memory: int
    """Estimated peak bytes, for the workers' MEM resource."""
    on_crash: Callable[[str], Any]
    """Called on the client with a message when the task itself could not run (its worker died on each try, an
    unpicklable result): returns the failure record that stands for its result."""


def _single_threaded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` with ITK, zarr and Blosc on one thread (the task body on a worker), then hand the heap
    memory it freed back to the OS (:func:`release_freed_memory`)."""
    try:
        with single_threaded():
            return fn(*args)
    finally:
        release_freed_memory()


_LIBC: Any = None
_M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the largest number of malloc arenas (malloc.h)."""


def _libc() -> Any:
    """glibc through ctypes (``malloc_trim`` and ``mallopt`` typed), or False elsewhere."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def one_malloc_arena() -> bool:
    """``mallopt(M_ARENA_MAX, 1)``: threads started from now on allocate from glibc's main arena, not from arenas
    of their own; True when glibc took it. ``med3d-prep`` calls it first thing, before any thread exists, so the
    local cluster's workers, forked from it, inherit a process with the main arena alone.

    Why: a worker converts each case on its task thread. With an arena of its own (64 MiB heaps mapped as
    needed), one bench CT's own peak was ~482 MiB in some runs and ~533 MiB in others, so a worker's peak RSS
    depended on how many cases it had run (478 -> 540 MiB from 6 to 96 CT cases). In the main arena that case
    peaked at 471-484 MiB in 16 of 16 traced rounds (``benchmarks/rss_trace.py --arena-max 1``); the task thread
    is the worker's only busy thread, so sharing the arena costs no waiting. Set in the command, not in
    :func:`local_cluster`: the setting holds for the rest of the process, which a library caller's Python should
    not get as a side effect. Does nothing where the C library is not glibc."""
    libc = _libc()
    return bool(libc) and libc.mallopt(_M_ARENA_MAX, 1) == 1


def release_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: free pages inside the heap go back to the OS. A worker keeps glibc's adaptive
    mmap threshold (see :func:`local_cluster`), so a case's large buffers come from the heap, and what one case
    freed stayed resident into the next: each worker's peak RSS grew with the number of cases it had converted
    (596-600 -> 655-682 MiB from 6 to 96 CT cases; with the trim 595 -> 633-642, benchmarks/scale_build.py). A
    few milliseconds a case; does nothing elsewhere (other C libraries, macOS)."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def run_tasks(tasks: list[Task], *, client: Any = None, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True, log: Callable[[str], None] = print, unit: str = "case",
              desc: str = "convert") -> list[Any]:
    """Run independent tasks with a progress bar; results come back in task order, exactly one per task.

    On ``client`` when given; else in this process when ``workers=0``, else on a LocalCluster or the cluster at
    ``scheduler``. On a cluster each task asks for its estimated memory as the workers' ``MEM`` resource, so a
    worker runs only what fits (a task larger than any worker runs alone).

    Worker deaths: only as many tasks are handed to the cluster as it has worker threads, so a worker holds
    just the tasks it runs. When a worker process dies, dask marks every task the worker held as suspicious and
    runs it again elsewhere; with tasks queued on the worker, cases that merely waited there would share the
    blame. A task whose worker died more often than the scheduler's ``allowed-failures`` (the local cluster:
    :data:`WORKER_DEATH_RETRIES`) gets ``on_crash`` with a message saying so; the other tasks carry on.
    """
    if not tasks:
        return []
    if client is None and not (workers == 0 and not scheduler):
        with dask_client(workers, scheduler) as own:
            return run_tasks(tasks, client=own, progress=progress, log=log, unit=unit, desc=desc)
    bar = _progress(len(tasks), progress, unit=unit, desc=desc)
    results: list[Any] = [None] * len(tasks)
    if client is None:
        for i, task in enumerate(tasks):
            results[i] = _single_threaded(task.fn, *task.args)
            bar.update(1)
        bar.close()
        return results
    from distributed import KilledWorker, as_completed

    cap = _worker_memory(client)
    if cap is None:
        log("workers advertise no MEM resource: running without memory-aware limits "
            "(start workers with `--resources MEM=<bytes>` to enable them)")

    todo = list(range(len(tasks) - 1, -1, -1))  # a stack: the first task on top
    futures: dict[Any, int] = {}
    done = as_completed()

    def submit_more() -> None:
        # The thread count is read again each time: the nanny restarts a killed worker, clusters scale.
        slots = max(1, sum(client.nthreads().values()))
        while todo and len(futures) < slots:
            i = todo.pop()
            task = tasks[i]
            kw = {}
            if cap is not None:
                if task.memory > cap:
                    log(f"{task.key}: needs ~{task.memory / 2**30:.1f} GiB, more than a worker's "
                        f"{cap / 2**30:.1f} GiB; it will run alone on a worker")
                kw["resources"] = {MEM_RESOURCE: min(task.memory, cap)}
            fut = client.submit(_single_threaded, task.fn, *task.args, key=task.key, retries=0, **kw)
            futures[fut] = i
            done.add(fut)

    submit_more()
    for fut in done:
        i = futures.pop(fut)
        try:
            results[i] = fut.result()
        except KilledWorker as exc:
            results[i] = tasks[i].on_crash(_worker_died(exc, tasks[i], cap, unit))
        except Exception as exc:  # the task could not run or its result not come back (unpicklable)
            results[i] = tasks[i].on_crash(f"could not run on the cluster: {type(exc).__name__}: {exc}")
        bar.update(1)
        fut.release()
        submit_more()
    bar.close()
    return results


def _worker_died(exc: Exception, task: Task, cap: int | None, unit: str) -> str:
    """The failed row's message for a task whose worker process died (``KilledWorker``) on each try."""
    tries = int(getattr(exc, "allowed_failures", WORKER_DEATH_RETRIES)) + 1
    need = f"~{task.memory / 2**30:.1f} GiB estimated"
    if cap is not None:
        need += f", a worker has {cap / 2**30:.1f} GiB"
    return (f"the worker process died while converting this {unit} ({tries} tries on different workers; "
            f"killed? out of memory? {need}). Nothing of it counts in the store; re-run the build to try it "
            f"again, with fewer --workers (more memory each) if it ran out of memory")
