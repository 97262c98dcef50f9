"""The IMDB sentiment-steering figures of a finished `experiments/imdb_sentiment.yaml` run:

* the classifier's held-out accuracy (``<run>/classifier/heldout_predictions.jsonl.gz``,
  test-split reviews it never trained on), with a bootstrap CI over reviews;
* the mean reward (``ppo.reward``, the classifier's POSITIVE logit, read through the same
  ``rlhf.rewards`` object PPO used) of the initial (SFT) policy and of the PPO policy on
  held-out prompts (the first ``ppo.prompt_words`` words of test-split reviews, never PPO
  prompts), ``--samples`` continuations each from the one sampler at PPO's temperature,
  with a bootstrap CI over prompts (``rlhf_eval.metrics.mean_ci``) and the paired
  difference; also the share of continuations the classifier calls positive.

    rlhf run experiments/imdb_sentiment.yaml classifier.data=$D/imdb.jsonl.gz ppo.data=$D/imdb.jsonl.gz
    python bench/imdb_sentiment.py runs/imdb_sentiment --data $D/imdb.jsonl.gz --out imdb.json

SmolLM2-135M-Instruct (model source ``smollm2-135m-instruct``) is a de-quantised Q4_1 GGUF,
not the original weights: its figures are those of the quantised model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the run directory")
    ap.add_argument("--data", required=True, help="the reviews (JSONL with split/text); prompts from split=test")
    ap.add_argument("--split", default="test", help="the held-out split the prompts come from")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2, help="continuations per prompt and policy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    a = ap.parse_args()

    import torch

    from rlhf.config import load_config
    from rlhf.data import filter_prompts, load_prompts
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.rewards import HFClassifierReward, classifier_logits, load_reward, parse_reward_spec
    from rlhf.rundir import stage_model
    from rlhf.sampling import sample
    from rlhf_eval.metrics import mean_ci

    torch.set_num_threads(a.threads)
    run = Path(a.run)
    cfg = load_config(run / "config.yaml")
    pc = cfg.ppo
    out: dict = {"run": str(run), "seed": a.seed, "n_prompts": a.n_prompts, "samples": a.samples,
                 "reward": pc.reward, "reward_label": pc.reward_label, "reward_input": pc.reward_input,
                 "model": cfg.model.source}

    # the classifier's held-out accuracy
    pred = run / "classifier" / "heldout_predictions.jsonl.gz"
    if pred.exists():
        with gzip.open(pred, "rt") as f:
            rows = [json.loads(line) for line in f]
        acc, lo, hi = mean_ci([float(r["pred"] == r["label"]) for r in rows], a.bootstrap, a.seed)
        summ = json.loads((run / "classifier" / "summary.json").read_text())
        out["classifier"] = {"heldout_accuracy": acc, "ci": [lo, hi], "n_heldout": len(rows),
                             "train_accuracy": summ.get("train_accuracy"), "n_train": summ.get("n_train"),
                             "steps": summ.get("steps"), "time_s": summ.get("time_s")}
        print(f"classifier: held-out accuracy {acc:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {len(rows)} test reviews; "
              f"train {summ.get('train_accuracy'):.3f}; {summ.get('steps')} steps in {summ.get('time_s'):.0f}s")

    # held-out prompts: openings of test-split reviews, never PPO prompts
    tok = load_tokenizer(cfg.model.source)
    prompts = load_prompts(a.data, "--data", split=a.split, words=pc.prompt_words)
    prompts = filter_prompts(prompts, tok, pc.max_prompt_tokens)
    prompts = random.Random(a.seed).sample(prompts, min(a.n_prompts, len(prompts)))
    spec = parse_reward_spec(pc.reward)
    reward = load_reward(spec, run, pc.reward_label, pc.reward_input, "float32", None,
                         cfg.classifier.max_length if spec.kind == "classifier" else cfg.rm.max_length)
    per_prompt = {}
    for label, path in (("sft", stage_model(run / "sft")), ("ppo", str(run / "ppo"))):
        t0 = time.time()
        policy = load_causal_lm(path).eval()
        s = sample(policy, tok, prompts, pc.max_new_tokens, temperature=pc.temperature, top_p=pc.top_p,
                   n=a.samples, seed=a.seed)
        r = reward.of_samples(s).numpy()
        row = {"mean_reward": None}
        if isinstance(reward, HFClassifierReward):  # the share the classifier calls positive (argmax)
            z = classifier_logits(reward.model, reward.tokenizer, reward.texts(s.prompts, s.bodies), reward.max_len)
            pos = (z.argmax(-1) == reward.label.a).float().numpy()
            v, lo, hi = mean_ci(pos.reshape(len(prompts), a.samples).mean(1), a.bootstrap, a.seed)
            row["positive_share"], row["positive_share_ci"] = v, [lo, hi]
        pp = r.reshape(len(prompts), a.samples).mean(1)
        per_prompt[label] = pp
        v, lo, hi = mean_ci(pp, a.bootstrap, a.seed)
        row.update(mean_reward=v, ci=[lo, hi], mean_len=float(s.response_mask.sum(1).float().mean()),
                   time_s=time.time() - t0,
                   examples=[{"prompt": p, "response": t, "reward": float(x)}
                             for p, t, x in list(zip(s.prompts, s.bodies, r))[:6:a.samples]])
        out[label] = row
        print(f"{label}: mean reward {v:.3f} (95% CI {lo:.3f}-{hi:.3f}) over {len(prompts)} held-out prompts x "
              f"{a.samples}" + (f"; classified positive {row['positive_share']:.2f} (CI "
                                 f"{row['positive_share_ci'][0]:.2f}-{row['positive_share_ci'][1]:.2f})"
                                 if "positive_share" in row else ""))
        del policy
    d, lo, hi = mean_ci(per_prompt["ppo"] - per_prompt["sft"], a.bootstrap, a.seed)
    out["delta"] = {"mean": d, "ci": [lo, hi]}
    print(f"PPO - SFT: {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, paired over prompts)")
    ppo_summary = run / "ppo" / "summary.json"
    if ppo_summary.exists():
        ps = json.loads(ppo_summary.read_text())
        out["ppo_stage"] = {k: ps.get(k) for k in ("steps", "final_rm_score", "final_kl", "time_s")}
        out["ppo_stage"]["first_rm_score"] = ps.get("first", {}).get("rm_score")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
