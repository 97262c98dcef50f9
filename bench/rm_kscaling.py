"""Reward-model training step time per prompt against K (2..9).

Ours: each prompt's K responses go through the model once and all C(K,2) pairs enter the
loss (K forward passes per prompt). For comparison, the same comparisons split into
C(K,2) independent pairs (2·C(K,2) forward passes per prompt), as a pairwise trainer does.

    python bench/rm_kscaling.py [--prompts 8] [--repeats 7] [--n-embd 128] [--n-layer 2]

One torch thread; the median of several repeats; both measured side by side in one process.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf.config import ModelConfig, WorldConfig  # noqa: E402
from rlhf.losses import kwise_ranking_loss  # noqa: E402
from rlhf.models import sequence_scores  # noqa: E402
from rlhf.tokenizer import train_world_tokenizer  # noqa: E402
from rlhf.world import EOS, World  # noqa: E402


def make_rm(n_layer: int, n_embd: int, vocab: int, pad: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    c = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=n_embd, n_layer=n_layer, n_head=4, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, num_labels=1, pad_token_id=pad)
    c._attn_implementation = "sdpa"
    return GPT2ForSequenceClassification(c)


def step_time(model, opt, tok, rows, mode: str, repeats: int) -> float:
    """Median seconds per training step over ``rows`` (prompts with K responses each)."""
    if mode == "kwise":
        texts = [r["prompt"] + " " + y for r in rows for y in r["responses"]]
    else:  # every pair of every prompt as its own (chosen, rejected) element
        texts = []
        for r in rows:
            for a, b in itertools.combinations(range(len(r["responses"])), 2):
                texts += [r["prompt"] + " " + r["responses"][a], r["prompt"] + " " + r["responses"][b]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        s = sequence_scores(model, enc["input_ids"], enc["attention_mask"])
        if mode == "kwise":
            loss = kwise_ranking_loss(s.view(len(rows), -1))
        else:
            pairs = s.view(-1, 2)
            loss = -torch.nn.functional.logsigmoid(pairs[:, 0] - pairs[:, 1]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first is a warm-up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n-embd", type=int, default=ModelConfig.n_embd)
    ap.add_argument("--n-layer", type=int, default=ModelConfig.n_layer)
    ap.add_argument("--no-pairs", action="store_true", help="skip the split-pairs comparison")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = World(WorldConfig())
    tok = train_world_tokenizer(world)
    model = make_rm(args.n_layer, args.n_embd, len(tok), tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = random.Random(0)
    words = world.vocabulary_words()
    prompts = world.train_prompts()
    print(f"reward model: GPT-2 {args.n_layer} layers, width {args.n_embd}; {args.prompts} prompts per step; "
          f"one torch thread; median of {args.repeats}")
    print(f"{'K':>2} {'pairs':>5} {'ours ms/prompt':>15} {'split pairs ms/prompt':>22} {'split/ours':>10}")
    ours = {}
    for k in range(2, 10):
        rows = [{"prompt": rng.choice(prompts).text,
                 "responses": [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + f" {EOS}"
                               for _ in range(k)]} for _ in range(args.prompts)]
        t_k = step_time(model, opt, tok, rows, "kwise", args.repeats) / args.prompts * 1e3
        ours[k] = t_k
        if args.no_pairs:
            print(f"{k:>2} {math.comb(k, 2):>5} {t_k:>15.2f}")
            continue
        t_p = step_time(model, opt, tok, rows, "pairs", args.repeats) / args.prompts * 1e3
        print(f"{k:>2} {math.comb(k, 2):>5} {t_k:>15.2f} {t_p:>22.2f} {t_p / t_k:>10.2f}")
    ratio = ours[9] / ours[2]
    print(f"K=9 / K=2 step time per prompt (ours): {ratio:.2f}  (bound: <= 5; C(9,2)/C(2,2) = 36 pairs)")
    return 0 if ratio <= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
