"""Experiment trackers: TensorBoard and Weights & Biases (``logging.report_to``).

A tracker mirrors ``metrics.jsonl``: every row a stage appends there (pretrain, SFT through
its Trainer callback, the reward model, PPO's log phase) is also given to :func:`log`, and
each numeric field goes to the tracker as a scalar under the same name (``loss``,
``rm_score``, ``kl``...), at the row's ``step``. One tracker run per stage that logs (opened at
its first row: a skipped stage leaves none):

* ``tensorboard``: event files under ``<run>/tracking/tensorboard/<stage>/``
  (``torch.utils.tensorboard.SummaryWriter``; needs the ``tensorboard`` package);
* ``wandb``: one W&B run per stage (name ``<run name>/<stage>``, group ``<run name>``,
  project ``logging.wandb_project``), files under ``<run>/tracking/``; ``WANDB_MODE=offline``
  works without a network (``wandb sync`` uploads later).

PPO also gives the first ``logging.n_samples`` rollouts (prompt, response, rm_score,
ppo_reward, gold_reward in the toy world) of every ``logging.sample_every``-th iteration to
:func:`samples`, as text. Every rollout of every iteration is in ``ppo/samples.jsonl.gz``
regardless of trackers.

The pipeline opens one tracker per stage (:func:`stage`), on the process that writes the run
directory only; the stages call the module-level :func:`log` and :func:`samples`, which do
nothing when no tracker is open. A resumed PPO stage logs again the iterations after its
checkpoint (as ``metrics.jsonl`` does): TensorBoard is told to hide the earlier attempt's
events from that step on (:func:`resume_from`), so each step shows once; with ``ppo.rounds``
> 1 it is not (the reward model's rounds log under PPO's tracker at their own step numbers, and
a purge would hide the rounds finished before the checkpoint), and those steps show twice, as
they do in W&B, where each attempt is a run of its own. A stage that
starts from nothing (a first run, ``--force``, a redo after a config change, an interrupted
stage other than PPO, a PPO stage with no checkpoint to resume from) first moves the event
files of its earlier attempt aside, to ``tensorboard/<stage>.before-<UTC time>/`` (kept,
shown as a run of its own), so the ``<stage>`` curves are this attempt's only.
Trackers are never part of a result: ``logging.*`` keys are left out of config checks and
stage hashes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from .errors import ConfigError
from .rundir import append_jsonl

TRACKERS = ("tensorboard", "wandb")
_INSTALL = {"tensorboard": "pip install tensorboard   (or: pip install -e '.[tensorboard]')",
            "wandb": "pip install wandb   (or: pip install -e '.[wandb]')"}
_MODULE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def requested(cfg) -> list[str]:
    """The trackers ``logging.report_to`` names (empty entries dropped, order kept, once each)."""
    return list(dict.fromkeys(x for x in cfg.logging.report_to if x))


def check_available(cfg) -> None:
    """Raise ConfigError (exit 2) naming ``logging.report_to`` and the pip command when a
    requested tracker's package is not installed: checked before any compute."""
    for name in requested(cfg):
        if name not in TRACKERS:
            raise ConfigError(f"logging.report_to: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(_MODULE[name]) is None:
            raise ConfigError(f"logging.report_to={','.join(requested(cfg))}: the '{_MODULE[name]}' package is not "
                              f"installed: {_INSTALL[name]}; or drop {name} from logging.report_to")


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The fields of a metrics row that a tracker plots: finite numbers (not booleans), under
    their own names (``prefix`` + name); ``step`` is the x axis, not a scalar."""
    out = {}
    for k, v in row.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        if math.isfinite(float(v)):
            out[prefix + k] = float(v)
    return out


class Tracker:
    """The trackers of one stage; :meth:`log` a metrics row, :meth:`text` a table of samples."""

    def __init__(self, cfg, run_path: Path, stage: str, fresh: bool = True):
        self.writers: list[str] = []
        self.cfg, self.run_path, self.stage, self.fresh = cfg, Path(run_path), stage, fresh
        self.sample_every = cfg.logging.sample_every
        self.n_samples = cfg.logging.n_samples
        self.started = False
        self.purge_step: Optional[int] = None  # resumed at this step: see resume_from()

    def start(self) -> None:
        """Open the trackers, at the first row: a stage that logs nothing (skipped) leaves none."""
        if self.started:
            return
        self.started = True
        cfg, stage = self.cfg, self.stage
        names = requested(cfg)
        root = self.run_path / "tracking"
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter
            if self.fresh:
                set_aside(root / "tensorboard" / stage)
            self.tb = SummaryWriter(log_dir=str(root / "tensorboard" / stage), purge_step=self.purge_step)
            self.writers.append("tensorboard")
        if "wandb" in names:
            import wandb
            root.mkdir(parents=True, exist_ok=True)
            self.wb = wandb.init(project=cfg.logging.wandb_project, name=f"{cfg.name}/{stage}", group=cfg.name,
                                 job_type=stage, dir=str(root), reinit="create_new",
                                 config={"stage": stage, **_flat_config(cfg)})
            self.writers.append("wandb")

    def log(self, row: dict, prefix: str = "") -> None:
        self.start()
        vals = scalars(row, prefix)
        step = int(row.get("step", 0))
        if "tensorboard" in self.writers:
            for k, v in vals.items():
                self.tb.add_scalar(k, v, step)
        if "wandb" in self.writers:
            self.wb.log({**vals, "step": step})

    def text(self, step: int, rows: list[dict], tag: str = "samples") -> None:
        if not rows:
            return
        self.start()
        cols = list(dict.fromkeys(k for r in rows for k in r if k not in ("step", "rank")))
        if "tensorboard" in self.writers:
            def cell(v):
                s = f"{v:.4g}" if isinstance(v, float) else str(v)
                return s.replace("|", "\\|").replace("\n", "<br>")
            md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
            md += "".join("| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |\n" for r in rows)
            self.tb.add_text(tag, md, step)
        if "wandb" in self.writers:
            import wandb
            table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
            self.wb.log({tag: table, "step": step})

    def close(self) -> None:
        if "tensorboard" in self.writers:
            self.tb.close()
        if "wandb" in self.writers:
            self.wb.finish()
        self.writers = []


def _flat_config(cfg) -> dict:
    from .config import flatten
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in flatten(cfg).items()}


def fresh_start() -> None:
    """The running stage starts from nothing after all (PPO with no checkpoint it can resume
    from): its tracker moves the earlier attempt's files aside when it opens."""
    if _active is not None and not _active.started:
        _active.fresh = True


def resume_from(step: int) -> None:
    """The running stage resumes from a checkpoint taken before ``step`` (PPO): what an earlier
    attempt logged at ``step`` and after is logged again, so TensorBoard is told to hide the
    earlier events from ``step`` on (``SummaryWriter(purge_step=...)``), as metrics.jsonl drops
    those rows. A W&B stage is a new W&B run at each attempt. Called before the stage's first
    row (a tracker already writing cannot purge: a warning says so)."""
    if _active is None:
        return
    if _active.started:
        print(f"[{_active.stage}] warning: the tracker was already writing when the stage resumed at step {step}: "
              "TensorBoard may show the steps after it twice", file=sys.stderr)
        return
    _active.purge_step = step


def set_aside(folder: Path) -> Optional[Path]:
    """Rename a non-empty ``folder`` (an earlier attempt's event files) to
    ``<folder>.before-<UTC time>`` (a counter added if that exists); returns the new path."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dst, n = folder.with_name(f"{folder.name}.before-{stamp}"), 1
    while dst.exists():
        n += 1
        dst = folder.with_name(f"{folder.name}.before-{stamp}-{n}")
    os.replace(folder, dst)
    return dst


_active: Optional[Tracker] = None


@contextlib.contextmanager
def stage(cfg, run_path: Path, name: str, writer: bool = True, fresh: bool = True) -> Iterator[Optional[Tracker]]:
    """The tracker of stage ``name`` while the stage runs (None when ``logging.report_to`` is
    empty or this process does not write the run directory); closed after it, in any case.
    ``fresh``: the stage starts from nothing, so an earlier attempt's TensorBoard files are
    moved aside (:func:`set_aside`) before the first row; PPO opens with False and calls
    :func:`fresh_start` when it finds no checkpoint to resume from."""
    global _active
    if not writer or not requested(cfg):
        yield None
        return
    _active = Tracker(cfg, run_path, name, fresh)
    try:
        yield _active
    finally:
        tr, _active = _active, None
        tr.close()


def metrics(path, row: dict, prefix: str = "", fsync: bool = True) -> None:
    """Record one metrics row: appended to ``path`` (a stage's ``metrics.jsonl``) and given
    to the open tracker under the same names; the one writer of training metrics."""
    append_jsonl(path, row, fsync=fsync)
    log(row, prefix)


def log(row: dict, prefix: str = "") -> None:
    """Give one ``metrics.jsonl`` row to the open tracker (if any)."""
    if _active is not None:
        _active.log(row, prefix)


def samples(step: int, rows: list[dict]) -> None:
    """PPO: the first ``logging.n_samples`` rollouts of every ``logging.sample_every``-th
    iteration (and of iteration 0) go to the open tracker as a text table ``samples``."""
    if _active is None or _active.n_samples == 0 or step % _active.sample_every:
        return
    _active.text(step, rows[: _active.n_samples])
