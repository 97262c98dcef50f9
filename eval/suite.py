"""The evaluation suite: what to evaluate, running each metric, writing tidy records.

    from rlhf_eval.suite import evaluate
    records = evaluate("runs/quickstart", suites=["truthfulqa", "toxicity"], settings=make_settings(["tox_k=5"]))

``evaluate`` takes a checkpoint folder, a run directory (every checkpoint in it, or those
named) or any Hugging Face causal-LM name/path, and appends one record per (checkpoint,
metric, subset) to ``<run dir>/eval/records.jsonl`` as each metric finishes. A metric that
fails becomes a record with an ``error`` field; the others still run.
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional


from rlhf.errors import InputError
from rlhf.rundir import append_jsonl, read_jsonl, stage_model

from . import data as evdata
from . import metrics
from .settings import SUITES, EvalSettings, make_settings, to_dict

RECORDS = Path("eval") / "records.jsonl"
RECORD_FIELDS = ("checkpoint", "checkpoint_label", "suite", "metric", "subset", "value", "ci_low", "ci_high", "n",
                 "delta_vs_ref", "ref_checkpoint", "time_s", "error")


class EvalError(InputError):
    """Bad input to the suite (not a model, unknown suite, ...): the CLI exits with 2."""


# -------------------------------------------------------------------- targets
@dataclass
class Checkpoint:
    path: str  # a folder, or a hub name / named source
    label: str


@dataclass
class Target:
    out_dir: Path  # records go to out_dir/eval/records.jsonl
    checkpoints: list[Checkpoint]
    run_dir: Optional[Path] = None  # the training run, when there is one
    world: Any = None

    @property
    def records_path(self) -> Path:
        return self.out_dir / RECORDS


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file()


def _is_run_dir(p: Path) -> bool:
    if not p.is_dir() or _is_model_dir(p):
        return False
    markers = ("config.yaml", "status.json", "world", "pretrain", "sft", "ppo", "rm")
    return any((p / m).exists() for m in markers)


def _kl_level(p: Path) -> float:
    m = re.search(r"([0-9]+(?:\.[0-9]+)?)", p.name)
    return float(m.group(1)) if m else math.inf


def run_checkpoints(run: Path) -> list[Checkpoint]:
    """The policies of a run in training order: pretrain, sft, ppo/kl/kl_* (by KL), ppo.
    (rm/ is a reward model, not a policy.)"""
    out = []
    for name in ("pretrain", "sft"):
        path = stage_model(run / name)  # sft/ may point to its source model (sft.skip)
        if path is not None:
            out.append(Checkpoint(path, name))
    kl_dir = run / "ppo" / "kl"
    if kl_dir.is_dir():
        for p in sorted((q for q in kl_dir.iterdir() if _is_model_dir(q)), key=_kl_level):
            out.append(Checkpoint(str(p), f"ppo/{p.name}"))
    if _is_model_dir(run / "ppo"):
        out.append(Checkpoint(str(run / "ppo"), "ppo"))
    return out


def _label_in_run(run: Path, p: Path) -> str:
    rel = p.resolve().relative_to(run.resolve()).as_posix()
    return rel.replace("ppo/kl/", "ppo/")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "model"


def discover(path: str, names: Optional[list[str]] = None, out_dir: Optional[str] = None) -> Target:
    """Work out what ``path`` is. Raises EvalError for a path that is not a model."""
    p = Path(path).expanduser()
    run: Optional[Path] = None
    if p.exists():
        if _is_run_dir(p):
            run = p
            cps = run_checkpoints(p)
            if names:
                by_label = {c.label: c for c in cps}
                chosen = []
                for n in names:
                    if n in by_label:
                        chosen.append(by_label[n])
                    elif _is_model_dir(p / n):
                        chosen.append(Checkpoint(str(p / n), _label_in_run(p, p / n)))
                    else:
                        raise EvalError(f"run {p} has no checkpoint {n!r} (has: {', '.join(by_label) or 'none'})")
                cps = chosen
            if not cps:
                raise EvalError(f"run directory {p} has no model checkpoints (pretrain/, sft/, ppo/...)")
        elif _is_model_dir(p):
            for anc in list(p.resolve().parents)[:4]:
                if (anc / "config.yaml").is_file() or (anc / "world" / "world.json").is_file():
                    run = anc
                    break
            label = _label_in_run(run, p) if run else p.name
            cps = [Checkpoint(str(p), label)]
        else:
            raise EvalError(f"{path} is not a model checkpoint (no config.json) nor a run directory")
    else:
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise EvalError(f"model path {path} does not exist")
        cps = [Checkpoint(path, path)]  # a hub name or named source
    if out_dir:
        out = Path(out_dir)
    elif run is not None:
        out = run
    else:
        out = Path("runs") / "eval" / _safe_name(path)
    world = None
    if run is not None and (run / "world" / "world.json").is_file():
        from rlhf.world import World
        world = World.load(run / "world")
    return Target(out, cps, run, world)


def reference_checkpoint(target: Target, settings: EvalSettings) -> Optional[Checkpoint]:
    """The regression reference: the ``reference`` setting, else the run's sft/, else pretrain/."""
    if settings.reference:
        return Checkpoint(settings.reference, "reference")
    if target.run_dir is not None:
        for name in ("sft", "pretrain"):
            path = stage_model(target.run_dir / name)
            if path is not None:
                return Checkpoint(path, name)
    return None


# -------------------------------------------------------------------- records
class Recorder:
    """Appends records as they finish and keeps them for the caller."""

    def __init__(self, path: Path, base: dict, write: bool = True, echo: Optional[Callable[[dict], None]] = None):
        self.path, self.base, self.write, self.echo = path, base, write, echo
        self.records: list[dict] = []

    def add(self, cp: Checkpoint, suite: str, metric: str, value=None, ci=(None, None), n=None, subset="",
            delta=None, ref=None, time_s=None, error=None, **extra) -> dict:
        def clean(x):
            if x is None:
                return None
            x = float(x)
            return None if math.isnan(x) else x
        rec = {"checkpoint": cp.path, "checkpoint_label": cp.label, "suite": suite, "metric": metric,
               "subset": subset, "value": clean(value), "ci_low": clean(ci[0]), "ci_high": clean(ci[1]),
               "n": n, "delta_vs_ref": clean(delta), "ref_checkpoint": ref, "time_s": time_s, "error": error}
        rec.update(extra)
        rec.update(self.base)
        rec["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.write:
            append_jsonl(self.path, rec)
        self.records.append(rec)
        if self.echo:
            self.echo(rec)
        return rec


def write_samples(target: Target, cp: Checkpoint, suite: str, subset: str, rows: list[dict]) -> str:
    """Keep the sampled texts behind a metric: ``<out>/eval/samples/<checkpoint label, / as
    _>/<suite>-<subset>.jsonl.gz``, one row per sample (prompt, response, its scores).
    Returns the path relative to the output (run) directory, for the record's ``samples``."""
    from rlhf.rundir import write_jsonl_gz
    rel = Path("eval") / "samples" / cp.label.replace("/", "_") / f"{suite}-{subset.replace('/', '_')}.jsonl.gz"
    write_jsonl_gz(target.out_dir / rel, rows)
    return rel.as_posix()


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# -------------------------------------------------------------------- runners
class Context:
    """Everything a metric needs about the target and the settings."""

    def __init__(self, target: Target, settings: EvalSettings, progress: bool):
        self.target, self.s, self.progress = target, settings, progress
        import torch

        from rlhf.models import pick_device, set_threads
        set_threads(settings.threads)
        self.device = pick_device(settings.device)
        self._cache: dict[str, Any] = {}
        self.torch = torch

    @property
    def world(self):
        return self.target.world

    def load(self, cp: Checkpoint):
        """(model, tokenizer) of a checkpoint; in a run, its tokenizer follows the run's
        ``model.chat_template`` (``rlhf.chat.apply_setting``), as in training."""
        from .models import load_policy
        fallback = self.target.run_dir / "world" / "tokenizer" if self.target.run_dir else None
        model, tok = load_policy(cp.path, self.s.dtype, self.device, fallback)
        if self.target.run_dir is not None and (self.target.run_dir / "config.yaml").exists():
            from rlhf.chat import apply_setting
            from rlhf.config import load_config
            apply_setting(tok, load_config(self.target.run_dir / "config.yaml").model.chat_template, cp.path)
        return model, tok

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


def run_truthfulqa(ctx: Context, cp: Checkpoint, model, tok, rec: Recorder) -> None:
    """MC1 and MC2 through lm-eval: TruthfulQA, or the toy world's questions."""
    from . import lmeval
    s = ctx.s
    t0 = time.perf_counter()
    if ctx.world is not None:
        def rows():
            r = [{k: q[k] for k in ("question", "mc1_targets", "mc2_targets")} for q in ctx.world.mc_questions()]
            return r, "world.mc_questions()"
        tasks = {"mc1": "rlhf_world_mc1", "mc2": "rlhf_world_mc2"}
    else:
        rows = lambda: evdata.truthfulqa_rows(s)  # noqa: E731
        tasks = {"mc1": "rlhf_truthfulqa_mc1", "mc2": "rlhf_truthfulqa_mc2"}
    try:
        data_rows, source = ctx.cached("truthfulqa_rows", rows)
        path = evdata.write_rows_cached(data_rows, s.resolved_cache_dir(), "mc")
        lm = lmeval.make_lm(model, tok, s.mc_batch_size)
        res = lmeval.run_tasks(lm, list(tasks.values()), metadata={"mc_data_file": str(path)},
                               limit=s.mc_limit or None, seed=s.seed)
    except Exception as e:
        for m in tasks:
            rec.add(cp, "truthfulqa", m, time_s=time.perf_counter() - t0, error=_err(e))
        return
    dt = time.perf_counter() - t0
    heldout_q = None
    if ctx.world is not None:  # facts whose question is in the eval split (held out from SFT, RM and PPO)
        heldout_q = {p.text for p in ctx.world.eval_prompts() if p.kind == "question"}
    for m, task in tasks.items():
        samples = res[task]["samples"]
        vals = [x["acc"] for x in samples]
        mean, lo, hi = metrics.mean_ci(vals, s.bootstrap, s.seed)
        rec.add(cp, "truthfulqa", m, mean, (lo, hi), len(vals), subset="world" if ctx.world is not None else "all",
                time_s=dt, data=source, task=task)
        if heldout_q is not None:
            held = [x["acc"] for i, x in enumerate(samples)
                    if data_rows[x["doc_id"] if x.get("doc_id") is not None else i]["question"] in heldout_q]
            mean, lo, hi = metrics.mean_ci(held, s.bootstrap, s.seed)
            rec.add(cp, "truthfulqa", m, mean if held else None, (lo, hi), len(held), subset="heldout", time_s=dt,
                    data=source + " (questions in world.eval_prompts())", task=task)


def run_bias(ctx: Context, cp: Checkpoint, model, tok, rec: Recorder) -> None:
    """CrowS-Pairs and BBQ through lm-eval (``rlhf_eval.bias``): per bias type / category records,
    each item's log-likelihoods and answer kept in ``eval/samples/<label>/bias-<dataset>.jsonl.gz``."""
    from . import bias, lmeval
    s = ctx.s
    lm = None
    for name in s.bias_datasets:
        t0 = time.perf_counter()
        try:
            rows, source = ctx.cached(f"bias_rows_{name}", lambda name=name: bias.load_rows(name, s))
            lm = lm or lmeval.make_lm(model, tok, s.mc_batch_size)
            items = bias.score_items(name, lm, rows, s.resolved_cache_dir(), s.seed)
        except Exception as e:
            for m in bias.METRICS[name]:
                rec.add(cp, "bias", m, subset="all", time_s=time.perf_counter() - t0, error=_err(e))
            continue
        dt = time.perf_counter() - t0
        path = write_samples(ctx.target, cp, "bias", name, items)
        for r in bias.metric_records(name, items, s.bootstrap, s.seed):
            rec.add(cp, "bias", r["metric"], r["value"], r["ci"], r["n"], subset=r["subset"], time_s=dt, data=source,
                    dataset=name, task=bias.TASKS[name], samples=path, **r["extra"])


def _tox_prompts(ctx: Context) -> tuple[dict[str, list[str]], str, str]:
    s = ctx.s
    if ctx.world is not None:
        from rlhf.world import RESPECTFUL_PREFIX
        sets = ctx.world.toxicity_prompt_sets(s.tox_n_prompts, s.seed)
        out = {k: [p.text for p in v] for k, v in sets.items()}
        return out, "world.toxicity_prompts()", RESPECTFUL_PREFIX
    from .toxicity import RESPECTFUL_INSTRUCTION
    out, src = evdata.rtp_prompts(s, s.tox_n_prompts, s.seed)
    return out, src, RESPECTFUL_INSTRUCTION


def run_toxicity(ctx: Context, cp: Checkpoint, model, tok, rec: Recorder) -> None:
    from . import toxicity as tx
    s = ctx.s
    try:
        prompts, source, prefix = ctx.cached("tox_prompts", lambda: _tox_prompts(ctx))
        scorer = ctx.cached("tox_scorer", lambda: tx.make_scorer(s.tox_scorer, None, s.tox_hf_label,
                                                                   toy_world=ctx.world is not None))
    except Exception as e:
        for m in ("expected_max_toxicity", "toxicity_probability"):
            rec.add(cp, "toxicity", m, error=_err(e))
        return
    variants = [("", "")] + ([("+respectful", prefix)] if s.tox_respectful else [])
    for suffix, pre in variants:
        for subset in ("challenging", "other"):
            ps = prompts.get(subset) or []
            if not ps:
                continue
            t0 = time.perf_counter()
            try:
                out = tx.evaluate_prompts(model, tok, ps, scorer, s.tox_k, s.tox_max_new_tokens, s.tox_temperature,
                                          s.tox_top_p, s.tox_prompts_per_call, s.tox_threshold, s.bootstrap, s.seed,
                                          prefix=pre, progress=ctx.progress)
            except Exception as e:
                for m in ("expected_max_toxicity", "toxicity_probability"):
                    rec.add(cp, "toxicity", m, subset=subset + suffix, time_s=time.perf_counter() - t0, error=_err(e))
                continue
            dt = time.perf_counter() - t0
            path = write_samples(ctx.target, cp, "toxicity", subset + suffix, out["samples"])
            for m in ("expected_max_toxicity", "toxicity_probability", "mean_toxicity"):
                v, lo, hi = out[m]
                rec.add(cp, "toxicity", m, v, (lo, hi), out["n_prompts"], subset=subset + suffix, time_s=dt,
                        k=out["k"], scorer=scorer.name, data=source, tokens=out["tokens"],
                        sample_seconds=out["sample_seconds"], samples=path)


def _regression_values(ctx: Context, model, tok) -> dict[str, dict]:
    """{metric_key: {"value", "n", "extra", "error"}} for held-out LM loss/PPL and lm tasks."""
    from rlhf.heldout import heldout_nll, heldout_text

    from .regression import lm_task_records
    s = ctx.s
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    if s.heldout_ppl:
        try:
            if ctx.world is not None:
                text, src = heldout_text(ctx.world.heldout_corpus()), "world.heldout_corpus()"
                subset = "pretrain_heldout"
            else:
                text, src = ctx.cached("wikitext", lambda: evdata.wikitext_text(s))
                subset = "wikitext2_test"
            r = heldout_nll(model, tok, text, s.ppl_window, s.ppl_stride, s.ppl_max_tokens, ctx.progress)
            dt = time.perf_counter() - t0
            extra = {"data": src, "window": r["window"], "stride": r["stride"]}
            for m, v in (("lm_loss", r["loss"]), ("perplexity", r["perplexity"])):
                out[m] = {"value": v, "n": r["n_tokens"], "subset": subset, "time_s": dt, "extra": extra}
        except Exception as e:
            for m in ("lm_loss", "perplexity"):
                out[m] = {"error": _err(e), "time_s": time.perf_counter() - t0}
    if s.lm_tasks:
        from . import lmeval
        for task in s.lm_tasks:
            t0 = time.perf_counter()
            try:
                res = lm_task_records(lmeval.make_lm(model, tok, s.mc_batch_size), [task], s.lm_tasks_limit, s.seed)
                dt = time.perf_counter() - t0
                for tname, r in res.items():
                    for m, v in r["metrics"].items():
                        if m == "sample_len":
                            continue
                        # the CI of the task's own aggregation (exp(-mean) for perplexity, ...), in its unit
                        vals = [x[m] for x in r["samples"] if m in x]
                        agg = r.get("aggregations", {}).get(m)
                        _, lo, hi = (metrics.aggregate_ci(vals, agg, s.bootstrap, s.seed) if vals and agg
                                     else (v, None, None))
                        out[f"{tname}/{m}"] = {"value": v, "n": r["n"], "subset": tname, "time_s": dt,
                                               "ci": (lo, hi), "extra": {"task": tname}, "metric": m}
            except Exception as e:
                out[f"{task}/?"] = {"error": _err(e), "time_s": time.perf_counter() - t0, "subset": task, "metric": "task"}
    return out


def run_regression(ctx: Context, cp: Checkpoint, model, tok, rec: Recorder, ref: Optional[Checkpoint]) -> None:
    vals = _regression_values(ctx, model, tok)
    if ref is not None and "ref_regression" not in ctx._cache and _same(ref.path, cp.path):
        ctx._cache["ref_regression"] = vals  # the reference itself: no second pass
    ref_vals = None
    if ref is not None:
        try:
            ref_vals = ctx.cached("ref_regression", lambda: _ref_regression(ctx, ref))
        except Exception as e:
            ref_vals = {"__error__": _err(e)}
    for key, v in vals.items():
        metric = v.get("metric", key)
        if v.get("error"):
            rec.add(cp, "regression", metric, subset=v.get("subset", ""), time_s=v.get("time_s"), error=v["error"])
            continue
        rv = (ref_vals or {}).get(key, {})
        d = v["value"] - rv["value"] if rv.get("value") is not None else None
        extra = dict(v.get("extra", {}))
        if ref_vals and "__error__" in ref_vals:
            extra["ref_error"] = ref_vals["__error__"]
        rec.add(cp, "regression", metric, v["value"], v.get("ci", (None, None)), v["n"], subset=v["subset"], delta=d,
                ref=ref.path if ref is not None else None, ref_value=rv.get("value"), time_s=v["time_s"], **extra)


def _same(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _ref_regression(ctx: Context, ref: Checkpoint) -> dict:
    model, tok = ctx.load(ref)
    try:
        return _regression_values(ctx, model, tok)
    finally:
        del model
        gc.collect()


def _rl_rows(r: dict, prompts: list[str]) -> list[dict]:
    smp = r["samples"]
    return [{"prompt": prompts[i], "response": t, "rm_score": float(a), "gold_reward": float(g), "kl": float(k)}
            for i, t, a, g, k in zip(smp.prompt_index, smp.texts, r["rm_score_all"], r["gold_reward_all"], r["kl_all"])]


def _truth_rates(world, meta, r: dict) -> Optional[dict]:
    """myth_rate and truth_rate over the sampled answers to question prompts about myth
    facts (``World.myth_answers``), grouped by prompt for the CI; and the per-prompt table of
    the stereotype bias probe (``World.stereotype_answers``, ``stats.stereotype_table``)."""
    if world is None or meta is None:
        return None
    from rlhf.stats import stereotype_table
    smp = r["samples"]
    ps = [meta[i] for i in smp.prompt_index]
    myth, truth, rows = world.myth_answers(ps, smp.texts)
    hit, in_group, b_rows = world.stereotype_answers(ps, smp.texts)
    return {"myth_rate": myth, "truth_rate": truth, "groups": [smp.prompt_index[j] for j in rows],
            "bias_table": stereotype_table(hit, in_group, [smp.prompt_index[j] for j in b_rows])}


def _record_rl_point(ctx: Context, rec: Recorder, cp: Checkpoint, r: dict, prompts, meta, dt: float) -> None:
    """The records of one RL point (a policy sampled on the eval prompts): rm_score,
    gold_reward, kl (CIs resample prompts) and, in the toy world, myth_rate, truth_rate and
    stereotype_bias."""
    s = ctx.s
    path = write_samples(ctx.target, cp, "overopt", "rl", _rl_rows(r, prompts))
    groups = r["samples"].prompt_index
    kl, d = r["kl"], math.sqrt(max(r["kl"], 0.0))
    for m in ("rm_score", "gold_reward"):
        v, lo, hi = metrics.cluster_mean_ci(r[f"{m}_all"], groups, s.bootstrap, s.seed)
        rec.add(cp, "overopt", m, v, (lo, hi), n=r["n"], subset="rl", time_s=dt, method="rl", kl=kl, d=d,
                samples=path)
    _, lo, hi = metrics.cluster_mean_ci(r["kl_all"], groups, s.bootstrap, s.seed)
    rec.add(cp, "overopt", "kl", kl, (lo, hi), n=r["n"], subset="rl", time_s=dt, method="rl", kl=kl,
            kl_kind="sampled", samples=path)
    rates = _truth_rates(ctx.world, meta, r)
    if rates is not None:
        for m in ("myth_rate", "truth_rate"):
            v, lo, hi = metrics.cluster_mean_ci(rates[m], rates["groups"], s.bootstrap, s.seed)
            rec.add(cp, "overopt", m, v if rates[m] else None, (lo, hi), n=len(rates[m]), subset="rl", time_s=dt,
                    method="rl", kl=kl, d=d, samples=path, n_prompts=len(set(rates["groups"])))
        # the bias probe: a difference of two rates, so the prompt-clustered bootstrap resamples
        # the per-prompt table and recomputes the statistic
        from rlhf.stats import stereotype_bias
        t = rates["bias_table"]
        v = stereotype_bias(t)
        lo, hi = metrics.bootstrap_ci(t, stereotype_bias, s.bootstrap, s.seed)
        rec.add(cp, "overopt", "stereotype_bias", v, (lo, hi), n=int(t[:, [1, 3]].sum()),
                subset="rl", time_s=dt, method="rl", kl=kl, d=d, samples=path, n_prompts=len(t))


def run_overopt(ctx: Context, rec: Recorder) -> None:
    """Gao et al. over-optimisation along the run's policies (SFT as the RL point at KL 0,
    every ppo/kl/* policy and the final ppo) and best-of-n from SFT. Every point's samples
    come from the one sampler and are scored by the one RM scoring function."""
    from rlhf.models import load_reward_model
    from rlhf.reward import rm_max_length

    from . import overopt as oo
    s = ctx.s
    tgt = ctx.target
    run = tgt.run_dir
    sft_path = stage_model(run / "sft") if run is not None else None
    sft_cp = Checkpoint(sft_path or (str(run / "sft") if run is not None else ""), "sft")
    t0 = time.perf_counter()
    try:
        if sft_path is None or not _is_model_dir(run / "rm"):
            raise EvalError("overopt needs a run directory with sft/ and rm/ checkpoints")
        sft, tok = ctx.load(sft_cp)
        rm = load_reward_model(str(run / "rm"), s.dtype, ctx.device).eval()
        if rm.config.vocab_size != sft.config.vocab_size:
            raise EvalError(f"the reward model {run / 'rm'} and the policy do not share a vocabulary")
        rm_len = rm_max_length(rm, _run_rm_max_length(run))
        prompts, gold, meta = _overopt_prompts_and_gold(ctx, tok)
    except Exception as e:
        rec.add(sft_cp, "overopt", "gold_reward", subset="setup", time_s=time.perf_counter() - t0, error=_err(e))
        return
    # best-of-n from the SFT policy
    try:
        t0 = time.perf_counter()
        r = oo.evaluate_policy(sft, sft, rm, tok, prompts, gold, s.bon_max_n, s.overopt_max_new_tokens, s.seed,
                               rm_len, ctx.progress)
        P = len(prompts)
        curve = oo.best_of_n_curve(r["rm_score_all"].reshape(P, s.bon_max_n),
                                   r["gold_reward_all"].reshape(P, s.bon_max_n), s.bon_max_n)
        dt = time.perf_counter() - t0
        path = write_samples(tgt, sft_cp, "overopt", "bon", _rl_rows(r, prompts))
        for pt in curve:
            for m in ("rm_score", "gold_reward"):
                rec.add(sft_cp, "overopt", m, pt[m], n=P * s.bon_max_n, subset=f"bon_n={pt['n']}",
                        time_s=dt, method="bon", bon_n=pt["n"], kl=pt["kl"], d=math.sqrt(pt["kl"]), samples=path)
            rec.add(sft_cp, "overopt", "kl", pt["kl"], n=P, subset=f"bon_n={pt['n']}", time_s=dt, method="bon",
                    bon_n=pt["n"], kl=pt["kl"], kl_kind="closed_form", samples=path)
    except Exception as e:
        rec.add(sft_cp, "overopt", "gold_reward", subset="bon", time_s=time.perf_counter() - t0, error=_err(e))
        curve = []
    # RL points: SFT itself (KL 0), then every PPO policy, the same number of samples each
    rl_points = []
    base = None
    for cp in [sft_cp] + [c for c in run_checkpoints(run) if c.label.startswith("ppo")]:
        t0 = time.perf_counter()
        try:
            pol = sft if cp is sft_cp else ctx.load(cp)[0]
            r = oo.evaluate_policy(pol, sft, rm, tok, prompts, gold, s.overopt_samples, s.overopt_max_new_tokens,
                                   s.seed, rm_len, ctx.progress)
            del pol
            _record_rl_point(ctx, rec, cp, r, prompts, meta, time.perf_counter() - t0)
            point = {"label": cp.label, "kl": r["kl"], "gold_reward": r["gold_reward"], "rm_score": r["rm_score"]}
            if cp is sft_cp:
                base = point
            rl_points.append(point)
        except Exception as e:
            rec.add(cp, "overopt", "gold_reward", subset="rl", time_s=time.perf_counter() - t0, error=_err(e))
    # gains are measured against the SFT policy: its best-of-1 point (bon) and its RL point (rl)
    f = {}
    if curve:
        f.update({k: v for k, v in oo.fits(curve, [], curve[0]["gold_reward"], curve[0]["rm_score"]).items()})
    if base is not None:
        f.update({k: v for k, v in oo.fits([], rl_points, base["gold_reward"], base["rm_score"]).items()})
    for key, v in f.items():
        method, which = key.split("_", 1)
        rec.add(sft_cp, "overopt", f"fit_{which}", v["r2"], n=v["n"], subset=method, method=method,
                alpha=v["alpha"], beta=v["beta"], r2=v["r2"],
                form="d*(alpha-beta*d)" if method == "bon" else "d*(alpha-beta*log(d))")


def _run_rm_max_length(run: Path) -> int:
    """The run's ``rm.max_length`` (the reward model read at most that many tokens in training)."""
    from rlhf.config import load_config
    try:
        return load_config(run / "config.yaml").rm.max_length
    except Exception:
        from rlhf.config import RMConfig
        return RMConfig().max_length


def _overopt_prompts_and_gold(ctx: Context, tok):
    """(prompt texts the policy continues, gold(i, response), the toy world's Prompt
    objects or None). With a chat template the prompts are templated for the policy's
    tokenizer ``tok`` (``rlhf.chat.prompt_text``), as in PPO."""
    from rlhf.chat import prompt_text
    s = ctx.s
    import random
    rng = random.Random(s.seed)
    if ctx.world is not None:
        ps = ctx.world.eval_prompts()
        ps = rng.sample(ps, min(s.overopt_n_prompts, len(ps)))
        world = ctx.world
        return [prompt_text(tok, p.text) for p in ps], (lambda i, resp: world.gold_reward(ps[i], resp)), ps
    if not s.gold_rm:
        raise EvalError("overopt outside the toy world needs the 'gold_rm' setting (a reward model name or path)")
    prompts, gold = _gold_rm_prompts_and_gold(ctx, rng, tok)
    return prompts, gold, None


def _gold_rm_prompts_and_gold(ctx: Context, rng, tok):
    """Real models: prompts from ``overopt_prompts`` (default: the run's ``ppo.data``, with its
    ``ppo.data_split`` and ``ppo.prompt_words``) and the gold reward ``gold_rm``, a reward
    spec read by the same parser and loader as ``ppo.reward`` (``rlhf.rewards``): a reward
    model (e.g. one trained on more comparisons than the run's RM, read like rm_score by
    ``rlhf.reward.score_texts``), a classifier (``gold_label``, ``gold_input``) or a Python
    function. A gold reward model reads the raw prompt through its own tokenizer's template
    and the response as its own turn (``RMReward.for_policy``, ``rlhf.chat.gold_sequence``):
    the same sequence as the run's RM when both share a tokenizer. Returns (the prompts as
    the policy reads them, the :class:`rlhf.rewards.RewardFn`)."""
    from rlhf.chat import prompt_text
    from rlhf.rewards import RMReward
    from rlhf.config import load_config
    from rlhf.data import load_prompts as load_prompt_file
    from rlhf.rewards import load_reward, parse_reward_spec
    s = ctx.s
    run = ctx.target.run_dir
    cfg = load_config(run / "config.yaml")
    if s.overopt_prompts:
        raw = load_prompt_file(s.overopt_prompts, "overopt_prompts")
    else:
        raw = load_prompt_file(cfg.ppo.data, split=cfg.ppo.data_split, words=cfg.ppo.prompt_words)
    raw = rng.sample(raw, min(s.overopt_n_prompts, len(raw)))
    spec = parse_reward_spec(s.gold_rm, "gold_rm", bare_path_is_rm=True)
    try:
        gold = load_reward(spec, run, s.gold_label, s.gold_input, s.dtype, ctx.device,
                           cfg.classifier.max_length if spec.kind == "classifier" else cfg.rm.max_length,
                           key="gold_rm", label_key="gold_label")
    except InputError as e:
        raise EvalError(str(e)) from None
    except Exception as e:
        raise EvalError(f"gold_rm={s.gold_rm!r} is not a loadable reward: {e}") from None
    prompts = [prompt_text(tok, p) for p in raw]
    if isinstance(gold, RMReward):
        if cfg.model.chat_template == "off":  # plain text for the gold model too
            gold.tokenizer.chat_template = None
        gold.for_policy(tok, dict(zip(prompts, raw)))
    return prompts, gold


# ------------------------------------------------------------------- evaluate
def preflight(target: Target, suites: list[str], settings: EvalSettings) -> None:
    """Check inputs before any compute: bad ones raise with a message naming them."""
    from . import toxicity as tx
    from .models import resolve
    for cp in target.checkpoints:  # hub names are only checked when loaded
        if Path(cp.path).exists() or cp.path == "smollm2-135m-instruct":
            try:
                resolve(cp.path)
            except Exception as e:
                raise EvalError(str(e)) from None
    if target.world is None:
        if "truthfulqa" in suites:
            evdata.resolve_source(settings.truthfulqa, (evdata.TRUTHFULQA_FILE,), settings, "truthfulqa")
        if "toxicity" in suites:
            evdata.resolve_source(settings.rtp, evdata.RTP_FILES, settings, "rtp")
        if "regression" in suites:
            evdata.resolve_source(settings.wikitext, (evdata.WIKITEXT_FILE,), settings, "wikitext")
    if "bias" in suites:
        from .bias import check_sources
        check_sources(settings)
    if "overopt" in suites and settings.gold_rm:  # the gold reward spec parses and its function imports
        from rlhf.rewards import check_reward_spec, parse_reward_spec
        check_reward_spec(parse_reward_spec(settings.gold_rm, "gold_rm", bare_path_is_rm=True), "gold_rm")
    if "toxicity" in suites and settings.tox_scorer not in ("auto", "profanity-check", "lexicon") \
            and not settings.tox_scorer.startswith("hf:"):
        raise tx.ScorerError(f"unknown toxicity scorer {settings.tox_scorer!r} (profanity-check, lexicon, hf:<name>)")
    if "regression" in suites and settings.lm_tasks:
        from .lmeval import resolve_tasks
        resolve_tasks(settings.lm_tasks)


def default_suites(target: Target) -> list[str]:
    out = ["truthfulqa", "toxicity", "regression"]
    if target.world is None:  # English benchmarks: not a default for toy-world runs (a word-level world tokenizer)
        out.append("bias")
    if target.run_dir is not None and _is_model_dir(target.run_dir / "rm") and stage_model(target.run_dir / "sft"):
        out.append("overopt")
    return out


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _unrunnable(target: Target, suite: str, settings: EvalSettings) -> Optional[str]:
    """Why a default suite cannot run on ``target`` (None when it can): outside the toy world,
    overopt without a ``gold_rm``; a benchmark with neither a local copy nor a reachable hub
    (offline); or a data source that fails its preflight check."""
    if target.world is not None:
        return None
    if suite == "overopt":
        return None if settings.gold_rm else "outside the toy world it needs a gold reward model: gold_rm=<name or path>"
    files = {"truthfulqa": (settings.truthfulqa, (evdata.TRUTHFULQA_FILE,)),
             "toxicity": (settings.rtp, evdata.RTP_FILES),
             "regression": (settings.wikitext, (evdata.WIKITEXT_FILE,))}
    try:
        if suite in files:
            kind, _ = evdata.resolve_source(*files[suite], settings, "rtp" if suite == "toxicity" else suite)
            if kind == "hub" and _hub_offline():
                return (f"no local copy of its data (data_dir={settings.resolved_data_dir() or 'none'}) and the hub "
                        f"is offline: set data_dir=... or RLHF_DATA_DIR")
        elif suite == "bias":
            from .bias import bbq_source, check_sources, crows_source
            check_sources(settings)
            hub = [n for n in settings.bias_datasets
                   if (crows_source if n == "crows_pairs" else bbq_source)(settings)[0] == "hub"]
            if hub and _hub_offline():
                return f"no local copy of {', '.join(hub)} and the hub is offline: set data_dir=... or RLHF_DATA_DIR"
    except evdata.DataError as e:
        return str(e)
    return None


def runnable_default_suites(target: Target, settings: EvalSettings) -> tuple[list[str], list[tuple[str, str]]]:
    """The default suites of ``target`` that can run, and (suite, why not) for the others:
    ``rlhf eval <run>`` with no suite named skips those with a note instead of failing."""
    kept, skipped = [], []
    for suite in default_suites(target):
        why = _unrunnable(target, suite, settings)
        if why is None:
            kept.append(suite)
        else:
            skipped.append((suite, why))
    return kept, skipped


def evaluate(path: str, suites: Optional[Iterable[str]] = None, settings: Optional[EvalSettings] = None,
             checkpoints: Optional[list[str]] = None, out_dir: Optional[str] = None, write: bool = True,
             progress: bool = True, echo: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Evaluate ``path`` on ``suites`` and return the records (also appended to
    ``<run dir>/eval/records.jsonl`` unless ``write`` is False).

    Raises EvalError / DataError / TaskError / ScorerError / SettingsError for bad input
    before any compute; metric failures during the run become records with ``error``.
    With no ``suites`` named, the default suites that cannot run on ``path``
    (:func:`runnable_default_suites`: overopt outside the toy world without ``gold_rm``, a
    benchmark with no local data while the hub is offline) are skipped with a note on stderr.
    """
    settings = settings or make_settings()
    target = discover(path, checkpoints, out_dir)
    if suites:
        suites = list(suites)
    else:  # the defaults: a suite that cannot run here is skipped with a note, never an error
        suites, skipped = runnable_default_suites(target, settings)
        for suite, why in skipped:
            print(f"rlhf eval: skipped suite {suite}: {why}", file=sys.stderr, flush=True)
    bad = [x for x in suites if x not in SUITES]
    if bad:
        raise EvalError(f"unknown suite(s) {', '.join(bad)} (known: {', '.join(SUITES)})")
    preflight(target, suites, settings)
    from rlhf.models import seed_everything
    seed_everything(settings.seed)
    ctx = Context(target, settings, progress)
    sett = {k: v for k, v in to_dict(settings).items()}
    rec = Recorder(target.records_path, {"settings": sett, "world": target.world is not None}, write, echo)
    ref = reference_checkpoint(target, settings) if "regression" in suites else None
    per_cp = [x for x in suites if x != "overopt"]
    for cp in target.checkpoints:
        if not per_cp:
            break
        t0 = time.perf_counter()
        try:
            model, tok = ctx.load(cp)
        except Exception as e:
            for suite in per_cp:
                rec.add(cp, suite, "load", time_s=time.perf_counter() - t0, error=_err(e))
            continue
        for suite in per_cp:
            try:
                if suite == "truthfulqa":
                    run_truthfulqa(ctx, cp, model, tok, rec)
                elif suite == "toxicity":
                    run_toxicity(ctx, cp, model, tok, rec)
                elif suite == "regression":
                    run_regression(ctx, cp, model, tok, rec, ref)
                elif suite == "bias":
                    run_bias(ctx, cp, model, tok, rec)
            except Exception as e:  # a bug in one suite never loses the others
                rec.add(cp, suite, "suite", error=_err(e), traceback=traceback.format_exc(limit=5))
        del model
        gc.collect()
    if "overopt" in suites:
        try:
            run_overopt(ctx, rec)
        except Exception as e:
            rec.add(Checkpoint(str(target.run_dir), "run"), "overopt", "suite", error=_err(e),
                    traceback=traceback.format_exc(limit=5))
    return rec.records


def load_records(run_dir: str | Path):
    """The records of a run as a pandas DataFrame (the analysis module reads this)."""
    import pandas as pd
    rows = read_jsonl(Path(run_dir) / RECORDS)
    return pd.DataFrame(rows, columns=None if rows else list(RECORD_FIELDS))


def records_table(records: list[dict]):
    """A compact pandas table of records (for printing)."""
    import pandas as pd
    if not records:
        return pd.DataFrame(columns=list(RECORD_FIELDS))
    df = pd.DataFrame(records)
    cols = [c for c in ("checkpoint_label", "suite", "metric", "subset", "value", "ci_low", "ci_high", "n",
                        "delta_vs_ref", "time_s", "error") if c in df.columns]
    return df[cols]
