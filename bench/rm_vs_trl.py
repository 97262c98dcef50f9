"""Reward-model training step time against K (2..9): ours against TRL's RewardTrainer.

    python bench/rm_vs_trl.py [--prompts 8] [--steps 4] [--repeats 3] [--n-embd 128] [--n-layer 2]

The same comparisons on both sides: ``--prompts`` prompts per step, each with K ranked
responses (random toy-world words ending in <end>).

* ours: the K responses of a prompt go through the model once and all C(K,2) pairs enter
  InstructGPT's loss (``rlhf.losses.kwise_ranking_loss``) - K forward passes per prompt; then
  gradient clipping (1.0) and AdamW, as ``rlhf.reward.train_reward_model`` does.
* TRL: ``trl.RewardTrainer`` (the main venv's trl, 1.16) on the same comparisons split into
  C(K,2) (chosen, rejected) pairs per prompt - 2·C(K,2) forward passes per prompt; one
  trainer step = all pairs of the ``--prompts`` prompts (per_device_train_batch_size =
  prompts·C(K,2)); fp32, no gradient checkpointing, max_grad_norm 1.0, AdamW.

Both start from the same weights (a scratch GPT-2 sequence classifier), one torch thread.
For each K the two alternate in blocks (ours ``--steps`` steps, TRL ``--steps`` steps, x
``--repeats``); the first step of each block is a warm-up and is dropped. Reported: median
ms per prompt, min/max, and TRL/ours.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf.losses import kwise_ranking_loss  # noqa: E402
from rlhf.models import sequence_scores  # noqa: E402
from rlhf.tokenizer import train_world_tokenizer  # noqa: E402
from rlhf.world import EOS, World, WorldConfig  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parent))
from rm_kscaling import make_rm  # noqa: E402  (the same reward model on both sides of both benches)


def ours_block(model, tok, rows, steps: int) -> list[float]:
    texts = [r["prompt"] + " " + y for r in rows for y in r["responses"]]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # per step, as train does
        s = sequence_scores(model, enc["input_ids"], enc["attention_mask"])
        loss = kwise_ranking_loss(s.view(len(rows), -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def trl_block(model, tok, rows, steps: int, workdir: str) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_begin(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.t[-1] = time.perf_counter() - self.t[-1]

    pairs = {"chosen": [], "rejected": []}
    for r in rows:
        for a, b in itertools.combinations(range(len(r["responses"])), 2):  # responses are in ranked order
            pairs["chosen"].append(r["prompt"] + " " + r["responses"][a])
            pairs["rejected"].append(r["prompt"] + " " + r["responses"][b])
    n = len(pairs["chosen"])
    args = RewardConfig(output_dir=workdir, per_device_train_batch_size=n, gradient_accumulation_steps=1,
                        max_steps=steps + 1, learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0,
                        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
                        save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0,
                        dataloader_num_workers=0, max_length=None, lr_scheduler_type="constant")
    clock = Clock()
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(pairs), processing_class=tok,
                            callbacks=[clock])
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints its final metrics dict
        trainer.train()
    return clock.t[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--ks", default="2,3,4,5,6,7,8,9")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    import datasets
    datasets.disable_progress_bars()
    import trl
    world = World(WorldConfig())
    tok = train_world_tokenizer(world)
    base = make_rm(args.n_layer, args.n_embd, len(tok), tok.pad_token_id)
    rng = random.Random(0)
    words = world.vocabulary_words()
    prompts = world.train_prompts()
    work = tempfile.mkdtemp(prefix="rm_vs_trl_")
    print(f"reward model: GPT-2 {args.n_layer} layers, width {args.n_embd}; {args.prompts} prompts per step; "
          f"TRL {trl.__version__}; one torch thread; {args.repeats} alternated blocks of {args.steps} steps per side")
    print(f"{'K':>2} {'pairs':>5} {'ours ms/prompt':>15} {'(min-max)':>14} {'TRL ms/prompt':>14} {'(min-max)':>14} "
          f"{'TRL/ours':>9}", flush=True)
    out = {}
    for k in [int(x) for x in args.ks.split(",")]:
        rows = [{"prompt": rng.choice(prompts).text,
                 "responses": [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + f" {EOS}"
                               for _ in range(k)]} for _ in range(args.prompts)]
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours += ours_block(copy.deepcopy(base), tok, rows, args.steps)
            theirs += trl_block(copy.deepcopy(base), tok, rows, args.steps, work)
        o = [t / args.prompts * 1e3 for t in ours]
        t_ = [t / args.prompts * 1e3 for t in theirs]
        mo, mt = statistics.median(o), statistics.median(t_)
        out[k] = {"ours_ms_per_prompt": mo, "ours_min": min(o), "ours_max": max(o), "trl_ms_per_prompt": mt,
                  "trl_min": min(t_), "trl_max": max(t_), "n": len(o)}
        print(f"{k:>2} {math.comb(k, 2):>5} {mo:>15.2f} {f'({min(o):.1f}-{max(o):.1f})':>14} {mt:>14.2f} "
              f"{f'({min(t_):.1f}-{max(t_):.1f})':>14} {mt / mo:>9.2f}", flush=True)
    ks = sorted(out)
    if len(ks) > 1:
        lo, hi = ks[0], ks[-1]
        print(f"K={hi} / K={lo} per-prompt step time: ours {out[hi]['ours_ms_per_prompt'] / out[lo]['ours_ms_per_prompt']:.2f}, "
              f"TRL {out[hi]['trl_ms_per_prompt'] / out[lo]['trl_ms_per_prompt']:.2f} "
              f"(pairs grow {math.comb(hi, 2) / math.comb(lo, 2):.0f}x, responses {hi / lo:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
