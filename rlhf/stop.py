"""Cooperative stop: checkpoint at the next iteration boundary, then stop.

A signal handler must not save a model itself: it runs between two Python bytecodes of
the training loop, possibly halfway through an optimiser step. Instead it calls
:func:`request_stop`; a loop that is :func:`listening` polls :func:`requested` once per
iteration, writes its full checkpoint at that boundary and raises :class:`StopRequested`.
Re-running the same config resumes from exactly that iteration, so a preemption loses
no work beyond the iteration in flight.

``request_stop`` returns False when no loop is listening (for example during the
pretrain, SFT or reward-model stages, which are short and restart from scratch); the
caller then falls back to stopping at once. Users of this module: ``rlhf run`` on
SIGTERM / SIGUSR1, and the Slurm sweep runner on submitit's preemption signal (USR2).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator, Optional

_listeners = 0
_reason: Optional[str] = None
_exit_code = 143


class StopRequested(Exception):
    """A listening loop checkpointed at ``step`` and stopped because a stop was requested."""

    def __init__(self, reason: str, stage: str, step: int, checkpoint: str):
        super().__init__(f"{reason}: {stage} stopped at step {step}, checkpoint {checkpoint}; "
                         f"re-run the same config to resume")
        self.reason, self.stage, self.step, self.checkpoint = reason, stage, step, checkpoint
        self.exit_code = _exit_code  # 128 + the signal's number, as if it had killed the process


@contextlib.contextmanager
def listening() -> Iterator[None]:
    """Mark the enclosed loop as able to honour a stop request at its next boundary."""
    global _listeners, _reason
    _listeners += 1
    try:
        yield
    finally:
        _listeners -= 1
        if _listeners == 0:
            _reason = None


def request_stop(reason: str, exit_code: int = 143) -> bool:
    """Ask the listening loop to checkpoint and stop. False if no loop is listening."""
    global _reason, _exit_code
    if _listeners == 0:
        return False
    _reason, _exit_code = reason, exit_code
    return True


def requested() -> Optional[str]:
    """The reason of a pending stop request, or None."""
    return _reason


def clear() -> None:
    global _reason
    _reason = None


@contextlib.contextmanager
def cli_handlers() -> Iterator[None]:
    """``rlhf run``: SIGTERM and SIGUSR1 checkpoint PPO at its next iteration and exit;
    outside PPO they stop at once (``SystemExit(128 + signum)``), and the run directory
    says ``interrupted`` either way. The previous handlers come back on exit. Outside the
    main thread (where Python cannot set handlers) this does nothing."""
    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        name = signal.Signals(signum).name
        if request_stop(f"{name} received", 128 + signum):
            print(f"[stop] {name}: checkpointing at the end of this PPO iteration", file=sys.stderr, flush=True)
        else:
            raise SystemExit(128 + signum)

    sigs = [s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
