"""What every trial of a generative study shares (``task: causal-lm`` or ``seq2seq``), built
once: the prompt/target data through the teacher's tokenizer, the teacher fine-tuned on the
targets (artifact ``lm-teacher``), its top-k next-token log-probabilities at every training
target token (artifact ``lm-top-k``: full distributions over the vocabulary would not fit),
for sequence-level KD its greedy outputs on the training prompts (``lm-pseudo-labels``) and
its top-k at their tokens, and its scores and generations on dev and test. Bad input fails
here, before any training."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from harness.artifacts import build_once
from harness.budget import check_equal_budgets
from harness.compute import ComputeCost, count_generated_token_flops, measure_compute
from harness.config import StudyConfig, kd_levels, student_inits
from harness.generative import (GenerativeData, GenerativeScores, GenerativeSplit,
                                greedy_targets, mean_prompt_length, score_generative,
                                teacher_top_k, tokenize_examples, with_targets)
from harness.generative_trial import fine_tune_teacher
from harness.models import (ModelError, check_teacher_source, hub_revision,
                            language_model_class, load_tokenizer, resolve_source, save_model,
                            source_config, tokenizer_id)
from harness.prompt_data import PromptTargetData, load_prompt_target_data
from harness.shared import teacher_fields
from harness.token_kd import TopK
from harness.train import precision, train_settings

log = logging.getLogger(__name__)

# Per generative task, the families of harness.models.FAMILIES it builds students from.
TASK_FAMILIES = {"causal-lm": ("gpt2", "llama", "qwen2", "mistral"), "seq2seq": ("t5",)}


@dataclass(frozen=True)
class GenerativeShared:
    task: str  # a key of TASK_FAMILIES
    texts: PromptTargetData
    data: GenerativeData  # tokenized through the teacher's tokenizer
    tokenizer: object
    pretrained_teacher: PreTrainedModel  # before fine-tuning, on CPU: what students copy
    teacher_key: str
    # Per KD level the study uses: the training examples the distilled arm learns, with the
    # teacher's top-k at each of their target tokens attached ("word": the data's targets;
    # "sequence": the teacher's greedy outputs in their place).
    distill_on: dict[str, GenerativeSplit]
    teacher_scores: dict[str, GenerativeScores]  # "dev", "test"
    teacher_generations: dict[str, list[list[int]]]  # greedy, per example
    teacher_cost: ComputeCost  # at a dev example of mean length (``example_cost``)
    teacher_flops_per_token: int
    device: torch.device
    cache: Path
    reused: dict[str, bool]


def prepare_generative_shared(study_config: StudyConfig, device: torch.device,
                              cache: Path) -> GenerativeShared:
    config = study_config.teacher
    check_teacher_source(config, study_config.task)
    texts = load_prompt_target_data(study_config.data)
    check_equal_budgets(study_config.pipeline, len(texts.splits["train"]))
    tokenizer = load_tokenizer(config)
    revision = hub_revision(config.source)
    task = study_config.task
    pretrained = load_generative_lm(config.source, "teacher.source", task, study_config.seed,
                                    revision, config.trust_remote_code)
    start = decoder_start(pretrained, study_config) if task == "seq2seq" else None
    splits = [tokenize_examples(tokenizer, texts.splits[name].prompts,
                                texts.splits[name].targets, study_config.data.max_length, start)
              for name in ("train", "select", "dev", "test")]
    data = GenerativeData(*splits, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    fields = {**teacher_fields(study_config, texts, tokenizer_id(tokenizer), revision),
              "task": task, "precision": precision(device)}
    artifact = build_once(cache, "lm-teacher", fields, lambda folder: _build_teacher(
        study_config, pretrained, tokenizer, data, device, folder))
    log.info("teacher %s: %s", artifact.key, "reused" if artifact.reused else "built")
    teacher = language_model_class(pretrained.config).from_pretrained(
        artifact.path / "model", use_safetensors=True).to(device).eval()
    reused = {"teacher": artifact.reused}
    k = min(study_config.generation.top_k, len(tokenizer))
    distill_on = {}
    for level in kd_levels(study_config):
        distill_on[level], built = _distillation_split(study_config, level, teacher,
                                                       artifact.key, k, data, device, cache)
        reused.update(built)
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    return GenerativeShared(
        task=task, texts=texts, data=data, tokenizer=tokenizer, pretrained_teacher=pretrained,
        teacher_key=artifact.key, distill_on=distill_on,
        teacher_scores={name: GenerativeScores(**metrics[name]) for name in ("dev", "test")},
        teacher_generations={name: metrics[f"{name}_generations"] for name in ("dev", "test")},
        teacher_cost=example_cost(teacher, data, device),
        teacher_flops_per_token=count_generated_token_flops(
            teacher, mean_prompt_length(data.dev), device),
        device=device, cache=cache, reused=reused)


def _distillation_split(study_config: StudyConfig, level: str, teacher: PreTrainedModel,
                        teacher_key: str, k: int, data: GenerativeData, device: torch.device,
                        cache: Path) -> tuple[GenerativeSplit, dict[str, bool]]:
    """The training split of ``level`` with the teacher's top-k attached (for "sequence",
    the teacher's greedy outputs on the training prompts first, artifact
    ``lm-pseudo-labels``, then its top-k at their tokens), and which artifacts were reused."""
    reused = {}
    batch_size = study_config.pipeline.eval_batch_size
    split, top_k_fields = data.train, {"teacher": teacher_key}
    if level == "sequence":
        # Batched generation's numbers can depend on which prompts share a batch.
        fields = {"teacher": teacher_key, "batch_size": batch_size}
        labels = build_once(cache, "lm-pseudo-labels", fields, lambda folder:
                            (folder / "generations.json").write_text(json.dumps(greedy_targets(
                                teacher, data.train, batch_size, device, data.pad_id,
                                data.eos_id, data.max_new_tokens))))
        reused["pseudo-labels"] = labels.reused
        generated = json.loads((labels.path / "generations.json").read_text())
        split = with_targets(data.train, generated, data.eos_id, study_config.data.max_length)
        top_k_fields["pseudo_labels"] = labels.key
    top = build_once(cache, "lm-top-k", {**top_k_fields, "k": k}, lambda folder: save_file(
        teacher_top_k(teacher, split, k, batch_size, device, data.pad_id).tensors(),
        str(folder / "top_k.safetensors")))
    reused[f"{level}-top-k"] = top.reused
    return split.with_teacher(TopK.from_tensors(
        {name: value.clone() for name, value in
         load_file(str(top.path / "top_k.safetensors")).items()})), reused


def load_generative_lm(source: str, key: str, task: str, seed: int,
                       revision: str | None = None,
                       trust_remote_code: bool = False) -> PreTrainedModel:
    """A checkpoint of a family ``task`` builds students from, with its LM head."""
    families = TASK_FAMILIES[task]
    model_config = source_config(source, key, trust_remote_code, task)
    if model_config.model_type not in families:
        raise ModelError(f"{key}: task: {task} needs a model of the families {list(families)}; "
                         f"got {model_config.model_type!r}")
    try:
        torch.manual_seed(seed)
        return language_model_class(model_config).from_pretrained(
            resolve_source(source, key), revision=revision, use_safetensors=True,
            trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelError(f"{key}: cannot load {source!r} as a {task} model "
                         f"({type(error).__name__}: {str(error)[:300]})") from error


def decoder_start(model: PreTrainedModel, study_config: StudyConfig) -> int:
    """An encoder-decoder teacher's decoder start token, once its students are known to be
    buildable from it."""
    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ModelError("teacher.source: the encoder-decoder's config names no "
                         "decoder_start_token_id, the first token its decoder reads")
    if ("teacher-layers" in student_inits(study_config)
            and config.d_kv * config.num_heads != config.d_model):
        # Students have hidden_size / student.head_dim heads of head_dim each.
        raise ModelError(f"student.init: teacher-layers needs the teacher's heads to split "
                         f"its width; its {config.num_heads} heads of {config.d_kv} do not "
                         f"make d_model {config.d_model} (as in t5-v1_1-small, "
                         "flan-t5-small); use student.init: random")
    return start


def example_cost(model: PreTrainedModel, data: GenerativeData, device: torch.device,
                 latency_repeats: int = 20) -> ComputeCost:
    """The cost of a dev example of mean length (rounded): a causal LM reads its prompt and
    target as one sequence; an encoder-decoder encodes the mean prompt and decodes the mean
    target."""
    def mean(lengths: torch.Tensor) -> int:
        return max(1, round(float(lengths.float().mean())))

    dev = data.dev
    if dev.decoder_start_id is None:
        return measure_compute(model, mean(dev.lengths()), device, latency_repeats)
    return measure_compute(model, mean(dev.prompt_lengths), device, latency_repeats,
                           decoder_len=mean(dev.target_lengths()))


def _build_teacher(study_config: StudyConfig, pretrained: PreTrainedModel, tokenizer,
                   data: GenerativeData, device: torch.device, folder: Path) -> None:
    config = study_config.teacher
    teacher = copy.deepcopy(pretrained)
    fine_tune_teacher(teacher, data, train_settings(config, config.epochs, config.lr,
                                                    study_config.seed),
                      device, study_config.pipeline.eval_batch_size)
    save_model(teacher, tokenizer, folder / "model")
    batch = study_config.pipeline.eval_batch_size
    metrics = {}
    for name, split in (("dev", data.dev), ("test", data.test)):
        scores, generated = score_generative(teacher, split, batch, device, data.pad_id,
                                             data.eos_id, data.max_new_tokens)
        metrics[name], metrics[f"{name}_generations"] = dataclasses.asdict(scores), generated
    (folder / "metrics.json").write_text(json.dumps(metrics))
