"""A small local dataset (2,000 rows) with the default study's schedules: random-init narrow
students and their label-only baselines learn, where one epoch (a few dozen steps) left
them at the majority class."""

from __future__ import annotations

import csv

import pytest
import torch

from harness.config import DataConfig, default_trial_config
from harness.data import load_text_data
from harness.pipeline import run_trial
from harness.shared import prepare_shared
from harness.study_file import load_study_config
from tests.conftest import REPO

WORD = "film"


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, cache_dir):
    """2,000 builtin snippets, half of them naming a film as "film": the label. A task any
    student can learn, given the steps to learn it."""
    data = load_text_data(DataConfig(), cache_dir)
    corpus = data.train.texts + data.select.texts
    with_word = [t for t in corpus if WORD in t.split()][:1000]
    without = [t for t in corpus if WORD not in t.lower()][:1000]
    assert len(with_word) == len(without) == 1000
    path = tmp_path_factory.mktemp("small") / "small.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        rows = [(t, 1) for t in with_word] + [(t, 0) for t in without]
        rows.sort(key=lambda row: hash(row[0]) % 7919)  # interleaved, deterministic
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_random_init_students_learn_a_small_dataset_on_the_default_schedule(small_csv, cache_dir):
    # The default study's data, student and schedule settings; a small random-init teacher
    # (at its own learning rate) stands in for MiniLM to keep the test short.
    study = load_study_config(REPO / "studies" / "default.yaml", [
        f"data.source={small_csv}", "data.dev_split=null", "data.test_split=null",
        "teacher.source=architecture", "teacher.lr=1.0e-3",
        "teacher.architecture={num_layers: 2, hidden_size: 128, num_heads: 4, "
        "intermediate_size: 512}"])
    shared = prepare_shared(study, torch.device("cpu"), cache_dir)
    train = len(shared.text.tokens["train"])
    assert 1400 <= train <= 1500  # 2,000 less dev and test (1/10 each), less select (1/10)
    assert study.pipeline.schedule.min_steps * study.pipeline.batch_size > 5 * train
    labels = shared.text.tokens["dev"].labels
    majority = max(labels.float().mean().item(), 1 - labels.float().mean().item())
    assert shared.teacher_scores["dev"].accuracy > 0.9
    trial = default_trial_config(study, num_layers=2, hidden_size=128, init="random")
    result = run_trial(study, trial, shared)
    evaluation = result.evaluation
    assert result.init == "random"
    assert evaluation.baseline_dev_accuracy > max(0.85, majority + 0.3)
    assert evaluation.dev_accuracy > max(0.85, majority + 0.3)
    assert evaluation.test_accuracy > 0.85
    one_epoch = -(-train // study.pipeline.batch_size)
    # Same rule for both: the same learning rate and budget; each ran well past one epoch
    # and ended on its best weights on the select split.
    assert result.distill_lr == result.baseline_lr
    for steps, best in ((result.distill_steps, result.distill_best_step),
                        (result.baseline_steps, result.baseline_best_step)):
        assert one_epoch < steps <= study.pipeline.schedule.min_steps and best <= steps
