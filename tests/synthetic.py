"""A synthetic kd-harness study, written with the real Optuna API, for the analysis tests.

The numbers are made up but shaped like a real sweep (a MiniLM-sized teacher, students of
1-4 layers and width 128-384, ~1,200 dev and test examples, KD gains of a few points,
consistent paired counts) and every trial stores the same fields a real trial does.
It also adds a failed and a pruned trial, as a real sweep has them.

    from tests.synthetic import create_synthetic_study
    create_synthetic_study("journal:/tmp/demo.journal", "demo", n_complete=12)
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from harness.sweep.storage import open_storage

SEQ_LEN = 128
VOCAB = 30522
DEV_EXAMPLES = 1200
TEST_EXAMPLES = 1210
TEACHER = {"teacher_dev_accuracy": 0.8025, "teacher_test_accuracy": 0.7967,
           "teacher_flops_per_example": 2.0 * 21.3e6 * SEQ_LEN, "teacher_params": 22.7e6,
           "teacher_latency_ms": 9.5}
DISTRIBUTIONS = {"T": FloatDistribution(1.0, 10.0), "T_s": FloatDistribution(1.0, 10.0),
                 "alpha": FloatDistribution(0.0, 1.0),
                 "num_layers": CategoricalDistribution([1, 2, 3, 4]),
                 "hidden_size": CategoricalDistribution([128, 192, 256, 384])}
OBJECTIVES = ["dev_accuracy", "flops_per_example"]


def create_synthetic_study(storage: str, study_name: str, n_complete: int = 12,
                           seed: int = 0, failed: int = 1, pruned: int = 1) -> optuna.Study:
    """Create ``study_name`` in ``storage`` with synthetic complete, failed and pruned trials."""
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage),
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    rng = np.random.default_rng(seed)
    for _ in range(n_complete):
        params = _sample_params(rng)
        attrs = synthetic_trial_attrs(params, rng)
        study.add_trial(optuna.trial.create_trial(
            values=[attrs["dev_accuracy"], attrs["flops_per_example"]], params=params,
            distributions=DISTRIBUTIONS, user_attrs=attrs))
    for _ in range(failed):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, params=_sample_params(rng),
            distributions=DISTRIBUTIONS, user_attrs={"fail_reason": "diverged"}))
    for _ in range(pruned):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, params=_sample_params(rng),
            distributions=DISTRIBUTIONS, intermediate_values={0: 0.55}))
    return study


def _sample_params(rng: np.random.Generator) -> dict:
    return {"T": float(rng.uniform(1, 10)), "T_s": float(rng.uniform(1, 10)),
            "alpha": float(rng.uniform(0, 1)), "num_layers": int(rng.choice([1, 2, 3, 4])),
            "hidden_size": int(rng.choice([128, 192, 256, 384]))}


def synthetic_trial_attrs(params: dict, rng: np.random.Generator) -> dict:
    """Stored fields of one complete trial with these params (accuracies from counts)."""
    layers, hidden = params["num_layers"], params["hidden_size"]
    non_embedding = layers * 12 * hidden * hidden
    capacity = np.log10(non_embedding) - 5.0  # about 0.3 .. 1.9 over the grid
    base_dev = 0.60 + 0.08 * capacity
    # KD helps most at moderate T and alpha; noise of about one accuracy point.
    gain = 0.03 * np.exp(-((params["T"] - 4.0) / 3.0) ** 2) * (0.5 + params["alpha"])
    attrs = {**params, "num_heads": max(hidden // 64, 1), "intermediate_size": 4 * hidden,
             "seq_len": SEQ_LEN, "dev_examples": DEV_EXAMPLES, "test_examples": TEST_EXAMPLES,
             "non_embedding_params": non_embedding, "params": non_embedding + VOCAB * hidden,
             "flops_per_example": 2.0 * non_embedding * SEQ_LEN,
             "train_flops": 6.0 * non_embedding * SEQ_LEN * 8530 * 3,
             "latency_ms": 0.4 + 1.2e-6 * non_embedding,
             "wall_seconds": 60.0 + 1e-4 * non_embedding,
             "teacher_agreement": 0.85, **TEACHER}
    for split, n in (("dev", DEV_EXAMPLES), ("test", TEST_EXAMPLES)):
        base = int(round((base_dev + rng.normal(0, 0.01)) * n))
        kd = int(round((base_dev + gain + rng.normal(0, 0.01)) * n))
        # Examples only the baseline gets right; b - c must equal kd - base with b >= 0.
        base_only = max(int(rng.integers(30, 60)), base - kd)
        attrs[f"baseline_{split}_accuracy"] = base / n
        attrs[f"{split}_accuracy"] = kd / n
        attrs[f"kd_only_correct_{split}"] = base_only + kd - base
        attrs[f"baseline_only_correct_{split}"] = base_only
        attrs[f"{split}_macro_f1"] = kd / n - 0.005
    attrs["kd_gain"] = attrs["dev_accuracy"] - attrs["baseline_dev_accuracy"]
    return attrs
