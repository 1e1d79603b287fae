"""Study and trial configuration: one frozen dataclass per study-file section, the table
of searchable parameters, and the trial configuration derived from them.

``harness.study_file`` reads a study file into a validated ``StudyConfig``; nothing past it
sees a raw dict.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """Bad study configuration; the message names the key path."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin:rotten-tomatoes"  # builtin name, hub dataset name or local file
    config_name: str | None = None  # hub dataset configuration
    text_column: str = "text"  # the one-column form of text_columns
    text_columns: tuple[str, ...] | None = None  # [first, second] for sentence pairs
    label_column: str = "label"
    train_split: str = "train"
    dev_split: str | None = "validation"  # None: carve a seeded split out of train
    test_split: str | None = "test"
    max_length: int = 64
    max_train_examples: int | None = None  # seeded subsample, for quick studies
    max_eval_examples: int | None = None  # of the select, dev and test splits each
    split_seed: int = 0
    # Rows of one group (a movie, an author) never land in two splits; the builtin data's
    # group is the movie, so this is for other sources.
    group_column: str | None = None
    # The share of the training rows carved out (seeded, by group) as the select split that
    # chooses checkpoints, so dev, on which the front is chosen, scores each final model
    # once. 0: checkpoints are chosen on dev, as studies made before the select split did.
    select_fraction: float = 0.1
    # task: causal-lm and seq2seq: the prompt the model reads and the target it learns to write
    prompt_column: str = "prompt"
    target_column: str = "target"

    @property
    def columns(self) -> tuple[str, ...]:
        """The text column, or the two of a sentence pair."""
        return self.text_columns or (self.text_column,)


@dataclass(frozen=True)
class ModelShape:
    """An encoder's size: every student's, and ``teacher.architecture`` (a random-init
    teacher for tiny test studies)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class ScheduleConfig:
    """How long a section's phases train and on which weights they end: a budget of
    optimiser steps (a phase's ``epochs``, never fewer than ``min_steps``, so a small dataset
    gets as many steps as a large one), an evaluation on the select split every
    ``eval_every`` steps (None: every epoch), a stop after ``patience`` evaluations without
    a better select accuracy (None: the whole budget) and, with ``keep_best``, the weights of
    the best evaluation.
    The defaults are the epoch schedules of studies made before schedules existed."""

    min_steps: int = 0
    eval_every: int | None = None
    patience: int | None = None
    keep_best: bool = False


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser settings the ``teacher`` and ``pipeline`` sections both have (each its
    own: a change to the students' settings never retrains the teacher). The sections
    extend it rather than nest it, so that the file keys stay flat (``teacher.lr`` beside
    ``teacher.batch_size``) and so do the stored study configurations that studies are
    fingerprinted by; ``harness.train.train_settings`` turns it into a phase's settings."""

    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    schedule: ScheduleConfig = ScheduleConfig()


@dataclass(frozen=True)
class TeacherConfig(OptimizerConfig):
    """The teacher and its one-time fine-tune."""

    source: str = "builtin:minilm-l6"  # builtin name, hub model name, local folder or "architecture"
    architecture: ModelShape | None = None  # random-init teacher for tiny test studies
    tokenizer: str = "builtin:minilm-l6"  # used only by an architecture teacher
    epochs: float = 2.0
    lr: float = 5e-5
    trust_remote_code: bool = False
    # False: the source is a classifier already fine-tuned on the task, used as it is (its
    # head's labels matched to the data's by name, or through label_map: its label -> the
    # data's); the optimiser settings then go unused.
    fine_tune: bool = True
    label_map: dict[str, str] | None = None
    # K > 1: K fine-tunes on seeds seed, seed + 1, ...; their probabilities averaged are the
    # teacher's (its logits: their log). Member 0, the seed's, runs where a model is needed.
    ensemble: int = 1


StudentInit = Literal["teacher-layers", "teacher-pruned", "random", "baseline"]
# What a generative student's distilled arm learns from (Kim & Rush 2016): the teacher's
# distribution at each token of the data's targets, or at each token of the teacher's own
# greedy outputs, which replace the targets (alpha = 0: pseudo-labels alone).
KDLevel = Literal["word", "sequence"]
RESIZED_TEACHER = "resized-teacher"  # student.source: the teacher's config at the student's size


@dataclass(frozen=True)
class StudentConfig:
    """The student's source, size and initialisation when the search does not choose them.

    ``source``: ``resized-teacher``, or a pre-trained smaller checkpoint (local folder or hub
    name) trained as it is, with its own tokenizer; the size fields apply to the first only.
    """

    source: str = RESIZED_TEACHER
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
class PipelineConfig(OptimizerConfig):
    """Every student phase's settings (and the label-only baseline's): each phase's epochs
    and learning rate; the shared optimiser settings, whose ``schedule`` sets every phase's
    budget, evaluations, stop and kept weights; the loss settings."""

    baseline: PhaseConfig = PhaseConfig(epochs=2.0, lr=1e-4)
    # TinyBERT-style hidden + attention matching (unit weights) before logit KD; 0 epochs
    # skips it. hidden_weight / attention_weight below weigh those terms in `distill`.
    intermediate: PhaseConfig = PhaseConfig(epochs=0.0, lr=1e-4)
    distill: PhaseConfig = PhaseConfig(epochs=2.0, lr=1e-4)
    finetune: PhaseConfig = PhaseConfig(epochs=0.0, lr=2e-5)
    eval_batch_size: int = 256
    # Loss settings used when the search does not choose them.
    T: float = 4.0
    T_s: float = 4.0
    alpha: float = 0.7
    # "one" (Hinton et al. 2015): the label term is CE on softmax(z_s), so alpha is the
    # teacher's weight and T_s enters the KD term alone. "student": CE on softmax(z_s / T_s),
    # the seed's formula, where the loss is one CE against a teacher-label blend on logits
    # scaled by 1 / T_s (README, "the loss"): alpha is not the teacher's weight there.
    hard_label_temperature: Literal["one", "student"] = "one"
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    latency_repeats: int = 20
    # "fixed": each phase's lr as given. "width": the phase's lr is the rate at the teacher's
    # width, scaled by teacher width / student width (Adam's per-weight step in a narrower
    # network moves its outputs less; muP scales hidden-layer rates the same way), and twice
    # that for a student from random weights, which has further to go. A searched ``lr`` is
    # used as sampled.
    lr_rule: Literal["fixed", "width"] = "fixed"
    # "matched": the distilled arm's phases together train as many optimiser steps as the
    # baseline (harness.budget refuses a study that breaks it); "unequal" allows more or
    # fewer, and every trial then stores budget_matched: false.
    budget: Literal["matched", "unequal"] = "matched"


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


# The first objective is the student's quality on dev; the others (and constraints) compute.
QUALITY_OBJECTIVES = ("dev_accuracy", "dev_f1", "dev_mcc", "dev_macro_f1")
OBJECTIVE_DIRECTIONS = {
    **{metric: "maximize" for metric in QUALITY_OBJECTIVES},
    "flops_per_example": "minimize", "params": "minimize", "latency_ms": "minimize",
    "train_flops": "minimize",
    # generative tasks: forward FLOPs of one generated token at the mean prompt length
    "flops_per_token": "minimize",
    # The int8 ONNX file's size: deterministic, so searchable (deploy.export: every-trial);
    # measured deployed latency is not, and stays a reported axis.
    "int8_bytes": "minimize",
    # FLOPs per example as a share of the teacher's on the study's own data: a bound that
    # travels between datasets of other text lengths, where a FLOPs count does not.
    "flops_share": "minimize",
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
    # studies (where Optuna cannot prune) harness.sweep.search's rule: stop a trial whose
    # select accuracy after an evaluation is below the median of finished trials of its
    # size there.
    name: Literal["median", "none"] = "median"
    n_startup_trials: int = 3
    # Evaluations (not epochs: a schedule's eval_every may evaluate more often) before
    # a trial may be stopped; the file key keeps the name studies were written with.
    n_warmup_epochs: int = 0


@dataclass(frozen=True)
class TrackingConfig:
    # Unset here and on the command line: W&B's WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY.
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str | None = None  # None: $WANDB_PROJECT, else "kd-harness"
    entity: str | None = None  # None: $WANDB_ENTITY
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfirmConfig:
    """After the search, the front's configurations are trained again on ``seeds`` fresh seeds
    each (0: no confirmation), each run with its own label-only baseline; their means are
    over those fresh runs alone (the search run was chosen as the best of many, so it is
    shown beside them, never averaged in). Then, round after round, every configuration the
    front on the means would hold without fresh runs is confirmed too, until that front
    holds confirmed configurations only or ``max_rounds`` rounds have run.
    ``best_per_size`` adds the best k search trials (on dev) of every student size."""

    seeds: int = 0
    best_per_size: int = 0
    max_rounds: int = 3


@dataclass(frozen=True)
class TransferConfig:
    """A teacher-labelled transfer set for the distillation phase (Tang et al. 2019,
    "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"): ``copies``
    augmented copies of every training example, made by seeded rules on its word-pieces
    (each replaced, with ``neighbour_prob``, by one of its ``neighbours`` nearest word-pieces
    in the teacher's input-embedding space, as TinyBERT's augmentation does with GloVe;
    then each replaced by the mask token with ``mask_prob``; with ``ngram_prob``, only a
    random n-gram of 1 to ``max_ngram`` of them kept, single texts only), and the texts of a
    local ``unlabeled`` file (CSV/JSON/JSONL/Parquet with the data's text columns). The
    teacher labels them once; on them the student learns from the KD term alone.

    ``online``: instead, consistent teaching (Beyer et al. 2022): every batch of the
    distillation phase and of its baseline is replaced by a fresh view made by the same
    rules (neighbours and masks; no n-grams, views keep their length), the teacher scoring
    the very view the student reads (``harness.transfer.OnlineViews``)."""

    copies: int = 0
    mask_prob: float = 0.1
    ngram_prob: float = 0.25
    max_ngram: int = 5
    unlabeled: str | None = None
    neighbour_prob: float = 0.0
    neighbours: int = 15
    online: bool = False


@dataclass(frozen=True)
class DeployConfig:
    """The students as they are shipped (``harness.deploy``): ONNX export checked against
    torch, ONNX Runtime's dynamic int8, both scored and timed on the CPU. ``export``:
    ``front``, the front's saved students once the study is over, in one process (timed
    alone); ``every-trial``, also every complete trial's student within its trial (untimed;
    makes ``int8_bytes`` an objective); ``none``."""

    export: Literal["front", "every-trial", "none"] = "front"
    latency_repeats: int = 50  # batch-1 runs per timing (the median and p90 over them)


@dataclass(frozen=True)
class GenerationConfig:
    """Token-level distillation of a generative model (``task: causal-lm`` or ``seq2seq``,
    ``harness.token_kd``):
    the teacher's ``top_k`` next-token log-probabilities cached per target token; the KL
    forward, KL(q_T || p_{T_s}), or with ``reverse_kl`` KL(p_{T_s} || q_T); ``kd_level``
    (searchable) the targets the distilled arm learns (``KDLevel``)."""

    top_k: int = 20
    reverse_kl: bool = False
    kd_level: KDLevel = "word"


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"
    description: str = ""
    # "classification": texts (or pairs) to classes. "causal-lm": a decoder-only LM learns
    # to write each prompt's target (harness.generative); dev_accuracy is its exact match.
    # "seq2seq": the same with an encoder-decoder (T5) that encodes the prompt.
    task: Literal["classification", "causal-lm", "seq2seq"] = "classification"
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    pipeline: PipelineConfig = PipelineConfig()
    search: dict[str, SearchParam] = field(default_factory=dict)
    objectives: ObjectivesConfig = ObjectivesConfig()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    transfer: TransferConfig = TransferConfig()
    deploy: DeployConfig = DeployConfig()
    generation: GenerationConfig = GenerationConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def generative(self) -> bool:
        """A study of prompts and targets (causal-lm, seq2seq), not of classes."""
        return self.task != "classification"


@dataclass(frozen=True)
class Searchable:
    """A parameter the search may sample; where it does not, the trial takes the study
    file's value at ``path``. ``problem(value, study_config)`` says why a value is invalid
    (None: valid), for the fixed value and every value a search entry can produce."""

    path: str
    kind: type  # what Optuna samples it as: int, float or str
    problem: typing.Callable[[Any, StudyConfig], str | None]
    resized_only: bool = False  # a size of the resized teacher: not sampled for a checkpoint


def above_zero(what: str):
    return lambda value, _: None if value > 0 else f"{what} must be > 0, got {value}"


def not_negative(what: str):
    return lambda value, _: None if value >= 0 else f"{what} must be >= 0, got {value}"


def in_unit_interval(what: str):
    return lambda value, _: None if 0 <= value <= 1 else f"{what} must lie in [0, 1], got {value}"


def _head_dim_multiple(value, study_config: StudyConfig) -> str | None:
    head_dim = study_config.student.head_dim
    return None if value > 0 and value % head_dim == 0 else (
        f"every hidden size must be a positive multiple of student.head_dim ({head_dim}), "
        f"got {value}")


def _named(value, _) -> str | None:
    return None if value.strip() else "expected a folder, hub name or resized-teacher, got ''"


def _student_init(value, _) -> str | None:
    inits = typing.get_args(StudentInit)
    return None if value in inits else f"expected one of {list(inits)}, got {value!r}"


def _kd_level(value, study_config: StudyConfig) -> str | None:
    levels = typing.get_args(KDLevel)
    if value not in levels:
        return f"expected one of {list(levels)}, got {value!r}"
    if value != "word" and not study_config.generative:
        return "sequence-level KD distils generated targets: for task: causal-lm or seq2seq"
    return None


# Every searchable parameter, once. Adding one: an entry here, a TrialConfig field, its use.
# num_heads is not here: it is hidden_size / student.head_dim, so no invalid pair exists.
SEARCHABLE: dict[str, Searchable] = {
    "T": Searchable("pipeline.T", float, above_zero("temperatures")),
    "T_s": Searchable("pipeline.T_s", float, above_zero("temperatures")),
    "alpha": Searchable("pipeline.alpha", float, in_unit_interval("alpha")),
    "lr": Searchable("pipeline.distill.lr", float, above_zero("learning rates")),
    "hidden_weight": Searchable("pipeline.hidden_weight", float, not_negative("weights")),
    "attention_weight": Searchable("pipeline.attention_weight", float, not_negative("weights")),
    "student_source": Searchable("student.source", str, _named),
    "num_layers": Searchable("student.num_layers", int, above_zero("layer counts"), True),
    "hidden_size": Searchable("student.hidden_size", int, _head_dim_multiple, True),
    "intermediate_size": Searchable("student.intermediate_size", int,
                                    above_zero("intermediate sizes"), True),
    "init": Searchable("student.init", str, _student_init),
    "transfer_copies": Searchable("transfer.copies", int, not_negative("copy counts")),
    "kd_level": Searchable("generation.kd_level", str, _kd_level),
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
    student_source: str  # RESIZED_TEACHER, or a pre-trained checkpoint
    transfer_copies: int  # augmented copies of each training example distilled on
    kd_level: KDLevel  # a generative student's: the data's targets or the teacher's outputs
    seed: int


def default_trial_config(study_config: StudyConfig, **sampled) -> TrialConfig:
    """The study file's values of every searchable parameter, overridden by ``sampled``."""
    fixed = {name: fixed_value(study_config, p.path) for name, p in SEARCHABLE.items()}
    return TrialConfig(**{**fixed, "seed": study_config.seed, **sampled})


def fixed_value(study_config: StudyConfig, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), study_config)


def student_sources(study_config: StudyConfig) -> tuple[str, ...]:
    """The pre-trained checkpoints a trial of the study may start a student from."""
    entry = study_config.search.get("student_source")
    sources = entry.choices if entry is not None else (study_config.student.source,)
    return tuple(source for source in dict.fromkeys(sources) if source != RESIZED_TEACHER)


def most_transfer_copies(study_config: StudyConfig) -> int:
    """The most augmented copies a trial of the study may distil on."""
    entry = study_config.search.get("transfer_copies")
    if entry is None:
        return study_config.transfer.copies
    return max(entry.choices) if entry.choices is not None else entry.high


def student_inits(study_config: StudyConfig) -> tuple[str, ...]:
    """The inits a trial of the study may ask for."""
    entry = study_config.search.get("init")
    return entry.choices if entry is not None else (study_config.student.init,)


def kd_levels(study_config: StudyConfig) -> tuple[str, ...]:
    """The KD levels a trial of the study may ask for."""
    entry = study_config.search.get("kd_level")
    return entry.choices if entry is not None else (study_config.generation.kd_level,)


def matching_keys(study_config: StudyConfig) -> list[str]:
    """The keys that make some phase match hidden states or attention maps, which needs the
    teacher's and the student's tokens to be the same."""
    pipeline, search = study_config.pipeline, study_config.search
    keys = [f"pipeline.{name}" for name in ("hidden_weight", "attention_weight")
            if getattr(pipeline, name) > 0 and name not in search]
    keys += [f"search.{name}" for name in ("hidden_weight", "attention_weight")
             if name in search and max(search[name].choices or (search[name].high,)) > 0]
    return keys + (["pipeline.intermediate.epochs"] if pipeline.intermediate.epochs > 0 else [])
