"""Reading sweeps and runs from disk into tidy pandas tables.

Inputs (each ``DIR`` of ``rlhf report DIR...``):

* a sweep directory with ``results.parquet`` (or ``results.csv``) from ``rlhf sweep collect``,
  and its run directories under ``runs/<run_id>/``;
* a results table itself (``.parquet`` or ``.csv``);
* a single run directory (``config.yaml`` + ``status.json``, see ``rlhf/rundir.py``).

This module never imports ``slurm``: it reads what ``rlhf sweep collect`` wrote.

Tables built here:

* ``runs``: one row per run: ``run_id``, ``state``, ``error``, every config key as a dotted
  column, every stage summary (``ppo.final_gold_reward``, ``rm.heldout_accuracy`` ...), and
  ``run_dir`` (where the run lives, for its metrics and eval records);
* ``records``: every eval record of every run (``eval/records.jsonl``) plus ``run_id``;
* ``curves``: every PPO metrics row (``ppo/metrics.jsonl``, or ``ppo.tmp/`` for a run that
  did not finish) plus ``run_id``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from rlhf.config import NOT_A_RESULT_KEY, InputError, RunConfig, flatten
from rlhf.rundir import RunDir, read_jsonl, results_row

# the ablation switches, in the order of the paper's panels: key -> (symbol, meaning)
SWITCHES = {
    "ppo.beta": ("β", "KL coefficient"),
    "ppo.ptx_coef": ("γ", "pretraining mix"),
    "rm.k": ("K", "responses ranked per prompt"),
    "ppo.clip_eps": ("ε", "PPO clip"),
}
CONFIG_KEYS = set(flatten(RunConfig()))
# config keys that differ between runs without being an experimental condition: the seed, and
# the keys that change no result (rlhf.config: name, out_dir, threads, device, the stages, ...)
NOT_A_CONDITION = {"seed", *NOT_A_RESULT_KEY}
DONE = "done"


class ReportInputError(InputError):
    """Bad input to ``rlhf report`` (exit status 2)."""


class NoResultsError(ReportInputError):
    """An empty directory, a sweep that was not collected, or a table without runs."""


class ForeignDirectoryError(ReportInputError):
    """A path that is neither a sweep directory, a results table nor a run directory."""


@dataclass
class Data:
    runs: pd.DataFrame
    records: pd.DataFrame
    curves: pd.DataFrame
    sources: list[str] = field(default_factory=list)

    @property
    def conditions(self) -> list[str]:
        """Config keys that vary between runs (the sweep's cells), switches first."""
        return varying_keys(self.runs)

    @property
    def switches(self) -> list[str]:
        """The ablation switches (β, γ, K, ε) that vary in the data."""
        return [k for k in SWITCHES if k in self.conditions]


# ------------------------------------------------------------------ inputs
def _is_run_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and (p / "status.json").is_file()


def run_row(run_dir: Path) -> dict:
    """One results row for a lone run directory (the columns of ``rlhf sweep collect``:
    :func:`rlhf.rundir.results_row`)."""
    st = RunDir(run_dir).status()  # torn -> unknown (with a warning), a dead holder -> interrupted
    state = st.get("state", "missing")
    return results_row(run_dir, {"run_id": Path(run_dir).name, "state": state,
                                 "error": st.get("error", "") if state != DONE else "", "stage": st.get("stage", "")})


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise ReportInputError(f"{path} is not a readable results table: {type(e).__name__}: {e}") from None


def _attach_run_dirs(df: pd.DataFrame, sweep_dir: Optional[Path]) -> pd.DataFrame:
    dirs = []
    for _, r in df.iterrows():
        cands = []
        if sweep_dir is not None:
            cands.append(sweep_dir / "runs" / str(r["run_id"]))
        if isinstance(r.get("out_dir"), str) and isinstance(r.get("name"), str):
            cands.append(Path(r["out_dir"]) / r["name"])
        found = next((c for c in cands if c.is_dir()), None)
        dirs.append(str(found) if found is not None else "")
    df = df.copy()
    df["run_dir"] = dirs
    return df


def load_results(path: str | Path) -> pd.DataFrame:
    """The runs table of one input (sweep directory, results table, or run directory)."""
    p = Path(path)
    if not p.exists():
        raise ReportInputError(f"{p} does not exist")
    if p.is_file():
        if p.suffix not in (".parquet", ".csv"):
            raise ForeignDirectoryError(f"{p} is not a results table (.parquet or .csv from `rlhf sweep collect`)")
        df = _read_table(p)
        sweep_dir = p.parent if (p.parent / "runs").is_dir() else None
    elif (p / "results.parquet").is_file() or (p / "results.csv").is_file():
        df = _read_table(p / "results.parquet" if (p / "results.parquet").is_file() else p / "results.csv")
        sweep_dir = p
    elif (p / "manifest.json").is_file():
        raise NoResultsError(f"sweep {p} has no results table yet: run `rlhf sweep collect {p}` first")
    elif _is_run_dir(p):
        df = pd.DataFrame([run_row(p)])
        df["run_dir"] = [str(p)]
        return df
    elif p.is_dir() and not any(p.iterdir()):
        raise NoResultsError(f"{p} is empty: pass a sweep directory collected with `rlhf sweep collect`, "
                             "its results.parquet, or a run directory")
    else:
        raise ForeignDirectoryError(
            f"{p} is not a sweep directory (no results.parquet / results.csv / manifest.json) nor a run "
            "directory (no config.yaml + status.json)")
    if "run_id" not in df.columns or "state" not in df.columns:
        raise ForeignDirectoryError(f"{p}: the results table has no run_id/state columns; "
                                    "is it from `rlhf sweep collect`?")
    if df.empty:
        raise NoResultsError(f"{p}: the results table has no runs")
    return _attach_run_dirs(df, sweep_dir)


def _read_records(run_dir: str) -> pd.DataFrame:
    if not run_dir:
        return pd.DataFrame()
    from rlhf_eval.suite import load_records
    df = load_records(run_dir)
    return df


def _read_curves(run_dir: str) -> tuple[pd.DataFrame, bool]:
    """(metrics rows of the PPO stage, finished?)."""
    if not run_dir:
        return pd.DataFrame(), False
    rd = Path(run_dir)
    for sub, finished in (("ppo", True), ("ppo.tmp", False)):
        rows = read_jsonl(rd / sub / "metrics.jsonl")
        if rows:
            return pd.DataFrame(rows), finished
    return pd.DataFrame(), False


def load(paths: list[str | Path]) -> Data:
    """Every input's runs, eval records and PPO curves."""
    if not paths:
        raise ReportInputError("no input: pass one or more sweep directories (or results tables, run directories)")
    tables = []
    for p in paths:
        df = load_results(p)
        df.insert(0, "source", str(p))
        tables.append(df)
    runs = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    runs["state"] = runs["state"].fillna("missing").astype(str).replace("", "missing")
    runs["error"] = runs["error"].fillna("").astype(str) if "error" in runs.columns else ""
    dup = runs["run_id"].duplicated(keep=False)
    if dup.any():  # the same run id from two inputs: keep both, but make the ids unique
        runs.loc[dup, "run_id"] = runs.loc[dup, "source"].map(lambda s: Path(s).name) + "/" + runs.loc[dup, "run_id"]
    recs, curves = [], []
    for _, r in runs.iterrows():
        rec = _read_records(r["run_dir"])
        if len(rec):
            rec = rec.copy()
            rec.insert(0, "run_id", r["run_id"])
            recs.append(rec)
        cur, _ = _read_curves(r["run_dir"])
        if len(cur):
            cur = cur.copy()
            cur.insert(0, "run_id", r["run_id"])
            curves.append(cur)
    records = pd.concat(recs, ignore_index=True) if recs else pd.DataFrame(
        columns=["run_id", "checkpoint_label", "suite", "metric", "subset", "value", "error"])
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["run_id", "step"])
    return Data(runs=runs, records=records, curves=curves_df, sources=[str(p) for p in paths])


# ------------------------------------------------------------------ conditions
def _hashable(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    return v


def varying_keys(runs: pd.DataFrame) -> list[str]:
    keys = [c for c in runs.columns if c in CONFIG_KEYS and c not in NOT_A_CONDITION]
    out = [k for k in keys if runs[k].map(_hashable).nunique() > 1]
    return [k for k in SWITCHES if k in out] + [k for k in out if k not in SWITCHES]


def fmt_value(v) -> str:
    """A switch value as text: 0.1, 1, none."""
    v = _hashable(v)
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def sort_key(v):
    """Numbers in order, then text ('none' last)."""
    v = _hashable(v)
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def latest_records(records: pd.DataFrame) -> pd.DataFrame:
    """The last successful record per (run, checkpoint, suite, metric, subset)."""
    if records.empty:
        return records
    ok = records
    if "error" in ok.columns:
        ok = ok[ok["error"].isna() | (ok["error"].astype(str) == "")]
    keys = ["run_id", "checkpoint_label", "suite", "metric", "subset"]
    return ok.drop_duplicates(keys, keep="last")
