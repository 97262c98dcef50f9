"""Where our PPO iteration spends its time, and a measured candidate cut.

    python bench/ppo_profile.py [--n-embd 64] [--batch 8] [--minibatch 8] [--new-tokens 32] [--steps 6] [--repeats 3]

Phase breakdown: ``rlhf.ppo.run_ppo`` runs unchanged, with the functions it calls wrapped
by timers through the module's namespace (sampling; the no-grad policy / reference / reward
/ critic forwards of the rollout; ``ppo_update``, split into the policy's and the critic's
optimizer steps; logging). The first iteration is dropped.

Candidate cuts (``--cuts``, each measured side by side with the baseline, alternating
processes-in-process: baseline, cuts..., then the reverse order, ``--repeats`` times):

* ``gelu``: GPT-2's ``gelu_new`` activation (transformers' NewGELUActivation: the tanh
  approximation written as 7 elementwise ops: pow, mul, add, mul, tanh, add, mul, each
  with its own backward) swapped for ``torch.nn.GELU(approximate="tanh")`` - the same
  formula as one fused kernel - in every model run_ppo loads (policy, reference, reward
  model, critic). Same function up to float rounding (max |diff| is printed).
* ``foreach`` / ``fused``: AdamW with ``foreach=True`` / ``fused=True`` (on CPU torch
  defaults to the per-parameter loop, ``_single_tensor_adam``).

The bench patches names as seen from ``rlhf.ppo`` only; rlhf/ppo.py itself is not edited.
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

ORIG = {n: getattr(ppo, n) for n in ("sample", "policy_forward", "critic_values", "reward_scores", "ppo_update",
                                     "heldout_lm_loss", "append_jsonl", "check_finite", "gae",
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


class _AdamWWith:
    """``torch.optim`` as rlhf.ppo sees it, with AdamW(**extra)."""

    def __init__(self, **extra):
        self.extra = extra

    def __getattr__(self, name):
        if name == "AdamW":
            return lambda *a, **k: ORIG_OPTIM.AdamW(*a, **{**k, **self.extra})
        return getattr(ORIG_OPTIM, name)


def fuse_gelu(model):
    """Replace transformers' NewGELUActivation (gelu_new) by the fused tanh-approximate GELU."""
    from transformers.activations import NewGELUActivation
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(mod, cname, torch.nn.GELU(approximate="tanh"))
    return model


ORIG_LOADERS = {"load_causal_lm": ppo.load_causal_lm, "load_reward_model": ppo.load_reward_model}


class _TorchProxy:
    def __init__(self, optim):
        self.optim = optim

    def __getattr__(self, name):
        return getattr(torch, name)


def run(d: Path, a, cut: str, timers: Timers | None) -> list[float]:
    steps = a.steps + 1
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [
        f"model.n_layer=2", f"model.n_embd={a.n_embd}", f"ppo.steps={steps}", f"ppo.batch_size={a.batch}",
        f"ppo.minibatch_size={a.minibatch}", "ppo.epochs=4", f"ppo.max_new_tokens={a.new_tokens}",
        "ppo.beta=0.05", "ppo.ptx_coef=0", f"ppo.checkpoint_every={steps + 1}", "ppo.kl_levels=[]", "threads=1"])
    world = World(cfg.world)
    tok = load_tokenizer(str(d / "sft"))
    rd = RunDir(Path(tempfile.mkdtemp(prefix="prof_", dir=d)))
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
    if cut in ("foreach", "fused"):
        ppo.torch = _TorchProxy(_AdamWWith(**{cut: True}))
    if cut == "gelu":
        for n, f in ORIG_LOADERS.items():
            setattr(ppo, n, lambda *x, _f=f, **k: fuse_gelu(_f(*x, **k)))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ppo.run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, world, torch.device("cpu"))
    finally:
        ppo.torch = torch
        for n, f in ORIG_LOADERS.items():
            setattr(ppo, n, f)
        for n, f in ORIG.items():
            setattr(ppo, n, f)
        if timers:
            ppo.load_causal_lm = orig_load
    t = [r["time_s"] for r in read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")]
    shutil.rmtree(rd.path, ignore_errors=True)
    return [b - x for x, b in zip(t, t[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuts", default="gelu,foreach,fused", help="comma list; empty: only the phase breakdown")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import ppo_vs_trl as pv
    d = Path(tempfile.mkdtemp(prefix="ppo_profile_"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pv.prepare(d, 2, a.n_embd)
    # --- phase breakdown ----------------------------------------------------------------------
    tm = Timers()
    tm.ref = None
    wall = run(d, a, "", tm)
    total = sum(tm.t.values())
    print(f"PPO phases, width {a.n_embd}, batch {a.batch}, minibatch {a.minibatch}, {a.new_tokens} new tokens, "
          f"4 epochs; {a.steps + 1} iterations incl. the first (setup excluded), one torch thread")
    for k, v in sorted(tm.t.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<40} {v * 1e3 / (a.steps + 1):8.1f} ms/iteration  {100 * v / total:5.1f}%")
    print(f"  median iteration (excluding the first): {statistics.median(wall) * 1e3:.1f} ms")
    cuts = [c for c in a.cuts.split(",") if c]
    if not cuts:
        return 0
    if "gelu" in cuts:  # same function? compare the policy's logits with and without the swap
        from rlhf.models import load_causal_lm
        m = load_causal_lm(str(d / "sft")).eval()
        x = torch.randint(0, m.config.vocab_size, (4, 40))
        with torch.no_grad():
            l0 = m(input_ids=x).logits
            l1 = fuse_gelu(m)(input_ids=x).logits
        print(f"  gelu swap: max |logit difference| {float((l0 - l1).abs().max()):.2e} "
              f"(logit scale {float(l0.abs().max()):.2e})")
    # --- the candidate cuts, side by side -------------------------------------------------------
    names = ["baseline"] + cuts
    res = {k: [] for k in names}
    for r in range(a.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            res[name] += run(d, a, "" if name == "baseline" else name, None)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"cuts, {a.repeats} alternated runs x {a.steps} iterations each:")
    for k, v in res.items():
        print(f"  {k:<9} median {med[k] * 1e3:7.1f} ms/iteration (min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f}, "
              f"n={len(v)})  {k}/baseline = {med[k] / med['baseline']:.3f}")
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
