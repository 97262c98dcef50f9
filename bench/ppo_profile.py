"""Where our PPO iteration spends its time.

    python bench/ppo_profile.py [--n-embd 64] [--batch 8] [--minibatch 8] [--new-tokens 32] [--steps 6] [--micro 40]

Phase breakdown: ``rlhf.ppo.run_ppo`` runs unchanged, with the functions it calls wrapped
by timers through the module's namespace (sampling; the no-grad policy / reference / reward
/ critic forwards of the rollout; ``ppo_update``, split into the policy's and the critic's
optimizer steps; logging). The first iteration is dropped.

The cuts this bench once measured (the fused tanh GELU, status.json written at most every
5 s, AdamW ``fused=True``) are in the code now (PERFORMANCE.md has the measurements).

Whole iterations are noisy on a shared machine, so ``--micro N`` also times the two hot
calls alone, in one process, N times on the same inputs: ``rlhf.ppo.ppo_update`` on one
minibatch (policy + critic step) and ``rlhf.sampling.sample`` of the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import rlhf.ppo as ppo  # noqa: E402
from rlhf.config import load_config  # noqa: E402
from rlhf.models import load_tokenizer  # noqa: E402
from rlhf.rundir import RunDir, read_jsonl  # noqa: E402
from rlhf.world import World  # noqa: E402

ORIG = {n: getattr(ppo, n) for n in ("sample", "policy_forward", "critic_values", "score_rollout", "ppo_update",
                                     "heldout_nll", "append_jsonl", "append_jsonl_gz", "check_finite", "gae",
                                     "kl_penalised_rewards")}
ORIG_OPTIM = ppo.torch.optim


class Timers:
    def __init__(self):
        self.t = defaultdict(float)
        self.in_update = False

    def wrap(self, name):
        f = ORIG[name]

        def g(*a, **k):
            label = name
            if name in ("policy_forward", "critic_values"):
                if self.in_update:
                    return f(*a, **k)  # counted inside ppo_update
                label = f"rollout {name}" + (" (reference)" if a and a[0] is self.ref else "")
            if name == "ppo_update":
                self.in_update = True
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.t[label] += time.perf_counter() - t0
                self.in_update = False if name == "ppo_update" else self.in_update
        return g


def run(d: Path, a, timers: Timers | None) -> list[float]:
    steps = a.steps + 1
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [
        "model.n_layer=2", f"model.n_embd={a.n_embd}", f"ppo.steps={steps}", f"ppo.batch_size={a.batch}",
        f"ppo.minibatch_size={a.minibatch}", "ppo.epochs=4", f"ppo.max_new_tokens={a.new_tokens}",
        "ppo.beta=0.05", "ppo.ptx_coef=0", f"ppo.checkpoint_every={steps + 1}", "ppo.kl_levels=[]", "threads=1"])
    world = World(cfg.world)
    tok = load_tokenizer(str(d / "sft"))
    rd = RunDir(Path(tempfile.mkdtemp(prefix="prof_", dir=d)))
    if timers:  # status.json is rewritten (atomically, with fsync) every iteration
        orig_status = rd.set_status

        def set_status(*x, **k):
            t0 = time.perf_counter()
            try:
                return orig_status(*x, **k)
            finally:
                timers.t["RunDir.set_status"] += time.perf_counter() - t0
        rd.set_status = set_status
    for n, f in ORIG.items():
        setattr(ppo, n, timers.wrap(n) if timers else f)
    if timers:  # tell the reference forward apart: it is the second model load_causal_lm returns
        orig_load = ppo.load_causal_lm
        calls = []

        def load(*x, **k):
            m = orig_load(*x, **k)
            calls.append(m)
            if len(calls) == 2:
                timers.ref = m
            return m
        ppo.load_causal_lm = load
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ppo.run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, world, torch.device("cpu"))
    finally:
        for n, f in ORIG.items():
            setattr(ppo, n, f)
        if timers:
            ppo.load_causal_lm = orig_load
    t = [r["time_s"] for r in read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")]
    shutil.rmtree(rd.path, ignore_errors=True)
    return [b - x for x, b in zip(t, t[1:])]


def micro(d: Path, a, reps: int) -> None:
    import copy
    from types import SimpleNamespace
    from rlhf.models import load_causal_lm, load_reward_model
    from rlhf.sampling import sample
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [f"ppo.minibatch_size={a.minibatch}"])
    pc = cfg.ppo
    tok = load_tokenizer(str(d / "sft"))
    world = World(cfg.world)
    prompts = [p.text for p in world.train_prompts()][: a.minibatch]
    base_policy = load_causal_lm(str(d / "sft"))
    base_critic = load_reward_model(str(d / "rm"))
    torch.manual_seed(0)
    s = sample(base_policy, tok, prompts, max_new_tokens=a.new_tokens)
    mf = s.response_mask.float()
    with torch.no_grad():
        logp = ORIG["policy_forward"](base_policy, s.prompt_ids, s.prompt_mask, s.response_ids, mf)[0]
    g = torch.Generator().manual_seed(0)
    mb = ppo.Batch(s.prompt_ids, s.prompt_mask, s.response_ids, mf, logp, logp.clone(),
                   torch.randn(mf.shape, generator=g) * mf, torch.randn(mf.shape, generator=g) * mf,
                   torch.randn(mf.shape, generator=g) * mf)
    pol, cri = copy.deepcopy(base_policy).train(), copy.deepcopy(base_critic).train()
    variants = {"baseline": SimpleNamespace(
        policy=pol, critic=cri, opt=ORIG_OPTIM.AdamW(pol.parameters(), lr=pc.lr, eps=1e-5, weight_decay=0.0, fused=True),
        copt=ORIG_OPTIM.AdamW(cri.parameters(), lr=pc.critic_lr, eps=1e-5, weight_decay=0.0, fused=True),
        upd=[], smp=[])}
    for r in range(reps + 2):
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for name, v in order:
            t0 = time.perf_counter()
            ORIG["ppo_update"](v.policy, mb, v.opt, pc, None, v.critic, v.copt, None)
            t1 = time.perf_counter()
            torch.manual_seed(r)
            sample(v.policy, tok, prompts, max_new_tokens=a.new_tokens)
            t2 = time.perf_counter()
            if r >= 2:  # two warm-up rounds
                v.upd.append(t1 - t0)
                v.smp.append(t2 - t1)
    print(f"micro: {reps} calls, minibatch {a.minibatch} x ({s.prompt_ids.shape[1]} prompt + "
          f"{s.response_ids.shape[1]} response tokens), width {a.n_embd}")
    b = variants["baseline"]
    for name, v in variants.items():
        mu, ms = statistics.median(v.upd), statistics.median(v.smp)
        q = lambda x: statistics.quantiles(x, n=4)  # noqa: E731
        print(f"  {name:<9} ppo_update {mu * 1e3:6.2f} ms (IQR {q(v.upd)[0] * 1e3:.2f}-{q(v.upd)[2] * 1e3:.2f}) "
              f"x{mu / statistics.median(b.upd):.3f};  sample {ms * 1e3:6.2f} ms (IQR {q(v.smp)[0] * 1e3:.2f}-"
              f"{q(v.smp)[2] * 1e3:.2f}) x{ms / statistics.median(b.smp):.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro", type=int, default=40, help="calls of ppo_update and sample in the micro bench (0: skip)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import ppo_vs_trl as pv
    d = Path(tempfile.mkdtemp(prefix="ppo_profile_"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pv.prepare(d, 2, a.n_embd)
    # --- phase breakdown ----------------------------------------------------------------------
    tm = Timers()
    tm.ref = None
    wall = run(d, a, tm)
    total = sum(tm.t.values())
    print(f"PPO phases, width {a.n_embd}, batch {a.batch}, minibatch {a.minibatch}, {a.new_tokens} new tokens, "
          f"4 epochs; {a.steps + 1} iterations incl. the first (setup excluded), one torch thread")
    for k, v in sorted(tm.t.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<40} {v * 1e3 / (a.steps + 1):8.1f} ms/iteration  {100 * v / total:5.1f}%")
    print(f"  median iteration (excluding the first): {statistics.median(wall) * 1e3:.1f} ms")
    if a.micro:
        micro(d, a, a.micro)
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
