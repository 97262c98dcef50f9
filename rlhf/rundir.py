"""Run directories: atomic writes, stage status, metrics and provenance.

Layout of a run directory (``<out_dir>/<name>/``)::

    config.yaml          resolved config (every key, after overrides)
    meta.json            seed, git commit, package versions, command line, host, device and
                         threads in use (of the latest invocation)
    status.json          {"state": running|done|failed|diverged|interrupted, "stage", "step", ...}
    world/               the toy world: world.json, tokenizer/ (stage 0, when world is used)
    pretrain/ sft/ rm/   one Hugging Face model folder each (safetensors) + metrics.jsonl
                         + summary.json; a stage is complete iff its DONE file exists.
                         With sft.skip, sft/ holds model_source.json instead of a model: a
                         pointer to the source model (:func:`stage_model` reads either)
    ppo/                 final policy (HF folder), metrics.jsonl, summary.json, DONE,
                         checkpoints/step_NNNNNN/ (resumable state), kl/kl_X/ (policies
                         saved when the KL first passes each level of ppo.kl_levels)
    tracking/            TensorBoard event files, W&B offline runs (``logging.report_to``, rlhf/tracking.py)
    eval/records.jsonl   one tidy record per (checkpoint, metric), written by `rlhf eval`

    <stage>/config.yaml  the resolved config the stage was built with (``config.yaml`` at the
                         top is the config of the latest invocation; a report reads the stage's)
    .lock                advisory lock (flock) held by the process writing the run directory;
                         its text names the holder (pid host)

Every file is written to a temporary name in the same directory, fsynced and renamed into
place, and a stage directory is built under ``<stage>.tmp`` and swapped in only when
complete (the old one, if any, stays until then: ``--force`` never destroys a good result
before the new one exists), so nothing half-written ever looks complete. Files get the
modes the umask allows (a group-readable umask makes results group-readable).

Readers treat a torn, empty or undecodable run file as unknown: a warning on stderr and the
reader's default, never a crash.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
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
from typing import Any, Iterable, Optional

PACKAGES = ("torch", "transformers", "trl", "tokenizers", "datasets", "accelerate",
            "lm_eval", "pandas", "numpy", "submitit", "safetensors", "rlhf-harness")


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode an ordinary ``open(..., "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``; ``default`` when it is missing, and also (with a warning) when it
    is empty, torn, not UTF-8 or unreadable: a reader never crashes on one bad run file."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError, OSError) as e:  # JSONDecodeError is a ValueError
        warn(f"{path}: unreadable ({type(e).__name__}: {str(e)[:120]}): treated as unknown")
        return default


def read_yaml(path: str | Path, default: Any = None) -> Any:
    """A YAML mapping from ``path`` (``yaml.safe_load``); ``default`` when missing or (with a
    warning) unreadable, not UTF-8, not YAML or not a mapping."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return default
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        warn(f"{path}: unreadable ({type(e).__name__}: {str(e)[:120]}): treated as unknown")
        return default
    if not isinstance(data, dict):
        warn(f"{path}: not a mapping of config keys: treated as unknown")
        return default
    return data


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


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that the renames and new names in it survive a power loss."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories
    finally:
        os.close(fd)


def fsync_tree(root: str | Path, fix_modes: bool = True) -> None:
    """fsync every file and directory under ``root`` (before the rename that publishes it).
    ``fix_modes`` also gives files that a library wrote 0600 (safetensors does) the mode the
    umask allows, so that a group can read the results."""
    root = Path(root)
    mode = file_mode()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            if fix_modes and (p.stat().st_mode & 0o777) != mode and not os.access(p, os.X_OK):
                os.chmod(p, mode)
            fsync_file(p)
        fsync_dir(dirpath)


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: str | Path) -> None:
    """``manifest.json``: size and sha256 of every file under ``root``, written last."""
    root = Path(root)
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    atomic_write_json(root / MANIFEST, {"files": files})


def verify_manifest(root: str | Path) -> Optional[str]:
    """None when every file of ``root``'s manifest is there with its size and hash; else
    what is wrong (a missing or torn manifest counts as wrong)."""
    root = Path(root)
    try:
        man = json.loads((root / MANIFEST).read_bytes().decode("utf-8"))
        files = man["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (written last: the checkpoint is incomplete)"
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, OSError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__})"
    for rel, info in files.items():
        p = root / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != info["size"]:
            return f"{rel} has {size} bytes, the manifest says {info['size']}"
        if _sha256(p) != info["sha256"]:
            return f"{rel} does not match its sha256 in the manifest"
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a torn or undecodable line (a killed writer) is skipped, with a
    warning when it is not the last line."""
    rows = []
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return rows
    except OSError as e:
        warn(f"{path}: unreadable ({e}): treated as empty")
        return rows
    bad = []
    for i, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            bad.append(i)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(i)
    last = max((i for i, raw in enumerate(lines, 1) if raw.strip()), default=0)
    if [b for b in bad if b != last]:  # a torn last line is the normal trace of a kill
        warn(f"{path}: skipped {len(bad)} unreadable line(s) (line {bad[0]} first)")
    return rows


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsynced, then
    renamed over it; readable by the group as the umask allows (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
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


LOCK_FILE = ".lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists under another user (or cannot tell): assume alive
    return True


class RunLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An advisory lock (``flock``) on ``<run>/.lock`` for the whole run; the kernel releases
    it when the holder exits in any way, kill -9 included. The file's text names the holder
    (``pid host``); text left with the lock free is a dead holder's, and is taken over."""

    def __init__(self, run_path: str | Path):
        self.path = Path(run_path) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            for _ in range(40):  # the holder writes its name just after taking the lock: give it 2 s
                if holder:
                    break
                time.sleep(0.05)
                holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"run directory {self.path.parent} is in use by {holder or 'another process'} "
                                f"(lock {self.path}): wait for it, or pick another name=...") from None
            raise
        prev = _read_holder(fd)
        me = f"pid {os.getpid()} on host {socket.gethostname()}"
        if prev and prev != me:
            print(f"[run] taking over the lock of {self.path.parent} from {prev}, which is no longer running",
                  file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody held it when it was left
        except OSError:
            pass
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if len(text) >= 2:
        return f"pid {text[0]} on host {text[1]}"
    return ""


class RunDir:
    """A run directory. ``RunDir(path).status()`` says what state it is in."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # False on data-parallel ranks other than 0: they only read

    # -- provenance -------------------------------------------------------------
    def write_provenance(self, config_yaml: str, seed: int, argv: list[str] | None = None,
                         runtime: Optional[dict] = None) -> None:
        """config.yaml and meta.json of this invocation; ``runtime``: what it runs on
        (``rlhf.models.runtime_info``: device, threads)."""
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
            **(runtime or {}),
        })

    # -- status -----------------------------------------------------------------
    def status(self) -> dict:
        """The saved status; ``running`` with a holder that is dead (same host, pid gone) reads as
        ``interrupted``, and an unreadable status.json as ``unknown``."""
        st = read_json(self.path / "status.json", None)
        if st is None:
            if (self.path / "status.json").exists():
                return {"state": "unknown", "error": "status.json is unreadable (torn or empty)"}
            return {"state": "missing"}
        if not isinstance(st, dict):
            return {"state": "unknown", "error": "status.json is not a JSON object"}
        if st.get("state") == "running" and st.get("pid") and st.get("host") == socket.gethostname() \
                and not pid_alive(st["pid"]):
            st = dict(st, state="interrupted",
                      error=f"the process (pid {st['pid']}) died while running stage {st.get('stage', '?')}")
        return st

    def set_status(self, state: str, **info: Any) -> None:
        """Replace the status: the new state with ``info`` (the stage, pid and host carry over
        when not given); keys of earlier states do not linger."""
        if not self.writer:
            return
        prev = read_json(self.path / "status.json", None)
        prev = prev if isinstance(prev, dict) else {}
        row = {k: prev[k] for k in ("stage", "pid", "host") if k in prev}
        row.update(info)
        row.setdefault("host", socket.gethostname())
        row["state"] = state
        row["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.path / "status.json", row)

    # -- stages -----------------------------------------------------------------
    def stage(self, name: str) -> Path:
        return self.path / name

    def stage_done(self, name: str) -> bool:
        return (self.path / name / "DONE").exists()

    def recover(self) -> None:
        """After a crash between the two renames of :meth:`finish_stage`: put the old stage back
        (``<stage>.old`` without ``<stage>``), or drop an old copy whose new one is in place."""
        if not self.writer or not self.path.is_dir():
            return
        for old in self.path.glob("*.old"):
            final = self.path / old.name[:-4]
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
                print(f"[run] restored {final.name}/ (a replacement was interrupted before it was complete)",
                      file=sys.stderr)

    def begin_stage(self, name: str, force: bool = False, keep_partial: bool = False) -> Path:
        """Return a scratch directory ``<stage>.tmp`` in which the stage writes. A finished
        ``<stage>`` is left alone (``force`` included) until :meth:`finish_stage` replaces it.

        ``keep_partial`` keeps an existing scratch directory (for resumable stages).
        """
        tmp = self.path / f"{name}.tmp"
        if not self.writer:
            return tmp
        if tmp.exists() and not keep_partial:
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def finish_stage(self, name: str, summary: dict, config_yaml: Optional[str] = None) -> Path:
        """Publish ``<stage>.tmp`` as ``<stage>``: summary, the stage's config, DONE, every file
        fsynced, then the swap (the old result is removed only once the new one is in place)."""
        final = self.path / name
        tmp = self.path / f"{name}.tmp"
        if not self.writer:
            return final
        atomic_write_json(tmp / "summary.json", summary)
        if config_yaml is not None:
            atomic_write_text(tmp / "config.yaml", config_yaml)
        atomic_write_text(tmp / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        fsync_tree(tmp)
        old = self.path / f"{name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(self.path)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return final

    def summary(self, name: str) -> dict:
        s = read_json(self.path / name / "summary.json", {})
        return s if isinstance(s, dict) else {}

    def config(self) -> Optional[dict]:
        """The run's config as the results were built: ``config.yaml`` with each stage's section
        (``pretrain``, ``sft``, ``rm``, ``ppo``) taken from that stage's own ``config.yaml`` when
        it has one. None (with a warning) when no config can be read."""
        data = read_yaml(self.path / "config.yaml", None)
        for name in ("pretrain", "sft", "rm", "ppo"):
            st = self.stage_config(name) if self.stage_done(name) else None
            if st is None:
                continue
            if data is None:
                data = dict(st)
            elif isinstance(st.get(name), dict):
                data[name] = st[name]
        return data

    def stage_config(self, name: str) -> Optional[dict]:
        """The config ``name`` was built with (``<stage>/config.yaml``); None when unknown."""
        return read_yaml(self.path / name / "config.yaml", None)


MODEL_POINTER = "model_source.json"  # a stage that stands for another model (sft.skip): {"path": ...}


def stage_model(stage_dir: str | Path) -> Optional[str]:
    """The model a stage folder stands for: the folder itself when it holds one
    (``config.json``), the model its ``model_source.json`` points to (``sft.skip``: the
    source model is the SFT policy, not copied), else None."""
    d = Path(stage_dir)
    if (d / "config.json").is_file():
        return str(d)
    ptr = read_json(d / MODEL_POINTER, None)
    if isinstance(ptr, dict) and isinstance(ptr.get("path"), str) and ptr["path"]:
        return ptr["path"]
    return None


def _cell(v: Any) -> Any:
    """Lists and mappings become JSON text so that every column has one scalar type (Parquet)."""
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def results_row(run_dir: str | Path, head: dict[str, Any]) -> dict[str, Any]:
    """One results row of a run directory (the columns of ``rlhf sweep collect`` and of
    ``rlhf report`` on a lone run): ``head`` (run_id, state, error, ...), then the resolved
    config as dotted keys (each stage's keys from the config it was built with), then every
    stage's summary metrics (``rm.heldout_accuracy``, ``ppo.final_gold_reward`` ...; a
    summary key that repeats a config key becomes ``<stage>.summary.<key>``). A config that
    cannot be read is reported in ``error`` with a warning, never guessed."""
    from .config import STAGE_DIRS, InputError, RunConfig, flatten, from_dict
    run_dir = Path(run_dir)
    row = dict(head)
    cfg: Optional[dict] = None
    data = RunDir(run_dir, writer=False).config() if run_dir.is_dir() else None  # torn: warned, None
    try:
        cfg = flatten(from_dict(data)) if data is not None else None
    except InputError as e:  # a config from another version of the code
        warn(f"warning: {run_dir}/config.yaml: {e}: its config is unknown")
    if cfg is None and (run_dir / "config.yaml").exists():
        row["error"] = (row.get("error") + "; " if row.get("error") else "") + "config unknown (config.yaml unreadable)"
    config_keys = set(flatten(RunConfig()))
    for k, v in (cfg or {}).items():
        row[k] = _cell(v)
    for stage in STAGE_DIRS:
        summ = read_json(run_dir / stage / "summary.json", None)
        if not summ or not isinstance(summ, dict):
            continue
        for k, v in _flat_metrics(stage, summ).items():
            row[k if k not in config_keys else f"{stage}.summary.{k.split('.', 1)[1]}"] = _cell(v)
    return row


def _flat_metrics(prefix: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat_metrics(f"{prefix}.{k}", v))
    return out
