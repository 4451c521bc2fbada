"""Executors run a prepared job's command: locally (default) or elsewhere (Ray, later)."""

from jupyter_ds_jobs.server.executors.base import Executor, RunningProcess
from jupyter_ds_jobs.server.executors.local import LocalExecutor
from jupyter_ds_jobs.server.executors.zygote import ZygoteExecutor

__all__ = ["Executor", "LocalExecutor", "RunningProcess", "ZygoteExecutor"]
