"""Local workers against threads, side by side in one run: the same distillation phase
(default study, teacher logits from the cache, teacher-pruned students) trained

1. by one process with a torch thread per core (`python -m harness.study --workers 1`), and
2. by `--workers` processes at once, each with cores / workers threads (what the study
   driver's `--workers`, by default one per core on a CPU, starts),

and the aggregate examples/s of each, with the ratio 2 / 1. Processes are started and
loaded first, then released together, so start-up is not timed.

    python benchmarks/worker_threads.py [--students 2x128 2x384] [--examples 1024] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(student: str, examples: int, seed: int, ready: Path, go: Path) -> None:
    import torch
    import transformers

    from harness.artifacts import cache_root
    from harness.models import build_student, student_shape
    from harness.shared import prepare_shared
    from harness.student_loss import LogitKD, StudentLoss, loss_function
    from harness.study_file import load_study_config
    from harness.train import TrainSettings, train_phase

    transformers.logging.set_verbosity_error()
    study = load_study_config(REPO / "studies" / "default.yaml")
    shared = prepare_shared(study, torch.device("cpu"), cache_root())
    layers, hidden = (int(part) for part in student.split("x"))
    shape = student_shape(shared.teacher, layers, hidden, study.student.head_dim, None)
    model = build_student(shared.pretrained_teacher, shape, "teacher-pruned", seed,
                          shared.importance)[0]
    split = shared.text.tokens["train"].slice(0, examples)
    loss = loss_function(StudentLoss(LogitKD(0.7, 4.0, 4.0, None)), shared.teacher, None,
                         shared.teacher_logits["train"])
    settings = TrainSettings(epochs=1.0, lr=1e-4, batch_size=32, warmup_ratio=0.1,
                             weight_decay=0.01, max_grad_norm=1.0, seed=seed)
    ready.touch()
    while not go.exists():
        time.sleep(0.05)
    started = time.time()
    train_phase("kd", model, split, loss, settings, shared.device, shared.text.pad_id)
    print(json.dumps({"started": started, "ended": time.time(), "examples": examples,
                      "threads": torch.get_num_threads()}))


def run_together(student: str, examples: int, processes: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        go = Path(folder) / "go"
        readies = [Path(folder) / f"ready{i}" for i in range(processes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        started = [subprocess.Popen(
            [sys.executable, __file__, "--child", student, str(examples), str(i), str(ready),
             str(go)], stdout=subprocess.PIPE, env=env, text=True)
            for i, ready in enumerate(readies)]
        while not all(ready.exists() for ready in readies):
            if any(p.poll() not in (None, 0) for p in started):
                raise RuntimeError("a worker process failed while loading")
            time.sleep(0.1)
        go.touch()
        reports = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in started]
    seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {"processes": processes, "threads": reports[0]["threads"],
            "examples_per_s": sum(r["examples"] for r in reports) / seconds,
            "seconds": seconds}


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        student, examples, seed, ready, go = sys.argv[2:7]
        child(student, int(examples), int(seed), Path(ready), Path(go))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", default=["2x128", "2x384"])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores; {args.examples} training examples per process, batch 32, one "
          "distillation epoch")
    for student in args.students:
        one = run_together(student, args.examples, 1, cores)
        many = run_together(student, args.examples, args.workers, max(1, cores // args.workers))
        print(f"{student}: 1 process x {one['threads']} threads {one['examples_per_s']:.1f} "
              f"examples/s; {many['processes']} processes x {many['threads']} thread(s) "
              f"{many['examples_per_s']:.1f} examples/s together; ratio "
              f"{many['examples_per_s'] / one['examples_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
