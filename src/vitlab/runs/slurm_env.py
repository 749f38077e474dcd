"""What the SLURM environment says about the job a process belongs to."""

from __future__ import annotations

import os


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` inside an array (submitit's), else the job id."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")
