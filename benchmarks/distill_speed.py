"""Distillation throughput, side by side in one run, same data, student and examples:

1. the harness's distillation phase (teacher logits read from the cache);
2. a `transformers.Trainer` subclass computing the same loss with the teacher forward in
   `compute_loss` (what users commonly write);
3. the harness's label-only phase for the same student (the limit of 1. is this speed);
4. the data path: time spent building batches, as a share of the distillation phase.

    pip install -e ".[bench]"       # accelerate, which transformers.Trainer needs
    python benchmarks/distill_speed.py [--examples 2048] [--repeats 2]

Prints examples/s and the ratios harness/Trainer (target >= 2 on CPU) and
distillation step / label-only step (target <= 1.10).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from harness.artifacts import cache_root
from harness.study_file import load_study_config
from harness.data import TokenizedSplit
from harness.losses import distillation_loss
from harness.models import build_student, student_shape
from harness.student_loss import LogitKD, StudentLoss, loss_function
from harness.shared import prepare_shared
from harness.train import TrainSettings, cross_entropy_loss, length_grouped_batches, train_phase

from requirements import BENCH_EXTRA, need_package

REPO = Path(__file__).resolve().parent.parent
ALPHA, T, T_S = 0.7, 4.0, 4.0


class DistillationTrainer(transformers.Trainer):
    """The common recipe: the teacher runs forward inside every training step."""

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, ALPHA, T, T_S)
        return (loss, outputs) if return_outputs else loss


def subset(split: TokenizedSplit, n: int) -> TokenizedSplit:
    return TokenizedSplit(split.ids, split.offsets[:n + 1], split.labels[:n])


def harness_rate(name, shared, student_factory, loss_fn, split, settings) -> float:
    student = student_factory()
    started = time.perf_counter()
    train_phase(name, student, split, loss_fn, settings, shared.device, shared.text.pad_id)
    return len(split) * settings.epochs / (time.perf_counter() - started)


def trainer_rate(shared, student_factory, split, settings) -> float:
    records = [{"input_ids": split.ids[split.offsets[i]:split.offsets[i + 1]].tolist(),
                "labels": int(split.labels[i])} for i in range(len(split))]
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = transformers.TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
            num_train_epochs=settings.epochs, learning_rate=settings.lr,
            warmup_steps=round(settings.warmup_ratio * settings.epochs
                               * math.ceil(len(split) / settings.batch_size)),
            weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm, seed=settings.seed, report_to=[],
            save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
            dataloader_num_workers=0)
        trainer = DistillationTrainer(
            model=student_factory(), args=arguments, train_dataset=records,
            data_collator=transformers.DataCollatorWithPadding(shared.text.tokenizer),
            teacher=shared.teacher)
        started = time.perf_counter()
        trainer.train()
        return len(split) * settings.epochs / (time.perf_counter() - started)


def batching_seconds(shared, split, settings) -> float:
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    for indices in length_grouped_batches(split, settings.batch_size, generator):
        {k: v.to(shared.device) for k, v in split.batch(indices, shared.text.pad_id).items()}
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    args = parser.parse_args()
    # transformers.Trainer asks for accelerate only when the baseline is built, after the
    # harness's phases have trained for minutes.
    need_package("accelerate", BENCH_EXTRA, minimum="1.1")
    transformers.logging.set_verbosity_error()
    study = load_study_config(REPO / "studies" / "default.yaml")
    shared = prepare_shared(study, torch.device("cpu"), cache_root())
    split = subset(shared.text.tokens["train"], args.examples)
    settings = TrainSettings(epochs=1.0, lr=1e-4, batch_size=32, warmup_ratio=0.1,
                             weight_decay=0.01, max_grad_norm=1.0, seed=0)
    shape = student_shape(shared.teacher, args.layers, args.hidden, 32, None)
    factory = lambda: build_student(shared.pretrained_teacher, shape, "teacher-layers", 0)[0]  # noqa: E731
    kd_loss = loss_function(StudentLoss(LogitKD(ALPHA, T, T_S, None)), shared.teacher, None,
                            shared.teacher_logits["train"])
    rates = {"harness KD": [], "Trainer KD": [], "harness label-only": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        rates["harness KD"].append(harness_rate("kd", shared, factory, kd_loss, split, settings))
        rates["harness label-only"].append(
            harness_rate("ce", shared, factory, cross_entropy_loss, split, settings))
        rates["Trainer KD"].append(trainer_rate(shared, factory, split, settings))
    median = {name: statistics.median(values) for name, values in rates.items()}
    data_share = batching_seconds(shared, split, settings) * median["harness KD"] / len(split)
    print(f"student {shape}, {args.examples} examples, batch 32, torch threads "
          f"{torch.get_num_threads()}, cpu count {os.cpu_count()}")
    for name, value in median.items():
        print(f"{name:20s} {value:8.1f} examples/s   (runs: "
              + ", ".join(f"{v:.1f}" for v in rates[name]) + ")")
    print(f"harness KD / Trainer KD speed:                  {median['harness KD'] / median['Trainer KD']:.2f}x")
    print(f"distillation step / label-only step (time):     "
          f"{median['harness label-only'] / median['harness KD']:.3f}")
    print(f"batch building share of a distillation epoch:   {100 * data_share:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
