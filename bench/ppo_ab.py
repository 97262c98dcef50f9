"""Our PPO iteration at an earlier commit against the working tree, process against process.

    python bench/ppo_ab.py --base REV [--repeats 8] [--steps 8] [--json out.json]

What a set of changes buys on a whole iteration when the older code has no switch that turns
them off (``bench/ppo_changes.py`` toggles the ones that have): a ``git worktree`` of REV
(detached, in a temporary directory, removed afterwards) and the working tree each run their
own ``bench/ppo_vs_trl.py --worker ours``, which imports its own tree's ``rlhf``, on the same
models (``bench/ppo_vs_trl.py``'s toy setting: GPT-2 2 layers width 64, batch 8 episodes, 32
new tokens, 4 epochs over one minibatch, KL coefficient 0.05, no gradient clip, one torch
thread). One process of each per repeat, back to back, base first on even repeats; the first
iteration of each process is dropped. Reported: each side's median iteration time and
sampling time, and base / head with its 95% interval (``bench/run_all.py``'s
``ratio_interval``: the project's one bootstrap, over repeats).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import ppo_vs_trl as pv  # noqa: E402  (the models, the worker and its process)
from run_all import ratio_interval  # noqa: E402


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare against (any git revision)")
    ap.add_argument("--repeats", type=int, default=8, help="processes per side")
    ap.add_argument("--steps", type=int, default=8, help="measured iterations per process (+1 warm-up)")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        base = git("rev-parse", "--short", a.base)
    except subprocess.CalledProcessError:
        print(f"--base {a.base}: not a revision of {REPO}")
        return 2
    head = git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain") else "")
    # the worker's settings: ppo_vs_trl's defaults
    w = argparse.Namespace(steps=a.steps, n_embd=64, n_layer=2, n_positions=128, batch=8, new_tokens=32, epochs=4,
                           model="toy", threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="ppo_ab_"))
    tree = tmp / "base"
    git("worktree", "add", "--detach", str(tree), a.base)
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    t0 = time.time()
    try:
        d = tmp / "models"
        d.mkdir()
        pv.prepare(d, w.n_layer, w.n_embd, w.n_positions)
        scripts = {"base": tree / "bench" / "ppo_vs_trl.py", "head": HERE / "ppo_vs_trl.py"}
        for r in range(a.repeats):
            for side in (("base", "head") if r % 2 == 0 else ("head", "base")):
                res = pv.run_side("ours", d, w, script=scripts[side])
                runs[side].append(res)
                print(f"repeat {r} {side}: median {statistics.median(res['iter_s']) * 1e3:.1f} ms/iteration", flush=True)
    finally:
        git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"base_commit": base, "head_commit": head, "repeats": a.repeats, "steps": a.steps,
           "setting": "GPT-2 2 layers width 64, batch 8 episodes, 32 new tokens, 4 PPO epochs over one minibatch, "
                      "KL coefficient 0.05, no gradient clip, fp32, one torch thread", "seconds": time.time() - t0}
    for side, rs in runs.items():
        it = [x for r in rs for x in r["iter_s"]]
        gen = [x for r in rs for x in r["gen_s"]]
        out[side] = {"median_ms": statistics.median(it) * 1e3, "min_ms": min(it) * 1e3, "max_ms": max(it) * 1e3,
                     "gen_median_ms": statistics.median(gen) * 1e3, "n": len(it),
                     "run_medians_ms": [statistics.median(r["iter_s"]) * 1e3 for r in rs]}
    out["ratio"] = out["base"]["median_ms"] / out["head"]["median_ms"]
    out["ratio_ci"] = ratio_interval([r["iter_s"] for r in runs["head"]], [r["iter_s"] for r in runs["base"]])
    out["gen_ratio"] = out["base"]["gen_median_ms"] / out["head"]["gen_median_ms"]
    print(f"\n{out['setting']}; {a.repeats} processes x {a.steps} iterations a side, alternated")
    for side in ("base", "head"):
        v = out[side]
        print(f"{side} ({base if side == 'base' else head}): {v['median_ms']:.1f} ms/iteration "
              f"({v['min_ms']:.1f}-{v['max_ms']:.1f}), sampling {v['gen_median_ms']:.1f} ms")
    lo, hi = out["ratio_ci"]
    print(f"base / head: {out['ratio']:.3f}x [{lo:.3f}, {hi:.3f}]; sampling {out['gen_ratio']:.3f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
