"""Tests for harness.sweep.search.should_stop_early, the multi-objective early-stopping rule:
stop after epoch e when below the median dev accuracy at e of completed trials of the same
student size, once enough of them exist. Pinned on hand-built FrozenTrials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from harness.compute import ComputeCost
from harness.config import PrunerConfig
from harness.study_file import load_study_config
from harness.sweep.search import (architecture_costs, constraint_violations, over_budget,
                                  should_stop_early, suggest_trial_config)

from .conftest import SMOKE

SIZE = (2, 128)
OTHER = (4, 256)
MEDIAN = PrunerConfig(name="median", n_startup_trials=3, n_warmup_epochs=0)


def _trial(accuracies, size=SIZE, state=TrialState.COMPLETE):
    values = [0.0, 1.0] if state == TrialState.COMPLETE else None
    return optuna.trial.create_trial(
        state=state, values=values,
        user_attrs={"num_layers": size[0], "hidden_size": size[1],
                    "select_accuracies": list(accuracies)})


# Epoch 2 accuracies 0.5, 0.8, 0.82: median 0.8, mean 0.707. Epoch 1 accuracies are all
# low, so reading the wrong epoch would never stop a trial at 0.75.
PEERS = [_trial([0.1, 0.5, 0.9]), _trial([0.2, 0.8, 0.9]), _trial([0.3, 0.82, 0.9])]


@pytest.mark.parametrize("accuracy,stops", [
    (0.75, True),  # below the median 0.8 (though above the mean 0.707)
    (0.7999, True),
    (0.8, False),  # at the median
    (0.81, False),
    (0.95, False),
])
def test_stops_only_below_the_median_of_peers(accuracy, stops):
    assert should_stop_early(PEERS, SIZE, 2, accuracy, MEDIAN) is stops


def test_median_of_an_even_number_of_peers_is_the_mean_of_the_middle_two():
    peers = PEERS + [_trial([0.1, 0.9])]  # epoch 2: 0.5, 0.8, 0.82, 0.9 -> median 0.81
    assert should_stop_early(peers, SIZE, 2, 0.805, MEDIAN)
    assert not should_stop_early(peers, SIZE, 2, 0.81, MEDIAN)


def test_uses_the_accuracies_at_the_given_epoch():
    # Epoch 1 median is 0.2, epoch 3 median is 0.9.
    assert not should_stop_early(PEERS, SIZE, 1, 0.3, MEDIAN)
    assert should_stop_early(PEERS, SIZE, 3, 0.3, MEDIAN)


def test_needs_n_startup_trials_peers():
    two = PEERS[:2]  # epoch 2 median 0.65
    assert not should_stop_early(two, SIZE, 2, 0.1, MEDIAN)
    assert should_stop_early(two, SIZE, 2, 0.1, PrunerConfig(n_startup_trials=2))


def test_no_peers_never_stops_even_when_none_are_required():
    assert not should_stop_early([], SIZE, 1, 0.0, PrunerConfig(n_startup_trials=0))
    assert should_stop_early(PEERS[:1], SIZE, 2, 0.0, PrunerConfig(n_startup_trials=0))


def test_trials_of_other_sizes_are_ignored():
    # Same-size peers alone: 0.5 is at their epoch-2 median, so it continues. Counting the
    # other sizes' high accuracies would raise the median and stop it.
    same = [_trial([0.1, 0.4]), _trial([0.1, 0.5]), _trial([0.1, 0.6])]
    others = ([_trial([0.9, 0.95], size=OTHER) for _ in range(3)]
              + [_trial([0.9, 0.95], size=(SIZE[0], OTHER[1])),  # one coordinate matches
                 _trial([0.9, 0.95], size=(OTHER[0], SIZE[1]))])
    assert not should_stop_early(same + others, SIZE, 2, 0.5, MEDIAN)
    # The same trials as peers of that size would stop it: the filter is what decides.
    assert should_stop_early(same + others, SIZE, 2, 0.49, MEDIAN)
    relabelled = same + [_trial(t.user_attrs["select_accuracies"]) for t in others]
    assert should_stop_early(relabelled, SIZE, 2, 0.5, MEDIAN)
    # Only other-size trials: too few peers, never stops.
    assert not should_stop_early(others, SIZE, 2, 0.0, MEDIAN)


def test_peers_without_that_epoch_are_ignored():
    # Three peers ran three epochs; two stopped after one (their lists are shorter).
    full = [_trial([0.5, 0.5, 0.6]), _trial([0.5, 0.5, 0.7]), _trial([0.5, 0.5, 0.8])]
    short = [_trial([0.99]), _trial([0.99])]
    assert not should_stop_early(full + short, SIZE, 3, 0.7, MEDIAN)
    assert should_stop_early(full + short, SIZE, 3, 0.69, MEDIAN)
    # With four peers required, the three full ones are not enough.
    assert not should_stop_early(full + short, SIZE, 3, 0.0,
                                 PrunerConfig(n_startup_trials=4))
    # At epoch 1 the short ones count: median of 0.5, 0.5, 0.5, 0.99, 0.99 is 0.5.
    assert should_stop_early(full + short, SIZE, 1, 0.49, PrunerConfig(n_startup_trials=5))


@pytest.mark.parametrize("state", [TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                                   TrialState.WAITING])
def test_unfinished_trials_are_ignored(state):
    # Two completed peers (too few); three more in ``state`` with high accuracies would
    # make enough peers and a median (0.9) that stops 0.5.
    complete = [_trial([0.1, 0.4]), _trial([0.1, 0.45])]
    other_state = [_trial([0.9, 0.9], state=state) for _ in range(3)]
    assert not should_stop_early(complete + other_state, SIZE, 2, 0.5, MEDIAN)
    as_complete = complete + [_trial([0.9, 0.9]) for _ in range(3)]
    assert should_stop_early(as_complete, SIZE, 2, 0.5, MEDIAN)


def test_pruner_none_never_stops():
    none = PrunerConfig(name="none", n_startup_trials=3, n_warmup_epochs=0)
    assert should_stop_early(PEERS, SIZE, 2, 0.0, MEDIAN)
    for epoch in (1, 2, 3):
        assert not should_stop_early(PEERS, SIZE, epoch, 0.0, none)


def test_no_stop_during_warmup_epochs():
    warm = PrunerConfig(name="median", n_startup_trials=3, n_warmup_epochs=2)
    assert not should_stop_early(PEERS, SIZE, 1, 0.0, warm)
    assert not should_stop_early(PEERS, SIZE, 2, 0.0, warm)
    assert should_stop_early(PEERS, SIZE, 3, 0.0, warm)


def test_a_pretrained_student_source_samples_no_resized_size():
    """FixedTrial raises on any parameter it was not given: a checkpoint's trial asks for
    no size, a resized teacher's asks for them."""
    from harness.config import RESIZED_TEACHER
    from harness.study_file import study_config_from_dict

    config = study_config_from_dict({"search": {
        "student_source": {"choices": [RESIZED_TEACHER, "./small-bert"]},
        "num_layers": {"low": 1, "high": 4}, "hidden_size": {"choices": [64, 128]},
        "T": {"low": 1.0, "high": 4.0}}})
    checkpoint = suggest_trial_config(
        optuna.trial.FixedTrial({"student_source": "./small-bert", "T": 2.0}), config)
    assert checkpoint.student_source == "./small-bert" and checkpoint.T == 2.0
    resized = suggest_trial_config(optuna.trial.FixedTrial(
        {"student_source": RESIZED_TEACHER, "T": 2.0, "num_layers": 3, "hidden_size": 64}), config)
    assert (resized.num_layers, resized.hidden_size) == (3, 64)


def test_a_compute_bound_as_a_share_of_the_teachers_flops():
    untrained = ComputeCost(flops_per_example=2_000, train_flops_per_example=6_000, seq_len=8,
                            params=500, non_embedding_params=100, latency_ms=1.5)
    costs = architecture_costs(untrained, teacher_flops_per_example=8_000)
    assert costs == {"flops_per_example": 2_000, "params": 500, "latency_ms": 1.5,
                     "flops_share": 0.25}
    shared_bound = load_study_config(SMOKE, ["objectives.metrics=[dev_accuracy]",
                                             "objectives.constraints.flops_share=0.2"])
    assert over_budget(shared_bound, costs) == {"flops_share": pytest.approx(0.05)}
    loose = load_study_config(SMOKE, ["objectives.metrics=[dev_accuracy]",
                                      "objectives.constraints.flops_share=0.25"])
    assert over_budget(loose, costs) == {}
    # After training, the stored share (harness.pipeline.TrialResult) is checked the same way.
    assert constraint_violations(shared_bound, {"flops_share": 0.25}) == {
        "flops_share": pytest.approx(0.05)}


def test_trials_of_a_study_made_before_the_select_split_still_count_as_peers():
    # They stored the same curve (on dev, their rule) as epoch_dev_accuracy.
    old = [optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[0.0, 1.0],
        user_attrs={"num_layers": SIZE[0], "hidden_size": SIZE[1],
                    "epoch_dev_accuracy": t.user_attrs["select_accuracies"]}) for t in PEERS]
    assert should_stop_early(old, SIZE, 2, 0.75, MEDIAN)
    assert not should_stop_early(old, SIZE, 2, 0.8, MEDIAN)
