"""Study configuration: one frozen dataclass per study-file section, validated once.

A study file (``studies/*.yaml``) plus ``--set key.path=value`` overrides becomes a
``StudyConfig``; nothing past ``load_study_config`` sees a raw dict. Unknown keys, wrong
types, empty choice lists and ranges with low > high raise ``ConfigError`` naming the key
path and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """Bad study configuration; the message names the key path."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin:rotten-tomatoes"  # builtin name, hub dataset name or local file
    config_name: str | None = None  # hub dataset configuration
    text_column: str = "text"
    label_column: str = "label"
    train_split: str = "train"
    dev_split: str | None = "validation"  # None: carve a seeded split out of train
    test_split: str | None = "test"
    max_length: int = 64
    max_train_examples: int | None = None  # seeded subsample, for quick studies
    max_eval_examples: int | None = None
    split_seed: int = 0


@dataclass(frozen=True)
class ArchitectureConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher and its one-time fine-tune, whose optimiser settings are its own: a
    change to the students' (``pipeline``) settings never retrains the teacher."""

    source: str = "builtin:minilm-l6"  # builtin name, hub model name, local folder or "architecture"
    architecture: ArchitectureConfig | None = None  # random-init teacher for tiny test studies
    tokenizer: str = "builtin:minilm-l6"  # used only by an architecture teacher
    epochs: float = 2.0
    lr: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    trust_remote_code: bool = False


StudentInit = Literal["teacher-layers", "random", "baseline"]


@dataclass(frozen=True)
class StudentConfig:
    """The student's size and initialisation when the search does not choose them."""

    num_layers: int = 2
    hidden_size: int = 384
    head_dim: int = 32  # num_heads = hidden_size / head_dim, so no invalid combination exists
    intermediate_size: int | None = None  # None: the teacher's intermediate/hidden ratio
    init: StudentInit = "teacher-layers"


@dataclass(frozen=True)
class PhaseConfig:
    epochs: float = 1.0
    lr: float = 1e-4


@dataclass(frozen=True)
class PipelineConfig:
    baseline: PhaseConfig = PhaseConfig(epochs=2.0, lr=1e-4)
    # TinyBERT-style hidden + attention matching (unit weights) before logit KD; 0 epochs
    # skips it. hidden_weight / attention_weight below weigh those terms in `distill`.
    intermediate: PhaseConfig = PhaseConfig(epochs=0.0, lr=1e-4)
    distill: PhaseConfig = PhaseConfig(epochs=2.0, lr=1e-4)
    finetune: PhaseConfig = PhaseConfig(epochs=0.0, lr=2e-5)
    batch_size: int = 32
    eval_batch_size: int = 256
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # Loss settings used when the search does not choose them.
    T: float = 4.0
    T_s: float = 4.0
    alpha: float = 0.7
    # "student": CE on softmax(z_s / T_s) as the seed writes it; "one": Hinton et al. 2015.
    hard_label_temperature: Literal["student", "one"] = "student"
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    latency_repeats: int = 20


Value = typing.TypeVar("Value", int, float, str)


@dataclass(frozen=True)
class SearchParam(typing.Generic[Value]):
    """One ``search`` entry: a range (``low``..``high``, optional ``step``, ``log``) or
    ``choices``; its values have the parameter's type (``SEARCHABLE[name].kind``)."""

    low: Value | None = None
    high: Value | None = None
    log: bool = False
    step: Value | None = None
    choices: tuple[Value, ...] | None = None


@dataclass(frozen=True)
class ObjectivesConfig:
    metrics: tuple[str, ...] = ("dev_accuracy", "flops_per_example")
    # Single-objective mode: upper bounds on compute, enforced as Optuna constraints.
    constraints: dict[str, float] = field(default_factory=dict)


OBJECTIVE_DIRECTIONS = {
    "dev_accuracy": "maximize", "flops_per_example": "minimize", "params": "minimize",
    "latency_ms": "minimize", "train_flops": "minimize",
}


@dataclass(frozen=True)
class SamplerConfig:
    # NSGA-II's first generation (population_size, default 50) is random: at 50 trials
    # an NSGA-II study is a random search.
    name: Literal["tpe", "gp", "nsga2", "random", "grid"] = "tpe"
    n_startup_trials: int = 10
    population_size: int | None = None


@dataclass(frozen=True)
class PrunerConfig:
    # "median": Optuna's MedianPruner in single-objective studies; in multi-objective
    # studies (where Optuna cannot prune) harness.search's rule: stop a trial whose dev
    # accuracy after an epoch is below the median of finished trials of its size there.
    name: Literal["median", "none"] = "median"
    n_startup_trials: int = 3
    n_warmup_epochs: int = 0


@dataclass(frozen=True)
class TrackingConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "kd-harness"
    entity: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"
    description: str = ""
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    pipeline: PipelineConfig = PipelineConfig()
    search: dict[str, SearchParam] = field(default_factory=dict)
    objectives: ObjectivesConfig = ObjectivesConfig()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    tracking: TrackingConfig = TrackingConfig()


@dataclass(frozen=True)
class Searchable:
    """A parameter the search may sample; where it does not, the trial takes the study
    file's value at ``path``. ``problem(value, study_config)`` says why a value is invalid
    (None: valid), for the fixed value and every value a search entry can produce."""

    path: str
    kind: type  # what Optuna samples it as: int, float or str
    problem: typing.Callable[[Any, StudyConfig], str | None]


def _above_zero(what: str):
    return lambda value, _: None if value > 0 else f"{what} must be > 0, got {value}"


def _not_negative(what: str):
    return lambda value, _: None if value >= 0 else f"{what} must be >= 0, got {value}"


def _unit_interval(value, _) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"alpha must lie in [0, 1], got {value}"


def _head_dim_multiple(value, study_config: StudyConfig) -> str | None:
    head_dim = study_config.student.head_dim
    return None if value % head_dim == 0 else (
        f"every hidden size must be a multiple of student.head_dim ({head_dim}), got {value}")


def _student_init(value, _) -> str | None:
    inits = typing.get_args(StudentInit)
    return None if value in inits else f"expected one of {list(inits)}, got {value!r}"


# Every searchable parameter, once. Adding one: an entry here, a TrialConfig field, its use.
# num_heads is not here: it is hidden_size / student.head_dim, so no invalid pair exists.
SEARCHABLE: dict[str, Searchable] = {
    "T": Searchable("pipeline.T", float, _above_zero("temperatures")),
    "T_s": Searchable("pipeline.T_s", float, _above_zero("temperatures")),
    "alpha": Searchable("pipeline.alpha", float, _unit_interval),
    "lr": Searchable("pipeline.distill.lr", float, _above_zero("learning rates")),
    "hidden_weight": Searchable("pipeline.hidden_weight", float, _not_negative("weights")),
    "attention_weight": Searchable("pipeline.attention_weight", float, _not_negative("weights")),
    "num_layers": Searchable("student.num_layers", int, _above_zero("layer counts")),
    "hidden_size": Searchable("student.hidden_size", int, _head_dim_multiple),
    "intermediate_size": Searchable("student.intermediate_size", int,
                                    _above_zero("intermediate sizes")),
    "init": Searchable("student.init", str, _student_init),
}


@dataclass(frozen=True)
class TrialConfig:
    """One trial's settings: every SEARCHABLE parameter (sampled, or the study file's) and
    the seed. The names are the same everywhere: Optuna params, stored attributes, W&B."""

    T: float
    T_s: float
    alpha: float
    lr: float  # of the distillation phase
    hidden_weight: float
    attention_weight: float
    num_layers: int
    hidden_size: int
    intermediate_size: int | None  # None: the teacher's intermediate/hidden ratio
    init: StudentInit
    seed: int


def default_trial_config(study_config: StudyConfig, **sampled) -> TrialConfig:
    """The study file's values of every searchable parameter, overridden by ``sampled``."""
    fixed = {name: fixed_value(study_config, p.path) for name, p in SEARCHABLE.items()}
    return TrialConfig(**{**fixed, "seed": study_config.seed, **sampled})


def fixed_value(study_config: StudyConfig, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), study_config)


def load_study_config(path: Path | str, overrides: typing.Sequence[str] = ()) -> StudyConfig:
    """Read a study file, apply ``key.path=value`` overrides, validate, freeze."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"study file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"study file {path}: expected a mapping of sections at the top level")
    for override in overrides:
        apply_override(raw, override)
    return study_config_from_dict(raw)


def study_config_from_dict(raw: dict) -> StudyConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"study: expected a mapping of sections, got {_describe(raw)}")
    search = raw.get("search", {})
    if not isinstance(search, dict):
        raise ConfigError(f"search: expected a mapping, got {_describe(search)}")
    # The search entries' value types depend on the parameter, so they are built apart.
    config = _build(StudyConfig, {k: v for k, v in raw.items() if k != "search"}, "")
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
        raise ConfigError(f"--set {override!r}: the value is not valid YAML ({error})") from error


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
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {_describe(value)}")
    return value


def _check_semantics(config: StudyConfig) -> None:
    for metric in config.objectives.metrics:
        if metric not in OBJECTIVE_DIRECTIONS:
            raise ConfigError(f"objectives.metrics: unknown metric {metric!r}; "
                              f"expected some of {sorted(OBJECTIVE_DIRECTIONS)}")
    if not config.objectives.metrics or config.objectives.metrics[0] != "dev_accuracy":
        raise ConfigError("objectives.metrics: the first objective must be dev_accuracy")
    for metric in config.objectives.constraints:
        if metric not in OBJECTIVE_DIRECTIONS or metric == "dev_accuracy":
            raise ConfigError(f"objectives.constraints.{metric}: expected a compute metric, one of "
                              f"{sorted(set(OBJECTIVE_DIRECTIONS) - {'dev_accuracy'})}")
    if config.teacher.source == "architecture" and config.teacher.architecture is None:
        raise ConfigError("teacher.architecture: required when teacher.source is 'architecture'")
    for searchable in SEARCHABLE.values():
        value = fixed_value(config, searchable.path)
        problem = None if value is None else searchable.problem(value, config)
        if problem:
            raise ConfigError(f"{searchable.path}: {problem}")
    if config.sampler.name == "grid" and any(p.choices is None for p in config.search.values()):
        raise ConfigError("sampler.name: grid needs every search entry given as choices")


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
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{path}: low and high must be finite numbers, got {low} and {high}")
    if low > high:
        raise ConfigError(f"{path}: low ({low}) is greater than high ({high})")
    if param.log and low <= 0:
        raise ConfigError(f"{path}.log: a log-scale range needs low > 0, got {low}")
    if param.step is not None and (not param.step > 0 or param.log):  # Optuna rejects both
        raise ConfigError(f"{path}.step: expected a step > 0 on a linear scale (no log), "
                          f"got {param.step}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
