"""A second thread for a CPU run's two independent halves of one step.

On a small model each kernel is too small for two intra-op threads to pay much inside it;
two independent pieces of work side by side, each on its own thread at its own thread
count, use both cores. PPO runs its separate critic's update alongside the policy's
(``ppo.parallel_critic``); pretraining runs the two halves of its batch side by side.
Torch's kernels release the GIL; the two pieces must share nothing they write, and neither
may draw from the global RNG (a draw would make the draws that follow depend on how the
threads interleave). Each side's kernels run at a fixed thread count (a thread's count is
its own), so the result is deterministic.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

import torch


class SideThread:
    """A thread of its own for one piece of work (``side_threads = threads // 2`` intra-op
    threads) while the calling thread runs the other (``main_threads``: the rest)."""

    def __init__(self, threads: int, name: str = "side"):
        self.threads = threads
        self.side_threads = max(1, threads // 2)
        self.main_threads = max(1, threads - self.side_threads)
        self._held = False  # a split() block is open (only the calling thread opens them)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=name,
                                       initializer=torch.set_num_threads, initargs=(self.side_threads,))

    @contextlib.contextmanager
    def split(self):
        """Within the block this thread has its share of the threads (``main_threads``); on
        leaving, all of them again. A loop that runs a piece alongside on every step holds the
        split for the whole loop: with the split released after each step the quickstart's
        pretraining step took 32.8 ms against 27.1 ms held (``bench/speed_ideas.py``; our
        reading: this thread's OpenMP team, woken at two threads between steps, competes with
        the side thread for its core). Blocks nest: an inner one (:meth:`alongside` under a
        loop's) changes nothing."""
        if self._held:  # an outer block holds it already
            yield
            return
        self._held = True
        torch.set_num_threads(self.main_threads)
        try:
            yield
        finally:
            self._held = False
            torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def running(self, fn, *args, **kw):
        """Within the block ``fn(*args, **kw)`` runs on the side thread; yields a function that
        waits for and returns its result. On leaving, it waits for fn (also when the block
        raised). The caller holds :meth:`split`."""
        fut = self.pool.submit(fn, *args, **kw)
        try:
            yield fut.result
        finally:
            futures_wait([fut])

    @contextlib.contextmanager
    def alongside(self, fn, *args, **kw):
        """:meth:`running` within :meth:`split`: one piece of work alongside."""
        with self.split(), self.running(fn, *args, **kw) as result:
            yield result

    def close(self) -> None:
        self.pool.shutdown(wait=True)
