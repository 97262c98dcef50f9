"""What each of PPO's kept speed-ups buys, toggled iteration by iteration in one run.

    python bench/ppo_changes.py [--steps 240] [--json out.json]

``rlhf.ppo.run_ppo`` on ``bench/ppo_vs_trl.py``'s toy setting (GPT-2 2 layers width 64, batch
8 episodes, 32 new tokens, 4 epochs over one minibatch, KL coefficient 0.05, no gradient clip,
one torch thread). Before each iteration the next mode of the cycle is switched in, so every
mode runs under the same machine conditions, interleaved:

* ``none``: all three below off: transformers' forward for PPO's forwards and the reward
  model's scores, torch's ``AdamW(fused=True).step`` and ``zero_grad``, and the critic's
  rollout forward run again in its first update;
* ``optimizer``: ``rlhf.optim.AdamW`` (torch's fused kernel called directly);
* ``forward``: ``rlhf.gpt2.hidden`` for the policy, reference, critic and reward-model
  forwards (the sampler's lean decoding step is on in every mode);
* ``reuse``: the critic's rollout forward kept as its first update's forward
  (``PPORun.reuse_values``: one minibatch per epoch, as here);
* ``all``: the three together (the shipped code).

All modes compute the same numbers bit for bit (``tests/test_gpt2.py``, ``tests/test_optim.py``,
``tests/test_ppo.py``) but for the lean forward's weight gradients, which round differently
(its last block runs after the attention on the positions PPO reads only), so the run's
trajectory depends on the cycle by float rounding only. Reported: the
median ms/iteration of each mode (the first two iterations dropped) and none / mode.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import ppo_vs_trl as pv  # noqa: E402  (the models and our side's overrides)

MODES = {"none": (), "optimizer": ("optimizer",), "forward": ("forward",), "reuse": ("reuse",),
         "all": ("optimizer", "forward", "reuse")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=240, help="PPO iterations (cycling through the modes)")
    ap.add_argument("--json")
    a = ap.parse_args()
    pv._one_thread(1)
    import torch
    import rlhf.gpt2 as gpt2
    import rlhf.models as models
    import rlhf.optim as optim
    import rlhf.ppo as ppo
    from rlhf.config import load_config
    from rlhf.rundir import RunDir
    from rlhf.world import World
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0, fused=True)  # torch's step gets its usual wrapper
    off = types.SimpleNamespace(eligible=lambda m: False, hidden=gpt2.hidden)
    d = Path(tempfile.mkdtemp(prefix="ppo_changes_"))
    pv.prepare(d, 2, 64)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cycle = itertools.cycle(MODES)
    real_step = ppo.PPORun.step

    def step(run, i):
        mode = next(cycle)
        on = MODES[mode]
        models.gpt2 = gpt2 if "forward" in on else off  # (lm_forward and sequence_scores read it)
        for o in (run.learner.opt, run.learner.critic_opt):
            o.__class__ = optim.AdamW if "optimizer" in on else torch.optim.AdamW
        run.reuse_values = "reuse" in on
        t = time.perf_counter()
        real_step(run, i)
        if i >= 2:  # the run's first two iterations are warm-up
            times[mode].append(time.perf_counter() - t)
    ppo.PPORun.step = step
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [
        "model.n_layer=2", "model.n_embd=64", "model.n_positions=128", f"ppo.steps={a.steps}", "ppo.batch_size=8",
        "ppo.minibatch_size=8", "ppo.epochs=4", "ppo.max_new_tokens=32", f"ppo.beta={pv.KL_COEF}", "ppo.ptx_coef=0",
        f"ppo.lr={pv.LR}", "ppo.critic=separate", "ppo.grad_clip=0", f"ppo.checkpoint_every={a.steps + 1}",
        "ppo.kl_levels=[]", "threads=1", "ppo.parallel_critic=false"])
    tok = pv.our_tokenizer(d, cfg)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="ours_", dir=d)))
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ppo.run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, World(cfg.world), torch.device("cpu"))
    shutil.rmtree(d, ignore_errors=True)
    res = {}
    for m, ts in times.items():
        res[m] = {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3,
                  "n": len(ts)}
    base = res["none"]["median_ms"]
    print(f"GPT-2 2 layers width 64, batch 8, 32 new tokens, 4 epochs over one minibatch, one thread; "
          f"{a.steps} iterations in {time.time() - t0:.0f} s, modes interleaved")
    for m, r in res.items():
        r["speedup"] = base / r["median_ms"]
        print(f"{m:>10}: {r['median_ms']:7.2f} ms/iteration (min {r['min_ms']:.2f}, n={r['n']})  none / this "
              f"{r['speedup']:.3f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"steps": a.steps, "modes": res,
                                            "setting": "GPT-2 2 layers width 64, batch 8 episodes, 32 new tokens, "
                                                       "4 PPO epochs over one minibatch, KL coefficient 0.05, no "
                                                       "gradient clip, fp32, one torch thread"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
