"""Confirming the front over seeds (harness.sweep.confirm, analysis.seeds): smoke studies run as a
user would, two workers on one journal file, the analysis against a hand computation, and a
sampler that records what it is shown."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import harness.sweep.search
from analysis.frame import study_frame
from analysis.front import label_only_front, pareto_front
from analysis.pareto import main as pareto_main
from analysis.seeds import by_configuration, confirmed_front, search_rows
from harness.study_file import load_study_config
from harness.sweep.confirm import queue_repeats
from harness.sweep.driver import work_left
from harness.sweep.storage import open_storage

from .conftest import SMOKE
from .synthetic import DISTRIBUTIONS, OBJECTIVES, synthetic_trial_attrs
from .test_study import load, run_smoke
from .test_workers import finish, start_worker

COMPLETE = optuna.trial.TrialState.COMPLETE


def repeats_of(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    found: dict[int, list] = {}
    for trial in study.trials:
        if "repeat_of" in trial.user_attrs:
            found.setdefault(trial.user_attrs["repeat_of"], []).append(trial)
    return found


def baseline_seeds(cache: Path) -> dict[str, set[int]]:
    """Shape (as JSON) -> seeds of the label-only baselines in the cache."""
    found: dict[str, set[int]] = {}
    for manifest in (cache / "baseline").glob("*/manifest.json"):
        fields = json.loads(manifest.read_text())["fields"]
        found.setdefault(json.dumps(fields["shape"], sort_keys=True), set()).add(
            fields["settings"]["seed"])
    return found


def test_the_front_is_repeated_on_other_seeds_with_their_own_baselines(in_tmp, cache_dir):
    code, storage = run_smoke(in_tmp, 4, "--confirm-seeds", "2")
    assert code == 0
    study = load(storage)
    search = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    assert len(search) == 4 and all(t.state.is_finished() for t in search)
    front = set(pareto_front(search_rows(study_frame(study)))["trial"])
    repeats = repeats_of(study)
    # The single-run front and the label-only front's students in the first round; later
    # rounds add only members of the front on the means that had no fresh run.
    label_only = set(label_only_front(search_rows(study_frame(study)))["trial"])
    assert {n for n, runs in repeats.items()
            if runs[0].user_attrs["confirm_round"] == 1} == front | label_only
    confirmed = confirmed_front(by_configuration(study_frame(study)))
    assert confirmed["confirmed"].all()  # the front on the means holds confirmed members only
    for number, runs in repeats.items():
        first = study.trials[number]
        assert sorted(t.user_attrs["seed"] for t in runs) == [first.user_attrs["seed"] + 1,
                                                              first.user_attrs["seed"] + 2]
        for trial in runs:
            assert trial.state == COMPLETE and trial.params == first.params
            shape = json.dumps({k: trial.user_attrs[k] for k in (
                "num_layers", "hidden_size", "num_heads", "intermediate_size")}, sort_keys=True)
            assert trial.user_attrs["seed"] in baseline_seeds(cache_dir)[shape]  # its own
    counted = len(study.trials)
    assert run_smoke(in_tmp, 4, "--confirm-seeds", "2")[0] == 0  # the same command again
    assert len(load(storage).trials) == counted  # adds nothing


def test_a_finished_study_can_be_confirmed_later_and_reports_the_confirmed_front(in_tmp):
    code, storage = run_smoke(in_tmp, 3, "--confirm-seeds", "0")
    assert code == 0 and not repeats_of(load(storage))
    assert run_smoke(in_tmp, 3, "--confirm-seeds", "1")[0] == 0  # confirm is not fingerprinted
    study = load(storage)
    assert len([t for t in study.trials if "repeat_of" not in t.user_attrs]) == 3
    assert all(len(runs) == 1 for runs in repeats_of(study).values()) and repeats_of(study)
    out = in_tmp / "report"
    assert pareto_main(["--study-name", "smoke-test", "--storage", storage, "--out", str(out)]) == 0
    table = pd.read_csv(out / "pareto.csv")
    assert set(table["seeds"]) == {1}  # one fresh run each, the search run beside it
    assert {"dev_accuracy_mean", "dev_accuracy_mean_low", "kd_gain_mean", "held"} <= set(table)
    page = (out / "pareto.md").read_text()
    assert "## Front confirmed over seeds" in page and "held on the mean" in page
    assert "of 3 complete search trials" in page  # repeats are not front candidates


def test_two_workers_run_each_repeat_once(tmp_path, cache_dir, smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    workers = [start_worker(tmp_path, storage, "smoke-test", 3, "--confirm-seeds", "2",
                            cache=cache_dir) for _ in range(2)]
    finish(*workers)
    study = load(storage)
    assert len([t for t in study.trials if "repeat_of" not in t.user_attrs
                and t.state.is_finished()]) == 3
    repeats = repeats_of(study)
    assert repeats
    for runs in repeats.values():
        done = [t for t in runs if t.state == COMPLETE]
        assert sorted(t.user_attrs["seed"] for t in done) == [1, 2]  # each seed once
        refused = [t for t in runs if t.state != COMPLETE]
        assert all(t.user_attrs["fail_reason"] == "duplicate repeat"
                   and "dev_accuracy" not in t.user_attrs for t in refused)


class RecordingTPE(optuna.samplers.TPESampler):
    """TPE that records every trial number a study shows it, through either reader."""

    seen: set[int] = set()

    def before_trial(self, study, trial):
        RecordingTPE.seen |= {t.number for t in study.get_trials(deepcopy=False)}
        RecordingTPE.seen |= {t.number for t in study._get_trials(deepcopy=False)}
        super().before_trial(study, trial)

    def sample_independent(self, study, trial, name, distribution):
        RecordingTPE.seen |= {t.number for t in study._get_trials(deepcopy=False,
                                                                  use_cache=True)}
        return super().sample_independent(study, trial, name, distribution)


def test_the_sampler_never_sees_a_repeat(in_tmp, monkeypatch):
    monkeypatch.setattr(harness.sweep.search.optuna.samplers, "TPESampler", RecordingTPE)
    RecordingTPE.seen = set()
    assert run_smoke(in_tmp, 3, "--confirm-seeds", "2")[0] == 0
    assert run_smoke(in_tmp, 5, "--confirm-seeds", "2")[0] == 0  # more search after the repeats
    study = load(f"journal:{in_tmp / 'study.journal'}")
    repeats = {t.number for runs in repeats_of(study).values() for t in runs}
    assert repeats and RecordingTPE.seen
    assert not RecordingTPE.seen & repeats
    assert max(RecordingTPE.seen) > min(repeats)  # search trials after the repeats were seen


def test_repeats_are_queued_most_compute_first(tmp_path):
    study = optuna.create_study(study_name="order", directions=["maximize", "minimize"],
                                storage=open_storage(f"journal:{tmp_path / 'order.journal'}"))
    # Three front members, found smallest first: larger students are more accurate.
    for number, (hidden, flops) in enumerate([(128, 1e6), (384, 9e7), (192, 6e6)]):
        params = {"T": 2.0, "T_s": 2.0, "alpha": 0.5, "num_layers": 2, "hidden_size": hidden}
        study.add_trial(optuna.trial.create_trial(
            values=[0.7 + flops / 1e9, flops], params=params, distributions=DISTRIBUTIONS,
            user_attrs={"dev_accuracy": 0.7 + flops / 1e9, "flops_per_example": flops,
                        "num_layers": 2, "hidden_size": hidden, "seed": 0}))
    config = load_study_config(SMOKE, ["confirm.seeds=2"])
    assert queue_repeats(study, config) == 6
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [(t.user_attrs["repeat_of"], t.user_attrs["seed"]) for t in waiting] == [
        (1, 1), (1, 2), (2, 1), (2, 2), (0, 1), (0, 2)]


# ---- analysis against a hand computation --------------------------------------------------

def synthetic_confirmed_study(storage: str) -> optuna.Study:
    """Three configurations: 0 and 1 run on three seeds, 2 on one; seeds shift accuracy."""
    study = optuna.create_study(study_name="seeds", storage=open_storage(storage),
                                directions=["maximize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    rng = np.random.default_rng(3)
    configurations = [{"T": 2.0, "T_s": 3.0, "alpha": 0.5, "num_layers": 1, "hidden_size": 128},
                      {"T": 4.0, "T_s": 4.0, "alpha": 0.7, "num_layers": 2, "hidden_size": 256},
                      {"T": 6.0, "T_s": 2.0, "alpha": 0.3, "num_layers": 4, "hidden_size": 384}]
    for number, params in enumerate(configurations):
        attrs = synthetic_trial_attrs(params, rng)
        study.add_trial(optuna.trial.create_trial(
            values=[attrs["dev_accuracy"], attrs["flops_per_example"]], params=params,
            distributions=DISTRIBUTIONS, user_attrs={**attrs, "seed": 0}))
    for number in (0, 1):
        for seed in (1, 2):
            attrs = synthetic_trial_attrs(configurations[number], rng)
            study.add_trial(optuna.trial.create_trial(
                values=[attrs["dev_accuracy"], attrs["flops_per_example"]],
                params=configurations[number], distributions=DISTRIBUTIONS,
                user_attrs={**attrs, "seed": seed, "repeat_of": number}))
    return study


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval, written out in float64."""
    n, mean = len(values), statistics.fmean(values)
    half = scipy_stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def test_means_and_intervals_over_seeds_against_a_hand_computation(tmp_path):
    study = synthetic_confirmed_study(f"journal:{tmp_path / 'seeds.journal'}")
    frame = study_frame(study)
    summary = by_configuration(frame).set_index("trial")
    assert list(summary.index) == [0, 1, 2]
    assert list(summary["seeds"]) == [2, 2, 0]  # fresh runs: the search run is not one
    for number in (0, 1):
        runs = [t for t in study.trials if t.user_attrs.get("repeat_of") == number]
        assert summary.loc[number, "dev_accuracy"] == study.trials[number].user_attrs[
            "dev_accuracy"]  # the search run's own value, beside the means
        for metric in ("dev_accuracy", "test_accuracy", "kd_gain", "teacher_agreement"):
            values = [t.user_attrs[metric] for t in runs]
            if metric == "teacher_agreement":  # constant in the synthetic study
                assert summary.loc[number, f"{metric}_mean"] == pytest.approx(values[0])
                continue
            mean, low, high = t_interval(values)
            assert summary.loc[number, f"{metric}_mean"] == pytest.approx(mean, abs=1e-12)
            assert summary.loc[number, f"{metric}_mean_low"] == pytest.approx(low, abs=1e-12)
            assert summary.loc[number, f"{metric}_mean_high"] == pytest.approx(high, abs=1e-12)
        gains = [t.user_attrs["test_accuracy"] - t.user_attrs["baseline_test_accuracy"]
                 for t in runs]  # paired by seed: each run against its own baseline
        assert summary.loc[number, "kd_gain_test_mean"] == pytest.approx(
            statistics.fmean(gains), abs=1e-12)
    assert math.isnan(summary.loc[2, "dev_accuracy_mean"])  # no fresh run: no mean
    # On the means front, configuration 2 (no fresh run) stands in with its search run.
    stand_in = summary["dev_accuracy_mean"].fillna(summary["dev_accuracy"])
    rows = list(zip(summary.index, stand_in, summary["flops_per_example"]))
    dominated = {i for i, acc, cost in rows for _, other_acc, other_cost in rows
                 if other_acc >= acc and other_cost <= cost
                 and (other_acc > acc or other_cost < cost)}
    expected = {i for i, _, _ in rows} - dominated
    front = confirmed_front(by_configuration(frame)).set_index("trial")
    assert set(front.index) == expected
    assert all(front.loc[n, "confirmed"] == (n != 2) for n in front.index)


def test_a_means_front_member_without_fresh_runs_is_confirmed_in_the_next_round(tmp_path):
    study = optuna.create_study(study_name="rounds", directions=["maximize", "minimize"],
                                storage=open_storage(f"journal:{tmp_path / 'rounds.journal'}"))
    # Single runs: 0 and 1 on the front, 2 just behind 1 at the same cost.
    for hidden, dev, flops in [(128, 0.80, 1e6), (256, 0.85, 2e6), (384, 0.84, 2e6)]:
        params = {"T": 2.0, "T_s": 2.0, "alpha": 0.5, "num_layers": 2, "hidden_size": hidden}
        study.add_trial(optuna.trial.create_trial(
            values=[dev, flops], params=params, distributions=DISTRIBUTIONS,
            user_attrs={"dev_accuracy": dev, "flops_per_example": flops, "num_layers": 2,
                        "hidden_size": hidden, "seed": 0}))
    config = load_study_config(SMOKE, ["confirm.seeds=2"])
    assert queue_repeats(study, config) == 4  # round 1: the single-run front, 2 seeds each
    assert queue_repeats(study, config) == 0  # nothing more while they wait
    # The repeats run: 1 falls to 0.70 on fresh seeds, which puts 2 on the means front.
    fresh = {0: 0.79, 1: 0.70}
    for trial in [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]:
        first = study.trials[trial.user_attrs["repeat_of"]]
        attrs = {**first.user_attrs, **trial.user_attrs, "dev_accuracy": fresh[first.number]}
        study.add_trial(optuna.trial.create_trial(
            values=[attrs["dev_accuracy"], attrs["flops_per_example"]], params=first.params,
            distributions=DISTRIBUTIONS, user_attrs=attrs))
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    capped = load_study_config(SMOKE, ["confirm.seeds=2", "confirm.max_rounds=1"])
    assert queue_repeats(study, capped) == 0  # the cap binds: 2 stays unconfirmed
    # ... and the study is finished: a re-run for its report starts no local workers.
    assert not work_left(study, capped, n_trials=3) and work_left(study, config, n_trials=3)
    assert queue_repeats(study, config) == 2
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert {(t.user_attrs["repeat_of"], t.user_attrs["seed"], t.user_attrs["confirm_round"])
            for t in waiting} == {(2, 1, 2), (2, 2, 2)}
    # A larger confirm.seeds on a re-run: the extra seeds of confirmed configurations join
    # the last round, so the cap on rounds does not refuse them.
    more = load_study_config(SMOKE, ["confirm.seeds=3", "confirm.max_rounds=2"])
    assert queue_repeats(study, more) == 2
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert {(t.user_attrs["repeat_of"], t.user_attrs["seed"], t.user_attrs["confirm_round"])
            for t in waiting} == {(2, 1, 2), (2, 2, 2), (0, 3, 2), (1, 3, 2)}


def test_the_label_only_front_is_confirmed_too(tmp_path):
    """The answer compares the best distilled and label-only students on fresh seeds, so a
    student whose baseline is on the label-only front is repeated even where its distilled
    run is off the distilled front."""
    study = optuna.create_study(study_name="label-only", directions=["maximize", "minimize"],
                                storage=open_storage(f"journal:{tmp_path / 'l.journal'}"))
    # (hidden, dev, baseline dev, FLOPs): 0 dominates 1 distilled, 1's baseline is the best
    # at its cost; 2 and 3 are one student (one baseline): only the first stands for it.
    for hidden, dev, baseline, flops in [(128, 0.80, 0.70, 1e6), (192, 0.79, 0.78, 2e6),
                                         (256, 0.82, 0.76, 3e6), (256, 0.81, 0.76, 3e6)]:
        params = {"T": 2.0, "T_s": 2.0, "alpha": 0.5, "num_layers": 2, "hidden_size": hidden}
        study.add_trial(optuna.trial.create_trial(
            values=[dev, flops], params=params, distributions=DISTRIBUTIONS,
            user_attrs={"dev_accuracy": dev, "baseline_dev_accuracy": baseline,
                        "flops_per_example": flops, "num_layers": 2, "hidden_size": hidden,
                        "init": "random", "seed": 0}))
    config = load_study_config(SMOKE, ["confirm.seeds=1"])
    assert queue_repeats(study, config) == 3
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    # Distilled front: 0 and 2; label-only front: 0 (0.70 at 1e6) and 1 (0.78 at 2e6).
    assert sorted(t.user_attrs["repeat_of"] for t in waiting) == [0, 1, 2]
