"""Trials per hour: the seed document's procedure as written against the harness.

    python benchmarks/seed_style.py [--trials 5] [--train-examples 1000]

The same 5 sampled configurations (TPE, seed 0, the default study's space) on the same
data subset, run twice:

- seed-style: every trial fine-tunes its own teacher, trains the student baseline, and
  distils with a teacher forward pass at every step;
- harness: `harness.run_trial`, with the teacher, its logits and the baselines built once
  in a fresh cache and reused.

Both use the harness's training loop, so the difference is the pipeline's design.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import transformers

from harness.study_file import load_study_config
from harness.data import load_text_data, tokenize_data
from harness.losses import distillation_loss
from harness.models import build_student, load_teacher, load_tokenizer, student_shape, tokenizer_id
from harness.pipeline import run_trial
from harness.sweep.search import make_sampler, suggest_trial_config
from harness.shared import prepare_shared
from harness.train import cross_entropy_loss, predict_logits, train_phase, train_settings

REPO = Path(__file__).resolve().parent.parent


def seed_style_trial(study, trial, cache: Path, device) -> float:
    """One trial as the seed describes it; returns the distilled student's dev accuracy."""
    data = load_text_data(study.data, cache)
    tokenizer = load_tokenizer(study.teacher)
    tokens, _ = tokenize_data(data, tokenizer, tokenizer_id(tokenizer), study.data.max_length, cache)
    pad = tokenizer.pad_token_id
    teacher = load_teacher(study.teacher, data.label_names, tokenizer, study.seed)
    pretrained = copy.deepcopy(teacher)  # students copy layers of the teacher before fine-tuning
    train_phase("teacher", teacher, tokens["train"], cross_entropy_loss,
                train_settings(study.teacher, study.teacher.epochs, study.teacher.lr, study.seed),
                device, pad)
    shape = student_shape(teacher, trial.num_layers, trial.hidden_size, study.student.head_dim,
                          trial.intermediate_size)
    baseline, _ = build_student(pretrained, shape, trial.init, trial.seed)
    train_phase("baseline", baseline, tokens["train"], cross_entropy_loss,
                train_settings(study.pipeline, study.pipeline.baseline.epochs, study.pipeline.baseline.lr,
                               trial.seed), device, pad)
    student, _ = build_student(pretrained, shape, trial.init, trial.seed)

    def teacher_forward_loss(model, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        loss = distillation_loss(model(**inputs).logits, teacher_logits, batch["labels"],
                                 trial.alpha, trial.T, trial.T_s)
        return {"loss": loss}

    train_phase("distill", student, tokens["train"], teacher_forward_loss,
                train_settings(study.pipeline, study.pipeline.distill.epochs, trial.lr, trial.seed),
                device, pad)
    logits = predict_logits(student, tokens["dev"], study.pipeline.eval_batch_size, device, pad)
    return float((logits.argmax(-1) == tokens["dev"].labels).double().mean())


def sample_configs(study, n: int):
    sampler_study = optuna.create_study(directions=["maximize", "minimize"],
                                        sampler=make_sampler(study, 0))
    configs = []
    for _ in range(n):
        trial = sampler_study.ask()
        configs.append(suggest_trial_config(trial, study))
        sampler_study.tell(trial, [0.5, 1.0])
    return configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--train-examples", type=int, default=1000)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    base = load_study_config(REPO / "studies" / "default.yaml", [
        f"data.max_train_examples={args.train_examples}", "data.max_eval_examples=500"])
    configs = sample_configs(base, args.trials)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        load_text_data(base.data, cache)  # the dataset download is not what is compared
        started = time.perf_counter()
        for trial in configs:
            seed_style_trial(base, trial, cache, device)
        seed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        shared = prepare_shared(base, device, cache)
        for trial in configs:
            run_trial(base, trial, shared)
        harness_seconds = time.perf_counter() - started
    print(f"{args.trials} trials, {args.train_examples} training examples, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    for name, seconds in (("seed-style", seed_seconds), ("harness", harness_seconds)):
        print(f"{name:11s} {seconds:7.1f} s  {3600 * args.trials / seconds:7.1f} trials/hour")
    print(f"harness speed-up: {seed_seconds / harness_seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
