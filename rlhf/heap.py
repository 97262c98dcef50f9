"""The run's long-lived objects and Python's cyclic garbage collector.

A run imports torch and transformers (about 370,000 tracked Python objects) and keeps them,
and each stage's models, to its end. Python's collector re-scans every one of them at each
full collection, and once more when the interpreter exits: on the quickstart about 1.1 s at
exit and a few tenths of a second of full collections during the run
(``bench/quickstart_time.py`` times both; ``--gc-as-before`` without these freezes).
``gc.freeze()`` moves the objects that exist now out of the collector's sight: they are still
freed by reference counting, only cycles among them wait for ``gc.unfreeze()``.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

_depth = 0  # long_lived() blocks open in this process
_frozen_before = False  # the outermost block found objects frozen by someone else


@contextmanager
def long_lived() -> Iterator[None]:
    """Collect, then freeze every object that exists now, for the block.

    Blocks nest: an inner block (a stage inside a run) freezes what was made since the outer
    one began, and only the outermost exit unfreezes, so that a process that runs many things
    (the tests, an in-process sweep) gets its garbage collected again afterwards. A caller that
    had frozen objects itself before the outermost block keeps them frozen (no unfreeze then).
    """
    global _depth, _frozen_before
    if _depth == 0:
        _frozen_before = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and not _frozen_before:
            gc.unfreeze()


def skip_exit_collection() -> None:
    """For a process about to exit: freeze everything, so that the interpreter's final full
    collection has nothing to scan. Objects are still freed by reference counting, files
    closed and atexit handlers run; only garbage cycles are left to the operating system."""
    gc.freeze()
