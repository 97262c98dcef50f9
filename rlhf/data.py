"""Every user data file the stages read, loaded and checked in one place.

    sft.data      demonstrations: JSONL(.gz) rows with string ``prompt``/``response``, or an
                  HH-RLHF ``chosen`` dialogue
    rm.data       pairwise comparisons (K=2): ``prompt``/``chosen``/``rejected``, or HH-RLHF
                  ``chosen``/``rejected`` dialogues
    ppo.data      prompts: a ``.txt`` file (one a line) or JSONL rows with ``prompt`` (or ``chosen``)
    ppo.ptx_data  plain text (e.g. WikiText-2 raw), one document a line

A name that is not a local file is tried as a Hugging Face dataset (train split); a name that
looks like a path (``/``, ``.``, ``~`` or a data file suffix) and does not exist is a DataError.
Every file type goes through the same readers, so the messages are the same for each setting.

A file that cannot be read as such (not UTF-8, invalid JSON, a row that is not an object, a
field of the wrong type) raises :class:`DataError` naming the setting, the file and the line,
so the command exits 2 before any compute. Rows that are well formed but lack what the
stage needs are skipped, counted and reported on stdout (``skipped_report``); a file with
nothing usable is a DataError.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .config import DataError

# A prompt longer than this many characters per allowed token is skipped without tokenizing:
# no tokenizer has tokens that long on average, and a 100,000-character "word" can otherwise
# pass a token-count filter (one unknown token) and be trained on.
MAX_CHARS_PER_TOKEN = 16


@dataclass
class Skipped:
    """Rows a loader left out, by reason, with the first line of each reason."""

    key: str
    path: str
    total: int = 0
    reasons: dict[str, list[int]] = field(default_factory=dict)  # reason -> [count, first line]

    def add(self, reason: str, line: int) -> None:
        if reason in self.reasons:
            self.reasons[reason][0] += 1
        else:
            self.reasons[reason] = [1, line]

    @property
    def count(self) -> int:
        return sum(n for n, _ in self.reasons.values())

    def report(self) -> str:
        parts = [f"{n} {why} (first at line {first})" for why, (n, first) in self.reasons.items()]
        return f"[{self.key}] {self.path}: skipped {self.count} of {self.total} rows: " + "; ".join(parts)

    def print(self) -> None:
        if self.count:
            print(self.report(), flush=True)

    def finish(self, rows: list, what: str) -> list:
        """``rows`` after printing what was skipped; none at all is a DataError that says why."""
        self.print()
        if not rows:
            raise DataError(f"{self.key}={self.path}: no {what} found" + (f" ({self.report()})" if self.count else ""))
        return rows


def _where(key: str, path: Any, line: int) -> str:
    return f"{key}: {path}, line {line}"


def looks_like_path(name: str) -> bool:
    """A name meant as a local file (not a hub dataset): it starts with / . ~ or has a data
    file's suffix."""
    return name.startswith(("/", ".", "~")) or Path(name).suffix in (
        ".csv", ".jsonl", ".json", ".txt", ".gz", ".parquet")


def _local(path: str, key: str) -> Optional[Path]:
    """The local file ``path``; None for a hub dataset name. A directory, or a missing file
    named as a path, is a DataError naming the setting."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{key}: {path} is a directory, not a data file")
    if p.exists():
        return p
    if looks_like_path(path):
        raise DataError(f"{key}: {path} does not exist")
    return None


def _read_bytes(p: Path, key: str) -> bytes:
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{key}: {p} cannot be read: {e}") from None
    return raw


def _decode_lines(p: Path, key: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-empty line; non-UTF-8 bytes are an error naming the line."""
    for i, raw in enumerate(_read_bytes(p, key).split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{_where(key, p, i)}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") \
                from None
        if text.strip():
            yield i, text


def read_rows(path: str, key: str) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL(.gz) file, or of a hub dataset's train split (row index + 1)."""
    p = _local(path, key)
    if p is None:
        try:
            import datasets
            rows = datasets.load_dataset(path, split="train")
        except Exception as e:  # noqa: BLE001 - any hub/loading failure is a data error here
            raise DataError(f"{key}: {path} is neither a file nor a loadable dataset ({e})") from None
        return [(i, dict(r)) for i, r in enumerate(rows, 1)]
    out = []
    for i, text in _decode_lines(p, key):
        try:
            row = json.loads(text)
        except ValueError as e:
            raise DataError(f"{_where(key, p, i)}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{_where(key, p, i)}: expected a JSON object, got {type(row).__name__}")
        out.append((i, row))
    return out


def _text_field(row: dict, name: str, key: str, path: str, line: int) -> Optional[str]:
    """``row[name]`` when it is a string; None when absent or null; a DataError otherwise."""
    v = row.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise DataError(f"{_where(key, path, line)}: field '{name}' must be a string, got {type(v).__name__}")
    return v


def split_dialogue(text: str) -> tuple[str, str]:
    """HH-RLHF: everything up to and including the last 'Assistant:' is the prompt."""
    marker = "\n\nAssistant:"
    i = text.rfind(marker)
    if i < 0:
        raise DataError("an HH-RLHF dialogue without an 'Assistant:' turn")
    return text[: i + len(marker)], text[i + len(marker):].strip()


def _dialogue(text: str) -> Optional[tuple[str, str]]:
    try:
        return split_dialogue(text)
    except DataError:
        return None


def load_demonstration_file(path: str, max_examples: int = 0, key: str = "sft.data") -> list[tuple[str, str]]:
    """(prompt, response) pairs from ``prompt``/``response`` rows or HH-RLHF ``chosen`` dialogues."""
    rows = read_rows(path, key)
    sk = Skipped(key, path, len(rows))
    pairs = []
    for line, r in rows:
        prompt, resp = _text_field(r, "prompt", key, path, line), _text_field(r, "response", key, path, line)
        if prompt is not None and resp is not None:
            pairs.append((prompt, resp))
        elif (chosen := _text_field(r, "chosen", key, path, line)) is not None:
            d = _dialogue(chosen)
            if d is None:
                sk.add("'chosen' dialogues without an 'Assistant:' turn", line)
            else:
                pairs.append(d)
        else:
            sk.add("rows without 'prompt' and 'response' (or 'chosen')", line)
        if max_examples and len(pairs) >= max_examples:
            break
    return sk.finish(pairs, "demonstrations")


def load_pair_comparisons(path: str, max_examples: int = 0, key: str = "rm.data") -> list[dict]:
    """Pairwise comparisons (K=2) from ``prompt``/``chosen``/``rejected`` rows or HH-RLHF
    ``chosen``/``rejected`` dialogues; rows in the reward model's format
    (``prompt``, ``responses`` best first, ``gold`` None, ``round`` 0)."""
    rows = read_rows(path, key)
    sk = Skipped(key, path, len(rows))
    out = []
    for line, r in rows:
        prompt = _text_field(r, "prompt", key, path, line)
        chosen = _text_field(r, "chosen", key, path, line)
        rejected = _text_field(r, "rejected", key, path, line)
        if chosen is None or rejected is None:
            missing = [f for f, v in (("chosen", chosen), ("rejected", rejected)) if v is None]
            sk.add(f"rows without {' and '.join(repr(m) for m in missing)}", line)
            continue
        if prompt is None:
            dc, dr = _dialogue(chosen), _dialogue(rejected)
            if dc is None or dr is None:
                sk.add("dialogues without an 'Assistant:' turn", line)
                continue
            (prompt, chosen), (prompt_r, rejected) = dc, dr
            if prompt_r != prompt:
                sk.add("pairs whose dialogues differ before the last answer", line)
                continue
        if chosen == rejected:
            sk.add("pairs with identical chosen and rejected responses", line)
            continue
        out.append({"prompt": prompt, "responses": [chosen, rejected], "gold": None, "round": 0})
        if max_examples and len(out) >= max_examples:
            break
    return sk.finish(out, "comparisons")


def load_prompts(path: str, key: str = "ppo.data", split: str = "", words: int = 0) -> list[str]:
    """Distinct prompts, in file order: a ``.txt`` file (one a line), or JSONL/hub rows with
    ``prompt`` (or an HH-RLHF ``chosen`` dialogue). ``split``: only rows whose ``split``
    field equals it (``ppo.data_split``); ``words`` > 0: each prompt cut to its first
    ``words`` words (``ppo.prompt_words``), and rows with a plain ``text`` instead (e.g. a
    review) give their opening words."""
    p = _local(path, key)
    if p is not None and p.suffix == ".txt":
        out = [text.strip() for _, text in _decode_lines(p, key)]
    else:
        rows = read_rows(path, key)
        sk = Skipped(key, path, len(rows))
        out = []
        for line, r in rows:
            if split and r.get("split") != split:
                sk.add(f"rows of another split than {split!r}", line)
                continue
            prompt = _text_field(r, "prompt", key, path, line)
            if prompt is not None:
                out.append(prompt)
                continue
            chosen = _text_field(r, "chosen", key, path, line)
            d = _dialogue(chosen) if chosen is not None else None
            if d is not None:
                out.append(d[0])
            elif words and chosen is None and (text := _text_field(r, "text", key, path, line)) is not None:
                out.append(text)  # a plain text (e.g. a review) whose opening words are the prompt
            else:
                sk.add("rows without 'prompt' (or a 'chosen' dialogue" + (", or a 'text')" if words else ")"), line)
        sk.print()
    if words:
        out = [" ".join(x.split()[:words]) for x in out]
    out = [x for x in out if x.strip()]
    if not out:
        raise DataError(f"{key}: {path} holds no prompts")
    return list(dict.fromkeys(out))


def load_labelled_texts(path: str, n_labels: int, key: str = "classifier.data") -> list[dict]:
    """Rows ``{"text", "label", "heldout"}`` of a JSONL(.gz) file or hub dataset with a string
    ``text`` and an integer ``label`` in [0, n_labels); ``heldout`` is True for rows whose
    ``split`` field is test, validation or heldout. Rows without text or label are skipped
    and counted; a label of the wrong type or out of range is an error naming the line."""
    rows = read_rows(path, key)
    sk = Skipped(key, path, len(rows))
    out = []
    for line, r in rows:
        text = _text_field(r, "text", key, path, line)
        label = r.get("label")
        if text is None or not text.strip() or label is None:
            sk.add("rows without 'text' and 'label'", line)
            continue
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_labels:
            raise DataError(f"{_where(key, path, line)}: 'label' must be an integer from 0 to {n_labels - 1} "
                            f"(classifier.labels has {n_labels} names), got {label!r}")
        out.append({"text": text, "label": label,
                    "heldout": str(r.get("split", "")).lower() in ("test", "validation", "valid", "heldout")})
    return sk.finish(out, "labelled texts")


def filter_prompts(prompts: list[str], tokenizer, max_tokens: int, key: str = "ppo.data") -> list[str]:
    """Prompts of at most ``max_tokens`` tokens (and ``MAX_CHARS_PER_TOKEN * max_tokens``
    characters); how many were dropped is printed."""
    keep, too_long_chars, too_long_tok = [], 0, 0
    for p in prompts:
        if len(p) > MAX_CHARS_PER_TOKEN * max_tokens:
            too_long_chars += 1
        elif len(tokenizer(p)["input_ids"]) > max_tokens:
            too_long_tok += 1
        else:
            keep.append(p)
    if too_long_chars or too_long_tok:
        print(f"[{key}] skipped {too_long_chars + too_long_tok} of {len(prompts)} prompts longer than "
              f"ppo.max_prompt_tokens={max_tokens} ({too_long_chars} of them over "
              f"{MAX_CHARS_PER_TOKEN * max_tokens} characters)", flush=True)
    return keep


def load_text_lines(path: str, key: str = "ppo.ptx_data", min_lines: int = 20) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (a non-UTF-8 line is an error naming it)."""
    p = _local(path, key)
    if p is None:
        raise DataError(f"{key}: {path} is not a file")
    lines = [text.strip() for _, text in _decode_lines(p, key)]
    if len(lines) < min_lines:
        raise DataError(f"{key}: {path} has too little text ({len(lines)} non-empty lines)")
    return lines


def check_data_inputs(cfg) -> None:
    """Read every local data file the configured stages will use, before anything in the run
    directory is touched (a bad file exits 2 with nothing changed). Hub datasets are left to
    the stage."""
    def local(src: str, key: str) -> bool:  # a missing file named as a path raises here
        return src not in ("", "world") and _local(src, key) is not None

    stages = set(cfg.stages)
    demos_used = ("sft" in stages and not cfg.sft.skip) or ("rm" in stages and not cfg.sft.skip)
    if demos_used and local(cfg.sft.data, "sft.data"):
        load_demonstration_file(cfg.sft.data, cfg.sft.max_examples)
    if "rm" in stages and local(cfg.rm.data, "rm.data"):
        load_pair_comparisons(cfg.rm.data, cfg.rm.max_examples)
    if "classifier" in stages:
        if not cfg.classifier.data:
            raise DataError("stage 'classifier' needs classifier.data: a JSONL file of text/label rows")
        if local(cfg.classifier.data, "classifier.data"):
            load_labelled_texts(cfg.classifier.data, len(cfg.classifier.labels))
    if "ppo" in stages:
        if not cfg.ppo.data:
            raise DataError("ppo.data is empty: give a prompt file (or world, or a hub dataset)")
        if local(cfg.ppo.data, "ppo.data"):
            load_prompts(cfg.ppo.data, split=cfg.ppo.data_split, words=cfg.ppo.prompt_words)
        if cfg.ppo.ptx_data != "world":
            load_text_lines(cfg.ppo.ptx_data)
