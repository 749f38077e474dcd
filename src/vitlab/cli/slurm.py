"""SLURM: put a job that was warned of its time limit back in the queue, so it continues in place.

SLURM sends the job's `--signal` (submitit: SIGUSR2, `hydra.launcher.signal_delay_s` before the limit; a
plain sbatch script chooses, e.g. SIGUSR1) ahead of the time limit, and SIGTERM on preemption or `scancel`.
After the checkpoint is written, a *warning* signal requeues the job (`scontrol requeue`); SIGTERM does not:
a preempted job is requeued by SLURM itself when the partition allows it, and a cancelled one stays
cancelled. The requeued job runs the same command in the same run directory, which continues from
`last.ckpt` (vitlab.cli.in_place). `VITLAB_SLURM_REQUEUE=0` turns this off.
"""

from __future__ import annotations

import logging
import os
import subprocess

from vitlab.runs.slurm_env import slurm_job_id
from vitlab.training.interrupts import WARNING_SIGNALS, signal_name

log = logging.getLogger("vitlab")


def match_threads_to_allocation() -> None:
    """Use as many intra-op threads as SLURM gave this task CPUs (`--cpus-per-task`), unless OMP_NUM_THREADS
    says otherwise. Without CPU binding torch would start one thread per core of the node; two 1-CPU jobs
    sharing two cores then spin against each other (measured here: a 0.4 s loop took over 45 s)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    if torch.get_num_threads() != int(cpus):
        torch.set_num_threads(int(cpus))
        log.info("SLURM: %s CPUs per task: using %s threads", cpus, cpus)


def should_requeue(signum: int) -> bool:
    return (
        signum in WARNING_SIGNALS
        and slurm_job_id() is not None
        and os.environ.get("VITLAB_SLURM_REQUEUE", "1") != "0"
        and os.environ.get("SLURM_PROCID", "0") == "0"
    )


def requeue(signum: int) -> bool:
    """`scontrol requeue` this job; True when SLURM accepted it."""
    job = slurm_job_id()
    try:
        done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("SLURM job %s: requeue after %s failed: %s", job, signal_name(signum), exc)
        return False
    if done.returncode != 0:
        log.error("SLURM job %s: scontrol requeue failed: %s", job, done.stderr.strip() or done.stdout.strip())
        return False
    log.warning("SLURM job %s requeued after %s; it continues in place from last.ckpt", job, signal_name(signum))
    return True
