"""rlhf/heap.py: the run's long-lived objects frozen out of the cyclic collector's sight."""

import gc
import subprocess
import sys
import weakref

from rlhf.heap import long_lived


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_blocks_nest_and_only_the_outermost_exit_unfreezes():
    # counts, not identities: a frozen object freed by reference counting leaves the count, so
    # what the inner block adds is checked by behaviour in the next test
    start = gc.get_freeze_count()
    with long_lived():
        outer = gc.get_freeze_count()
        assert outer > start
        with long_lived():
            pass
        assert gc.get_freeze_count() > outer // 2  # the inner exit unfroze nothing
    if start == 0:
        assert gc.get_freeze_count() == 0  # the outermost exit unfroze everything
    else:  # something earlier froze objects itself: they stay frozen
        assert gc.get_freeze_count() > 0


def test_a_cycle_frozen_by_the_inner_block_waits_for_the_outer_exit():
    freed = []
    with long_lived():
        n = Node()
        weakref.finalize(n, freed.append, True)
        with long_lived():  # freezes n
            pass
        del n
        gc.collect()
        assert freed == []  # frozen: the collector does not see it while the outer block is open
    gc.collect()
    assert freed == [True]


def test_a_failing_block_still_unfreezes():
    start = gc.get_freeze_count()
    try:
        with long_lived():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_freeze_count() == start


def test_what_the_caller_froze_before_stays_frozen():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with long_lived():
            pass
        assert gc.get_freeze_count() >= before
    finally:
        gc.unfreeze()


def test_the_command_exits_with_everything_frozen():
    # atexit handlers run after console()'s freeze and before the interpreter's final collection
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
            "sys.argv = ['rlhf', 'config', '--keys']\n"
            "from rlhf.cli import console\n"
            "console()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("frozen at exit: True")
