"""`rlhf sweep` against a real Slurm cluster (start one with `bash slurm/cluster-up.sh`).

Every test submits a sweep of the tiny quickstart into its own tmp_path (fresh submitit
folders: job ids restart at 1 after a purged cluster) and waits for Slurm. Skipped, with
the reason, when `sinfo` cannot reach a cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhf.cli import main as rlhf_main
from rlhf.rundir import read_json, read_jsonl
from rlhf_slurm.records import ACTIVE, slurm_reachable, sweep_states

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
pytestmark = [pytest.mark.slurm]


@pytest.fixture(autouse=True, scope="module")
def _slurm_cluster():
    """Ask Slurm (sinfo, up to 15 s) once, when the first test of this file runs, never while
    the suite is being collected; skip every test here, with the reason, when it does not answer."""
    ok, why = slurm_reachable(timeout=15)
    if not ok:
        pytest.skip(f"no Slurm cluster reachable ({why.strip()}); start one with: bash slurm/cluster-up.sh")

TINY = {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 4, "pretrain.steps": 60, "pretrain.batch_size": 16,
        "sft.epochs": 1, "rm.n_prompts": 40, "rm.epochs": 1, "ppo.steps": 8, "ppo.batch_size": 8,
        "ppo.minibatch_size": 8, "ppo.epochs": 1, "ppo.checkpoint_every": 2, "world.corpus_docs": 300,
        "threads": 1}


def write_sweep(tmp_path: Path, name: str, grid=None, zip_=None, seeds=None, slurm=None, **extra_overrides) -> Path:
    doc = {"name": name, "out_dir": str(tmp_path / "sweeps"),
           "base": {"config": str(QUICKSTART), "overrides": {**TINY, **extra_overrides}},
           "slurm": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 10, "array_parallelism": 4, **(slurm or {})}}
    if grid is not None:
        doc["grid"] = grid
    if zip_ is not None:
        doc["zip"] = zip_
    if seeds is not None:
        doc["seeds"] = seeds
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sweep(*args: str) -> int:
    return rlhf_main(["sweep", *args])


def wait_settled(sweep_dir: Path, timeout: float = 150.0) -> dict:
    """Poll until no run is pending or running, and Slurm accounting says every job ended."""
    end = time.time() + timeout
    while True:
        states = {s.run_id: s for s in sweep_states(sweep_dir)}
        if all(s.state not in ("pending", "running") and s.slurm_state not in ACTIVE for s in states.values()):
            return states
        if time.time() > end:
            raise AssertionError(f"sweep not finished after {timeout}s: "
                                 f"{ {r: (s.state, s.slurm_state) for r, s in states.items()} }")
        time.sleep(1.0)


def final_metrics(run_dir: Path) -> dict:
    final = dict(read_json(run_dir / "ppo" / "summary.json")["final"])
    final.pop("time_s", None)
    return final


def test_grid_2x2_job_array_finishes_and_collects(tmp_path, capsys):
    f = write_sweep(tmp_path, "grid", grid={"ppo.beta": [0.02, 0.2], "ppo.ptx_coef": [0.0, 1.0]})
    assert sweep(str(f)) == 0
    out = capsys.readouterr().out
    assert "submitted 4 runs as job array" in out and "rlhf sweep status" in out
    sdir = tmp_path / "sweeps" / "grid"
    jobs = read_jsonl(sdir / "jobs.jsonl")
    assert len({j["job_id"].split("_")[0] for j in jobs}) == 1, "one job array"
    states = wait_settled(sdir)
    assert {s.state for s in states.values()} == {"done"}, {r: (s.state, s.error) for r, s in states.items()}
    assert {s.slurm_state for s in states.values()} == {"COMPLETED"}

    assert sweep("status", str(sdir)) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETED") == 4 and "ppo.final_gold_reward=" in table

    assert sweep("collect", str(sdir)) == 0
    import pandas as pd
    df = pd.read_parquet(sdir / "results.parquet")
    assert len(df) == 4 and len(pd.read_csv(sdir / "results.csv")) == 4
    assert sorted(zip(df["ppo.beta"], df["ppo.ptx_coef"])) == [(0.02, 0.0), (0.02, 1.0), (0.2, 0.0), (0.2, 1.0)]
    assert set(df["state"]) == {"done"}
    assert (df["model.n_embd"] == 32).all() and (df["ppo.steps"] == 8).all()
    for col in ("rm.heldout_accuracy", "ppo.final_gold_reward", "ppo.final_rm_score", "ppo.final_kl"):
        assert df[col].notna().all(), col
    for _, row in df.iterrows():  # each row's metrics are its own run's
        summ = read_json(sdir / "runs" / row["run_id"] / "ppo" / "summary.json")
        assert row["ppo.final_kl"] == pytest.approx(summ["final_kl"])
        cfg = yaml.safe_load((sdir / "runs" / row["run_id"] / "config.yaml").read_text())
        assert cfg["ppo"]["beta"] == row["ppo.beta"] and cfg["ppo"]["ptx_coef"] == row["ppo.ptx_coef"]
    # the ptx term really ran where gamma > 0
    assert (df.loc[df["ppo.ptx_coef"] > 0, "ppo.final.ptx_loss"] > 0).all()

    # re-submitting a finished sweep submits nothing
    n_jobs = len(read_jsonl(sdir / "jobs.jsonl"))
    assert sweep(str(f)) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(read_jsonl(sdir / "jobs.jsonl")) == n_jobs


def start_reference(f: Path, tmp_path: Path) -> subprocess.Popen:
    """The same sweep, never preempted, on this machine (local executor), meanwhile."""
    return subprocess.Popen([sys.executable, "-m", "rlhf_slurm.cli", str(f), "--executor", "local",
                             "--out-dir", str(tmp_path / "ref")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_ppo_rows(run: Path, n: int, timeout: float) -> int:
    """Wait until PPO has logged ``n`` iterations; returns how many it had."""
    end = time.time() + timeout
    metrics = run / "ppo.tmp" / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert not (run / "ppo" / "DONE").exists(), "PPO finished before it could be preempted"
        assert time.time() < end, "PPO never started"
        time.sleep(0.1)
    return len(metrics.read_text().splitlines())


def test_preempted_task_requeues_and_resumes_to_the_same_result(tmp_path, capsys):
    # no periodic checkpoint within the run: resuming at all needs the checkpoint written on USR2
    long_ppo = {"ppo.steps": 120, "ppo.checkpoint_every": 1000}
    f = write_sweep(tmp_path, "pre", seeds=[0, 1], **long_ppo)
    ref = start_reference(f, tmp_path)
    try:
        assert sweep(str(f)) == 0
        capsys.readouterr()
        sdir = tmp_path / "sweeps" / "pre"
        jobs = {j["run_id"]: j["job_id"] for j in read_jsonl(sdir / "jobs.jsonl")}
        victim = sorted(jobs)[0]
        run = sdir / "runs" / victim
        done_at_signal = wait_ppo_rows(run, 4, timeout=120)  # a few iterations in, then preempt
        subprocess.run(["scancel", "--signal=USR2", jobs[victim]], check=True)
        states = wait_settled(sdir, timeout=180)
        ref_out, _ = ref.communicate(timeout=180)
    finally:
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, ref_out
    assert {s.state for s in states.values()} == {"done"}, {r: (s.state, s.error) for r, s in states.items()}
    assert states[victim].restarts == 1
    assert [h["restarts"] for h in read_jsonl(run / "sweep_jobs.jsonl")] == [0, 1]
    assert states[victim].slurm_state == "COMPLETED"
    log = Path(jobs and read_jsonl(sdir / "jobs.jsonl")[0]["folder"]) / f"{jobs[victim]}_0_log.out"
    text = log.read_text()
    assert "checkpointing at the end of this PPO iteration" in text
    resumed = [int(m) for m in re.findall(r"resumed from step_(\d+)", text)]
    assert len(resumed) == 1 and done_at_signal <= resumed[0] < 120, (done_at_signal, resumed)
    other = next(r for r in jobs if r != victim)
    assert states[other].restarts == 0
    for rid in jobs:
        got, want = final_metrics(sdir / "runs" / rid), final_metrics(tmp_path / "ref" / "pre" / "runs" / rid)
        assert got == want, (rid, got, want)
    assert sweep("status", str(sdir)) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(victim))
    assert line.split()[6] == "1"  # RESTARTS


def test_data_parallel_task_preempted_checkpoints_on_both_ranks_and_resumes(tmp_path, capsys):
    """slurm.procs_per_node: 2 runs torchrun inside the array task (two gloo ranks on CPU).
    USR2 goes to the task; the runner forwards SIGTERM to torchrun, both ranks checkpoint the
    same PPO iteration, submitit requeues, and the run ends as a never-preempted one."""
    f = write_sweep(tmp_path, "dp", seeds=[0], slurm={"procs_per_node": 2, "cpus_per_task": 2, "mem_gb": 4},
                    **{"ppo.steps": 80, "ppo.checkpoint_every": 1000})
    ref = start_reference(f, tmp_path)
    try:
        assert sweep(str(f)) == 0
        capsys.readouterr()
        sdir = tmp_path / "sweeps" / "dp"
        (job,) = read_jsonl(sdir / "jobs.jsonl")
        run = sdir / "runs" / job["run_id"]
        done_at_signal = wait_ppo_rows(run, 4, timeout=180)
        subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)
        states = wait_settled(sdir, timeout=240)
        ref_out, _ = ref.communicate(timeout=240)
    finally:
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, ref_out
    st = states[job["run_id"]]
    assert (st.state, st.restarts, st.slurm_state) == ("done", 1, "COMPLETED"), (st.state, st.error)
    text = (Path(job["folder"]) / f"{job['job_id']}_0_log.out").read_text()
    assert "torch.distributed.run" in text and "asking the 2 ranks to checkpoint" in text
    resumed = [int(m) for m in re.findall(r"resumed from step_(\d+)", text)]
    assert len(resumed) == 1 and done_at_signal <= resumed[0] < 80, (done_at_signal, resumed)
    assert read_json(run / "status.json")["world_size"] == 2
    assert final_metrics(run) == final_metrics(tmp_path / "ref" / "dp" / "runs" / job["run_id"])


def test_bad_cell_fails_alone_then_only_the_fixed_cell_reruns(tmp_path, capsys):
    zip_bad = [{"ppo.beta": [0.02, 0.1, 0.2], "sft.data": ["world", "world", "/nonexistent.jsonl"]}]
    f = write_sweep(tmp_path, "bad", zip_=zip_bad)
    assert sweep(str(f)) == 0
    sdir = tmp_path / "sweeps" / "bad"
    states = wait_settled(sdir)
    capsys.readouterr()
    bad = next(r for r in states if "nonexistent" in r)
    assert states[bad].state == "failed" and states[bad].slurm_state == "FAILED"
    assert "DataError" in states[bad].error and "/nonexistent.jsonl" in states[bad].error
    assert [s.state for r, s in states.items() if r != bad] == ["done", "done"]

    assert sweep("status", str(sdir)) == 0
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if ln.startswith(bad))
    assert " FAILED " in line and "DataError" in line

    # without --retry-failed a failed run is reported, not resubmitted
    n_jobs = len(read_jsonl(sdir / "jobs.jsonl"))
    assert sweep(str(f)) == 0
    out = capsys.readouterr().out
    assert "1 failed and not resubmitted" in out and "nothing to submit" in out
    assert len(read_jsonl(sdir / "jobs.jsonl")) == n_jobs

    # fix the value: only that cell is submitted (a new config, so a new run id)
    zip_fixed = [{"ppo.beta": [0.02, 0.1, 0.2], "sft.data": ["world", "world", "world"]}]
    f = write_sweep(tmp_path, "bad", zip_=zip_fixed)
    assert sweep(str(f)) == 0
    out = capsys.readouterr().out
    assert "2 done already" in out and "submitted 1 runs" in out
    new = read_jsonl(sdir / "jobs.jsonl")[n_jobs:]
    assert len(new) == 1 and new[0]["run_id"].startswith("beta=0.2,data=world-")
    states = wait_settled(sdir)
    assert {s.state for s in states.values()} == {"done"} and len(states) == 3
    done_before = {r: (sdir / "runs" / r / "ppo" / "DONE").read_text() for r in states}

    # a finished sweep: nothing is submitted, nothing is rewritten
    assert sweep(str(f)) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(read_jsonl(sdir / "jobs.jsonl")) == n_jobs + 1
    assert {r: (sdir / "runs" / r / "ppo" / "DONE").read_text() for r in states} == done_before

    # collect: 3 rows for the current sweep file; --all also lists the failed cell with its error
    assert sweep("collect", str(sdir), "--all") == 0
    import pandas as pd
    df = pd.read_csv(sdir / "results.csv")
    assert len(df) == 4
    row = df[df["run_id"] == bad].iloc[0]
    assert row["state"] == "failed" and "DataError" in row["error"]


def test_retry_failed_resubmits_the_failed_run(tmp_path, capsys):
    f = write_sweep(tmp_path, "retry", seeds=[0], **{"sft.data": "/nonexistent.jsonl", "pretrain.steps": 5})
    assert sweep(str(f)) == 0
    sdir = tmp_path / "sweeps" / "retry"
    states = wait_settled(sdir)
    (rid, st), = states.items()
    assert st.state == "failed"
    assert sweep(str(f), "--retry-failed") == 0
    assert "submitted 1 runs" in capsys.readouterr().out
    jobs = read_jsonl(sdir / "jobs.jsonl")
    assert [j["run_id"] for j in jobs] == [rid, rid] and jobs[0]["job_id"] != jobs[1]["job_id"]
    states = wait_settled(sdir)
    assert states[rid].state == "failed" and states[rid].job_id == jobs[1]["job_id"]



def test_findings_on_slurm_runs_each_run_at_one_thread_as_locally(tmp_path):
    # `rlhf findings --executor slurm` runs the suite's sweeps at threads=1, as the local
    # executor does (the same floats as docs/findings.md), on their 1 CPU per task; the sweep
    # file's own threads=2 would be refused by `rlhf sweep` on 1 CPU (test_sweep.py)
    from rlhf_slurm.findings import run_sweeps
    from rlhf_slurm.sweep import load_sweep
    sw = load_sweep(write_sweep(tmp_path, "suite", seeds=[0], threads=2))
    res = run_sweeps([sw], "slurm", jobs=1, retry_failed=False, say=lambda *a: None)
    assert res["failed"] == [] and res["ran"] == 1
    (run,) = [p for p in (tmp_path / "sweeps" / "suite" / "runs").iterdir() if p.is_dir()]
    assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == 1
    assert (run / "ppo" / "DONE").exists()
