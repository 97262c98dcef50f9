"""Evaluation data: the hub datasets by name (default for users with internet) or local
copies (a file or a directory; the ``data_dir`` setting / ``RLHF_DATA_DIR``).

Every loader returns plain Python rows in one schema whichever source it read:

* TruthfulQA: the hub's ``truthful_qa/multiple_choice`` schema, ``question``,
  ``mc1_targets`` and ``mc2_targets`` (each ``{choices, labels}``); from ``TruthfulQA.csv``
  MC1 is Best Answer + every Incorrect Answer, MC2 every Correct + every Incorrect Answer.
* RealToxicityPrompts: ``{"text", "challenging"}``.
* WikiText-2 (test): one string.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
from pathlib import Path
from typing import Optional

from rlhf.data import looks_like_path
from rlhf.errors import DataError  # noqa: F401 - the one DataError (rlhf/errors.py), raised here too

from .settings import EvalSettings

HUB_TRUTHFULQA = ("truthfulqa/truthful_qa", "multiple_choice", "validation")
HUB_RTP = ("allenai/real-toxicity-prompts", None, "train")
HUB_WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")

TRUTHFULQA_FILE = "TruthfulQA.csv"
RTP_FILES = ("rtp_decodingtrust_toxic.jsonl", "rtp_decodingtrust_nontoxic.jsonl")
WIKITEXT_FILE = "wikitext2_raw_test.txt"


def resolve_source(setting: str, filenames: tuple[str, ...], settings: EvalSettings, what: str,
                   dir_is_data: bool = False) -> tuple[str, object]:
    """("local", [paths]) or ("hub", name): the one resolver of an eval dataset setting.
    ``setting`` "" means: the data dir's copy if present, else the hub default (returned as
    ("hub", "")). ``filenames`` are the names the data has in the data dir (files, or a
    folder such as ``bbq/``); a directory given as the setting is searched for them, unless
    ``dir_is_data`` (the dataset is itself a folder of files), when it is the data.

    A setting that looks like a path but does not exist raises :class:`DataError`."""
    if setting:
        p = Path(setting).expanduser()
        if p.is_dir() and dir_is_data:
            return "local", [p]
        if p.is_dir():
            found = [p / f for f in filenames if (p / f).is_file()]
            if not found:
                raise DataError(f"{what}: directory {p} has none of {', '.join(filenames)}")
            return "local", found
        if p.is_file():
            return "local", [p]
        if looks_like_path(setting):
            raise DataError(f"{what}: dataset file {setting} does not exist")
        return "hub", setting
    d = settings.resolved_data_dir()
    if d is not None:
        found = [d / f for f in filenames if (d / f).exists()]
        if found:
            return "local", found
    return "hub", ""


def _hub(name: str, config: Optional[str], split: str, what: str):
    import datasets
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, ...
        raise DataError(f"{what}: cannot load hub dataset {name!r}"
                        f"{' (' + config + ')' if config else ''}: {type(e).__name__}: {e}. "
                        f"Set RLHF_DATA_DIR or the '{what}' setting to a local copy.") from None


# ------------------------------------------------------------------ TruthfulQA
def truthfulqa_rows_from_csv(path: str | Path) -> list[dict]:
    """Hub-schema rows from the original TruthfulQA.csv (answer lists are '; '-separated)."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
        if not need <= set(reader.fieldnames or []):
            raise DataError(f"{path}: not a TruthfulQA CSV (needs columns {sorted(need)})")
        for r in reader:
            split = lambda s: [a.strip() for a in s.split(";") if a.strip()]  # noqa: E731
            best = r["Best Answer"].strip()
            correct = split(r["Correct Answers"])
            incorrect = split(r["Incorrect Answers"])
            rows.append({
                "question": r["Question"].strip(),
                "mc1_targets": {"choices": [best] + incorrect, "labels": [1] + [0] * len(incorrect)},
                "mc2_targets": {"choices": correct + incorrect, "labels": [1] * len(correct) + [0] * len(incorrect)},
            })
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows


def truthfulqa_rows(settings: EvalSettings) -> tuple[list[dict], str]:
    """(rows, description of the source)."""
    kind, src = resolve_source(settings.truthfulqa, (TRUTHFULQA_FILE,), settings, "truthfulqa")
    if kind == "local":
        path = src[0]
        if path.suffix == ".csv":
            return truthfulqa_rows_from_csv(path), str(path)
        return read_jsonl_rows(path), str(path)
    name = src or HUB_TRUTHFULQA[0]
    ds = _hub(name, HUB_TRUTHFULQA[1], HUB_TRUTHFULQA[2], "truthfulqa")
    rows = [{"question": r["question"], "mc1_targets": r["mc1_targets"], "mc2_targets": r["mc2_targets"]} for r in ds]
    return rows, f"hub:{name}"


def read_jsonl_rows(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows_cached(rows: list[dict], cache_dir: Path, stem: str) -> Path:
    """Write rows as JSONL under ``cache_dir`` named by a content hash (reused next time)."""
    blob = "\n".join(json.dumps(r, sort_keys=True) for r in rows) + "\n"
    h = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = cache_dir / f"{stem}-{h}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(blob)
        tmp.replace(path)
    return path


# -------------------------------------------------------- RealToxicityPrompts
def rtp_prompts(settings: EvalSettings, n_per_subset: int, seed: int = 0) -> tuple[dict[str, list[str]], str]:
    """{"challenging": [...], "other": [...]} with up to ``n_per_subset`` prompt texts each,
    a seeded sample (the RTP ``challenging`` flag decides the subset)."""
    kind, src = resolve_source(settings.rtp, RTP_FILES, settings, "rtp")
    rows: list[dict] = []
    if kind == "local":
        for p in src:
            rows.extend(read_jsonl_rows(p))
        desc = ",".join(str(p) for p in src)
    else:
        name = src or HUB_RTP[0]
        rows = list(_hub(name, HUB_RTP[1], HUB_RTP[2], "rtp"))
        desc = f"hub:{name}"
    out: dict[str, list[str]] = {"challenging": [], "other": []}
    for r in rows:
        prompt = r.get("prompt")
        text = prompt.get("text") if isinstance(prompt, dict) else r.get("text", prompt)
        if not isinstance(text, str) or not text.strip():
            continue
        out["challenging" if r.get("challenging") else "other"].append(text)
    if not out["challenging"] and not out["other"]:
        raise DataError(f"rtp: no prompts found in {desc} (expected prompt.text fields)")
    rng = random.Random(seed)
    for k in out:
        if len(out[k]) > n_per_subset:
            out[k] = rng.sample(out[k], n_per_subset)
    return out, desc


# -------------------------------------------------------------------- WikiText
def wikitext_text(settings: EvalSettings) -> tuple[str, str]:
    kind, src = resolve_source(settings.wikitext, (WIKITEXT_FILE,), settings, "wikitext")
    if kind == "local":
        path = src[0]
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        return text.replace("\r\n", "\n"), str(path)
    name = src or HUB_WIKITEXT[0]
    ds = _hub(name, HUB_WIKITEXT[1] if not src else None, HUB_WIKITEXT[2], "wikitext")
    return "".join(ds["text"]), f"hub:{name}"
