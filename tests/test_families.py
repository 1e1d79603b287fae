"""Encoder families, sentence pairs and pre-trained students with their own tokenizer, all
offline: tiny random-weight checkpoints of each family saved to local folders
(``tests/families.py``), a pair dataset written here, and ``python -m harness.study``'s
``main`` run on them as a user would."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import transformers
import yaml

from analysis.pareto import main as pareto_main
from harness.config import ModelShape, TeacherConfig, default_trial_config
from harness.models import (FAMILIES, ModelError, build_student, check_teacher_source,
                            load_pretrained, load_source_tokenizer, load_teacher, shape_of,
                            student_shape, teacher_layer_choice)
from harness.pipeline import run_trial
from harness.shared import prepare_shared
from harness.study import main
from harness.study_file import load_study_config
from harness.sweep.storage import open_storage

from .conftest import SMOKE
from .families import CONFIGS, DECODER_FAMILIES, bpe_tokenizer, save_tiny_model
from .test_pipeline import assert_saved_student_reproduces


@pytest.fixture(scope="module")
def bpe(smoke_shared):
    return bpe_tokenizer(smoke_shared.data.train.texts)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {family: save_tiny_model(family, folder / family, bpe) for family in CONFIGS}


def write_study(path: Path, **sections) -> Path:
    """The smoke study with ``sections`` merged in (one level deep)."""
    raw = yaml.safe_load(SMOKE.read_text())
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw))
    return path


def run_study(tmp_path: Path, study: Path, name: str, n_trials: int) -> tuple[int, str]:
    storage = f"journal:{tmp_path / 'study.journal'}"
    code = main(["--study", str(study), "--workers", "1", "--n-trials", str(n_trials), "--wandb", "disabled",
                 "--storage", storage, "--study-name", name])
    return code, storage


# --- students of every family --------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_teacher_layers_students_copy_each_familys_own_layers(family, checkpoints):
    teacher = load_pretrained(str(checkpoints[family]), "teacher.source", ("a", "b"), seed=0)
    shape = student_shape(teacher, num_layers=1, hidden_size=64, head_dim=32,
                          intermediate_size=None)
    assert shape == ModelShape(1, 64, 2, 128)  # FFN width from the family's own field
    student, init = build_student(teacher, shape, "teacher-layers", seed=1)
    assert init == "teacher-layers" and type(student) is type(teacher)
    assert student.config.num_hidden_layers == 1
    layers = [name for name in student.state_dict() if f"{FAMILIES[family].layers}.0." in name]
    assert layers, "no layer parameters found"
    (chosen,) = teacher_layer_choice(1, 2)
    teacher_state = teacher.state_dict()
    for name in layers:
        source = name.replace(".0.", f".{chosen}.", 1)
        assert torch.equal(student.state_dict()[name], teacher_state[source]), name


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_resized_students_take_each_familys_field_names(family, checkpoints):
    teacher = load_pretrained(str(checkpoints[family]), "teacher.source", ("a", "b"), seed=0)
    shape = ModelShape(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=48)
    student, init = build_student(teacher, shape, "random", seed=0)
    assert init == "random" and shape_of(student.config) == shape
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3).long()}
    assert student(**inputs, output_hidden_states=True).hidden_states[-1].shape[-1] == 32


# Qwen2 and Mistral have Llama's layout (the tests above build, resize and copy each).
@pytest.mark.parametrize("family", sorted(set(CONFIGS) - {"qwen2", "mistral"}))
def test_a_smoke_study_with_a_teacher_of_each_family(family, checkpoints, in_tmp, cache_dir):
    """Teacher-layers students with hidden-state and attention matching (the projection
    and eager attention maps of the family), two trials; the front's saved students load
    in transformers.pipeline and give the logits the trial measured."""
    study = write_study(
        in_tmp / "family.yaml", teacher={"source": str(checkpoints[family]), "epochs": 2},
        student={"num_layers": 1, "hidden_size": 64, "head_dim": 32, "init": "teacher-layers"},
        pipeline={"hidden_weight": 1.0, "attention_weight": 1.0, "baseline": {"epochs": 1},
                  "distill": {"epochs": 1, "lr": 5.0e-3}},
        search={"T": {"low": 1.0, "high": 4.0}, "hidden_size": {"choices": [32, 64]}},
        data={"max_train_examples": 400, "max_eval_examples": 100})
    code, storage = run_study(in_tmp, study, f"family-{family}", 2)
    assert code == 0
    loaded = optuna.load_study(study_name=f"family-{family}", storage=open_storage(storage))
    complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    shared = prepare_shared(load_study_config(study), torch.device("cpu"), cache_dir)
    assert shared.reused["teacher"]  # the study's own teacher, not another one
    for trial in loaded.best_trials:
        assert_saved_student_reproduces(in_tmp / trial.user_attrs["student_path"], shared.text,
                                        trial.user_attrs["dev_accuracy"])
        assert trial.user_attrs["hidden_size"] in (32, 64)


def test_albert_is_refused_before_training_with_its_reason(tmp_path, in_tmp, capsys):
    folder = tmp_path / "albert"
    config = transformers.AlbertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64,
                                       embedding_size=16, num_labels=2)
    transformers.AlbertForSequenceClassification(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    study = write_study(in_tmp / "albert.yaml", teacher={"source": str(folder)})
    assert run_study(in_tmp, study, "albert", 1)[0] == 2
    err = capsys.readouterr().err
    assert "teacher.source: ALBERT shares one set of layer weights" in err
    assert not (in_tmp / "runs").exists() and not (in_tmp / "study.journal").exists()


def test_an_unknown_family_is_refused_naming_the_supported_ones(tmp_path):
    folder = tmp_path / "opt"
    transformers.OPTForSequenceClassification(transformers.OPTConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
        word_embed_proj_dim=32)).save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ModelError, match=r"teacher.source: a 'opt' model; students are built "
                                         r"from the families \['bert', 'deberta-v2'"):
        check_teacher_source(TeacherConfig(source=str(folder)))


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_a_decoder_classifier_pads_with_eos_and_reads_each_texts_last_real_token(family, bpe,
                                                                                 tmp_path):
    # The checkpoint as decoder-only ones come: no pad token id in the config, and no pad
    # token in the tokenizer either but Qwen2's (its class adds <|endoftext|>).
    folder = save_tiny_model(family, tmp_path / family, bpe)
    assert transformers.AutoConfig.from_pretrained(folder).pad_token_id is None
    own = transformers.AutoTokenizer.from_pretrained(folder).pad_token_id
    assert (own is None) == (family != "qwen2")
    tokenizer = load_source_tokenizer(str(folder), "teacher.source")
    assert tokenizer.pad_token_id == (tokenizer.eos_token_id if own is None else own) is not None
    model = load_teacher(TeacherConfig(source=str(folder)), ("a", "b"), tokenizer, seed=0).eval()
    assert model.config.pad_token_id == tokenizer.pad_token_id and not model.config.use_cache
    texts = ["fine", "a dull and overlong film", "the best of the year"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # padded on the right
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits
                           for text in texts])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_a_teacher_pruned_gpt2_student_is_refused_before_training(bpe, tmp_path, in_tmp, capsys):
    folder = save_tiny_model("gpt2", tmp_path / "gpt2", bpe)
    study = write_study(in_tmp / "gpt2.yaml", teacher={"source": str(folder)},
                        student={"init": "teacher-pruned"})
    assert run_study(in_tmp, study, "gpt2-pruned", 1)[0] == 2
    err = capsys.readouterr().err
    assert "student.init: teacher-pruned: GPT-2 keeps queries, keys and values in one fused" in err
    assert not (in_tmp / "runs").exists()


# --- pre-trained students with their own tokenizer ------------------------------------------

@pytest.fixture(scope="module")
def pretrained_students(tmp_path_factory, bpe) -> list[Path]:
    """Two "pre-trained" smaller checkpoints with a byte-level BPE tokenizer: not the
    teacher's WordPiece, and a vocabulary a 40th of its size."""
    folder = tmp_path_factory.mktemp("students")
    return [save_tiny_model("roberta", folder / "small-roberta", bpe, hidden_size=32,
                            num_hidden_layers=1, intermediate_size=64, seed=1),
            save_tiny_model("deberta-v2", folder / "small-deberta", bpe, seed=2)]


def over_students(tmp_path: Path, students: list[Path], **pipeline) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["search"] = {"student_source": {"choices": [str(p) for p in students]},
                     "T": {"choices": [2.0]}}
    raw["sampler"] = {"name": "grid"}
    raw["pipeline"].update(pipeline)
    path = tmp_path / "students.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_study_over_pretrained_students_with_their_own_tokenizer(
        in_tmp, pretrained_students, cache_dir, smoke_shared, capsys):
    code, storage = run_study(in_tmp, over_students(in_tmp, pretrained_students), "students", 2)
    assert code == 0
    study = optuna.load_study(study_name="students", storage=open_storage(storage))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["student_source"] for t in complete) == sorted(
        str(p) for p in pretrained_students)
    assert all("num_layers" not in t.params for t in complete)  # a checkpoint has its own size
    shared = prepare_shared(load_study_config(over_students(in_tmp, pretrained_students)),
                            torch.device("cpu"), cache_dir)
    assert shared.reused["teacher"] and shared.text.key == smoke_shared.text.key
    for trial in complete:
        source = shared.pretrained_students[trial.user_attrs["student_source"]]
        assert source.text.key != shared.text.key  # tokenized with the student's tokenizer
        own = transformers.AutoConfig.from_pretrained(source.source)
        assert (trial.user_attrs["num_layers"], trial.user_attrs["hidden_size"]) == (
            own.num_hidden_layers, own.hidden_size)
        assert trial.user_attrs["init"] == "pretrained"
        # compute at the mean length of the student's own tokenization, not the teacher's
        assert trial.user_attrs["seq_len"] == source.text.seq_len != shared.text.seq_len
        assert trial.user_attrs["params"] < trial.user_attrs["teacher_params"]
        assert 0.0 <= trial.user_attrs["baseline_dev_accuracy"] <= 1.0
        if trial.number in {t.number for t in study.best_trials}:
            assert_saved_student_reproduces(in_tmp / trial.user_attrs["student_path"],
                                            source.text, trial.user_attrs["dev_accuracy"])
    assert pareto_main(["--study-name", "students", "--storage", storage,
                        "--out", str(in_tmp / "report")]) == 0
    table = pd.read_csv(in_tmp / "report" / "pareto.csv")
    assert set(table["student_source"]) <= {str(p) for p in pretrained_students}
    page = (in_tmp / "report" / "pareto.md").read_text()
    assert any(f"({p.name})" in page for p in pretrained_students)


@pytest.mark.parametrize("setting, key", [
    ({"hidden_weight": 1.0}, "pipeline.hidden_weight"),
    ({"intermediate": {"epochs": 1, "lr": 1e-3}, "budget": "unequal"}, "pipeline.intermediate.epochs"),
])
def test_matching_with_another_tokenizer_is_refused_before_training(
        in_tmp, pretrained_students, setting, key, capsys):
    study = over_students(in_tmp, pretrained_students, **setting)
    assert run_study(in_tmp, study, "refused", 1)[0] == 2
    err = capsys.readouterr().err
    assert "search.student_source:" in err and "has its own tokenizer" in err and key in err
    assert not (in_tmp / "runs").exists() and not (in_tmp / "study.journal").exists()


def test_a_transfer_set_with_another_tokenizer_is_refused_before_training(
        in_tmp, pretrained_students, capsys):
    raw = yaml.safe_load(over_students(in_tmp, pretrained_students).read_text())
    raw["transfer"] = {"copies": 1}
    study = in_tmp / "transfer.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert run_study(in_tmp, study, "refused", 1)[0] == 2
    err = capsys.readouterr().err
    assert "transfer:" in err and "own tokenizer" in err and "small-roberta" in err, err
    assert not (in_tmp / "runs").exists() and not (in_tmp / "study.journal").exists()


# --- sentence pairs ----------------------------------------------------------------------------

COLORS = ("red", "blue", "green", "yellow")
FILLERS = ("today", "maybe", "really", "quite", "very", "still", "again", "soon")


def color_pairs(n: int, seed: int) -> pd.DataFrame:
    """Label 1 when the two texts name the same colour. Each text's colour is uniform and
    independent of the label, so either text alone tells nothing about it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        first, same = rng.choice(COLORS), rng.random() < 0.5
        second = first if same else rng.choice([c for c in COLORS if c != first])
        rows.append({"first": f"{rng.choice(FILLERS)} the wall is {first} {rng.choice(FILLERS)}",
                     "second": f"{rng.choice(FILLERS)} the door is {second}",
                     "label": int(same)})
    return pd.DataFrame(rows)


def one_text_bound(texts, labels) -> float:
    """The best dev accuracy any classifier of one text can reach here: the label depends on
    a text only through its colour word, so predict the majority label of each colour."""
    counts: dict[tuple[str, int], int] = {}
    for text, label in zip(texts, labels):
        color = next(c for c in COLORS if f" {c}" in f" {text}")
        counts[color, label] = counts.get((color, label), 0) + 1
    return sum(max(counts.get((c, 0), 0), counts.get((c, 1), 0)) for c in COLORS) / len(labels)


@pytest.mark.slow
def test_a_pair_task_is_learned_from_both_texts(tmp_path, cache_dir):
    path = tmp_path / "pairs.csv"
    color_pairs(1500, seed=0).to_csv(path, index=False)
    config = load_study_config(SMOKE, [
        f"data.source={path}", "data.text_columns=[first, second]", "data.dev_split=null",
        "data.test_split=null", "data.max_train_examples=null", "data.max_eval_examples=null",
        "teacher.epochs=20", "teacher.lr=1e-3", "student.num_layers=2", "student.hidden_size=64",
        "pipeline.baseline.epochs=1", "pipeline.distill.epochs=25", "pipeline.distill.lr=1e-3",
        "pipeline.budget=unequal", "pipeline.alpha=0.3"])
    shared = prepare_shared(config, torch.device("cpu"), cache_dir)
    assert shared.text.tokens["train"].type_ids is not None  # segment ids reach the BERT models
    dev = shared.data.dev
    bound = max(one_text_bound(dev.texts, dev.labels), one_text_bound(dev.second_texts, dev.labels))
    assert bound < 0.62
    fields = run_trial(config, default_trial_config(config), shared).stored_fields()
    assert fields["dev_accuracy"] > bound + 0.25, (fields["dev_accuracy"], bound)
    assert shared.teacher_scores["dev"].accuracy > bound + 0.25


def test_a_pretrained_student_with_the_teachers_tokenizer_may_match_hidden_states(
        checkpoints, smoke_config, cache_dir):
    """The tiny BERT checkpoint carries the teacher's (MiniLM) tokenizer: same tokens, so
    matching is allowed, and no second tokenization is made."""
    source = str(checkpoints["bert"])
    config = load_study_config(SMOKE, [f"student.source={source}", "pipeline.hidden_weight=1.0",
                                       "pipeline.attention_weight=1.0"])
    shared = prepare_shared(config, torch.device("cpu"), cache_dir)
    assert shared.pretrained_students[source].text is shared.text
    result = run_trial(config, default_trial_config(config), shared)
    assert result.init == "pretrained" and result.trial.student_source == source
    assert shape_of(transformers.AutoConfig.from_pretrained(source)) == result.shape
