"""Settings of the evaluation suite (one dataclass, ``key=value`` overrides).

Data sources: every dataset setting takes ``""`` (automatic: the local copy under
``data_dir`` when it is there, else the hub dataset), a local file or directory, or a hub
dataset name. ``data_dir`` defaults to the environment variable ``RLHF_DATA_DIR``, else
``../shared/data`` relative to the repository when that folder exists.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

SUITES = ("truthfulqa", "toxicity", "regression", "overopt", "bias")


class SettingsError(ValueError):
    """A bad evaluation setting; the message names the key."""


@dataclass
class EvalSettings:
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    dtype: str = "float32"
    # ---- data sources
    data_dir: str = ""  # "" = $RLHF_DATA_DIR, else ../shared/data when it exists
    truthfulqa: str = ""  # "" = data_dir/TruthfulQA.csv, else hub truthfulqa/truthful_qa
    rtp: str = ""  # "" = data_dir/rtp_decodingtrust_{toxic,nontoxic}.jsonl, else hub allenai/real-toxicity-prompts
    wikitext: str = ""  # "" = data_dir/wikitext2_raw_test.txt, else hub wikitext/wikitext-2-raw-v1
    crows_pairs: str = ""  # "" = data_dir/crows_pairs_anonymized.csv, else hub jannalu/crows_pairs_multilingual
    bbq: str = ""  # "" = data_dir/bbq/ (<Category>.jsonl files), else hub oskarvanderwal/bbq
    cache_dir: str = ""  # "" = ~/.cache/rlhf/eval (or $RLHF_CACHE/eval)
    # ---- truthfulness
    mc_limit: int = 0  # 0 = every question
    mc_batch_size: int = 16
    # ---- toxicity (RealToxicityPrompts protocol)
    tox_k: int = 25
    tox_max_new_tokens: int = 20
    tox_temperature: float = 1.0
    tox_top_p: float = 0.9
    tox_n_prompts: int = 100  # per subset (challenging / other)
    tox_prompts_per_call: int = 4  # prompts per generate call (each with k samples)
    tox_threshold: float = 0.5
    tox_respectful: bool = True
    tox_scorer: str = "auto"  # auto | profanity-check | lexicon | hf:<classifier name or path>
    tox_hf_label: str = "toxic"  # the classifier label whose probability is the toxicity
    bootstrap: int = 1000
    # ---- pretraining regression (alignment tax)
    ppl_max_tokens: int = 0  # 0 = the whole held-out text
    ppl_window: int = 1024  # tokens per window (capped by the model's context)
    ppl_stride: int = 0  # 0 = window (non-overlapping)
    lm_tasks: list[str] = field(default_factory=list)  # lm-eval task names or local YAML paths
    lm_tasks_limit: int = 0
    reference: str = ""  # "" = the run's sft/ (else pretrain/); or a path/name
    # ---- reward over-optimisation (Gao et al. 2022)
    overopt_n_prompts: int = 32
    overopt_samples: int = 4  # RL samples per prompt
    bon_max_n: int = 16
    overopt_max_new_tokens: int = 16
    gold_rm: str = ""  # real models: a reward model name/path for the gold reward
    overopt_prompts: str = ""  # real models: prompt file/hub dataset ("" = the run's ppo.data)
    # ---- bias (CrowS-Pairs, BBQ)
    bias_datasets: list[str] = field(default_factory=lambda: ["crows_pairs", "bbq"])
    crows_limit: int = 0  # pairs per bias type, a seeded sample (0 = all 1,508)
    bbq_limit: int = 0  # items per (category, context condition), a seeded sample (0 = all)

    # ------------------------------------------------------------------ paths
    def resolved_data_dir(self) -> Optional[Path]:
        d = self.data_dir or os.environ.get("RLHF_DATA_DIR", "")
        if d:
            return Path(d).expanduser()
        default = REPO_ROOT.parent / "shared" / "data"
        return default if default.is_dir() else None

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))
        return base / "eval"


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise SettingsError(f"{key}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected a number, got {value!r}") from None
    return "" if value is None else str(value)


_CHECKS = [
    ("tox_k", lambda v: v >= 1, ">= 1"),
    ("tox_max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("tox_temperature", lambda v: v > 0, "> 0"),
    ("tox_top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("tox_n_prompts", lambda v: v >= 1, ">= 1"),
    ("tox_prompts_per_call", lambda v: v >= 1, ">= 1"),
    ("tox_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("bootstrap", lambda v: v >= 0, ">= 0"),
    ("mc_limit", lambda v: v >= 0, ">= 0"),
    ("mc_batch_size", lambda v: v >= 1, ">= 1"),
    ("ppl_max_tokens", lambda v: v >= 0, ">= 0"),
    ("ppl_window", lambda v: v >= 2, ">= 2"),
    ("ppl_stride", lambda v: v >= 0, ">= 0"),
    ("bon_max_n", lambda v: v >= 1 and (v & (v - 1)) == 0, "a power of two"),
    ("overopt_n_prompts", lambda v: v >= 1, ">= 1"),
    ("overopt_samples", lambda v: v >= 1, ">= 1"),
    ("crows_limit", lambda v: v >= 0, ">= 0"),
    ("bbq_limit", lambda v: v >= 0, ">= 0"),
    ("bias_datasets", lambda v: bool(v) and set(v) <= {"crows_pairs", "bbq"}, "a non-empty list of crows_pairs, bbq"),
    ("dtype", lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
]


def make_settings(overrides: Optional[list[str] | dict] = None, path: Optional[str | Path] = None) -> EvalSettings:
    """Defaults <- YAML file (``path``) <- ``key=value`` overrides, checked."""
    s = EvalSettings()
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"settings file not found: {p}")
        data.update(yaml.safe_load(p.read_text()) or {})
    if isinstance(overrides, dict):
        data.update(overrides)
    else:
        for o in overrides or []:
            if "=" not in o:
                raise SettingsError(f"setting '{o}' must look like key=value (e.g. tox_k=5)")
            k, v = o.split("=", 1)
            data[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    hints = typing.get_type_hints(EvalSettings)
    for k, v in data.items():
        if k not in hints:
            raise SettingsError(f"unknown eval setting '{k}' (known: {', '.join(sorted(hints))})")
        setattr(s, k, _coerce(k, v, hints[k]))
    for key, pred, what in _CHECKS:
        if not pred(getattr(s, key)):
            raise SettingsError(f"{key}={getattr(s, key)!r} is out of range: must be {what}")
    return s


def to_dict(s: EvalSettings) -> dict:
    return dataclasses.asdict(s)
