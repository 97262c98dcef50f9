"""ppo.parallel_critic side by side: the quickstart's PPO stage with the critic's update on a
thread of its own (the quickstart's setting) against after the policy's (as before).

    python bench/parallel_critic_ab.py [--seed 0] [--repeats 3] [--json out.json] [-- extra overrides]

The quickstart is built through the reward model once (``rlhf run experiments/quickstart.yaml
stages=[pretrain,sft,rm]`` at seed S, its default ``threads: 2``) in a temporary run
directory; then its PPO stage runs (``stages=[ppo] --force``, a fresh process each time) with
``ppo.parallel_critic=true`` and ``=false`` in turn, ``--repeats`` times each, the first
setting of each pair alternating. Reported: the PPO stage's own time (its summary's
``stage_time_s``), the process's wall and CPU time, the median of each setting, the ratio of
the medians and the ratio within each pair: this machine's speed drifts by a fifth within
minutes, and the two runs of a pair share most of it. The two settings sum floats in another
order, so their PPO figures differ a little (printed), as at another thread count.
``--quick`` shrinks every stage (a smoke test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from quickstart_time import QUICK  # noqa: E402  (the same tiny stages as the quickstart bench's --quick)


def rlhf_run(root: Path, seed: int, extra: list[str]) -> dict:
    """One ``rlhf run`` of the quickstart in run directory ``root/ab``; its wall and CPU time."""
    cmd = [sys.executable, "-m", "rlhf.cli", "run", str(REPO / "experiments" / "quickstart.yaml"), f"seed={seed}",
           f"out_dir={root}", "name=ab", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"rlhf run {' '.join(extra)} failed:\n{p.stdout[-4000:]}")
    return {"wall_s": wall, "cpu_s": (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime),
            "load_1min": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="PPO stages per setting")
    ap.add_argument("--quick", action="store_true", help="tiny stages: checks the script, measures nothing")
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*", help="config overrides for every run")
    a = ap.parse_args()
    extra = (QUICK if a.quick else []) + a.extra
    root = Path(tempfile.mkdtemp(prefix="bench_parallel_critic_"))
    runs = []
    try:
        build = rlhf_run(root, a.seed, ["stages=[pretrain,sft,rm]", *extra])
        print(f"built pretrain, SFT and RM (seed {a.seed}) in {build['wall_s']:.0f} s", flush=True)
        for r in range(a.repeats):
            for parallel in ((True, False) if r % 2 == 0 else (False, True)):
                res = rlhf_run(root, a.seed, ["stages=[ppo]", "--force", f"ppo.parallel_critic={str(parallel).lower()}",
                                              *extra])
                summary = json.loads((root / "ab" / "ppo" / "summary.json").read_text())
                res.update({"repeat": r, "parallel_critic": parallel, "ppo_s": summary["stage_time_s"],
                            "heldout_ppo": summary.get("heldout_ppo"), "final_gold_reward": summary.get("final_gold_reward")})
                runs.append(res)
                print(f"repeat {r} parallel_critic={str(parallel).lower():5}: PPO stage {res['ppo_s']:.1f} s, process "
                      f"{res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU, load {res['load_1min']:.1f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {p: statistics.median(x["ppo_s"] for x in runs if x["parallel_critic"] is p) for p in (True, False)}
    pairs = [next(x["ppo_s"] for x in runs if x["repeat"] == r and not x["parallel_critic"])
             / next(x["ppo_s"] for x in runs if x["repeat"] == r and x["parallel_critic"]) for r in range(a.repeats)]
    print(f"PPO stage, median: parallel critic {med[True]:.1f} s, serial {med[False]:.1f} s: "
          f"{med[False] / med[True]:.2f}x; within pairs " + ", ".join(f"{x:.2f}x" for x in pairs))
    if a.json:
        Path(a.json).write_text(json.dumps({"quick": a.quick, "seed": a.seed, "repeats": a.repeats, "extra": extra,
                                            "build": build, "runs": runs,
                                            "median_ppo_s": {"parallel": med[True], "serial": med[False]},
                                            "pair_ratios": pairs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
