"""Run directories: atomic writes, stage status, metrics and provenance.

Layout of a run directory (``<out_dir>/<name>/``)::

    config.yaml          resolved config (every key, after overrides)
    meta.json            seed, git commit, package versions, command line, host
    status.json          {"state": running|done|failed|diverged|interrupted, "stage", "step", ...}
    world/               the toy world: world.json, tokenizer/ (stage 0, when world is used)
    pretrain/ sft/ rm/   one Hugging Face model folder each (safetensors) + metrics.jsonl
                         + summary.json; a stage is complete iff its DONE file exists
    ppo/                 final policy (HF folder), metrics.jsonl, summary.json, DONE,
                         checkpoints/step_NNNNNN/ (resumable state), kl/kl_X/ (policies
                         saved when the KL first passes each level of ppo.kl_levels)
    eval/records.jsonl   one tidy record per (checkpoint, metric), written by `rlhf eval`

Every file is written to a temporary name in the same directory and renamed into
place, and a stage directory is built under ``<stage>.tmp`` and renamed when done,
so nothing half-written ever looks complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

PACKAGES = ("torch", "transformers", "trl", "tokenizers", "datasets", "accelerate",
            "lm_eval", "pandas", "numpy", "submitit", "safetensors", "rlhf-harness")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def append_jsonl(path: str | Path, row: dict, fsync: bool = True) -> None:
    """Append one JSON line, by default fsynced (a torn last line is skipped on reading)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=_json_default) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed process
    except FileNotFoundError:
        pass
    return rows


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _gz_lines(rows: Iterable[dict]) -> bytes:
    import gzip
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    return gzip.compress(text.encode(), mtime=0)


def write_jsonl_gz(path: str | Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as gzip-compressed JSON lines, atomically."""
    atomic_write_bytes(path, _gz_lines(rows))


def append_jsonl_gz(path: str | Path, rows: Iterable[dict], fsync: bool = False) -> None:
    """Append ``rows`` to a .jsonl.gz file as one more gzip member (a gzip file may hold
    several; readers see one stream). A process killed mid-write leaves a torn last
    member, which :func:`read_jsonl_gz` skips."""
    data = _gz_lines(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_jsonl_gz(path: str | Path) -> list[dict]:
    """The rows of a .jsonl.gz file (one or several gzip members); a torn last member or
    line (a killed writer) is skipped, not an error. A missing file has no rows."""
    import zlib
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    text = bytearray()
    while data:
        dec = zlib.decompressobj(31)
        try:
            text += dec.decompress(data)
        except zlib.error:
            break
        if not dec.eof:
            break  # torn member: keep the lines it holds, the last one may be torn
        data = dec.unused_data
    rows = []
    for line in bytes(text).decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl_gz(path: str | Path, keep) -> int:
    """Rewrite a .jsonl.gz file atomically with the rows for which ``keep(row)`` holds
    (resume: drop what was logged after the checkpoint). Returns the rows kept."""
    rows = [r for r in read_jsonl_gz(path) if keep(r)]
    if Path(path).exists():
        write_jsonl_gz(path, rows)
    return len(rows)


def git_commit(cwd: str | Path | None = None) -> str:
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


class RunDir:
    """A run directory. ``RunDir(path).status()`` says what state it is in."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # False on data-parallel ranks other than 0: they only read

    # -- provenance -------------------------------------------------------------
    def write_provenance(self, config_yaml: str, seed: int, argv: list[str] | None = None) -> None:
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", config_yaml)
        atomic_write_json(self.path / "meta.json", {
            "seed": seed,
            "git_commit": git_commit(),
            "versions": package_versions(),
            "argv": list(argv if argv is not None else sys.argv),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    # -- status -----------------------------------------------------------------
    def status(self) -> dict:
        return read_json(self.path / "status.json", {"state": "missing"})

    def set_status(self, state: str, **info: Any) -> None:
        """Replace the status: the new state with ``info`` (the stage and pid carry over when
        not given); keys of earlier states do not linger."""
        if not self.writer:
            return
        prev = self.status()
        row = {k: prev[k] for k in ("stage", "pid") if k in prev}
        row.update(info)
        row["state"] = state
        row["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.path / "status.json", row)

    # -- stages -----------------------------------------------------------------
    def stage(self, name: str) -> Path:
        return self.path / name

    def stage_done(self, name: str) -> bool:
        return (self.path / name / "DONE").exists()

    def begin_stage(self, name: str, force: bool = False, keep_partial: bool = False) -> Path:
        """Return a scratch directory ``<stage>.tmp`` in which the stage writes.

        ``keep_partial`` keeps an existing scratch directory (for resumable stages).
        """
        final = self.path / name
        tmp = self.path / f"{name}.tmp"
        if not self.writer:
            return tmp
        if force and final.exists():
            shutil.rmtree(final)
        if tmp.exists() and not keep_partial:
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def finish_stage(self, name: str, summary: dict) -> Path:
        final = self.path / name
        tmp = self.path / f"{name}.tmp"
        if not self.writer:
            return final
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def summary(self, name: str) -> dict:
        return read_json(self.path / name / "summary.json", {})
