"""Study files: a YAML file (``studies/*.yaml``) plus ``--set key.path=value`` overrides
becomes a validated, frozen ``StudyConfig``, once, at the edge.

Unknown keys, wrong types, empty choice lists, ranges with low > high and values a
parameter's rule (``config.SEARCHABLE``) refuses raise ``ConfigError`` naming the key path
and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.config import (OBJECTIVE_DIRECTIONS, QUALITY_OBJECTIVES, RESIZED_TEACHER,
                            SEARCHABLE, ConfigError, SearchParam, StudyConfig, Value, above_zero,
                            fixed_value, in_unit_interval, not_negative, student_inits)

# A study's name names its folder under runs/: nothing that could leave it or hide in it.
STUDY_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PHASES = ("baseline", "intermediate", "distill", "finetune")
# Every other number of a study file and what it must be; None (unset) is always allowed.
# The searchable parameters' rules are in config.SEARCHABLE.
FIELD_RULES = {
    "data.max_length": above_zero("token lengths"),
    "data.max_train_examples": above_zero("example counts"),
    "data.max_eval_examples": above_zero("example counts"),
    "data.select_fraction": lambda value, _: None if 0 <= value < 0.5 else (
        f"expected a share of the training rows in [0, 0.5) (0: choose checkpoints on dev), "
        f"got {value}"),
    **{f"teacher.architecture.{name}": above_zero("sizes")
       for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size")},
    "teacher.epochs": above_zero("epochs"),
    "teacher.lr": above_zero("learning rates"),
    "teacher.batch_size": above_zero("batch sizes"),
    "teacher.warmup_ratio": in_unit_interval("warmup_ratio"),
    "teacher.weight_decay": not_negative("weight decay"),
    "teacher.max_grad_norm": above_zero("gradient norms"),
    "teacher.ensemble": above_zero("ensemble sizes"),
    **{f"{section}.schedule.{name}": rule for section in ("teacher", "pipeline")
       for name, rule in (("min_steps", not_negative("step counts")),
                          ("eval_every", above_zero("step counts")),
                          ("patience", above_zero("evaluation counts")))},
    "student.head_dim": above_zero("head widths"),
    **{f"pipeline.{phase}.epochs": not_negative("epochs") for phase in _PHASES},
    **{f"pipeline.{phase}.lr": above_zero("learning rates") for phase in _PHASES},
    "pipeline.batch_size": above_zero("batch sizes"),
    "pipeline.eval_batch_size": above_zero("batch sizes"),
    "pipeline.warmup_ratio": in_unit_interval("warmup_ratio"),
    "pipeline.weight_decay": not_negative("weight decay"),
    "pipeline.max_grad_norm": above_zero("gradient norms"),
    "pipeline.latency_repeats": above_zero("repeat counts"),
    "sampler.n_startup_trials": not_negative("trial counts"),
    "sampler.population_size": above_zero("population sizes"),
    "pruner.n_startup_trials": not_negative("trial counts"),
    "pruner.n_warmup_epochs": not_negative("epoch counts"),
    "confirm.seeds": not_negative("seed counts"),
    "transfer.mask_prob": in_unit_interval("transfer.mask_prob"),
    "transfer.ngram_prob": in_unit_interval("transfer.ngram_prob"),
    "transfer.max_ngram": above_zero("n-gram lengths"),
    "transfer.neighbour_prob": in_unit_interval("transfer.neighbour_prob"),
    "transfer.neighbours": above_zero("neighbourhood sizes"),
    "confirm.best_per_size": not_negative("trial counts"),
    "confirm.max_rounds": above_zero("round counts"),
    "deploy.latency_repeats": above_zero("repeat counts"),
    "generation.top_k": above_zero("token counts"),
}
# The compute objectives a generative trial measures.
GENERATIVE_OBJECTIVES = ("flops_per_token", "flops_per_example", "params", "train_flops",
                         "flops_share")


def load_study_config(path: Path | str, overrides: typing.Sequence[str] = ()) -> StudyConfig:
    """Read a study file, apply ``key.path=value`` overrides, validate, freeze."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"study file {path} is not valid YAML: {_one_line(error)}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"study file {path}: expected a mapping of sections at the top level")
    for override in overrides:
        apply_override(raw, override)
    return study_config_from_dict(raw)


def study_config_from_dict(raw: dict) -> StudyConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"study: expected a mapping of sections, got {_describe(raw)}")
    data = raw.get("data")
    if isinstance(data, dict) and "text_column" in data and "text_columns" in data:
        raise ConfigError("data.text_columns: give data.text_column (one text) or "
                          "data.text_columns (one or two), not both")
    search = raw.get("search", {})
    if not isinstance(search, dict):
        raise ConfigError(f"search: expected a mapping, got {_describe(search)}")
    # The search entries' value types depend on the parameter, so they are built apart.
    config = _build(StudyConfig, {k: v for k, v in raw.items() if k != "search"}, "")
    _check_fields(config)  # first: the search entries' rules divide by student.head_dim
    config = dataclasses.replace(config, search={
        str(name): _search_param(str(name), entry, config) for name, entry in search.items()})
    _check_semantics(config)
    return config


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` in ``raw``; the value is parsed as YAML (``4``, ``true``, ``[1, 2]``)."""
    key_path, sep, text = override.partition("=")
    if not sep or not key_path:
        raise ConfigError(f"--set {override!r}: expected key.path=value")
    *parents, leaf = key_path.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML "
                          f"({_one_line(error)})") from error


def _build(cls: type, value: Any, path: str, base: Any = None,
           bindings: dict | None = None) -> Any:
    """``cls`` from a mapping; keys it omits keep ``base``'s values (else the class defaults).

    ``bindings`` gives the type of each type variable in ``cls``'s fields (SearchParam's).
    """
    if not isinstance(value, dict):
        raise ConfigError(f"{path or 'study'}: expected a mapping, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names, key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key; expected one of {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing and base is None:
        raise ConfigError(f"{_join(path, missing[0])}: required; {path or 'study'} needs "
                          f"{sorted(f.name for f in dataclasses.fields(cls))}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        if dataclasses.is_dataclass(defaults[key]):  # a nested section keeps its own defaults
            kwargs[key] = _build(type(defaults[key]), item, _join(path, key), defaults[key])
        else:
            kwargs[key] = _convert(hints[key], item, _join(path, key), bindings or {})
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _convert(hint: Any, value: Any, path: str, bindings: dict) -> Any:
    if isinstance(hint, typing.TypeVar):
        hint = bindings[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(inner, value, path, bindings)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        return tuple(_convert(args[0], item, f"{path}[{i}]", bindings)
                     for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return {str(k): _convert(args[1], v, _join(path, str(k)), bindings)
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; "inf" and "1e999" too
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {_describe(value)}")
    if hint is float and not math.isfinite(value):  # YAML's .inf and .nan: never meaningful
        raise ConfigError(f"{path}: expected a finite number, got {value}")
    return value


def _check_fields(config: StudyConfig) -> None:
    for path, rule in FIELD_RULES.items():
        parent, _, name = path.rpartition(".")
        section = fixed_value(config, parent)
        value = None if section is None else getattr(section, name)
        problem = None if value is None else rule(value, config)
        if problem:
            raise ConfigError(f"{path}: {problem}")
    architecture = config.teacher.architecture
    if architecture is not None and architecture.hidden_size % architecture.num_heads:
        raise ConfigError(f"teacher.architecture.num_heads: {architecture.num_heads} does not "
                          f"divide teacher.architecture.hidden_size {architecture.hidden_size}")


def check_study_name(name: str, key: str) -> str:
    """``name``, if it is letters, digits, '.', '_' and '-' only (and not '.' or '..')."""
    if not STUDY_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{key}: study name {name!r} may hold only letters, digits, '.', '_' "
                          "and '-' (it names a folder under runs/)")
    return name


def _check_semantics(config: StudyConfig) -> None:
    check_study_name(config.name, "name")
    for metric in config.objectives.metrics:
        if metric not in OBJECTIVE_DIRECTIONS:
            raise ConfigError(f"objectives.metrics: unknown metric {metric!r}; "
                              f"expected some of {sorted(OBJECTIVE_DIRECTIONS)}")
    metrics = config.objectives.metrics
    if not metrics or metrics[0] not in QUALITY_OBJECTIVES:
        raise ConfigError(f"objectives.metrics: the first objective must be a dev metric, one of "
                          f"{list(QUALITY_OBJECTIVES)}")
    compute = sorted(set(OBJECTIVE_DIRECTIONS) - set(QUALITY_OBJECTIVES))
    for metric in metrics[1:]:
        if metric not in compute:
            raise ConfigError(f"objectives.metrics: {metric!r} after the first objective; expected "
                              f"compute metrics, some of {compute}")
    for key, named in (("metrics", metrics), ("constraints", config.objectives.constraints)):
        if "int8_bytes" in named and config.deploy.export != "every-trial":
            raise ConfigError(f"objectives.{key}: int8_bytes is measured in the trial only with "
                              f"deploy.export: every-trial, got {config.deploy.export!r}")
    for metric in config.objectives.constraints:
        if metric not in compute:
            raise ConfigError(f"objectives.constraints.{metric}: expected a compute metric, one of "
                              f"{compute}")
    text_columns = config.data.text_columns
    if text_columns is not None and not 1 <= len(text_columns) <= 2:
        raise ConfigError(f"data.text_columns: expected one or two column names (a sentence "
                          f"pair), got {list(text_columns)}")
    if config.teacher.ensemble > 1 and not config.teacher.fine_tune:
        raise ConfigError("teacher.ensemble: an ensemble is of fine-tunes; with "
                          "teacher.fine_tune: false there is one teacher")
    if config.teacher.ensemble > 1 and (config.transfer.copies > 0 or config.transfer.unlabeled
                                        or "transfer_copies" in config.search):
        raise ConfigError("teacher.ensemble: a transfer set is labelled by one teacher, not an "
                          "ensemble, as yet; use teacher.ensemble: 1 with transfer:")
    if config.transfer.online:
        _check_online_views(config)
    if config.generative:
        _check_generative(config)
    elif "flops_per_token" in (*metrics, *config.objectives.constraints):
        raise ConfigError("objectives: flops_per_token is measured for task: causal-lm and "
                          "seq2seq only; a classifier's cost is flops_per_example")
    if config.teacher.source == "architecture" and config.teacher.architecture is None:
        raise ConfigError("teacher.architecture: required when teacher.source is 'architecture'")
    for searchable in SEARCHABLE.values():
        value = fixed_value(config, searchable.path)
        problem = None if value is None else searchable.problem(value, config)
        if problem:
            raise ConfigError(f"{searchable.path}: {problem}")
    if config.sampler.name == "grid" and any(p.choices is None for p in config.search.values()):
        raise ConfigError("sampler.name: grid needs every search entry given as choices")


# What a generative study cannot use as yet, each with the value that leaves it unused.
_NOT_GENERATIVE = (
    ("data.text_columns", None), ("data.group_column", None), ("teacher.ensemble", 1),
    ("teacher.fine_tune", True), ("student.source", RESIZED_TEACHER),
    ("pipeline.intermediate.epochs", 0.0), ("pipeline.finetune.epochs", 0.0),
    ("pipeline.hidden_weight", 0.0), ("pipeline.attention_weight", 0.0),
    ("pipeline.lr_rule", "fixed"), ("transfer.copies", 0), ("transfer.unlabeled", None),
    ("transfer.online", False))


def _check_generative(config: StudyConfig) -> None:
    for path, unused in _NOT_GENERATIVE:
        if fixed_value(config, path) != unused:
            raise ConfigError(f"{path}: not used by task: {config.task} as yet; leave it at "
                              f"{unused!r}")
    for name in ("student_source", "hidden_weight", "attention_weight", "transfer_copies"):
        if name in config.search:
            raise ConfigError(f"search.{name}: not searched by task: {config.task} as yet")
    if "teacher-pruned" in student_inits(config):
        raise ConfigError(f"student.init: teacher-pruned is not built for task: {config.task} "
                          "as yet; use teacher-layers or random")
    if config.teacher.source == "architecture":
        raise ConfigError(f"teacher.source: task: {config.task} takes a pre-trained checkpoint "
                          "(a hub name or a local folder), not an architecture")
    if config.deploy.export == "every-trial":
        raise ConfigError("deploy.export: the ONNX deployment is for classifiers; use front "
                          "(skipped for generative studies) or none")
    metrics = (*config.objectives.metrics, *config.objectives.constraints)
    # Confirmation, the kept students and the report rank by dev_accuracy, the exact match.
    for metric in metrics:
        if metric not in ("dev_accuracy", *GENERATIVE_OBJECTIVES):
            raise ConfigError(f"objectives: {metric!r} is not measured for task: {config.task}; "
                              f"expected dev_accuracy (the exact match) first, then some of "
                              f"{list(GENERATIVE_OBJECTIVES)}")
    if config.data.select_fraction == 0:
        raise ConfigError("data.select_fraction: a generative study chooses checkpoints on a "
                          "select split carved from train, never on dev; expected a share > 0")


def _check_online_views(config: StudyConfig) -> None:
    transfer = config.transfer
    if transfer.copies > 0 or transfer.unlabeled or "transfer_copies" in config.search:
        raise ConfigError("transfer.online: views are made online or offline (transfer.copies, "
                          "transfer.unlabeled), not both in one study; drop one")
    if transfer.neighbour_prob == 0 and transfer.mask_prob == 0:
        raise ConfigError("transfer.online: every view would be the example itself; set "
                          "transfer.neighbour_prob or transfer.mask_prob above 0")
    if config.teacher.ensemble > 1:
        raise ConfigError("transfer.online: the teacher scores every view as it is made, and an "
                          "ensemble would run all its members on every batch, not built as yet; "
                          "use teacher.ensemble: 1 with online views")


def _search_param(name: str, raw: Any, study_config: StudyConfig) -> SearchParam:
    """The ``search.<name>`` entry, typed by the parameter and checked by its table rule."""
    path = f"search.{name}"
    if name not in SEARCHABLE:
        raise ConfigError(f"{path}: not a searchable parameter; expected one of "
                          f"{sorted(SEARCHABLE)} (num_heads is derived from hidden_size / "
                          "student.head_dim)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_describe(raw)}")
    searchable = SEARCHABLE[name]
    has_choices = raw.get("choices") is not None
    if has_choices and (raw.get("low") is not None or raw.get("high") is not None):
        raise ConfigError(f"{path}: give either choices or low/high, not both")
    if not has_choices and (searchable.kind is str or raw.get("low") is None
                            or raw.get("high") is None):
        raise ConfigError(f"{path}: expected choices" if searchable.kind is str
                          else f"{path}: expected low and high")
    param = _build(SearchParam, raw, path, bindings={Value: searchable.kind})
    if has_choices:
        if not param.choices:
            raise ConfigError(f"{path}.choices: expected at least one choice, got an empty list")
        values = [(f"{path}.choices[{i}]", choice) for i, choice in enumerate(param.choices)]
    else:
        _check_range(param, path)
        values = [(path, param.low), (path, param.high)]
        if searchable.kind is int:  # Optuna samples low + k * step
            values.append((path, param.low + (param.step or 1)))
    for where, value in values:
        problem = searchable.problem(value, study_config)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    return param


def _check_range(param: SearchParam, path: str) -> None:
    low, high = param.low, param.high
    if low > high:
        raise ConfigError(f"{path}: low ({low}) is greater than high ({high})")
    if param.log and low <= 0:
        raise ConfigError(f"{path}.log: a log-scale range needs low > 0, got {low}")
    if param.step is not None and (not param.step > 0 or param.log):  # Optuna rejects both
        raise ConfigError(f"{path}.step: expected a step > 0 on a linear scale (no log), "
                          f"got {param.step}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # PyYAML's messages span lines, with carets


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
