"""Every error the harness raises on purpose, in one tree rooted at :class:`InputError`.

    InputError              bad input from the user: the command exits with status 2
      ConfigError           a config key, sweep file or eval setting; the message names the key
      DataError             a data file or dataset that is missing, empty or unusable
      SourceError           a model source that cannot be resolved
      Diverged              NaN/inf in a loss or reward (also a FloatingPointError); `rlhf run`
                            marks the run 'diverged' and exits 1

Subcommands derive their own errors from these (``eval``'s settings, scorer and task errors,
``sweep``'s cluster errors, ``report``'s input errors), so one ``except InputError`` catches
every expected failure.
"""

from __future__ import annotations

import math
from typing import Optional


class InputError(ValueError):
    """Bad input from the user (config, data, model path): reported with exit status 2."""


class ConfigError(InputError):
    """A configuration problem; the message names the offending key."""


class DataError(InputError):
    """Missing, empty or unusable data; the message names the file (and line)."""


class SourceError(InputError):
    """A model source that cannot be resolved (not a model, missing package, ...)."""


class Diverged(InputError, FloatingPointError):
    """NaN/inf in a loss or reward; carries the step and offending values. The CLI and the
    pipeline catch it before any ``InputError`` handler: the run is 'diverged', exit 1."""

    def __init__(self, message: str, step: int = -1, values: Optional[dict] = None):
        super().__init__(message)
        self.step = step
        self.values = values or {}


def check_finite(what: str, loss, step: int) -> None:
    """Raise :class:`Diverged` naming ``what`` and ``step`` when the scalar ``loss`` (a float
    or a one-element tensor) is NaN or inf: the one divergence check of pretraining and the RM."""
    value = float(loss.detach() if hasattr(loss, "detach") else loss)
    if not math.isfinite(value):
        raise Diverged(f"{what} is {value} at step {step}", step=step, values={what: value})
