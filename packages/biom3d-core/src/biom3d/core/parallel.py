"""Run a function over items in worker processes with a progress bar, keeping results in input order.

``workers <= 1`` runs in-process (easier to debug, no start-up cost). Workers are spawned, not forked:
forking a process that already started torch threads can deadlock. A pool can be shared by several maps
so that workers start (and import torch) once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A spawned process pool of ``workers`` processes, or None to run in-process."""
    if workers <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        yield pool


def parallel_map(fn: Callable[..., T], items: Sequence[Any], *, args: Iterable[Any] = (), pool: Executor | None = None,
                 desc: str = "", progress: bool = True) -> list[T]:
    from tqdm.auto import tqdm

    args = tuple(args)
    results: list[Any] = [None] * len(items)
    with tqdm(total=len(items), desc=desc, disable=not progress, unit="img", dynamic_ncols=True) as bar:
        if pool is None or len(items) <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item, *args)
                bar.update()
            return results
        futures = {pool.submit(fn, item, *args): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update()
    return results


def _init_worker() -> None:
    """One thread per worker; set before torch or numpy's BLAS is imported in the worker, so it holds."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
