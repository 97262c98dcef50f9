"""Batched RTP sampler vs a one-sample-at-a-time loop: tokens/s of each and the ratio.

Same model, same prompts, one torch thread; each measured ``--repeats`` times, median.

    python bench/toxicity_batching.py                      # SmolLM2-135M-Instruct, RTP prompts
    python bench/toxicity_batching.py --model toy          # a tiny untrained toy-world GPT-2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model source, or 'toy'")
    ap.add_argument("--prompts", type=int, default=4, help="prompts (half challenging, half other)")
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--prompts-per-call", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from rlhf_eval.toxicity import sample_continuations, sample_one_at_a_time
    if args.model == "toy":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from toy_run import make_toy_run  # the tests' fixture (tests/toy_run.py)
        from rlhf.world import World
        d = make_toy_run(Path(tempfile.mkdtemp()) / "run")
        from rlhf_eval.models import load_policy
        model, tok = load_policy(str(d / "sft"))
        chats = [p for p in World.load(d / "world").eval_prompts() if p.kind == "chat"]
        prompts = [p.text for p in chats][: args.prompts]
    else:
        from rlhf_eval.data import rtp_prompts
        from rlhf_eval.models import load_policy
        from rlhf_eval.settings import make_settings
        model, tok = load_policy(args.model)
        ps, _ = rtp_prompts(make_settings(), (args.prompts + 1) // 2, seed=0)
        prompts = (ps["challenging"] + ps["other"])[: args.prompts]

    kw = dict(k=args.k, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9, progress=False)
    # warm-up (first generate call pays one-off costs)
    sample_continuations(model, tok, prompts[:1], k=2, max_new_tokens=2, progress=False)
    batched, single = [], []
    for r in range(args.repeats):
        b = sample_continuations(model, tok, prompts, prompts_per_call=args.prompts_per_call, seed=r, **kw)
        s = sample_one_at_a_time(model, tok, prompts, seed=r, **kw)
        batched.append(b.n_tokens / b.seconds)
        single.append(s.n_tokens / s.seconds)
        print(f"repeat {r}: batched {b.n_tokens} tokens in {b.seconds:.2f} s ({batched[-1]:.1f} tok/s); "
              f"one-at-a-time {s.n_tokens} tokens in {s.seconds:.2f} s ({single[-1]:.1f} tok/s)", flush=True)
    mb, ms = statistics.median(batched), statistics.median(single)
    print(f"model={args.model} prompts={len(prompts)} k={args.k} max_new_tokens={args.max_new_tokens} "
          f"prompts_per_call={args.prompts_per_call} threads=1 repeats={args.repeats}")
    print(f"batched:        {mb:.1f} tokens/s (median)")
    print(f"one-at-a-time:  {ms:.1f} tokens/s (median)")
    print(f"speed-up:       {mb / ms:.1f}x")
    if args.json:
        import json
        Path(args.json).write_text(json.dumps({
            "model": args.model, "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats, "batched_tokens_per_s": mb, "batched_min": min(batched), "batched_max": max(batched),
            "single_tokens_per_s": ms, "single_min": min(single), "single_max": max(single), "speedup": mb / ms}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
