"""Tests for harness.models: the builtin teacher offline, student shapes and parameter
counts against a hand count, teacher-layers initialisation, saving for
``transformers.pipeline``, and every bad model source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from harness.config import ModelShape, TeacherConfig
from harness.models import (
    ModelError,
    build_student,
    check_teacher_source,
    hub_revision,
    load_saved_model,
    load_teacher,
    load_tokenizer,
    resolve_source,
    save_model,
    student_shape,
    teacher_layer_choice,
    tokenizer_id,
)

LABELS = ("rotten", "fresh")
TEXTS = ["a fine, moving film .", "dull and far too long", "not bad at all"]
TINY = ModelShape(num_layers=4, hidden_size=32, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TeacherConfig())


@pytest.fixture(scope="module")
def minilm(tokenizer):
    return load_teacher(TeacherConfig(), LABELS, tokenizer, seed=0)


@pytest.fixture(scope="module")
def tiny_teacher(tokenizer):
    """A random-init 4-layer teacher of width 32, weights spread so outputs vary by text."""
    teacher = load_teacher(TeacherConfig(source="architecture", architecture=TINY), LABELS,
                           tokenizer, seed=0)
    spread(teacher, seed=1)
    return teacher


def spread(model, seed: int) -> None:
    # Fresh BERT weights (std 0.02) make every text's logits nearly equal; wider ones don't.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def hand_param_count(vocab: int, positions: int, types: int, layers: int, hidden: int,
                     intermediate: int, labels: int) -> int:
    embeddings = (vocab + positions + types) * hidden + 2 * hidden  # + LayerNorm
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden  # Q, K, V, O + LayerNorm
    ffn = (hidden * intermediate + intermediate) + (intermediate * hidden + hidden) + 2 * hidden
    pooler = hidden * hidden + hidden
    classifier = hidden * labels + labels
    return embeddings + layers * (attention + ffn) + pooler + classifier


def logits(model, tokenizer, texts) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def save_tiny_student(tiny_teacher, tokenizer, folder: Path):
    student, _ = build_student(tiny_teacher, ModelShape(1, 32, 2, 64), "teacher-layers", seed=0)
    save_model(student, tokenizer, folder)
    return student


# --- the builtin teacher ---------------------------------------------------------------------

def test_builtin_teacher_offline(minilm, tokenizer):
    assert isinstance(minilm, transformers.BertForSequenceClassification)
    config = minilm.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (6, 384, 12, 1536)
    assert config.num_labels == 2 and config.id2label == {0: "rotten", 1: "fresh"}
    assert config.label2id == {"rotten": 0, "fresh": 1}
    params = sum(p.numel() for p in minilm.parameters())
    assert params == hand_param_count(30522, 512, 2, 6, 384, 1536, 2)
    assert round(params / 1e6, 1) == 22.7
    assert len(tokenizer) == config.vocab_size == 30522
    assert tokenizer("a film")["input_ids"][0] == tokenizer.cls_token_id


def test_builtin_teacher_needs_no_network(tokenizer, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_teacher_source(TeacherConfig())
    assert load_tokenizer(TeacherConfig()).get_vocab() == tokenizer.get_vocab()
    assert Path(resolve_source("builtin:minilm-l6"), "model.safetensors").is_file()


def test_teacher_head_is_seeded(tokenizer):
    one = load_teacher(TeacherConfig(source="architecture", architecture=TINY), LABELS,
                       tokenizer, seed=3)
    two = load_teacher(TeacherConfig(source="architecture", architecture=TINY), LABELS,
                       tokenizer, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(),
                                                  two.state_dict().values()))


def test_architecture_teacher_is_a_bert_of_that_size(tokenizer):
    arch = ModelShape(num_layers=3, hidden_size=48, num_heads=3, intermediate_size=96)
    teacher = load_teacher(TeacherConfig(source="architecture", architecture=arch,
                                         tokenizer="builtin:minilm-l6"), LABELS, tokenizer, seed=0)
    assert isinstance(teacher, transformers.BertForSequenceClassification)
    config = teacher.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (3, 48, 3, 96)
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id
    assert config.id2label == {0: "rotten", 1: "fresh"}
    assert sum(p.numel() for p in teacher.parameters()) == hand_param_count(
        len(tokenizer), config.max_position_embeddings, config.type_vocab_size, 3, 48, 96, 2)


def test_architecture_teacher_uses_the_configured_tokenizer(tmp_path, tiny_teacher, tokenizer):
    save_tiny_student(tiny_teacher, tokenizer, tmp_path / "student")
    config = TeacherConfig(source="architecture", architecture=TINY,
                           tokenizer=str(tmp_path / "student"))
    assert load_tokenizer(config).get_vocab() == tokenizer.get_vocab()


def test_tokenizer_id_is_stable_and_content_based(tokenizer, tmp_path, tiny_teacher):
    save_tiny_student(tiny_teacher, tokenizer, tmp_path / "student")
    reloaded = load_tokenizer(TeacherConfig(source=str(tmp_path / "student")))
    assert tokenizer_id(reloaded) == tokenizer_id(tokenizer) == tokenizer_id(tokenizer)
    reloaded.add_tokens(["[NEWTOKEN]"])
    assert tokenizer_id(reloaded) != tokenizer_id(tokenizer)


# --- student shapes and parameter counts ----------------------------------------------------

def test_student_shape_derivations(minilm):
    assert student_shape(minilm, 2, 384, 32, None) == ModelShape(2, 384, 12, 1536)
    assert student_shape(minilm, 4, 128, 32, None) == ModelShape(4, 128, 4, 512)  # ratio 4
    assert student_shape(minilm, 1, 96, 16, 200) == ModelShape(1, 96, 6, 200)


def test_student_shape_follows_the_teachers_ffn_ratio(tokenizer):
    arch = ModelShape(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=48)
    teacher = load_teacher(TeacherConfig(source="architecture", architecture=arch), LABELS,
                           tokenizer, seed=0)
    assert student_shape(teacher, 1, 64, 16, None) == ModelShape(1, 64, 4, 96)  # ratio 1.5


@pytest.mark.parametrize("shape", [ModelShape(1, 32, 2, 64), ModelShape(2, 64, 4, 128),
                                   ModelShape(3, 48, 1, 100)])
def test_student_dimensions_and_parameter_count(minilm, shape):
    student, init = build_student(minilm, shape, "random", seed=0)
    assert init == "random"
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (shape.num_layers, shape.hidden_size, shape.num_heads,
                                          shape.intermediate_size)
    # Shares the teacher's vocabulary, positions and labels.
    assert config.vocab_size == 30522 and config.id2label == minilm.config.id2label
    assert len(student.bert.encoder.layer) == shape.num_layers
    assert student.bert.embeddings.word_embeddings.weight.shape == (30522, shape.hidden_size)
    assert sum(p.numel() for p in student.parameters()) == hand_param_count(
        30522, 512, 2, shape.num_layers, shape.hidden_size, shape.intermediate_size, 2)
    # The teacher's own config is left alone.
    assert minilm.config.num_hidden_layers == 6 and minilm.config.hidden_size == 384


def test_student_build_is_seeded(tiny_teacher):
    one, _ = build_student(tiny_teacher, ModelShape(2, 16, 2, 32), "random", seed=5)
    two, _ = build_student(tiny_teacher, ModelShape(2, 16, 2, 32), "random", seed=5)
    three, _ = build_student(tiny_teacher, ModelShape(2, 16, 2, 32), "random", seed=6)
    pairs = list(zip(one.state_dict().values(), two.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(one.classifier.weight, three.classifier.weight)


# --- teacher-layers initialisation ----------------------------------------------------------

def test_teacher_layer_choice():
    assert teacher_layer_choice(2, 6) == [0, 3]
    assert teacher_layer_choice(3, 6) == [0, 2, 4]
    assert teacher_layer_choice(1, 6) == [0]
    assert teacher_layer_choice(6, 6) == [0, 1, 2, 3, 4, 5]
    assert teacher_layer_choice(4, 6) == [0, 1, 3, 4]
    for n in range(1, 13):
        chosen = teacher_layer_choice(n, 12)
        assert len(set(chosen)) == n and chosen == sorted(chosen) and chosen[-1] < 12


def assert_copied(teacher, student) -> None:
    """Every encoder tensor of the student equals the teacher's (same name, or the chosen
    layer's); the classification head is the student's own."""
    chosen = teacher_layer_choice(student.config.num_hidden_layers,
                                  teacher.config.num_hidden_layers)
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    layer_prefix = "bert.encoder.layer."
    names = set()
    for name, tensor in student_state.items():
        if name.startswith(layer_prefix):
            index, rest = name[len(layer_prefix):].split(".", 1)
            source = f"{layer_prefix}{chosen[int(index)]}.{rest}"
        else:
            source = name
        if not name.startswith("classifier."):
            assert torch.equal(tensor, teacher_state[source]), name
        names.add(name.split(".")[1] if name.startswith("bert.") else name.split(".")[0])
    assert {"embeddings", "encoder", "pooler", "classifier"} <= names


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_teacher_layers_copies_exactly_the_chosen_tensors(tiny_teacher, tokenizer, num_layers):
    shape = ModelShape(num_layers, 32, 2, 64)
    student, init = build_student(tiny_teacher, shape, "teacher-layers", seed=0)
    assert init == "teacher-layers"
    assert_copied(tiny_teacher, student)
    assert not torch.equal(student.classifier.weight, tiny_teacher.classifier.weight)
    if num_layers == 4:  # as many layers as the teacher: the same encoder function
        inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            assert torch.allclose(student.eval().bert(**inputs).pooler_output,
                                  tiny_teacher.eval().bert(**inputs).pooler_output)


def test_teacher_layers_students_of_two_seeds_share_the_encoder_not_the_head(tiny_teacher):
    one, _ = build_student(tiny_teacher, ModelShape(2, 32, 2, 64), "teacher-layers", seed=0)
    two, _ = build_student(tiny_teacher, ModelShape(2, 32, 2, 64), "teacher-layers", seed=1)
    assert torch.equal(one.bert.encoder.layer[1].output.dense.weight,
                       two.bert.encoder.layer[1].output.dense.weight)
    assert not torch.equal(one.classifier.weight, two.classifier.weight)


def test_teacher_layers_from_the_builtin_teacher(minilm):
    student, init = build_student(minilm, ModelShape(2, 384, 12, 1536), "teacher-layers", seed=0)
    assert init == "teacher-layers"
    assert_copied(minilm, student)
    # Copies, not shared storage: training the student leaves the teacher alone.
    assert (student.bert.encoder.layer[1].output.dense.weight.data_ptr()
            != minilm.bert.encoder.layer[3].output.dense.weight.data_ptr())


@pytest.mark.parametrize("shape", [
    ModelShape(2, 16, 1, 32),  # narrower
    ModelShape(2, 32, 4, 64),  # other head count
    ModelShape(2, 32, 2, 96),  # other FFN width
    ModelShape(5, 32, 2, 64),  # more layers than the teacher
])
def test_teacher_layers_falls_back_to_random(tiny_teacher, shape):
    student, init = build_student(tiny_teacher, shape, "teacher-layers", seed=0)
    assert init == "random"
    random_student, _ = build_student(tiny_teacher, shape, "random", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                  random_student.state_dict().values()))


def test_random_init_does_not_copy(tiny_teacher):
    student, init = build_student(tiny_teacher, ModelShape(2, 32, 2, 64), "random", seed=0)
    assert init == "random"
    assert not torch.equal(student.bert.embeddings.word_embeddings.weight,
                           tiny_teacher.bert.embeddings.word_embeddings.weight)


# --- saving for transformers.pipeline ---------------------------------------------------------

def test_saved_student_loads_in_a_pipeline_with_the_same_logits(tiny_teacher, tokenizer,
                                                                  tmp_path):
    folder = tmp_path / "student"
    student = save_tiny_student(tiny_teacher, tokenizer, folder)
    before = logits(student, tokenizer, TEXTS)
    assert not torch.allclose(before[0], before[1], atol=1e-3)  # outputs depend on the text
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))

    pipe = transformers.pipeline("text-classification", model=str(folder), device="cpu")
    assert torch.allclose(logits(pipe.model, pipe.tokenizer, TEXTS), before, atol=1e-5)
    # The pipeline's own preprocessing gives the same raw scores, labelled by name.
    for text, row in zip(TEXTS, pipe(TEXTS, top_k=None, function_to_apply="none")):
        single = logits(student, tokenizer, [text])[0]
        scores = {item["label"]: item["score"] for item in row}
        assert set(scores) == set(LABELS)
        assert scores["rotten"] == pytest.approx(float(single[0]), abs=1e-5)
        assert scores["fresh"] == pytest.approx(float(single[1]), abs=1e-5)
    assert torch.allclose(logits(load_saved_model(folder), tokenizer, TEXTS), before, atol=1e-5)


def test_a_saved_folder_is_a_teacher_source(tiny_teacher, tokenizer, tmp_path):
    folder = tmp_path / "student"
    student = save_tiny_student(tiny_teacher, tokenizer, folder)
    check_teacher_source(TeacherConfig(source=str(folder)))
    loaded = load_teacher(TeacherConfig(source=str(folder)), LABELS, tokenizer, seed=0)
    assert torch.allclose(logits(loaded, tokenizer, TEXTS), logits(student, tokenizer, TEXTS),
                          atol=1e-5)


def test_only_hub_teachers_have_a_revision(saved_folder):
    # Builtins carry their package version and folders their content hash instead.
    for source in ("builtin:minilm-l6", str(saved_folder), "architecture"):
        assert hub_revision(TeacherConfig(source=source, architecture=TINY).source) is None


def test_a_home_relative_folder_is_expanded(tiny_teacher, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_tiny_student(tiny_teacher, tokenizer, tmp_path / "student")
    assert resolve_source("~/student") == str(tmp_path / "student")
    teacher = load_teacher(TeacherConfig(source="~/student"), LABELS, tokenizer, seed=0)
    assert teacher.config.hidden_size == 32


# --- bad model sources ---------------------------------------------------------------------

@pytest.fixture
def saved_folder(tiny_teacher, tokenizer, tmp_path) -> Path:
    folder = tmp_path / "model"
    save_tiny_student(tiny_teacher, tokenizer, folder)
    return folder


def every_loader(source: str):
    config = TeacherConfig(source=source)
    return [lambda: resolve_source(source), lambda: check_teacher_source(config),
            lambda: load_tokenizer(config), lambda: hub_revision(config.source),
            lambda: load_teacher(config, LABELS, None, seed=0)]


def assert_all_refuse(source: str, pattern: str) -> None:
    for load in every_loader(source):
        with pytest.raises(ModelError, match=pattern):
            load()


def test_folder_without_weights(saved_folder):
    (saved_folder / "model.safetensors").unlink()
    assert_all_refuse(str(saved_folder), "has no safetensors weights")


def test_folder_with_only_pickled_weights_is_refused(saved_folder, tiny_teacher):
    (saved_folder / "model.safetensors").unlink()
    torch.save(tiny_teacher.state_dict(), saved_folder / "pytorch_model.bin")
    assert_all_refuse(str(saved_folder), r"pytorch_model\.bin.*pickle weights are never loaded")


def test_folder_without_tokenizer_files(saved_folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (saved_folder / name).unlink(missing_ok=True)
    assert_all_refuse(str(saved_folder), "has no tokenizer files")


def test_folder_without_config(saved_folder):
    (saved_folder / "config.json").unlink()
    assert_all_refuse(str(saved_folder), "has no config.json")


@pytest.mark.parametrize("source", ["/nonexistent/kd-harness/model", "./no-such-model-folder"])
def test_missing_folder(source):
    assert_all_refuse(source, "does not exist")


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert_all_refuse(str(tmp_path / "model.safetensors"), "does not exist")


def test_an_architecture_teachers_tokenizer_may_be_a_tokenizer_only_folder(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = TeacherConfig(source="architecture", architecture=TINY,
                           tokenizer=str(tmp_path / "tokenizer"))
    assert tokenizer_id(load_tokenizer(config)) == tokenizer_id(tokenizer)
    with pytest.raises(ModelError, match=r"teacher\.tokenizer: .* does not exist"):
        load_tokenizer(TeacherConfig(source="architecture", architecture=TINY,
                                     tokenizer=str(tmp_path / "absent")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"teacher\.tokenizer: .* has no tokenizer files"):
        load_tokenizer(TeacherConfig(source="architecture", architecture=TINY,
                                     tokenizer=str(tmp_path / "empty")))


def test_unknown_builtin():
    assert_all_refuse("builtin:bert-huge", r"unknown builtin 'builtin:bert-huge'.*minilm-l6")


def test_unreachable_hub_model_names_the_offline_alternatives(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in every_loader("nobody-here/no-such-model")[1:]:
        with pytest.raises(ModelError, match="builtin:minilm-l6 or a local model folder"):
            load()


def test_tokenizer_id_is_stable_across_calls_and_sees_normalisation():
    from harness.config import TeacherConfig
    from harness.models import load_tokenizer, tokenizer_id

    tokenizer = load_tokenizer(TeacherConfig())
    before = tokenizer_id(tokenizer)
    tokenizer(["some text"], truncation=True, max_length=8, padding="max_length")
    assert tokenizer_id(tokenizer) == before  # per-call truncation state is not identity
    tokenizer.backend_tokenizer.normalizer = None  # a different normalisation is
    assert tokenizer_id(tokenizer) != before
