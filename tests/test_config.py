"""Tests for harness.config and harness.study_file: every ConfigError names the key path;
overrides; defaults; the table of searchable parameters."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from harness.config import (
    SEARCHABLE,
    ConfigError,
    PhaseConfig,
    SearchParam,
    StudyConfig,
    TrialConfig,
    default_trial_config,
)
from harness.study_file import apply_override, load_study_config, study_config_from_dict
from harness.sweep.study_record import config_fingerprint

from .conftest import REPO


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        study_config_from_dict(raw)
    return str(caught.value)


def write_study(tmp_path, raw: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- defaults and accepted input ----------------------------------------------------------

def test_empty_study_is_the_defaults():
    assert study_config_from_dict({}) == StudyConfig()


def test_config_is_frozen():
    config = study_config_from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]


def test_partial_nested_section_keeps_its_other_defaults():
    config = study_config_from_dict({"pipeline": {"distill": {"lr": 3e-4}}})
    assert config.pipeline.distill == PhaseConfig(epochs=2.0, lr=3e-4)
    assert config.pipeline.baseline == StudyConfig().pipeline.baseline
    assert config.pipeline.batch_size == 32
    config = study_config_from_dict({"data": {"max_length": 16}})
    assert config.data.source == "builtin:rotten-tomatoes" and config.data.max_length == 16


def test_float_fields_accept_yaml_exponent_strings_and_ints(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as the string "1e-4".
    path = tmp_path / "study.yaml"
    path.write_text("pipeline:\n  distill: {lr: 1e-4, epochs: 3}\nteacher: {lr: 2e-5}\n")
    config = load_study_config(path)
    assert config.pipeline.distill.lr == pytest.approx(1e-4)
    assert isinstance(config.pipeline.distill.epochs, float) and config.pipeline.distill.epochs == 3.0
    assert config.teacher.lr == pytest.approx(2e-5)


def test_search_entries_are_normalised_to_the_parameter_type():
    config = study_config_from_dict({"search": {
        "T": {"low": 1, "high": "8e0", "log": True},
        "num_layers": {"low": 1, "high": 4},
        "hidden_size": {"choices": [128, 256]},
        "init": {"choices": ["random", "teacher-layers"]},
    }})
    assert config.search["T"] == SearchParam(low=1.0, high=8.0, log=True)
    assert isinstance(config.search["T"].low, float)
    assert config.search["num_layers"].low == 1 and isinstance(config.search["num_layers"].high, int)
    assert config.search["hidden_size"].choices == (128, 256)
    assert config.search["init"].choices == ("random", "teacher-layers")


def test_the_searchable_table_gives_every_trial_field_its_study_file_value():
    assert {f.name for f in dataclasses.fields(TrialConfig)} == set(SEARCHABLE) | {"seed"}
    # A distinct, valid fixed value per parameter, written where the table says it lives.
    fixed = {"T": 2.5, "T_s": 3.5, "alpha": 0.25, "lr": 3e-4, "hidden_weight": 0.5,
             "attention_weight": 1.5, "num_layers": 5, "hidden_size": 96,
             "intermediate_size": 200, "init": "random", "student_source": "./small-bert",
             "transfer_copies": 3, "kd_level": "word"}  # "sequence": generative studies
    assert set(fixed) == set(SEARCHABLE)
    raw: dict = {"seed": 7}
    for name, value in fixed.items():
        apply_override(raw, f"{SEARCHABLE[name].path}={value}")
    config = study_config_from_dict(raw)
    trial = default_trial_config(config)
    assert dataclasses.asdict(trial) == {**fixed, "seed": 7}
    for name, value in fixed.items():
        assert isinstance(getattr(trial, name), SEARCHABLE[name].kind), name
    assert default_trial_config(config, T=9.0).T == 9.0
    generative = study_config_from_dict({"task": "causal-lm",
                                         "generation": {"kd_level": "sequence"}})
    assert default_trial_config(generative).kd_level == "sequence"


def test_the_teacher_fine_tune_has_its_own_optimiser_settings():
    config = study_config_from_dict({"pipeline": {"warmup_ratio": 0.3, "weight_decay": 0.2,
                                                  "max_grad_norm": 5.0}})
    assert (config.teacher.warmup_ratio, config.teacher.weight_decay,
            config.teacher.max_grad_norm) == (0.1, 0.01, 1.0)
    teacher = study_config_from_dict({"teacher": {"weight_decay": 0.0}}).teacher
    assert teacher.weight_decay == 0.0


def test_shared_optimiser_settings_keep_the_sections_flat():
    """The teacher and pipeline sections share their optimiser fields (OptimizerConfig), and
    the stored configuration keeps them as flat keys beside the section's own: the form a
    study's fingerprint (harness.sweep.study_record) was recorded from, so studies created
    before stay resumable."""
    stored = dataclasses.asdict(study_config_from_dict(
        {"teacher": {"lr": 3e-5, "batch_size": 16}, "pipeline": {"batch_size": 8}}))
    for section in ("teacher", "pipeline"):
        assert {"batch_size", "warmup_ratio", "weight_decay", "max_grad_norm",
                "schedule"} <= set(stored[section])
    assert (stored["teacher"]["lr"], stored["teacher"]["batch_size"]) == (3e-5, 16)
    assert stored["pipeline"]["batch_size"] == 8 and "optimizer" not in stored["pipeline"]
    # default-v4 as created by the releases before the shared optimiser settings (and the
    # select split): a study of that name in a user's storage resumes only while this holds.
    default_v4 = load_study_config(REPO / "studies" / "default.yaml", [
        "name=default-v4", "pipeline.hard_label_temperature=student",
        "objectives.constraints={flops_per_example: 2.4e+8}", "data.select_fraction=0"])
    assert config_fingerprint(default_v4) == (
        "cdf080a873d0a932374c51e88964af240346dc9e539d6233ddc4ce902c264a34")


def test_architecture_teacher_section():
    config = study_config_from_dict({"teacher": {"source": "architecture", "architecture": {
        "num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}}})
    assert config.teacher.architecture.hidden_size == 64


# --- ConfigError cases --------------------------------------------------------------------

@pytest.mark.parametrize("raw, path", [
    ({"colour": "red"}, "colour"),
    ({"data": {"sorce": "x"}}, "data.sorce"),
    ({"pipeline": {"distill": {"learning_rate": 1e-3}}}, "pipeline.distill.learning_rate"),
    ({"search": {"T": {"low": 1, "high": 2, "scale": "log"}}}, "search.T.scale"),
    ({"teacher": {"architecture": {"num_layers": 1, "hidden_size": 8, "num_heads": 1,
                                   "intermediate_size": 8, "heads": 2}}},
     "teacher.architecture.heads"),
])
def test_unknown_key_names_its_path(raw, path):
    message = config_error(raw)
    assert message.startswith(f"{path}: unknown key")
    assert "expected one of" in message


def test_unknown_non_string_key_is_a_config_error():
    # YAML reads `on:` as True and `1:` as an int; mixed key types must not crash the sort.
    assert "unknown key" in config_error({"data": {1: "x", "zz": 2}})


@pytest.mark.parametrize("raw, path, expected", [
    ({"seed": "zero"}, "seed", "expected int"),
    ({"seed": 1.5}, "seed", "expected int"),
    ({"seed": True}, "seed", "expected int"),
    ({"pipeline": {"batch_size": 3.0}}, "pipeline.batch_size", "expected int"),
    ({"pipeline": {"distill": {"lr": "fast"}}}, "pipeline.distill.lr", "expected float"),
    ({"pipeline": {"T": True}}, "pipeline.T", "expected float"),
    ({"data": {"source": 3}}, "data.source", "expected str"),
    ({"data": "builtin:rotten-tomatoes"}, "data", "expected a mapping"),
    ({"pipeline": {"distill": 2}}, "pipeline.distill", "expected a mapping"),
    ({"search": {"T": 4.0}}, "search.T", "expected a mapping"),
    ({"sampler": {"name": "bayes"}}, "sampler.name", "expected one of"),
    ({"tracking": {"tags": "a,b"}}, "tracking.tags", "expected a list"),
    ({"tracking": {"tags": ["a", 2]}}, "tracking.tags[1]", "expected str"),
    ({"objectives": {"constraints": {"params": "big"}}}, "objectives.constraints.params",
     "expected float"),
    ({"search": {"T": {"low": "one", "high": 2}}}, "search.T.low", "expected float"),
    ({"search": {"num_layers": {"low": 1.5, "high": 3}}}, "search.num_layers.low", "expected int"),
    ({"search": {"hidden_size": {"choices": [64, "big"]}}}, "search.hidden_size.choices[1]",
     "expected int"),
])
def test_wrong_type_names_path_and_expectation(raw, path, expected):
    message = config_error(raw)
    assert message.startswith(f"{path}:"), message
    assert expected in message


def test_missing_required_architecture_field():
    message = config_error({"teacher": {"source": "architecture",
                                        "architecture": {"num_layers": 2}}})
    assert message.startswith("teacher.architecture.") and "required" in message


def test_architecture_teacher_without_architecture():
    assert config_error({"teacher": {"source": "architecture"}}).startswith("teacher.architecture")


@pytest.mark.parametrize("raw, fragment", [
    ({"search": {"T": {"low": 8.0, "high": 1.0}}}, "search.T: low (8.0) is greater than high (1.0)"),
    ({"search": {"num_layers": {"low": 4, "high": 2}}}, "search.num_layers: low (4)"),
    ({"search": {"alpha": {"choices": []}}}, "search.alpha.choices: expected at least one choice"),
    ({"search": {"lr": {"low": 0.0, "high": 1e-3, "log": True}}}, "search.lr.log: a log-scale"),
    ({"search": {"T": {"low": -1.0, "high": 2.0, "log": True}}}, "search.T.log"),
    ({"search": {"num_heads": {"choices": [4, 8]}}}, "search.num_heads: not a searchable"),
    ({"search": {"hidden_size": {"choices": [64, 100]}}},
     "search.hidden_size.choices[1]: every hidden size"),
    ({"search": {"hidden_size": {"low": 64, "high": 256, "step": 48}}}, "search.hidden_size:"),
    ({"search": {"hidden_size": {"low": 64, "high": 256}}}, "search.hidden_size:"),
    ({"search": {"T": {"low": 1.0}}}, "search.T: expected low and high"),
    ({"search": {"init": {"low": 1, "high": 2}}}, "search.init: expected choices"),
    ({"search": {"init": {"choices": ["zeros"]}}}, "search.init.choices"),
    ({"search": {"T": {"low": 1.0, "high": 2.0, "choices": [1.0]}}}, "search.T: give either"),
    ({"search": {"alpha": {"low": 0.0, "high": 1.5}}}, "search.alpha: alpha must lie in [0, 1]"),
    ({"search": {"T_s": {"choices": [0.0, 1.0]}}},
     "search.T_s.choices[0]: temperatures must be > 0"),
    ({"search": {"T": {"low": float("nan"), "high": 2.0}}},
     "search.T.low: expected a finite number"),
    ({"search": {"T_s": {"low": 1.0, "high": float("inf")}}},
     "search.T_s.high: expected a finite number, got inf"),
    ({"pipeline": {"T": float("inf")}}, "pipeline.T: expected a finite number, got inf"),
    ({"pipeline": {"T_s": float("nan")}}, "pipeline.T_s: expected a finite number, got nan"),
    ({"teacher": {"source": "architecture", "architecture": {
        "num_layers": 1, "hidden_size": 64, "num_heads": 3, "intermediate_size": 64}}},
     "teacher.architecture.num_heads: 3 does not divide teacher.architecture.hidden_size 64"),
    ({"teacher": {"source": "architecture", "architecture": {
        "num_layers": 1, "hidden_size": 64, "num_heads": 0, "intermediate_size": 64}}},
     "teacher.architecture.num_heads: sizes must be > 0, got 0"),
    ({"student": {"head_dim": 0}}, "student.head_dim: head widths must be > 0, got 0"),
    ({"student": {"head_dim": 0}, "search": {"hidden_size": {"choices": [64]}}},
     "student.head_dim: head widths must be > 0"),
    ({"pipeline": {"batch_size": 0}}, "pipeline.batch_size: batch sizes must be > 0, got 0"),
    ({"pipeline": {"eval_batch_size": -8}}, "pipeline.eval_batch_size: batch sizes must be > 0"),
    ({"teacher": {"batch_size": 0}}, "teacher.batch_size: batch sizes must be > 0"),
    ({"data": {"max_train_examples": 0}}, "data.max_train_examples: example counts must be > 0"),
    ({"data": {"max_eval_examples": -1}}, "data.max_eval_examples: example counts must be > 0"),
    ({"data": {"max_length": 0}}, "data.max_length: token lengths must be > 0"),
    ({"pipeline": {"distill": {"epochs": -1}}}, "pipeline.distill.epochs: epochs must be >= 0"),
    ({"teacher": {"warmup_ratio": 1.5}}, "teacher.warmup_ratio: warmup_ratio must lie in [0, 1]"),
    ({"sampler": {"population_size": 0}}, "sampler.population_size: population sizes must be > 0"),
    ({"search": {"lr": {"low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}}}, "search.lr.step"),
    ({"search": {"num_layers": {"low": 1, "high": 4, "step": 0}}}, "search.num_layers.step"),
    ({"sampler": {"name": "grid"}, "search": {"T": {"low": 1.0, "high": 2.0}}},
     "sampler.name: grid needs every search entry given as choices"),
    ({"objectives": {"metrics": ["dev_accuracy", "energy"]}},
     "objectives.metrics: unknown metric 'energy'"),
    ({"objectives": {"metrics": ["flops_per_example"]}}, "objectives.metrics: the first objective"),
    ({"objectives": {"constraints": {"dev_accuracy": 0.9}}}, "objectives.constraints.dev_accuracy"),
    ({"objectives": {"metrics": ["dev_f1", "dev_accuracy"]}},
     "objectives.metrics: 'dev_accuracy' after the first objective"),
    ({"objectives": {"constraints": {"dev_mcc": 0.5}}}, "objectives.constraints.dev_mcc"),
    ({"data": {"text_columns": ["a", "b", "c"]}},
     "data.text_columns: expected one or two column names"),
    ({"data": {"text_columns": []}}, "data.text_columns: expected one or two column names"),
    ({"data": {"text_column": "a", "text_columns": ["a", "b"]}},
     "data.text_columns: give data.text_column (one text) or data.text_columns"),
    ({"student": {"hidden_size": 100, "head_dim": 32}},
     "student.hidden_size: every hidden size must be a positive multiple of student.head_dim "
     "(32), got 100"),
    ({"student": {"hidden_size": 0}}, "student.hidden_size: every hidden size must be a positive"),
    ({"search": {"hidden_size": {"choices": [-32]}}}, "search.hidden_size.choices[0]: every"),
    ({"pipeline": {"T": "inf"}}, "pipeline.T: expected a finite number, got inf"),
    ({"teacher": {"lr": "1e999"}}, "teacher.lr: expected a finite number, got inf"),
    ({"search": {"T": {"low": 1.0, "high": "Infinity"}}}, "search.T.high: expected a finite"),
    ({"pipeline": {"alpha": 1.5}}, "pipeline.alpha: alpha must lie in [0, 1], got 1.5"),
    ({"pipeline": {"T": 0.0}}, "pipeline.T: temperatures must be > 0"),
    ({"pipeline": {"hidden_weight": -1.0}}, "pipeline.hidden_weight: weights must be >= 0"),
    ({"pipeline": {"distill": {"lr": 0.0}}}, "pipeline.distill.lr: learning rates must be > 0"),
    ({"student": {"num_layers": 0}}, "student.num_layers: layer counts must be > 0"),
    ({"search": {"attention_weight": {"low": -1.0, "high": 1.0}}},
     "search.attention_weight: weights must be >= 0"),
    ({"search": {"num_layers": {"low": 0, "high": 2}}}, "search.num_layers: layer counts"),
])
def test_semantic_errors(raw, fragment):
    assert fragment in config_error(raw)


def test_grid_sampler_with_choices_is_valid():
    config = study_config_from_dict({"sampler": {"name": "grid"},
                                     "search": {"T": {"choices": [1.0, 2.0]}}})
    assert config.search["T"].choices == (1.0, 2.0)


def test_hidden_size_follows_the_student_head_dim():
    config = study_config_from_dict({"student": {"head_dim": 16, "hidden_size": 48},
                                     "search": {"hidden_size": {"choices": [16, 48]}}})
    assert config.search["hidden_size"].choices == (16, 48)
    assert "multiple" in config_error({"student": {"head_dim": 64},
                                       "search": {"hidden_size": {"choices": [32]}}})


# --- study files and --set overrides ------------------------------------------------------

def test_apply_override_nested_and_yaml_parsed():
    raw: dict = {"pipeline": {"batch_size": 32}}
    apply_override(raw, "pipeline.distill.lr=3e-4")
    apply_override(raw, "pipeline.batch_size=8")
    apply_override(raw, "search.hidden_size.choices=[64, 128]")
    apply_override(raw, "data.max_train_examples=null")
    apply_override(raw, "tracking.wandb=disabled")
    apply_override(raw, "teacher.trust_remote_code=true")
    assert raw == {"pipeline": {"batch_size": 8, "distill": {"lr": "3e-4"}},
                   "search": {"hidden_size": {"choices": [64, 128]}},
                   "data": {"max_train_examples": None}, "tracking": {"wandb": "disabled"},
                   "teacher": {"trust_remote_code": True}}
    config = study_config_from_dict(raw)
    assert config.pipeline.distill.lr == pytest.approx(3e-4)
    assert config.pipeline.batch_size == 8 and config.teacher.trust_remote_code is True


@pytest.mark.parametrize("override", ["pipeline.batch_size", "=3", "pipeline.batch_size 8"])
def test_apply_override_without_key_or_equals(override):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override({}, override)


def test_apply_override_value_that_is_not_yaml():
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_override({}, "search.T.choices=[1, 2")


def test_apply_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'batch_size' is not a section"):
        apply_override({"pipeline": {"batch_size": 32}}, "pipeline.batch_size.x=1")


def test_load_study_config_applies_overrides_then_validates(tmp_path):
    path = write_study(tmp_path, {"name": "s", "pipeline": {"distill": {"epochs": 1.0}}})
    config = load_study_config(path, ["pipeline.distill.lr=5e-4", "seed=3"])
    assert config.name == "s" and config.seed == 3
    assert config.pipeline.distill == PhaseConfig(epochs=1.0, lr=5e-4)
    with pytest.raises(ConfigError, match=r"^pipeline\.distil: unknown key"):
        load_study_config(path, ["pipeline.distil.lr=1"])
    with pytest.raises(ConfigError, match=r"^seed: expected int"):
        load_study_config(path, ["seed=abc"])


def test_load_study_config_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study_config(bad)
    bad.write_text("- a list\n- of things\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_study_config(bad)
    bad.write_text("")
    assert load_study_config(bad) == StudyConfig()


@pytest.mark.parametrize("metric", ["dev_f1", "dev_mcc", "dev_accuracy"])
def test_a_task_metric_can_be_the_searched_objective(metric):
    from harness.sweep.search import directions

    config = study_config_from_dict({"objectives": {"metrics": [metric, "flops_per_example"]}})
    assert directions(config) == ["maximize", "minimize"]


def test_text_columns_name_a_sentence_pair():
    assert study_config_from_dict({}).data.columns == ("text",)
    assert study_config_from_dict({"data": {"text_column": "s"}}).data.columns == ("s",)
    pair = study_config_from_dict({"data": {"text_columns": ["premise", "hypothesis"]}})
    assert pair.data.columns == ("premise", "hypothesis")
