"""``--workers K``: K worker processes on this machine share one study, each with its share
of the CPU threads.

On a CPU, torch gives one process a thread per core, and the students of a CPU study use
two threads poorly: two one-thread workers trained 1.21-1.43x as many examples a second
as one two-thread worker on 2 cores (``benchmarks/worker_threads.py``). So on a CPU the
driver is one of several workers by default. It starts the others as ordinary
``python -m harness.study`` workers of the same study once the study exists and the
shared artifacts are built; the storage coordinates them as it does workers on other
machines, and nothing runs twice. Their output goes to ``workers/worker-N.log`` in the
study's run folder; the driver's progress bar counts every worker's trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Every worker holds its own copy of the shared artifacts (teacher, logits, tokens; a
# default-study worker peaked at 3 GB), so a many-core CPU gets a few workers of several
# threads, not one per core.
MAX_AUTO_WORKERS = 4
LOCAL_WORKER_FLAG = "--local-worker"


@dataclass(frozen=True)
class Plan:
    workers: int
    threads: int  # torch threads of each worker


def plan_workers(asked: int | None, device: torch.device, cores: int) -> Plan:
    """``asked`` workers (None: one per core on a CPU, at most MAX_AUTO_WORKERS; one on a
    GPU) sharing ``cores`` threads (torch's count for one process, which honours
    ``OMP_NUM_THREADS``)."""
    if asked is None:
        asked = min(cores, MAX_AUTO_WORKERS) if device.type == "cpu" else 1
    return Plan(workers=asked, threads=max(1, cores // asked))


@dataclass(frozen=True)
class LocalWorker:
    number: int
    process: subprocess.Popen
    log_path: Path


def start_local_workers(argv: list[str], plan: Plan, log_dir: Path) -> list[LocalWorker]:
    """Workers 2..K: the driver's own command line, one worker of ``plan.threads`` each."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # The folder holding this package first, so the workers import the driver's own code
    # whatever their working directory and however the driver found it.
    path = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, path))}
    command = [sys.executable, "-m", "harness.study", *argv, "--workers", "1", LOCAL_WORKER_FLAG]
    started = []
    for number in range(2, plan.workers + 1):
        log_path = log_dir / f"worker-{number}.log"
        with open(log_path, "ab") as log_file:
            # Its own session: a Ctrl-C in the terminal reaches the driver alone, which
            # forwards it once (``stop``), whatever the worker is doing then.
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        started.append(LocalWorker(number, process, log_path))
    return started


def stop(workers: list[LocalWorker], sent: signal.Signals = signal.SIGINT) -> None:
    """A Ctrl-C (or the SIGTERM the driver got) for those still running: each marks its trial
    failed ("interrupted") and exits. One still running a while later (60 s, 20 s after a
    SIGTERM, within a scheduler's grace period of 30) is killed; its trial is then reaped
    as a dead worker's by the next worker on this host."""
    running = [worker for worker in workers if worker.process.poll() is None]
    for worker in running:
        worker.process.send_signal(sent)
    deadline = time.monotonic() + (20.0 if sent == signal.SIGTERM else 60.0)
    for worker in running:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def wait_for(workers: list[LocalWorker]) -> list[str]:
    """Wait for every worker to exit; one line for each that failed."""
    problems = []
    for worker in workers:
        code = worker.process.wait()
        if code != 0:
            problems.append(f"worker {worker.number} exited with code {code}; its output: "
                            f"{worker.log_path}")
    return problems
