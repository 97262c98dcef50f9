"""Settings of the evaluation suite (one dataclass, ``key=value`` overrides).

Data sources: every dataset setting takes ``""`` (automatic: the local copy under
``data_dir`` when it is there, else the hub dataset), a local file or directory, or a hub
dataset name. ``data_dir`` defaults to the environment variable ``RLHF_DATA_DIR``, else the
first of ``./shared/data`` and ``../shared/data`` (relative to the working directory) and
``../shared/data`` next to the source checkout (an editable install) that exists.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rlhf.config import ConfigError, apply_settings, check_ranges, parse_override, read_yaml_file
from rlhf.stats import RTP_K, RTP_MAX_NEW_TOKENS, RTP_TEMPERATURE, RTP_THRESHOLD, RTP_TOP_P

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout, in an editable install

SUITES = ("truthfulqa", "toxicity", "regression", "overopt", "bias")


class SettingsError(ConfigError):
    """A bad evaluation setting; the message names the key."""


@dataclass
class EvalSettings:
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    dtype: str = "float32"
    # ---- data sources
    data_dir: str = ""  # "" = $RLHF_DATA_DIR, else ./shared/data or ../shared/data when there
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
    tox_k: int = RTP_K  # the RealToxicityPrompts protocol: rlhf/stats.py, RTP_*
    tox_max_new_tokens: int = RTP_MAX_NEW_TOKENS
    tox_temperature: float = RTP_TEMPERATURE
    tox_top_p: float = RTP_TOP_P
    tox_n_prompts: int = 100  # per subset (challenging / other)
    tox_prompts_per_call: int = 4  # prompts per generate call (each with k samples)
    tox_threshold: float = RTP_THRESHOLD
    tox_respectful: bool = True
    tox_scorer: str = "auto"  # auto | profanity-check | lexicon | hf:<classifier name or path>
    tox_hf_label: str = "toxic"  # the classifier label whose probability is the toxicity
    bootstrap: int = 1000
    # ---- pretraining regression (alignment tax)
    heldout_ppl: bool = True  # held-out LM loss/perplexity; false = only the lm_tasks
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
    # real models: the gold reward, a reward spec as ppo.reward takes (rlhf/rewards.py): rm:<path> (or a bare
    # reward-model path), classifier (the run's), hf:<classifier>, py:<module>:<function>
    gold_rm: str = ""
    gold_label: str = ""  # classifier gold rewards: <label>, prob:<label> or diff:<label>,<label>
    gold_input: str = "response"  # classifier gold rewards read the "response" or the "prompt+response"
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
        for cand in data_dir_candidates():
            if cand.is_dir():
                return cand
        return None

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))
        return base / "eval"


# (key, predicate, what it must be): checked by rlhf.config.check_ranges, like the run config's.
_RANGES = [
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
    ("gold_input", lambda v: v in ("response", "prompt+response"), "'response' or 'prompt+response'"),
]


def data_dir_candidates() -> list[Path]:
    """Where the local datasets are looked for when neither ``data_dir`` nor
    ``RLHF_DATA_DIR`` is set: ./shared/data, ../shared/data (from the working directory, so a
    non-editable install finds them), then ../shared/data beside the source checkout."""
    cwd = Path.cwd()
    return [cwd / "shared" / "data", cwd.parent / "shared" / "data", REPO_ROOT.parent / "shared" / "data"]


def make_settings(overrides: Optional[list[str] | dict] = None, path: Optional[str | Path] = None) -> EvalSettings:
    """Defaults <- YAML file (``path``) <- ``key=value`` overrides, coerced and range-checked
    by the run config's mechanism (rlhf/config.py: one rule set)."""
    s = EvalSettings()
    data: dict = {}
    if path:
        data = read_yaml_file(path, SettingsError, "settings file") or {}
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: the top level must be a mapping of eval settings")
    if isinstance(overrides, dict):
        data.update(overrides)
    else:
        data.update(parse_override(o, SettingsError) for o in overrides or [])
    apply_settings(s, data, error=SettingsError, what="eval setting")
    check_ranges(dataclasses.asdict(s), _RANGES, SettingsError)
    return s


def to_dict(s: EvalSettings) -> dict:
    return dataclasses.asdict(s)
