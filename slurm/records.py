"""A sweep directory and the state of each of its runs.

Layout of ``<out_dir>/<sweep name>/``::

    sweep.json           the parsed sweep file, as last submitted
    manifest.json        the runs of the sweep as last submitted: run_id, cell (varying keys)
    jobs.jsonl           one line per submitted run: run_id, job_id, executor, submitit folder, time
    runs/<run_id>/       one run directory each (see rlhf/rundir.py), plus sweep_job.json
                         (the job now running it, its restart count) and sweep_jobs.jsonl
    submitit/<stamp>/    submitit's pickles and logs, one folder per submission:
                         <job_id>_<task>_log.out / _log.err

The state of a run combines its ``status.json`` (written by the pipeline) with the Slurm
accounting state of its latest job (``sacct`` through submitit's watcher): a run is
``done``, ``pending``/``running`` (a job is queued or running), ``failed``, ``diverged``,
``interrupted`` or ``missing`` (never submitted).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rlhf.rundir import RunDir, read_json, read_jsonl

from .runner import JOB_FILE

# Slurm states in which a job will still run (or is running)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"}
FAILED_STATES = ("failed", "diverged", "interrupted")


@dataclass
class RunState:
    run_id: str
    state: str  # done | pending | running | failed | diverged | interrupted | missing
    slurm_state: str = ""  # from sacct ("" when not on Slurm or unknown)
    job_id: str = ""
    executor: str = ""
    stage: str = ""
    step: Optional[int] = None
    restarts: int = 0
    error: str = ""
    status: dict = field(default_factory=dict)
    log: str = ""

    @property
    def display_state(self) -> str:
        """The Slurm accounting state when there is one, else the run's own state."""
        return self.slurm_state or self.state.upper()


def runs_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "runs"


def manifest(sweep_dir: Path) -> dict:
    return read_json(Path(sweep_dir) / "manifest.json", {}) or {}


def manifest_run_ids(sweep_dir: Path) -> list[str]:
    return [r["run_id"] for r in manifest(sweep_dir).get("runs", [])]


def latest_jobs(sweep_dir: Path) -> dict[str, dict]:
    """run_id -> the record of its most recent submission."""
    out: dict[str, dict] = {}
    for row in read_jsonl(Path(sweep_dir) / "jobs.jsonl"):
        out[row["run_id"]] = row
    return out


def base_state(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'."""
    return state.split()[0].rstrip("+").upper() if state else ""


def slurm_reachable(timeout: float = 20.0) -> tuple[bool, str]:
    if shutil.which("sinfo") is None:
        return False, "sinfo is not on PATH (no Slurm client installed)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"sinfo did not answer within {timeout:g} s"
    except OSError as e:
        return False, f"sinfo failed: {e}"
    if out.returncode != 0:
        return False, f"sinfo failed: {(out.stderr or out.stdout).strip()}"
    return True, out.stdout


def query_slurm(job_ids: list[str]) -> dict[str, str]:
    """job_id ('123_4') -> accounting state ('COMPLETED'), through submitit's sacct watcher."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher
    watcher = SlurmInfoWatcher(delay_s=600)  # our own instance: no cache shared with other jobs
    for jid in job_ids:
        watcher.register_job(str(jid))
    watcher.update()
    out = {}
    for jid in job_ids:
        info = watcher.get_info(str(jid), mode="cache")
        if info.get("State"):
            out[jid] = base_state(info["State"])
    return out


def _last_row(path: Path) -> dict:
    rows = read_jsonl(path) if path.exists() else []
    return rows[-1] if rows else {}


def run_state(sweep_dir: Path, run_id: str, job: Optional[dict], slurm_state: str = "") -> RunState:
    rd = runs_dir(sweep_dir) / run_id
    st = RunDir(rd).status() if (rd / "status.json").exists() else {}  # torn -> unknown, dead pid -> interrupted
    if st.get("state") == "unknown":  # a broken cell: shown as failed (resubmittable), the sweep goes on
        st = {"state": "failed", "error": f"broken: {st.get('error', 'status.json unreadable')}"}
    jobinfo = read_json(rd / JOB_FILE, {}) or {}
    jobinfo = jobinfo if isinstance(jobinfo, dict) else {}
    rs = RunState(run_id=run_id, state="missing", slurm_state=slurm_state, status=st,
                  job_id=(job or {}).get("job_id", ""), executor=(job or {}).get("executor", ""),
                  stage=st.get("stage", ""), restarts=int(jobinfo.get("restarts", 0) or 0),
                  error=st.get("error", "") if st.get("state") != "done" else "")
    if job and job.get("folder") and rs.job_id:
        rs.log = str(Path(job["folder"]) / f"{rs.job_id}_0_log.err")
    # the step: the last metrics row of the current stage
    if rs.stage:
        row = _last_row(rd / f"{rs.stage}.tmp" / "metrics.jsonl") or _last_row(rd / rs.stage / "metrics.jsonl")
        if "step" in row:
            rs.step = int(row["step"])
    run = st.get("state")
    active = slurm_state in ACTIVE
    if run == "done":
        rs.state = "done"
    elif active:
        rs.state = "pending" if slurm_state in QUEUED else "running"
        if slurm_state in QUEUED and run in FAILED_STATES and not st.get("requeued"):
            rs.error = ""  # an older failure, now resubmitted
    elif run in FAILED_STATES:
        rs.state = run
    elif run == "running":
        if slurm_state and slurm_state not in ACTIVE:
            rs.state = "failed"
            rs.error = f"the job ended {slurm_state} while the run was in stage {rs.stage or '?'}"
        else:
            rs.state = "running"
    elif job:  # submitted, no status yet
        if slurm_state and slurm_state not in ACTIVE:
            rs.state = "failed"
            rs.error = f"the job ended {slurm_state} before the run started (see {rs.log or 'its log'})"
        elif job.get("executor") == "slurm":
            rs.state = "pending"
        else:
            rs.state = "missing"  # a local/debug job that never started: its process is gone
    return rs


def sweep_states(sweep_dir: Path, run_ids: Optional[list[str]] = None, query: bool = True) -> list[RunState]:
    """The state of every run (the manifest's runs by default), asking Slurm once for all."""
    sweep_dir = Path(sweep_dir)
    if run_ids is None:
        run_ids = manifest_run_ids(sweep_dir)
    jobs = latest_jobs(sweep_dir)
    slurm_ids = [jobs[r]["job_id"] for r in run_ids if r in jobs and jobs[r].get("executor") == "slurm"]
    states: dict[str, str] = {}
    if query and slurm_ids:
        try:
            states = query_slurm(slurm_ids)
        except Exception:  # noqa: BLE001 - accounting unavailable: fall back to the run directories
            states = {}
    return [run_state(sweep_dir, r, jobs.get(r), states.get(jobs.get(r, {}).get("job_id", ""), ""))
            for r in run_ids]


def all_run_ids(sweep_dir: Path) -> list[str]:
    """Runs of the manifest first, then any other run directory (from earlier versions of the sweep)."""
    ids = manifest_run_ids(sweep_dir)
    rd = runs_dir(sweep_dir)
    extra = sorted(p.name for p in rd.iterdir() if p.is_dir()) if rd.is_dir() else []
    return ids + [r for r in extra if r not in ids]


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file()

