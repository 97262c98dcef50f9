"""PPO iteration time with the ptx term (γ > 0) against without (γ = 0), and with the KL
reference (β > 0) against β = 0, on the quickstart's model size.

    python bench/ptx_overhead.py [--steps 12] [--repeats 3] [--ptx-ratio 8]

Models are built from scratch (timing does not depend on training) in a temporary run
directory; both settings alternate in one process, one torch thread; reported figure: the
median iteration time (rollout + scoring + all PPO epochs) over every iteration measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf.config import load_config  # noqa: E402
from rlhf.models import load_reward_model, save_hf, scratch_model  # noqa: E402
from rlhf.ppo import run_ppo  # noqa: E402
from rlhf.rundir import RunDir, read_jsonl  # noqa: E402
from rlhf.tokenizer import train_world_tokenizer  # noqa: E402
from rlhf.world import World  # noqa: E402


def iteration_times(cfg, rd, sft, rm, tok, world) -> list[float]:
    import shutil
    shutil.rmtree(rd.path / "ppo.tmp", ignore_errors=True)
    run_ppo(cfg, rd, str(sft), str(rm), tok, world, torch.device("cpu"))
    t = [r["time_s"] for r in read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")]
    return [b - a for a, b in zip(t, t[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ptx-coef", type=float, default=1.0)
    ap.add_argument("--ptx-ratio", type=int, default=None, help="default: the config's ppo.ptx_ratio")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = load_config(REPO / "experiments" / "quickstart.yaml")
    world = World(base.world)
    tok = train_world_tokenizer(world)
    tmp = Path(tempfile.mkdtemp(prefix="ptx_bench_"))
    sft, rm = tmp / "sft", tmp / "rm"
    save_hf(scratch_model(base.model, len(tok), tok.pad_token_id, tok.eos_token_id), tok, sft)
    save_hf(load_reward_model(str(sft)), tok, rm)
    rd = RunDir(tmp / "run")
    ratio = args.ptx_ratio or base.ppo.ptx_ratio
    settings = {
        "gamma=0": [],
        f"gamma={args.ptx_coef:g}": [f"ppo.ptx_coef={args.ptx_coef}", f"ppo.ptx_ratio={ratio}"],
        "beta=0": ["ppo.beta=0"],
    }
    common = [f"ppo.steps={args.steps}", f"ppo.checkpoint_every={args.steps + 1}", "ppo.kl_levels=[]"]
    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, ov in settings.items():
            cfg = load_config(REPO / "experiments" / "quickstart.yaml", common + ov)
            times[name] += iteration_times(cfg, rd, sft, rm, tok, world)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    print(f"PPO iteration time, quickstart model ({base.model.n_layer} layers, width {base.model.n_embd}), "
          f"batch {base.ppo.batch_size}, {base.ppo.epochs} epochs, {base.ppo.max_new_tokens} new tokens; "
          f"ptx: {ratio} pretraining sequences of {base.ppo.ptx_seq_len} tokens per episode and iteration")
    for k in settings:
        print(f"  {k:>10}: median {med[k] * 1e3:7.1f} ms  (min {spread[k][0] * 1e3:.1f}, max {spread[k][1] * 1e3:.1f}, "
              f"n={len(times[k])})")
    g = f"gamma={args.ptx_coef:g}"
    r = med[g] / med["gamma=0"]
    print(f"ptx overhead: gamma>0 / gamma=0 = {r:.2f}  (bound: <= 1.35)")
    print(f"KL reference cost: beta>0 / beta=0 = {med['gamma=0'] / med['beta=0']:.2f} "
          f"(the reference forward runs either way, to log the KL)")
    if args.json:
        import json
        Path(args.json).write_text(json.dumps({
            "settings": {k: {"median_s": med[k], "min_s": spread[k][0], "max_s": spread[k][1], "n": len(times[k])}
                         for k in settings},
            "ptx_ratio": ratio, "ptx_coef": args.ptx_coef, "ptx_overhead": r,
            "beta_over_beta0": med["gamma=0"] / med["beta=0"], "model": f"{base.model.n_layer}L/{base.model.n_embd}",
            "batch": base.ppo.batch_size, "minibatch": base.ppo.minibatch_size, "epochs": base.ppo.epochs,
            "new_tokens": base.ppo.max_new_tokens, "steps": args.steps, "repeats": args.repeats}, indent=1))
    return 0 if r <= 1.35 else 1


if __name__ == "__main__":
    sys.exit(main())
