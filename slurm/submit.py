"""Submit a sweep: expand, validate, skip what is done or in flight, submit one job array.

Everything that can be wrong with the input (sweep file, any expanded config, the number
of runs, the cluster) raises an :class:`rlhf.config.InputError` before anything is
submitted. On Slurm, :func:`submit` returns as soon as the array is queued; the ``local``
and ``debug`` executors wait for their runs (there is no scheduler to hold them).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from rlhf.config import to_dict
from rlhf.rundir import append_jsonl, atomic_write_json, read_json

from .records import FAILED_STATES, slurm_reachable, sweep_states
from .runner import SweepRun
from .shared import first_of_group_first, shared_root
from .sweep import EXECUTORS, ClusterError, RunSpec, Sweep, SweepError, expand


@dataclass
class Submission:
    sweep_dir: Path
    submitted: list[str] = field(default_factory=list)  # run ids
    skipped_done: list[str] = field(default_factory=list)
    skipped_active: list[str] = field(default_factory=list)
    skipped_failed: list[str] = field(default_factory=list)  # failed, not retried (no --retry-failed)
    job_ids: list[str] = field(default_factory=list)
    array_id: str = ""
    executor: str = "slurm"
    folder: Optional[Path] = None
    results: dict[str, str] = field(default_factory=dict)  # local/debug: run_id -> final state


def check_cluster(sweep: Sweep) -> None:
    """Slurm answers, and knows the partition: else ClusterError (nothing submitted)."""
    ok, out = slurm_reachable()
    if not ok:
        raise ClusterError(f"cannot reach Slurm: {out}. Start a cluster (bash slurm/cluster-up.sh for a local "
                           f"one) or use --executor local")
    part = sweep.profile.partition
    if part:
        names = {line.split()[0].rstrip("*") for line in out.splitlines() if line.strip()}
        if part not in names:
            raise ClusterError(f"slurm.partition={part!r}: no such partition (this cluster has: "
                               f"{', '.join(sorted(names)) or 'none'})")


def job_spec(sweep: Sweep, spec: RunSpec) -> dict:
    return {"run_id": spec.run_id, "run_dir": str(Path(spec.config.out_dir).resolve() / spec.run_id),
            "config": to_dict(spec.config), "gpus": sweep.profile.gpus_per_node, "procs": sweep.profile.procs, "launcher": sweep.profile.launcher,
            "stop_grace_s": max(5, sweep.profile.signal_delay_s // 2),
            "sweep": sweep.name, "share_stages": list(sweep.share_stages),
            "shared_dir": str(shared_root(sweep.out_dir).resolve())}


def write_manifest(sweep: Sweep, specs: list[RunSpec]) -> None:
    """sweep.json and manifest.json: what makes a directory a sweep directory."""
    sdir = sweep.directory
    sdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sdir / "sweep.json", sweep.to_dict())
    atomic_write_json(sdir / "manifest.json", {
        "sweep": sweep.name, "source": sweep.source, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [{"run_id": r.run_id, "cell": r.cell} for r in specs]})


def plan(sweep: Sweep, specs: list[RunSpec], retry_failed: bool) -> Submission:
    """Which runs to submit: missing ones, and failed ones with retry_failed; never done or in-flight ones."""
    sub = Submission(sweep_dir=sweep.directory)
    states = {s.run_id: s for s in sweep_states(sweep.directory, [r.run_id for r in specs])}
    for r in specs:
        st = states[r.run_id]
        if st.state == "done":
            sub.skipped_done.append(r.run_id)
        elif st.state in ("pending", "running"):
            sub.skipped_active.append(r.run_id)
        elif st.state in FAILED_STATES and not retry_failed:
            sub.skipped_failed.append(r.run_id)
        else:
            sub.submitted.append(r.run_id)
    return sub


def check_cpus(sweep: Sweep, specs: list[RunSpec]) -> None:
    """Each Slurm task gets ``slurm.cpus_per_task`` CPUs and runs ``procs`` processes of
    ``threads`` intra-op threads each (``ppo.parallel_critic`` splits them, adding none): more
    threads than CPUs would share cores and slow every run down, silently. SweepError, naming
    the first such run (``threads=0``, torch's default, follows the CPUs the task is given)."""
    cpus, procs = sweep.profile.cpus_per_task, sweep.profile.procs
    for r in specs:
        need = r.config.threads * procs
        if need > cpus:
            raise SweepError(f"run {r.run_id}: threads={r.config.threads} x {procs} process(es) per task need {need} "
                             f"CPUs, more than slurm.cpus_per_task={cpus}: raise slurm.cpus_per_task to {need} or "
                             f"lower threads")


def submit(sweep: Sweep, executor: str = "slurm", retry_failed: bool = False, dry_run: bool = False,
           out: Optional[TextIO] = None, specs: Optional[list[RunSpec]] = None) -> Submission:
    """Submit the sweep's runs that are not done or in flight. ``specs``: its runs as
    :func:`expand` gave them, as the caller adjusted them (``rlhf findings`` sets
    ``threads=1`` on each); default ``expand(sweep)``."""
    out = out or sys.stdout
    if executor not in EXECUTORS:
        raise SweepError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if specs is None:
        specs = expand(sweep)  # validates every cell; raises before anything is submitted
    if executor == "slurm":
        check_cpus(sweep, specs)
        check_cluster(sweep)
    if dry_run:
        return _submit(sweep, specs, executor, retry_failed, True, out)[0]
    sweep.directory.mkdir(parents=True, exist_ok=True)
    # one submission at a time per sweep directory, so that two cannot both submit a missing run
    with open(sweep.directory / ".submit.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sub, jobs = _submit(sweep, specs, executor, retry_failed, False, out)
    if executor != "slurm" and jobs:
        _wait_local(sub, jobs, out)
    return sub


def _submit(sweep: Sweep, specs: list[RunSpec], executor: str, retry_failed: bool, dry_run: bool,
            out: TextIO) -> tuple[Submission, list]:
    sdir = sweep.directory
    sub = plan(sweep, specs, retry_failed)
    sub.executor = executor
    print(f"sweep {sweep.name}: {len(specs)} runs in {sdir}", file=out)
    if sub.skipped_done:
        print(f"  {len(sub.skipped_done)} done already (never rerun)", file=out)
    if sub.skipped_active:
        print(f"  {len(sub.skipped_active)} queued or running already", file=out)
    if sub.skipped_failed:
        print(f"  {len(sub.skipped_failed)} failed and not resubmitted (add --retry-failed): "
              + ", ".join(sub.skipped_failed), file=out)
    if dry_run:
        for rid in sub.submitted:
            print(f"  would submit {rid}", file=out)
        return sub, []
    write_manifest(sweep, specs)
    if not sub.submitted:
        print("nothing to submit", file=out)
        return sub, []

    import submitit
    by_id = {r.run_id: r for r in specs}
    # one run of each shared-stage group first: it builds, the others copy (slurm/shared.py)
    sub.submitted = [r.run_id for r in first_of_group_first([by_id[rid] for rid in sub.submitted],
                                                            sweep.share_stages)]
    todo = [job_spec(sweep, by_id[rid]) for rid in sub.submitted]
    folder = (sdir / "submitit" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    while folder.exists():  # two submissions in the same second
        folder = folder.with_name(folder.name + "x")
    ex = submitit.AutoExecutor(folder=folder, cluster=executor,
                               **({"slurm_max_num_timeout": sweep.profile.max_num_timeout} if executor == "slurm" else {}))
    params = sweep.profile.executor_parameters(sweep.name)
    if executor != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params.pop("gpus_per_node", None) if sweep.profile.gpus_per_node == 0 else None
    ex.update_parameters(**params)
    try:
        jobs = ex.map_array(SweepRun(executor), todo)
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as e:
        raise ClusterError(f"the cluster refused the job array: {e}") from None
    sub.folder = folder
    sub.job_ids = [j.job_id for j in jobs]
    sub.array_id = sub.job_ids[0].split("_")[0] if sub.job_ids else ""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for rid, job in zip(sub.submitted, jobs):
        append_jsonl(sdir / "jobs.jsonl", {"run_id": rid, "job_id": job.job_id, "executor": executor,
                                           "folder": str(folder), "submitted": now})
    if executor == "slurm":
        print(f"submitted {len(jobs)} runs as job array {sub.array_id} (tasks {sub.job_ids[0]}..{sub.job_ids[-1]})",
              file=out)
        print(f"follow it:  rlhf sweep status {sdir}    squeue -j {sub.array_id}    "
              f"tail -f {folder}/{sub.job_ids[0]}_0_log.out", file=out)
        print(f"when done:  rlhf sweep collect {sdir}", file=out)
    else:
        print(f"submitted {len(jobs)} runs to the {executor} executor (logs in {folder})", file=out)
    return sub, jobs


def _wait_local(sub: Submission, jobs: list, out: TextIO) -> None:
    """local / debug executors: wait for every run (debug runs each one in this process, in turn)."""
    for rid, job in zip(sub.submitted, jobs):
        try:
            res = job.result()
            sub.results[rid] = res.get("state", "done") if isinstance(res, dict) else "done"
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
            st = read_json(sub.sweep_dir / "runs" / rid / "status.json", {})
            err = st.get("error") if isinstance(st, dict) else None
            if not err:
                lines = str(e).strip().splitlines()
                err = lines[-1] if lines else type(e).__name__
            sub.results[rid] = "failed"
            print(f"  {rid}: FAILED ({err})", file=out)
        else:
            print(f"  {rid}: {sub.results[rid]}", file=out)
