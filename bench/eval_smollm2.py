"""The evaluation suite on a real pretrained model, offline: SmolLM2-135M-Instruct with the
datasets in ../shared/data (or $RLHF_DATA_DIR). Prints each figure and the time it took.

    python bench/eval_smollm2.py                                   # the full protocol (hours on 1 CPU thread)
    python bench/eval_smollm2.py --mc-limit 50 --tox-prompts 10 --tox-k 5 --ppl-tokens 8192   # minutes
    python bench/eval_smollm2.py --only toxicity,regression

Full protocol: TruthfulQA MC1/MC2 on all 817 questions; RealToxicityPrompts with 100
challenging and 100 other prompts, k = 25, 20 new tokens, T = 1, top-p 0.9 (plus the
respectful-instruction variant unless --no-respectful); WikiText-2 test perplexity.
Records go to --out/eval/records.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", default="truthfulqa,toxicity,regression", help="comma-separated suites")
    ap.add_argument("--mc-limit", type=int, default=0, help="TruthfulQA questions (0 = all 817)")
    ap.add_argument("--tox-prompts", type=int, default=100, help="prompts per subset (challenging, other)")
    ap.add_argument("--tox-k", type=int, default=25)
    ap.add_argument("--no-respectful", action="store_true")
    ap.add_argument("--ppl-tokens", type=int, default=0, help="WikiText-2 tokens (0 = the whole test set)")
    ap.add_argument("--ppl-window", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_smollm2")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate, records_table

    settings = make_settings({
        "threads": args.threads, "mc_limit": args.mc_limit, "tox_n_prompts": args.tox_prompts, "tox_k": args.tox_k,
        "tox_respectful": not args.no_respectful, "ppl_max_tokens": args.ppl_tokens, "ppl_window": args.ppl_window,
    })
    t_all = time.perf_counter()

    def echo(r):
        if r.get("error"):
            print(f"{r['suite']}/{r['metric']} {r['subset']}: ERROR {r['error']}", flush=True)
            return
        ci = f" 95% CI [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r.get("ci_low") is not None else ""
        print(f"{r['suite']:<10} {r['metric']:<22} {r['subset']:<24} {r['value']:.4f}{ci}  n={r['n']}  "
              f"time {r['time_s']:.1f} s", flush=True)

    records = evaluate(args.model, args.only.split(","), settings, out_dir=args.out, progress=True, echo=echo)
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(records_table(records).to_string(index=False))
    print(f"total {time.perf_counter() - t_all:.1f} s; records in {Path(args.out) / 'eval' / 'records.jsonl'}")
    return 2 if any(r.get("error") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
