"""Data-parallel PPO: iteration time with P ranks (torchrun, gloo on CPU / NCCL on GPU)
against one process, for the same global batch, on the quickstart's model size.

    python bench/ppo_data_parallel.py [--procs 2] [--steps 16] [--repeats 2] [--threads 1]

A run directory is prepared once (the quickstart's pretrain, SFT and reward model, shortened:
timing does not depend on how well they are trained). Then PPO alone (``stages=[ppo]
--force``) runs alternately as one process and under ``torchrun --nproc_per_node=P``, each
process with ``--threads`` torch threads (and, for comparison on the same cores, one process
with P times the threads). Reported: the median time per iteration (rank 0's
metrics, first iteration dropped) and the speed-up. On CPU the ranks share the machine's
cores: with P ranks of one thread each, the ideal is P x when P cores are free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf.rundir import read_jsonl  # noqa: E402

QUICK = str(REPO / "experiments" / "quickstart.yaml")
PREP = ["pretrain.steps=40", "sft.epochs=1", "rm.n_prompts=64", "rm.epochs=1"]


def run(cmd: list[str], env: dict) -> float:
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{(r.stdout + r.stderr)[-3000:]}")
    return time.time() - t0


def iteration_times(run_dir: Path) -> list[float]:
    t = [r["time_s"] for r in read_jsonl(run_dir / "ppo" / "metrics.jsonl")]
    return [b - a for a, b in zip(t, t[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32, help="global ppo.batch_size")
    args = ap.parse_args()
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    tmp = Path(tempfile.mkdtemp(prefix="dp_bench_"))
    common = [f"out_dir={tmp}", "name=run", f"threads={args.threads}", f"ppo.batch_size={args.batch_size}",
              f"ppo.minibatch_size={args.batch_size // 2}"] + PREP
    rlhf = [sys.executable, "-m", "rlhf.cli", "run", QUICK]
    print(f"preparing {tmp / 'run'} (pretrain, SFT, RM; shortened) ...", flush=True)
    run(rlhf + common + ["stages=[pretrain,sft,rm]"], env)
    ppo = common + ["stages=[ppo]", f"ppo.steps={args.steps}", "ppo.checkpoint_every=1000", "--force"]
    more_threads = [a if not a.startswith("threads=") else f"threads={args.threads * args.procs}" for a in ppo]
    cmds = {
        "1 process": rlhf + ppo,
        f"{args.procs} ranks": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={args.procs}", "-m", "rlhf.cli", "run", QUICK] + ppo,
        # the same cores as the ranks, used by one process's intra-op threads instead
        f"1 process x {args.threads * args.procs} threads": rlhf + more_threads,
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for rep in range(args.repeats):
        for name, cmd in cmds.items():
            e = dict(env, OMP_NUM_THREADS=str(args.threads * args.procs)) if "threads" in name else env
            wall = run(cmd, e)
            it = iteration_times(tmp / "run")
            times[name] += it
            print(f"  repeat {rep}: {name:>22}: {1000 * statistics.median(it):7.1f} ms/iteration "
                  f"(process wall {wall:.1f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    one, many = med["1 process"], med[f"{args.procs} ranks"]
    print(f"\nglobal batch {args.batch_size}, {args.steps} iterations x {args.repeats} repeats, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs visible")
    for k, v in med.items():
        print(f"{k:>22}: {1000 * v:7.1f} ms/iteration (median of {len(times[k])})")
    threaded = med[f"1 process x {args.threads * args.procs} threads"]
    print(f"speed-up with {args.procs} ranks: {one / many:.2f}x (ideal {args.procs}x with {args.procs} free cores); "
          f"with {args.threads * args.procs} threads in one process instead: {one / threaded:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
