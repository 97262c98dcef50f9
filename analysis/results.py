"""The main results: one value per run and metric, then mean and 95% CI over seeds per cell.

Every number in a figure or table of the report comes from these two tables, so that the
figures' data CSVs and the tables agree by construction (and the tests check that they do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from .data import DONE, Data, latest_records, sort_key


@dataclass(frozen=True)
class Metric:
    name: str  # column name in the tables
    label: str  # axis label (with units)
    short: str  # table header (LaTeX-safe after escaping)
    higher_is_better: Optional[bool]


METRICS = [
    Metric("gold_reward", "gold_reward\n(labeler score)", "Gold reward", True),
    Metric("rm_score", "rm_score\n(reward model)", "RM score", True),
    Metric("kl", "KL(π‖π_SFT)\n(nats)", "KL (nats)", None),
    Metric("mc1", "TruthfulQA MC1\n(accuracy)", "MC1", True),
    Metric("mc2", "TruthfulQA MC2\n(prob. mass)", "MC2", True),
    Metric("expected_max_toxicity", "exp. max. toxicity\n(probability)", "Exp. max. tox.", False),
    Metric("toxicity_probability", "toxicity prob.\n(fraction)", "Tox. prob.", False),
    Metric("lm_loss_delta", "Δ LM loss vs SFT\n(nats/token)", "Δ LM loss", False),
    # the toy world's bias probe (rlhf.stats.stereotype_bias): 0 = unbiased
    Metric("stereotype_bias", "stereotype bias\n(group − control rate)", "Stereo. bias", None),
]
METRIC = {m.name: m for m in METRICS}
# eval records behind the metrics (final policy "ppo"; toxicity on the challenging prompts)
EVAL_METRICS = {
    "mc1": ("truthfulqa", "mc1", None, "value"),
    "mc2": ("truthfulqa", "mc2", None, "value"),
    "expected_max_toxicity": ("toxicity", "expected_max_toxicity", "challenging", "value"),
    "toxicity_probability": ("toxicity", "toxicity_probability", "challenging", "value"),
    "lm_loss_delta": ("regression", "lm_loss", None, "delta_vs_ref"),
    "stereotype_bias": ("overopt", "stereotype_bias", "rl", "value"),
}
SUMMARY_METRICS = {"gold_reward": "ppo.final_gold_reward", "rm_score": "ppo.final_rm_score",
                   "kl": "ppo.final_kl"}
FINAL_CHECKPOINT = "ppo"


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def run_metrics(data: Data) -> pd.DataFrame:
    """One row per run (every run, whatever its state): run_id, state, error, the varying
    config keys, seed, and each metric of METRICS (NaN where the run has none)."""
    runs = data.runs
    conds = data.conditions
    cols = ["run_id", "state", "error"] + conds + (["seed"] if "seed" in runs.columns else [])
    out = runs[cols].copy()
    for m, col in SUMMARY_METRICS.items():
        out[m] = runs[col].map(_num) if col in runs.columns else math.nan
    recs = latest_records(data.records)
    if not recs.empty:
        recs = recs[recs["checkpoint_label"] == FINAL_CHECKPOINT]
    for m, (suite, metric, subset, field) in EVAL_METRICS.items():
        vals = {}
        if not recs.empty and field in recs.columns:
            sel = recs[(recs["suite"] == suite) & (recs["metric"] == metric)]
            if subset is not None:
                sel = sel[sel["subset"] == subset]
            vals = dict(zip(sel["run_id"], sel[field].map(_num)))
        out[m] = out["run_id"].map(vals).astype(float)
    # the PPO stage's own held-out LM loss when the run has no regression eval
    if {"ppo.heldout_lm_loss_final", "ppo.heldout_lm_loss_sft"} <= set(runs.columns):
        fallback = runs["ppo.heldout_lm_loss_final"].map(_num) - runs["ppo.heldout_lm_loss_sft"].map(_num)
        out["lm_loss_delta"] = out["lm_loss_delta"].fillna(fallback)
    # and its held-out line's stereotype bias when the run has no overopt eval (NaN in old runs)
    if "ppo.heldout_ppo.stereotype_bias" in runs.columns:
        out["stereotype_bias"] = out["stereotype_bias"].fillna(runs["ppo.heldout_ppo.stereotype_bias"].map(_num))
    out["has_eval"] = out["run_id"].isin(set(data.records["run_id"])) if len(data.records) else False
    return out


def _present(values) -> np.ndarray:
    """The values that are there (not None, not NaN), as floats."""
    return np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)


def t_ci(values) -> tuple[float, float, float, int]:
    """(mean, 95% CI low, high, n) with Student's t over seeds; CI is NaN for n < 2."""
    v = _present(values)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    from scipy import stats
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def welch_ci(a, b) -> tuple[float, float, float, float]:
    """(Δ, 95% CI low, high, df) of the difference of means of two independent samples
    (Welch's t; NaNs dropped):

        Δ = mean(b) − mean(a),   se² = s_a²/n_a + s_b²/n_b,
        df = se⁴ / ((s_a²/n_a)² / (n_a − 1) + (s_b²/n_b)² / (n_b − 1)),   CI = Δ ± t(0.975, df)·se

    with s² the sample variances (ddof 1). The CI is NaN when either sample has fewer than 2
    values; when both are constant (se = 0) it is [Δ, Δ] and df is infinite."""
    a, b = _present(a), _present(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan, math.nan
    d = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d, math.inf
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy import stats
    half = float(stats.t.ppf(0.975, df) * se)
    return d, d - half, d + half, float(df)


def state_summary(states) -> str:
    """'2/2 done', or '1/3 done; 1 diverged, 1 running'."""
    states = list(states)
    done = sum(s == DONE for s in states)
    other: dict[str, int] = {}
    for s in states:
        if s != DONE:
            other[s] = other.get(s, 0) + 1
    text = f"{done}/{len(states)} done"
    if other:
        text += "; " + ", ".join(f"{n} {s}" for s, n in sorted(other.items()))
    return text


def aggregate(per_run: pd.DataFrame, by: list[str], metrics: Optional[list[str]] = None) -> pd.DataFrame:
    """Mean and 95% CI over the done runs of each group of ``by``; ``runs`` says how many runs
    the group has in each state (runs that are not done are counted, never averaged)."""
    metrics = metrics or [m.name for m in METRICS]
    rows = []
    keyed = per_run.copy()
    for k in by:
        keyed[k] = keyed[k].map(lambda v: "none" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    groups = keyed.groupby(by, sort=False, dropna=False) if by else [((), keyed)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        done = g[g["state"] == DONE]
        row["runs"] = state_summary(g["state"])
        row["n_done"] = len(done)
        row["n_runs"] = len(g)
        for m in metrics:
            mean, lo, hi, n = t_ci(done[m].tolist())
            row[m] = mean
            row[f"{m}_ci_low"] = lo
            row[f"{m}_ci_high"] = hi
            row[f"{m}_n"] = n
        rows.append(row)
    out = pd.DataFrame(rows)
    if by and len(out):
        order = sorted(range(len(out)), key=lambda i: tuple(sort_key(out.iloc[i][k]) for k in by))
        out = out.iloc[order].reset_index(drop=True)
    return out


def main_table(data: Data, per_run: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Mean and 95% CI over seeds for each cell of the sweep (the varying config keys)."""
    per_run = run_metrics(data) if per_run is None else per_run
    return aggregate(per_run, data.conditions)

