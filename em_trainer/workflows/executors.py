"""Where the independent jobs of a multi-run workflow (a sweep's runs, a study's arms x seeds) run.

A job is one ``em-trainer`` command line (``python -m em_trainer.cli <argv>``) that writes only files of its own, so
jobs need no locks and any of them can be killed and started again. Four executors run the same jobs:

- ``serial``: the workflow runs each job in its own process, one after another, inside the calling process's loop
  (today's behaviour, and the reference the others are compared against);
- ``local`` (the default): ``max_parallel`` jobs at a time on this machine, each its own process, a log per job;
- ``slurm``: a SLURM job array through submitit (``slurm_array_parallelism`` = ``max_parallel``), every ``slurm_*``
  option passed through; a job may itself run ``accelerate launch`` over several GPUs (the workflow's ``launcher``);
- ``submitit_local``: the same submitit jobs run by submitit's ``LocalExecutor`` on this machine, as separate
  processes, ``max_parallel`` at a time: how the SLURM path is tested without a cluster.

We schedule nothing ourselves beyond "N at a time": SLURM (through submitit) does the real scheduling.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .child_process import child_env, run_child, stop_with_parent

EXECUTORS = ("serial", "local", "slurm", "submitit_local")


class ExecutorError(ValueError):
    """An executor setting that cannot work, or jobs that failed; the message names the jobs and their logs."""


@dataclass
class ExecutorArguments:
    """How a multi-run workflow runs its jobs. Every field is a flag and a YAML key of ``sweep`` and ``study``.

    Args:
        executor (`str`, defaults to `"local"`):
            ``serial``, ``local``, ``slurm`` or ``submitit_local`` (see :mod:`em_trainer.workflows.executors`).
            ``local`` with ``max_parallel=1`` is the safe default on a workstation: one job at a time, each its
            own process.
        max_parallel (`int`, defaults to `1`):
            Jobs running at the same time (``local``, ``submitit_local``) or the array's ``%N`` throttle (``slurm``).
            1 because a training run already uses every core of a small machine; raise it to the number of GPUs
            (local) or to what your share of the cluster allows (SLURM).
        gpus_per_job (`int` or `None`, defaults to `None`):
            ``local``: the GPUs each job gets, taken from the visible ones (``CUDA_VISIBLE_DEVICES``, else all), so
            that jobs running at once never share one; at most (visible GPUs // ``gpus_per_job``) jobs run at once.
            None: 1 when GPUs are visible, else 0 (jobs see what this process sees). SLURM: ``gpus_per_node``.
        dry_run (`bool`, defaults to `False`):
            Print the jobs (and, for ``slurm``, the sbatch script submitit would submit) and run nothing.
        timeout_min (`int`, defaults to `1440`):
            Wall-clock limit per job in minutes (SLURM's ``--time``; submitit's local executor kills a job past it).
        gpus_per_node (`int`, defaults to `0`):
            GPUs per job (SLURM ``--gpus-per-node``). With a ``launcher`` such as ``accelerate launch
            --num_processes 8`` each job trains on all of them.
        cpus_per_task (`int` or `None`, defaults to `None`):
            CPU cores per job (SLURM ``--cpus-per-task``); None leaves the cluster's default.
        mem_gb (`float` or `None`, defaults to `None`):
            Memory per job in GB (SLURM ``--mem``); None leaves the cluster's default.
        slurm_partition (`str` or `None`, defaults to `None`): SLURM's ``--partition``.
        slurm_account (`str` or `None`, defaults to `None`): SLURM's ``--account``.
        slurm_qos (`str` or `None`, defaults to `None`): SLURM's ``--qos``.
        slurm_constraint (`str` or `None`, defaults to `None`): SLURM's ``--constraint``.
        slurm_setup (`list[str]`, defaults to `[]`):
            Shell lines run in the job script before the job, e.g. ``source ~/venvs/em/bin/activate``.
        slurm_additional_parameters (`list[str]`, defaults to `[]`):
            Any other sbatch option as ``key=value`` (e.g. ``reservation=paper``), passed through submitit.
    """

    executor: str = field(default="local", metadata={"help": f"one of {', '.join(EXECUTORS)}"})
    max_parallel: int = field(default=1, metadata={"help": "jobs at the same time (SLURM: the array's %%N)"})
    gpus_per_job: int | None = field(
        default=None, metadata={"help": "local: GPUs per job from the visible ones (default: 1 if any, else 0)"}
    )
    dry_run: bool = field(default=False, metadata={"help": "print the jobs (and the sbatch script) and run nothing"})
    timeout_min: int = field(default=1440, metadata={"help": "wall-clock limit per job, minutes"})
    gpus_per_node: int = field(default=0, metadata={"help": "GPUs per job"})
    cpus_per_task: int | None = field(default=None, metadata={"help": "CPU cores per job"})
    mem_gb: float | None = field(default=None, metadata={"help": "memory per job, GB"})
    slurm_partition: str | None = field(default=None, metadata={"help": "SLURM --partition"})
    slurm_account: str | None = field(default=None, metadata={"help": "SLURM --account"})
    slurm_qos: str | None = field(default=None, metadata={"help": "SLURM --qos"})
    slurm_constraint: str | None = field(default=None, metadata={"help": "SLURM --constraint"})
    slurm_setup: list[str] = field(default_factory=list, metadata={"help": "shell lines run before each job"})
    slurm_additional_parameters: list[str] = field(
        default_factory=list, metadata={"help": "other sbatch options as key=value"}
    )

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ExecutorError(f"--executor {self.executor!r}: use one of {', '.join(EXECUTORS)}.")
        for name in ("max_parallel", "timeout_min"):
            if getattr(self, name) < 1:
                raise ExecutorError(f"--{name} {getattr(self, name)}: must be >= 1.")
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise ExecutorError(f"--gpus_per_job {self.gpus_per_job}: must be >= 0.")
        if self.gpus_per_job is not None and self.executor != "local":
            raise ExecutorError(
                f"--gpus_per_job would have no effect with --executor {self.executor}: it splits this machine's "
                "GPUs between local jobs (SLURM jobs: --gpus_per_node)."
            )
        if self.gpus_per_node < 0:
            raise ExecutorError(f"--gpus_per_node {self.gpus_per_node}: must be >= 0.")
        for name in ("cpus_per_task", "mem_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ExecutorError(f"--{name} {value}: must be > 0 (leave it out for the cluster's default).")
        additional_parameters(self.slurm_additional_parameters)  # a malformed entry is refused now, not at submit
        if self.executor not in ("slurm", "submitit_local"):
            given = [n for n in _SLURM_ONLY if getattr(self, n)]
            if given:
                raise ExecutorError(
                    f"{', '.join('--' + n for n in given)} would have no effect with --executor {self.executor}: "
                    "they are passed to SLURM (--executor slurm)."
                )


_SLURM_ONLY = (
    "gpus_per_node", "cpus_per_task", "mem_gb", "slurm_partition", "slurm_account", "slurm_qos", "slurm_constraint",
    "slurm_setup", "slurm_additional_parameters",
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One command line: ``python <program> <argv>``, by default an ``em-trainer`` verb (``program`` may be a script
    such as ``benchmarks/ordering.py``); ``name`` names its log file and appears in every message about it."""

    name: str
    argv: tuple[str, ...]
    program: tuple[str, ...] = ("-m", "em_trainer.cli")

    def command(self) -> list[str]:
        return [sys.executable, *self.program, *self.argv]


def additional_parameters(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ExecutorError(f"--slurm_additional_parameters {item!r}: write key=value, e.g. reservation=paper.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def run_command(command: Sequence[str]) -> None:
    """A job's body on a SLURM node (pickled by submitit): the command as its own process, its output into the job's
    log; a failure raises with the tail of what it printed, which submitit reports back."""
    code, _ = run_child(command, None)  # streams into the job's own log as it runs; a stop is forwarded, waited for
    if code != 0:
        raise RuntimeError(f"{' '.join(command[1:4])} ... exited with {code}: see the output above in this job's log")


def run_jobs(jobs: Sequence[Job], args: ExecutorArguments, folder: Path, log: Callable[..., Any] = print) -> None:
    """Run ``jobs`` with the chosen executor (not ``serial``: the workflow loops itself) and wait for all of them.
    Every job runs even when another fails; then one error names each failed job and its log."""
    if not jobs:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if args.executor == "local":
        failed = _run_local(jobs, args.max_parallel, folder, log, device_groups(args.gpus_per_job))
    elif args.executor in ("slurm", "submitit_local"):
        failed = _run_submitit(jobs, args, folder, log)
    else:
        raise ExecutorError(f"run_jobs does not run executor {args.executor!r}; the workflow runs it in its own loop.")
    if failed:
        lines = "\n".join(f"  {name}: see {where}" for name, where in failed)
        raise ExecutorError(f"{len(failed)} of {len(jobs)} job(s) failed; rerun the same command to resume:\n{lines}")


def threads_per_job(parallel: int) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for jobs sharing this machine: its cores split between them, unless the user set it.
    Two PyTorch processes that each start a thread per core run slower together than one after the other."""
    if "OMP_NUM_THREADS" in os.environ or parallel == 1:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}


_LOG_NAME = re.compile(r"[^\w.=-]+")


def visible_devices() -> list[str]:
    """The CUDA devices this process may use: ``CUDA_VISIBLE_DEVICES`` when set (empty or -1: none), else all."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = [d.strip() for d in listed.split(",") if d.strip()]
        return [] if devices and devices[0].startswith("-1") else devices
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_groups(gpus_per_job: int | None) -> list[str] | None:
    """The ``CUDA_VISIBLE_DEVICES`` value of each job slot (None: every job sees what this process sees)."""
    devices = visible_devices() if gpus_per_job != 0 else []
    per_job = (1 if devices else 0) if gpus_per_job is None else gpus_per_job
    if per_job == 0:
        return None
    if len(devices) < per_job:
        raise ExecutorError(
            f"--gpus_per_job {per_job}: only {len(devices)} GPU(s) visible ({','.join(devices) or 'none'}); lower it, "
            "or set CUDA_VISIBLE_DEVICES."
        )
    return [",".join(devices[i : i + per_job]) for i in range(0, len(devices) - per_job + 1, per_job)]


def _run_local(
    jobs: Sequence[Job], parallel: int, folder: Path, log: Callable[..., Any], groups: list[str] | None = None
) -> list[tuple[str, Path]]:
    if groups is not None:
        parallel = min(parallel, len(groups))  # a GPU is never shared between jobs running at once
        free: queue.SimpleQueue[str] = queue.SimpleQueue()
        for group in groups:
            free.put(group)
    running: set[subprocess.Popen] = set()
    lock = threading.Lock()
    stopping = threading.Event()

    def one(job: Job) -> tuple[str, Path] | None:
        if stopping.is_set():
            return None
        path = folder / (_LOG_NAME.sub("_", job.name) + ".log")  # a grid value may hold "/"
        devices = free.get() if groups is not None else None
        extra = threads_per_job(parallel) | ({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {})
        try:
            return _one_job(job, path, extra, devices)
        finally:
            if devices is not None:
                free.put(devices)

    def _one_job(job: Job, path: Path, extra: dict[str, str], devices: str | None) -> tuple[str, Path] | None:
        with path.open("w", encoding="utf-8") as out:
            # The job's own process: it dies with this one, and its output reaches its log as it comes.
            process = subprocess.Popen(
                job.command(), stdout=out, stderr=subprocess.STDOUT, env=child_env(extra), preexec_fn=stop_with_parent
            )
            with lock:
                running.add(process)
            on = f", GPU {devices}" if devices is not None else ""
            log(f"[jobs] started {job.name} (log: {path}{on})", flush=True)
            code = process.wait()
            with lock:
                running.discard(process)
        log(f"[jobs] {job.name}: {'done' if code == 0 else f'failed (exit {code})'}", flush=True)
        return None if code == 0 or stopping.is_set() else (job.name, path)

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        results = list(pool.map(one, jobs))
    except BaseException:
        # Interrupted (Ctrl-C, or SIGTERM from a scheduler): the jobs get SIGTERM too, so each saves what it
        # finished; the same command resumes them.
        stopping.set()
        with lock:
            for process in running:
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def submitit_parameters(args: ExecutorArguments, name: str) -> dict[str, Any]:
    """What ``AutoExecutor.update_parameters`` gets: submitit's generic names plus every ``slurm_*`` option."""
    params: dict[str, Any] = {"name": name, "timeout_min": args.timeout_min}
    params["slurm_array_parallelism"] = args.max_parallel
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.cpus_per_task is not None:
        params["cpus_per_task"] = args.cpus_per_task
    if args.mem_gb is not None:
        params["mem_gb"] = args.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(args, f"slurm_{key}"):
            params[f"slurm_{key}"] = getattr(args, f"slurm_{key}")
    if args.slurm_setup:
        params["slurm_setup"] = list(args.slurm_setup)
    if args.slurm_additional_parameters:
        params["slurm_additional_parameters"] = additional_parameters(args.slurm_additional_parameters)
    return params


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "--executor slurm and submitit_local need submitit: pip install 'em-trainer[slurm]'"
        ) from None
    return submitit


def _run_submitit(jobs: Sequence[Job], args: ExecutorArguments, folder: Path,
                  log: Callable[..., Any]) -> list[tuple[str, Path]]:  # fmt: skip
    submitit = _submitit()
    cluster = "slurm" if args.executor == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    executor.update_parameters(**submitit_parameters(args, folder.parent.name or "em-trainer"))
    failed: list[tuple[str, Path]] = []

    def collect(job: Job, handle: Any) -> None:
        try:
            handle.result()
            log(f"[jobs] {job.name}: done (submitit job {handle.job_id})", flush=True)
        except Exception as error:  # submitit re-raises the job's failure, whatever it was
            last = str(error).strip().splitlines()[-1:] or [repr(error)]
            log(f"[jobs] {job.name}: failed: {last[0]}", flush=True)
            failed.append((job.name, Path(handle.paths.stderr)))

    if cluster == "slurm":
        # One array; SLURM runs max_parallel of it at a time (the array's %N).
        handles = executor.map_array(run_command, [job.command() for job in jobs])
        log(f"[jobs] submitted {len(jobs)} job(s) as array {handles[0].job_id.split('_')[0]}", flush=True)
        for job, handle in zip(jobs, handles, strict=True):
            collect(job, handle)
        return failed
    # submitit's local executor starts whatever it is given at once: keep max_parallel of them running. Its jobs
    # inherit this process's environment.
    os.environ.update(threads_per_job(args.max_parallel))
    waiting, running = list(jobs), []
    while waiting or running:
        while waiting and len(running) < args.max_parallel:
            job = waiting.pop(0)
            running.append((job, executor.submit(run_command, job.command())))
            log(f"[jobs] submitted {job.name}", flush=True)
        finished = [(job, handle) for job, handle in running if handle.done()]
        for job, handle in finished:
            running.remove((job, handle))
            collect(job, handle)
        if not finished:
            time.sleep(0.5)
    return failed


def sbatch_script(jobs: Sequence[Job], args: ExecutorArguments, folder: Path) -> str:
    """The sbatch script submitit would submit for ``jobs`` as one array (submitit's own template and checks)."""
    submitit = _submitit()
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    params = submitit_parameters(args, folder.parent.name or "em-trainer")
    converted: dict[str, Any] = {}
    equivalents = SlurmExecutor._equivalence_dict()
    for key, value in params.items():
        if key.startswith("slurm_"):
            converted[key[len("slurm_") :]] = value
        else:
            converted[equivalents[key]] = value
    if "mem" in converted:
        converted["mem"] = f"{int(converted['mem'] * 1024)}MB"  # submitit's own conversion of mem_gb
    folder = folder.absolute() / "%j"  # as submitit's executors hold it
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    del submitit
    return _make_sbatch_string(command=command, folder=folder, map_count=len(jobs) if len(jobs) > 1 else None,
                               **converted)  # fmt: skip


def _shown(job: Job) -> str:
    prefix = "em-trainer" if job.program == ("-m", "em_trainer.cli") else shlex.join(["python", *job.program])
    return f"{prefix} {shlex.join(job.argv)}"


def describe(jobs: Sequence[Job], args: ExecutorArguments, folder: Path) -> str:
    """The dry run's text: each job's command line, and for SLURM the resources and the script."""
    lines = [f"{len(jobs)} job(s), executor {args.executor}, {args.max_parallel} at a time:"]
    lines += [f"  {job.name}: {_shown(job)}" for job in jobs]
    if args.executor in ("slurm", "submitit_local"):
        resources = submitit_parameters(args, folder.parent.name or "em-trainer")
        lines += ["", "submitit parameters: " + ", ".join(f"{k}={v}" for k, v in resources.items())]
        lines += ["", "sbatch script (one array of all jobs):", sbatch_script(jobs, args, folder)]
    return "\n".join(lines)
