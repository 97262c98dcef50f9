"""`rlhf sweep status` (a table of runs) and `rlhf sweep collect` (one tidy results table)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from rlhf.config import RunConfig, flatten
from rlhf.rundir import read_json, read_jsonl, results_row

from .records import RunState, all_run_ids, runs_dir, sweep_states

_CONFIG_KEYS = set(flatten(RunConfig()))
# metrics shown by `status` (the first ones a run has)
_DONE_METRICS = ("rm.heldout_accuracy", "ppo.final_rm_score", "ppo.final_gold_reward", "ppo.final_kl")
_LIVE_METRICS = ("rm_score", "gold_reward", "kl", "loss", "accuracy", "train_loss")


def _fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _metrics_text(sweep_dir: Path, st: RunState) -> str:
    rd = runs_dir(sweep_dir) / st.run_id
    if st.state == "done":
        parts = []
        for key in _DONE_METRICS:
            stage, name = key.split(".", 1)
            summ = read_json(rd / stage / "summary.json", {})
            v = summ.get(name) if isinstance(summ, dict) else None
            if v is not None:
                parts.append(f"{key}={_fmt_num(v)}")
        return " ".join(parts)
    if st.error:
        return "error: " + st.error.replace("\n", " ")[:200]
    if st.stage:
        rows = read_jsonl(rd / f"{st.stage}.tmp" / "metrics.jsonl")
        if rows:
            row = rows[-1]
            return " ".join(f"{st.stage}.{k}={_fmt_num(row[k])}" for k in _LIVE_METRICS if k in row)
    return ""


def status_table(sweep_dir: Path, include_all: bool = False) -> tuple[list[RunState], str]:
    sweep_dir = Path(sweep_dir)
    ids = all_run_ids(sweep_dir) if include_all else None
    states = sweep_states(sweep_dir, ids)
    header = ["RUN_ID", "JOB", "STATE", "RUN", "STAGE", "STEP", "RESTARTS", "LAST METRICS / ERROR"]
    rows = [[s.run_id, s.job_id or "-", s.display_state, s.state, s.stage or "-",
             "-" if s.step is None else str(s.step), str(s.restarts), _metrics_text(sweep_dir, s)]
            for s in states]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in [header] + rows]
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(f"{len(states)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return states, "\n".join(lines)


def run_row(sweep_dir: Path, st: RunState) -> dict[str, Any]:
    """One results row of a sweep's run: its Slurm accounting, then :func:`rlhf.rundir.results_row`."""
    return results_row(runs_dir(sweep_dir) / st.run_id, {
        "run_id": st.run_id, "state": st.state, "slurm_state": st.slurm_state, "error": st.error,
        "job_id": st.job_id, "restarts": st.restarts, "stage": st.stage})


def collect(sweep_dir: Path, include_all: bool = False, out: Optional[Path] = None):
    """One row per run: run_id, state, error, the resolved config (dotted keys), every stage's
    summary metrics (``rm.heldout_accuracy``, ``ppo.final_gold_reward`` ...). Written as
    ``results.parquet`` and ``results.csv`` in the sweep directory (or ``out``)."""
    import pandas as pd
    sweep_dir = Path(sweep_dir)
    ids = all_run_ids(sweep_dir) if include_all else None
    states = sweep_states(sweep_dir, ids)
    rows = [run_row(sweep_dir, s) for s in states]
    df = pd.DataFrame(rows)
    if len(df.columns):
        first = [c for c in ("run_id", "state", "slurm_state", "error", "job_id", "restarts", "stage")]
        cfg_cols = [c for c in df.columns if c in _CONFIG_KEYS]
        rest = [c for c in df.columns if c not in first and c not in _CONFIG_KEYS]
        df = df[first + cfg_cols + rest]
        for c in df.columns:  # mixed object columns (e.g. None and float) -> one type for Parquet
            if df[c].dtype == object:
                kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
                if len(kinds) > 1 or kinds - {str}:
                    if kinds <= {int, float}:
                        df[c] = pd.to_numeric(df[c])
                    else:
                        df[c] = df[c].map(lambda v: None if v is None else str(v))
    base = Path(out) if out else sweep_dir / "results"
    base.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(base.with_suffix(".parquet"), index=False)
    df.to_csv(base.with_suffix(".csv"), index=False)
    return df, base.with_suffix(".parquet"), base.with_suffix(".csv")
