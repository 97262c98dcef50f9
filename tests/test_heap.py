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
    assert gc.get_freeze_count() == 0
    with long_lived():
        outer = gc.get_freeze_count()
        assert outer > 0
        made_between = [Node() for _ in range(100)]
        with long_lived():
            assert gc.get_freeze_count() >= outer + 100  # the inner block freezes what came since
        assert gc.get_freeze_count() >= outer + 100  # still frozen: the outer block is open
        del made_between
    assert gc.get_freeze_count() == 0


def test_cycles_made_inside_are_collected_after_the_block():
    freed = []
    with long_lived():
        with long_lived():
            n = Node()
            weakref.finalize(n, freed.append, True)
        del n
        gc.collect()
    gc.collect()
    assert freed == [True]


def test_a_failing_block_still_unfreezes():
    try:
        with long_lived():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_freeze_count() == 0


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
