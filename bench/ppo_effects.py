"""The PPO-ptx effects on the toy world, over several seeds (an experiment, not a test).

For each seed: one quickstart run through the reward model, then PPO variants on it:

* default (β = 0.05, γ = 0):      rm_score, KL and, at first, gold reward rise;
* β = 0, run long:                gold reward later falls while rm_score keeps rising
                                  (reward over-optimisation);
* γ > 0 (ptx) beside γ = 0:       held-out pretraining loss regresses less.

    python bench/ppo_effects.py [--seeds 0 1 2] [--out runs/effects] [--long-steps 300] [--ptx-coef 1.0]

Prints one table per variant (mean over seeds, and per seed) and a line per claim.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf.config import load_config  # noqa: E402
from rlhf.pipeline import run_pipeline  # noqa: E402
from rlhf.rundir import read_json, read_jsonl  # noqa: E402


def base_run(out: Path, seed: int, extra: list[str]) -> Path:
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      [f"out_dir={out}", f"name=base_s{seed}", f"seed={seed}", "stages=[pretrain,sft,rm]", *extra])
    return run_pipeline(cfg)


def variant(out: Path, base: Path, seed: int, name: str, overrides: list[str], extra: list[str]) -> pd.DataFrame:
    dst = out / f"{name}_s{seed}"
    if not (dst / "ppo" / "DONE").exists():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(base, dst, ignore=shutil.ignore_patterns("ppo", "ppo.tmp"))
        (dst / "config.yaml").unlink()
        cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                          [f"out_dir={out}", f"name={name}_s{seed}", f"seed={seed}", "stages=[ppo]", *extra,
                           *overrides])
        run_pipeline(cfg)
    df = pd.DataFrame(read_jsonl(dst / "ppo" / "metrics.jsonl"))
    s = read_json(dst / "ppo" / "summary.json")
    df["variant"], df["seed"] = name, seed
    df.attrs["summary"] = s
    return df


def phases(df: pd.DataFrame) -> dict:
    """Means over the first tenth, the window of peak gold, and the last tenth."""
    n = len(df)
    w = max(1, n // 10)
    smooth = df["gold_reward"].rolling(w, min_periods=1).mean()
    peak = int(smooth.idxmax())
    first, last = df.iloc[:w], df.iloc[-w:]
    at_peak = df.iloc[max(0, peak - w + 1):peak + 1]
    return {
        "rm_first": first.rm_score.mean(), "rm_peak": at_peak.rm_score.mean(),
        "rm_last": last.rm_score.mean(),
        "gold_first": first.gold_reward.mean(), "gold_peak": at_peak.gold_reward.mean(),
        "gold_last": last.gold_reward.mean(), "peak_step": peak,
        "kl_first": first.kl.mean(), "kl_peak": at_peak.kl.mean(), "kl_last": last.kl.mean(),
        "heldout_sft": df.attrs["summary"].get("heldout_lm_loss_sft", np.nan),
        "heldout_final": df.attrs["summary"].get("heldout_lm_loss_final", np.nan),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(REPO / "runs" / "effects"))
    ap.add_argument("--long-steps", type=int, default=300)
    ap.add_argument("--ptx-coef", type=float, default=1.0)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run (e.g. pretrain.steps=500)")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    rows = []
    variants = {
        "default": [],
        "beta0_long": ["ppo.beta=0", f"ppo.steps={args.long_steps}"],
        "ptx": [f"ppo.ptx_coef={args.ptx_coef}"],
    }
    for seed in args.seeds:
        base = base_run(out, seed, args.extra)
        for name, ov in variants.items():
            df = variant(out, base, seed, name, ov, args.extra)
            rows.append({"variant": name, "seed": seed, **phases(df)})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print("\nPer seed:")
    print(table.round(3).to_string(index=False))
    print("\nMean over seeds:")
    print(table.drop(columns="seed").groupby("variant").mean().round(3).to_string())

    d = table[table.variant == "default"]
    b = table[table.variant == "beta0_long"]
    p = table[table.variant == "ptx"]
    claims = [
        ("default: rm_score rises", (d.rm_last > d.rm_first).mean()),
        ("default: KL rises", (d.kl_last > d.kl_first).mean()),
        ("default: gold reward rises at first (peak > first tenth)", (d.gold_peak > d.gold_first).mean()),
        ("beta=0 long: gold falls from its peak by the end", (b.gold_last < b.gold_peak).mean()),
        ("beta=0 long: rm_score keeps rising after the gold peak", (b.rm_last >= b.rm_peak).mean()),
        ("ptx: held-out pretraining loss regresses less than gamma=0 (same seed)",
         (p.heldout_final.values - p.heldout_sft.values < d.heldout_final.values - d.heldout_sft.values).mean()),
    ]
    print("\nClaims (share of seeds where it holds):")
    for text, share in claims:
        print(f"  {share:4.0%}  {text}")
    print(f"\nregression (final - SFT held-out loss), mean over seeds: gamma=0 "
          f"{(d.heldout_final - d.heldout_sft).mean():.3f}, gamma={args.ptx_coef:g} "
          f"{(p.heldout_final - p.heldout_sft).mean():.3f}")
    print(f"beta=0 long: gold first {b.gold_first.mean():.3f} -> peak {b.gold_peak.mean():.3f} -> last "
          f"{b.gold_last.mean():.3f}; rm_score {b.rm_first.mean():.3f} -> {b.rm_peak.mean():.3f} -> "
          f"{b.rm_last.mean():.3f}; KL last {b.kl_last.mean():.2f}")
    print(f"total time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
