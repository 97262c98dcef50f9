"""Sharded PPO (``ppo.sharding=fsdp``) on GPUs with NCCL: the check ``tests/test_fsdp.py`` makes
on CPUs with gloo, for a machine with at least two GPUs (none was lent when this was written,
so it has not been run yet).

    python bench/fsdp_gpu_check.py [--procs 2] [--out DIR]

It builds the tests' tiny run once (pretrain, SFT, reward model on ``cuda``), then runs PPO
alone under ``torchrun --nproc_per_node=P``:

1. ``ppo.sharding=fsdp``, 6 iterations, checkpoint every 2;
2. the replicated data-parallel run, the same 6 iterations;
3. ``fsdp`` for 4 iterations, then raised to 6: it continues from its sharded checkpoint
   (step 2).

and prints the largest relative gap of every logged metric between (1) and (2) (float
tolerance expected: FSDP reduce-scatters where the replicated run all-reduces) and between
(1) and (3) (0 on CPUs; on GPUs 0 only where CUDA's kernels are deterministic: the script
sets ``CUBLAS_WORKSPACE_CONFIG``, the project does not call
``torch.use_deterministic_algorithms``, so a tiny gap there may be CUDA's, not the resume's).
Exit 1 when (1) and (2) differ by more than 1e-3 relative or a run fails; peak GPU memory is
not measured here. NCCL refuses two ranks on one GPU, so P must not exceed the GPU count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from rlhf.rundir import read_jsonl  # noqa: E402

QUICK = str(REPO / "experiments" / "quickstart.yaml")


def main() -> int:
    import torch
    from conftest import tiny_overrides
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if torch.cuda.device_count() < a.procs:
        print(f"needs {a.procs} GPUs, this machine has {torch.cuda.device_count()}")
        return 2
    out = Path(a.out or tempfile.mkdtemp(prefix="fsdp_gpu_"))
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    base = out / "base"
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", QUICK] +
                       tiny_overrides(base, extra=["stages=[pretrain,sft,rm]", "device=cuda"]),
                       cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        print((r.stdout + r.stderr)[-3000:])
        return 1

    def ppo(name: str, extra: list[str], force: bool = True) -> Path:
        parent = out / name
        if not (parent / "tiny").exists():
            shutil.copytree(base / "tiny", parent / "tiny")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.procs}",
               "-m", "rlhf.cli", "run", QUICK] + tiny_overrides(parent, extra=["stages=[ppo]", "device=cuda", *extra])
        r = subprocess.run(cmd + (["--force"] if force else []), cwd=REPO, env=env, capture_output=True, text=True)
        if r.returncode:
            print((r.stdout + r.stderr)[-3000:])
            raise SystemExit(1)
        return parent / "tiny" / "ppo" / "metrics.jsonl"

    sharded = read_jsonl(ppo("fsdp", ["ppo.sharding=fsdp"]))
    replicated = read_jsonl(ppo("repl", []))
    ppo("cont", ["ppo.sharding=fsdp", "ppo.steps=4"])
    continued = read_jsonl(ppo("cont", ["ppo.sharding=fsdp", "ppo.steps=6"], force=False))

    def gap(x: list[dict], y: list[dict]) -> tuple[float, str]:
        worst, where = 0.0, ""
        for rx, ry in zip(x, y):
            for k, v in rx.items():
                if k == "time_s" or not isinstance(v, (int, float)):
                    continue
                g = abs(v - ry[k]) / max(abs(v), abs(ry[k]), 1e-8)
                if g > worst:
                    worst, where = g, f"step {rx['step']} {k}"
        return worst, where

    g_rep, w_rep = gap(sharded, replicated)
    g_res, w_res = gap(sharded, continued)
    print(f"fsdp vs replicated, {a.procs} ranks: largest relative gap {g_rep:.3g} ({w_rep})")
    print(f"fsdp uninterrupted vs continued from its step-2 checkpoint: largest relative gap {g_res:.3g} ({w_res})")
    print(f"runs under {out}")
    return 0 if g_rep <= 1e-3 and len(sharded) == len(replicated) == len(continued) == 6 else 1


if __name__ == "__main__":
    sys.exit(main())
