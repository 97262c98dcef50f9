"""Running lm-evaluation-harness on an already loaded model.

The project's task YAMLs live in ``eval/tasks``; they are indexed with
``TaskManager(include_path=..., include_defaults=False)`` (the default manager spends
10-17 s indexing every built-in task, so it is only built when a task is not ours).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from rlhf.errors import InputError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


class TaskError(InputError):
    """An lm-eval task that cannot be found or run; the message names it."""


def _quiet() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _library_quiet() -> bool:
    """Whether library output is off (``rlhf.cli.library_output``: every command without
    ``--verbose``)."""
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"


def _git_hash_quietly() -> Optional[str]:
    """lm-eval's run metadata asks ``git describe``; outside a git checkout git prints
    "fatal: not a git repository" to the terminal. The same question with its stderr
    discarded."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


@contextlib.contextmanager
def _quiet_run():
    """While lm-eval runs without ``--verbose``: no per-task request-building bar and no git
    message on the terminal. Both are lm-eval module attributes (``lm_eval.api.task.tqdm``,
    ``lm_eval.evaluator.get_git_commit_hash``) swapped for the call only and restored
    after; a lm-eval version without them is left alone."""
    if not _library_quiet():
        yield
        return
    import lm_eval.api.task as task_mod
    import lm_eval.evaluator as ev_mod
    swaps = []
    if hasattr(task_mod, "tqdm"):
        swaps.append((task_mod, "tqdm", functools.partial(task_mod.tqdm, disable=True)))
    if hasattr(ev_mod, "get_git_commit_hash"):
        swaps.append((ev_mod, "get_git_commit_hash", _git_hash_quietly))
    old = [(m, name, getattr(m, name)) for m, name, _ in swaps]
    try:
        for m, name, new in swaps:
            setattr(m, name, new)
        yield
    finally:
        for m, name, value in old:
            setattr(m, name, value)


def make_lm(model, tokenizer, batch_size: int = 16):
    """lm-eval's HFLM around a model and tokenizer that are already loaded, scoring each
    distinct (context, continuation) once: TruthfulQA's MC1 choices are mostly MC2 choices
    too, so running both tasks in one call saves about 40% of the forward passes."""
    from lm_eval.models.huggingface import HFLM

    class DedupHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            first: dict = {}
            for i, r in enumerate(requests):
                first.setdefault(r.args, i)
            unique = [requests[i] for i in first.values()]
            # lm-eval's own bar is library output: shown only with --verbose (rlhf.cli.library_output)
            res = super().loglikelihood(unique, disable_tqdm=disable_tqdm or _library_quiet())
            by_args = {r.args: x for r, x in zip(unique, res)}
            return [by_args[r.args] for r in requests]

    _quiet()
    return DedupHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def task_manager(extra_paths: Optional[list[str | Path]] = None, metadata: Optional[dict] = None,
                 defaults: bool = False):
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(p) for p in (extra_paths or [])]
    return TaskManager(include_path=paths, include_defaults=defaults, metadata=metadata)


def resolve_tasks(names: list[str], metadata: Optional[dict] = None):
    """Build a TaskManager that knows ``names``: ours, local YAML files (their folders are
    added to the include path) or lm-eval's built-in tasks. Unknown names raise TaskError."""
    extra, specs = [], []
    for n in names:
        p = Path(n).expanduser()
        if n.endswith((".yaml", ".yml")):
            if not p.is_file():
                raise TaskError(f"lm-eval task file {n} does not exist")
            extra.append(p.parent)
            import yaml

            class _Loader(yaml.SafeLoader):
                pass

            _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
            cfg = yaml.load(p.read_text(), Loader=_Loader) or {}
            if not isinstance(cfg, dict) or not cfg.get("task"):
                raise TaskError(f"lm-eval task file {n} has no 'task' name")
            specs.append(str(cfg["task"]))
        else:
            specs.append(n)
    tm = task_manager(extra, metadata)
    unknown = [s for s in specs if s not in tm.all_tasks]
    if unknown:
        tm = task_manager(extra, metadata, defaults=True)
        unknown = [s for s in specs if s not in tm.all_tasks]
        if unknown:
            raise TaskError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return tm, specs


def run_tasks(lm, names: list[str], metadata: Optional[dict] = None, limit: Optional[int] = None,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """Evaluate ``names`` with ``lm_eval.simple_evaluate``.

    Returns {task: {"metrics": {metric: value}, "samples": [per-doc metric dicts with
    ``doc_id``], "aggregations": {metric: the task's aggregation function}}}.
    """
    import lm_eval

    _quiet()
    tm, specs = resolve_tasks(names, metadata)
    try:
        with _quiet_run():
            out = lm_eval.simple_evaluate(
                model=lm, tasks=specs, task_manager=tm, limit=limit or None, bootstrap_iters=0,
                log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, verbosity="ERROR",
            )
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"lm-eval failed on {', '.join(names)}: {type(e).__name__}: {e}") from e
    res = {}
    for name in specs:
        metrics = {}
        for k, v in out["results"].get(name, {}).items():
            if k == "alias" or "_stderr" in k or not isinstance(v, (int, float)):
                continue
            metrics[k.split(",")[0]] = float(v)
        samples = []
        for s in out.get("samples", {}).get(name, []):
            row = {k: _item(s[k]) for k in metrics if k in s and _item(s[k]) is not None}
            row["doc_id"] = s.get("doc_id")
            samples.append(row)
        res[name] = {"metrics": metrics, "samples": samples,
                     "aggregations": aggregations(out.get("configs", {}).get(name, {}), list(metrics))}
    return res


def _item(v):
    """A per-item metric value as lm-eval aggregates it: a number, or a tuple of numbers
    (e.g. (log-likelihood, words) for word_perplexity); None for anything else."""
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
        return tuple(float(x) for x in v)
    return None


def aggregations(task_config: dict, metric_names: list[str]) -> dict[str, Any]:
    """{metric: the task's own aggregation function} (e.g. ``perplexity`` = exp(-mean),
    ``weighted_perplexity``, ``bits_per_byte``, ``mean``): from the task's ``metric_list``,
    else lm-eval's default aggregation for the metric name, else the mean."""
    from lm_eval.api import registry

    out: dict[str, Any] = {}
    for m in (task_config or {}).get("metric_list") or []:
        a = m.get("aggregation") if isinstance(m, dict) else None
        fn = None
        if callable(a):
            fn = a
        elif isinstance(a, str):
            try:
                fn = registry.get_aggregation(a)
            except Exception:
                fn = None
        if fn is not None and isinstance(m.get("metric"), str):
            out[m["metric"]] = fn
    for name in metric_names:
        if name not in out:
            try:
                out[name] = registry.get_metric_aggregation(name)
            except Exception:
                out[name] = None
            if out[name] is None:
                out[name] = registry.get_aggregation("mean")
    return out


def finite(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
