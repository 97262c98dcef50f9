"""What runs inside each array task: one run of the pipeline, preemptible.

:class:`SweepRun` is a ``submitit.helpers.Checkpointable``. On the preemption / time-limit
signal (USR2, from Slurm ``--signal`` or ``scancel --signal=USR2``) submitit calls
:meth:`SweepRun.checkpoint`, which returns a ``DelayedSubmission`` of the very same call,
and requeues the task. Before that, during PPO, the signal is first turned into a stop
request (``rlhf/stop.py``): PPO finishes the iteration in flight, writes a checkpoint at
that step and stops, and only then does submitit requeue. If PPO does not reach the end of
its iteration within ``stop_grace_s`` (half of the sweep's ``slurm.signal_delay_s``), the
task is requeued anyway from the last periodic checkpoint. The requeued task calls
``run_pipeline`` again, which skips the finished stages, and PPO resumes from its latest
``<run>/ppo.tmp/checkpoints/step_*`` (an unfinished pretrain/SFT/RM stage is redone).

A run whose ``status.json`` says ``done`` is never run again or overwritten.
This module must not import torch at import time (it is unpickled before the thread
settings are applied).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Optional

import submitit

from rlhf.rundir import RunDir, append_jsonl, atomic_write_json, read_json

JOB_FILE = "sweep_job.json"  # in each run directory: the job running it, restarts, host
PREEMPTED_MESSAGE = "preempted: checkpointed and requeued by Slurm; resumes from the last checkpoint"


def job_info(executor: str) -> dict[str, Any]:
    env = os.environ
    jid = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{jid}_{env['SLURM_ARRAY_TASK_ID']}" if jid and env.get("SLURM_ARRAY_TASK_ID") else env.get(
        "SLURM_JOB_ID", "")
    try:
        submitit_id = submitit.JobEnvironment().job_id
    except Exception:  # noqa: BLE001 - not inside a submitit job (direct call)
        submitit_id = ""
    return {"job_id": job_id or submitit_id, "slurm_job_id": env.get("SLURM_JOB_ID", ""),
            "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0), "host": socket.gethostname(),
            "executor": executor, "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class SweepRun(submitit.helpers.Checkpointable):
    """``SweepRun(executor)(spec)`` runs one sweep cell; ``spec`` is a plain dict
    (run_id, run_dir, config: the nested resolved config, gpus, launcher)."""

    def __init__(self, executor: str = "slurm") -> None:
        self.executor = executor
        self._preempted = False

    def __call__(self, spec: dict) -> dict:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        threads = spec["config"].get("threads")
        if threads:  # threads=0: torch's default, as under `rlhf run` (the CPUs the task is given)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, str(threads))
        from rlhf.config import from_dict
        cfg = from_dict(spec["config"])
        rd = RunDir(spec["run_dir"])
        if rd.status().get("state") == "done":
            print(f"[sweep] {spec['run_id']}: done already, not run again")
            return result_of(rd, spec["run_id"])
        info = job_info(self.executor)
        rd.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rd.path / JOB_FILE, info)
        append_jsonl(rd.path / "sweep_jobs.jsonl", info)
        print(f"[sweep] {spec['run_id']}: job {info['job_id']} restart {info['restarts']} on {info['host']}",
              flush=True)
        try:
            if spec.get("share_stages"):
                from .shared import provide_shared_stages
                try:
                    provide_shared_stages(cfg, rd.path, spec["shared_dir"], spec["share_stages"])
                except Exception as e:
                    rd.set_status("failed", stage="shared", error=f"shared stages: {type(e).__name__}: {e}")
                    raise
            if n_procs(spec) > 1 and spec.get("launcher", "auto") != "none":
                self._run_data_parallel(spec, rd)
            else:
                self._run_in_process(spec, cfg, rd)
        except BaseException as e:
            if self._preempted:
                st = rd.status()
                rd.set_status("interrupted", stage=st.get("stage"), step=st.get("step"),
                              checkpoint=st.get("checkpoint"), error=PREEMPTED_MESSAGE, requeued=True)
            elif isinstance(e, Exception) and rd.status().get("state") not in ("failed", "diverged", "interrupted"):
                # refused before the pipeline wrote a status (bad input is checked before the run
                # directory is touched): the sweep's run directory exists, so say why there
                rd.set_status("failed", stage=rd.status().get("stage") or "setup", error=f"{type(e).__name__}: {e}")
            raise
        return result_of(rd, spec["run_id"])

    def _run_in_process(self, spec: dict, cfg, rd: RunDir) -> None:
        """run_pipeline, with submitit's preemption handler deferred to PPO's next iteration."""
        from rlhf import stop
        from rlhf.pipeline import run_pipeline
        grace = int(spec.get("stop_grace_s", 60))

        def on_preempt(signum, frame, requeue):
            if stop.request_stop(f"{signal.Signals(signum).name} (Slurm preemption)"):
                print(f"[sweep] {spec['run_id']}: {signal.Signals(signum).name}: checkpointing at the end of this "
                      f"PPO iteration (at most {grace} s), then requeueing", flush=True)
                signal.signal(signal.SIGALRM, lambda *_: requeue(signum, None))  # PPO too slow: requeue anyway
                signal.alarm(grace)
            else:
                requeue(signum, frame)

        with preemption_handler(on_preempt) as (sig, requeue):
            try:
                run_pipeline(cfg, run_dir=rd.path, argv=["rlhf", "sweep", "run", spec["run_id"]])
            except stop.StopRequested as e:
                signal.alarm(0)
                print(f"[sweep] {spec['run_id']}: {e}", flush=True)
                if requeue is not None:
                    requeue(sig, None)  # submitit: self.checkpoint(), scontrol requeue, sys.exit
                raise

    def checkpoint(self, spec: dict) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        """Called by submitit on USR2: requeue the same call (the stages checkpoint themselves)."""
        self._preempted = True
        print(f"[sweep] {spec['run_id']}: preempted, requeueing", flush=True)
        return submitit.helpers.DelayedSubmission(self, spec)

    def __getstate__(self) -> dict:
        return {"executor": self.executor, "_preempted": False}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- data-parallel: one process per GPU (or CPU share), started by torchrun or accelerate ------
    def _run_data_parallel(self, spec: dict, rd: RunDir) -> None:
        """Launch ``rlhf run`` under torchrun/accelerate (``rlhf/dist.py`` does the rest). On
        the preemption signal the launcher gets SIGTERM and forwards it to the ranks, which
        checkpoint PPO at the same iteration and exit; then submitit requeues the task."""
        from rlhf.config import dump_yaml, from_dict
        cfg = from_dict(spec["config"])
        conf = rd.path / "sweep_config.yaml"
        conf.write_text(dump_yaml(cfg))
        n = n_procs(spec)
        launcher = spec.get("launcher", "auto")
        if launcher in ("auto", "torchrun"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", "rlhf.cli", "run", str(conf), "--run-dir", str(rd.path)]
        else:  # accelerate
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "-m", "rlhf.cli",
                   "run", str(conf), "--run-dir", str(rd.path)]
        print("[sweep] " + " ".join(cmd), flush=True)
        sig = submitit.JobEnvironment._usr_sig()
        # Slurm signals every process of the job step: the launcher and the ranks ignore the
        # preemption signal (an ignored signal stays ignored across exec), and this process
        # turns it into SIGTERM for the launcher, which forwards it to the ranks.
        proc = subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))
        grace = int(spec.get("stop_grace_s", 60))
        preempted: list[int] = []

        def on_preempt(signum, frame, requeue):
            preempted.append(signum)
            print(f"[sweep] {spec['run_id']}: {signal.Signals(signum).name}: asking the {n} ranks to checkpoint "
                  f"(SIGTERM to the launcher, at most {grace} s), then requeueing", flush=True)
            proc.send_signal(signal.SIGTERM)
            signal.signal(signal.SIGALRM, lambda *_: proc.kill())
            signal.alarm(grace)

        with preemption_handler(on_preempt) as (_, requeue):
            try:
                rc = proc.wait()
            except BaseException:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        if preempted and requeue is not None:
            requeue(preempted[0], None)  # submitit: self.checkpoint(), scontrol requeue, sys.exit
        if rc != 0:
            st = rd.status()
            raise RuntimeError(f"{cmd[2]} exited with status {rc}: {st.get('error', 'see the job log')}")


@contextlib.contextmanager
def preemption_handler(on_preempt) -> Iterator[tuple[int, Optional[Callable]]]:
    """Inside a submitit job, route the preemption signal to ``on_preempt(signum, frame,
    requeue)``, where ``requeue`` is submitit's own handler (checkpoint, requeue, exit).
    Yields (signal, requeue); requeue is None outside a job, and then nothing is installed.
    On exit: any pending alarm is cancelled and submitit's handler is back."""
    sig = submitit.JobEnvironment._usr_sig()
    requeue = signal.getsignal(sig)
    if not callable(requeue):
        yield sig, None
        return
    signal.signal(sig, lambda signum, frame: on_preempt(signum, frame, requeue))
    try:
        yield sig, requeue
    finally:
        signal.alarm(0)
        signal.signal(sig, requeue)


def n_procs(spec: dict) -> int:
    """Data-parallel processes for a run (``slurm.procs_per_node``, else one per GPU)."""
    return int(spec.get("procs") or spec.get("gpus") or 1)


def result_of(rd: RunDir, run_id: str) -> dict:
    out: dict[str, Any] = {"run_id": run_id, "state": rd.status().get("state", "missing")}
    for stage in ("pretrain", "sft", "rm", "ppo"):
        s = read_json(rd.path / stage / "summary.json")
        if s and isinstance(s, dict):
            out[stage] = {k: v for k, v in s.items() if not isinstance(v, (dict, list))}
    return out



def main(argv: Optional[list[str]] = None) -> int:
    """``python -m rlhf_slurm.runner JOB.json``: run one sweep cell from a job spec
    (``rlhf_slurm.submit.job_spec``) in this process; exit 0 when the run is done."""
    import json
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rlhf_slurm.runner JOB.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = json.load(f)
    try:
        res = SweepRun("local")(spec)
    except BaseException as e:  # noqa: BLE001 - the run directory's status.json says what happened
        print(f"[sweep] {spec.get('run_id')}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if res.get("state") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
