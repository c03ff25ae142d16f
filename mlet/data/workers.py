"""Running one function over many tasks (a build phase over segments), in this process or in
forked worker processes, with one progress bar fed by all of them."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import numpy as np

_SHARED = None  # in a worker: the shared progress array


def _init_worker(shared, pids) -> None:
    global _SHARED
    _SHARED = shared
    pids.put(os.getpid())  # so that the parent can stop this worker on a failure


class _SharedProgress:
    """Progress of task ``slot`` in the shared array: (bytes, rows)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def __call__(self, nbytes: int, rows: int) -> None:
        _SHARED[2 * self.slot] += nbytes
        _SHARED[2 * self.slot + 1] += rows


def _call(fn, args, slot):
    return fn(*args, progress=_SharedProgress(slot))


class ProgressBar:
    """A tqdm progress bar (bytes or rows) with rows/s, or nothing when progress is off."""

    def __init__(self, enabled: bool, desc: str, total: int | None, unit: str) -> None:
        self.bar = None
        self.rows = 0
        self.start = time.perf_counter()
        self.unit = unit
        if enabled:
            from tqdm.auto import tqdm

            tqdm.monitor_interval = 0  # no monitor thread (worker processes are forked)
            self.bar = tqdm(total=total, desc=desc, unit="B" if unit == "bytes" else "rows", unit_scale=True,
                            dynamic_ncols=True, leave=True, mininterval=0.5)

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is None:
            return
        self.bar.update(nbytes if self.unit == "bytes" else rows)
        if self.unit == "bytes":
            rate = self.rows / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_tasks(fn, tasks: list[tuple], workers: int, bar: ProgressBar) -> list:
    """``[fn(*task, progress=...) for task in tasks]``; in forked worker processes when
    ``workers > 1``. The first failure stops the other workers at once and is re-raised."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*t, progress=bar.update) for t in tasks]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    shared = ctx.Array("d", 2 * len(tasks), lock=False)
    pids = ctx.SimpleQueue()
    seen = np.zeros(2 * len(tasks))
    results: list = [None] * len(tasks)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                               initializer=_init_worker, initargs=(shared, pids))
    try:
        futures = {pool.submit(_call, fn, t, i): i for i, t in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.3, return_when=FIRST_EXCEPTION)
            now = np.frombuffer(shared, dtype=np.float64).copy()
            delta = now - seen
            seen = now
            bar.update(int(delta[0::2].sum()), int(delta[1::2].sum()))
            for fut in done:
                results[futures[fut]] = fut.result()  # re-raises a worker's exception
    except BaseException:
        # stop the other workers now rather than letting them finish their segments
        while not pids.empty():
            try:
                os.kill(pids.get(), signal.SIGTERM)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
