"""Pretraining regression (the alignment tax): held-out LM loss and perplexity on the
pretraining distribution (``rlhf.heldout.heldout_nll``, the same function as the
pretraining summary and PPO's ``heldout_lm_loss`` log), and lm-eval tasks with CIs
bootstrapped on each task's own aggregation; the suite reports each as a delta against
the run's SFT (or base) checkpoint."""

from __future__ import annotations

from typing import Sequence

def lm_task_records(lm, names: Sequence[str], limit: int = 0, seed: int = 0) -> dict[str, dict]:
    """{task: {"metrics": {metric: value}, "n", "samples": per-item values, "aggregations":
    {metric: the task's aggregation}}} for lm-eval tasks (names or local YAML paths)."""
    from .lmeval import run_tasks

    res = run_tasks(lm, list(names), limit=limit or None, seed=seed)
    return {t: {"metrics": r["metrics"], "n": len(r["samples"]), "samples": r["samples"],
                "aggregations": r.get("aggregations", {})} for t, r in res.items()}
