"""A teacher already fine-tuned on the task, used as it is (``teacher.fine_tune: false``):
its head's labels matched to the data's, no training, its own logits cached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers

import harness.labels
from harness.config import TeacherConfig
from harness.models import ModelError, load_tokenizer, teacher_label_rows
from harness.shared import prepare_shared
from harness.train import predict_logits
from tests.test_study import run_smoke


def save_classifier(folder: Path, id2label: dict[int, str]) -> Path:
    """A tiny random BERT classifier with the packaged tokenizer, as a fine-tuned teacher
    on disk would be."""
    tokenizer = load_tokenizer(TeacherConfig())
    torch.manual_seed(5)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(id2label), id2label=id2label,
        label2id={name: i for i, name in id2label.items()})
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # a head that tells the classes apart, so a swap would show
        model.classifier.bias.copy_(torch.arange(len(id2label), dtype=torch.float32))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_heads_labels_are_matched_to_the_datas():
    assert teacher_label_rows({0: "FRESH", 1: "Rotten"}, ("rotten", "fresh"), None) == [1, 0]
    assert teacher_label_rows({0: "NEGATIVE", 1: "POSITIVE"}, ("rotten", "fresh"),
                              {"NEGATIVE": "rotten", "POSITIVE": "fresh"}) == [0, 1]
    # Three classes, two wanted: the third row is dropped.
    assert teacher_label_rows({0: "a", 1: "b", 2: "c"}, ("c", "a"), None) == [2, 0]
    with pytest.raises(ModelError, match=r"^teacher\.label_map: the teacher's labels "
                                         r"\['NEGATIVE', 'POSITIVE'\] do not name each of "
                                         r"the data's labels \['rotten', 'fresh'\]"):
        teacher_label_rows({0: "NEGATIVE", 1: "POSITIVE"}, ("rotten", "fresh"), None)
    with pytest.raises(ModelError, match=r"\['GOOD'\] are not labels of the teacher"):
        teacher_label_rows({0: "NEGATIVE", 1: "POSITIVE"}, ("rotten", "fresh"), {"GOOD": "fresh"})


def test_a_fine_tuned_teacher_is_used_as_it_is(smoke_config, tmp_path, monkeypatch):
    folder = save_classifier(tmp_path / "classifier", {0: "fresh", 1: "rotten"})
    trained = []
    real = harness.labels.train_phase
    monkeypatch.setattr(harness.labels, "train_phase",
                        lambda name, *a, **k: trained.append(name) or real(name, *a, **k))
    teacher = dataclasses.replace(smoke_config.teacher, source=str(folder), architecture=None,
                                  fine_tune=False)
    config = dataclasses.replace(smoke_config, teacher=teacher)
    shared = prepare_shared(config, torch.device("cpu"), tmp_path / "cache")
    assert trained == []  # no step of training
    # Its own logits, columns in the data's order (rotten, fresh): the saved head swapped.
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    for split in ("dev", "test"):
        expected = predict_logits(saved, shared.text.tokens[split], 64, torch.device("cpu"),
                                  shared.text.pad_id)[:, [1, 0]]
        torch.testing.assert_close(shared.teacher_logits[split], expected, rtol=0, atol=1e-6)
        labels = shared.text.tokens[split].labels
        accuracy = (expected.argmax(-1) == labels).double().mean().item()
        assert shared.teacher_scores[split].accuracy == pytest.approx(accuracy)
    assert shared.teacher.config.id2label == {0: "rotten", 1: "fresh"}
    again = prepare_shared(config, torch.device("cpu"), tmp_path / "cache")
    assert again.teacher_key == shared.teacher_key and again.reused["teacher"]


def test_a_teacher_whose_labels_cannot_be_matched_is_refused_before_training(in_tmp, capsys):
    folder = save_classifier(in_tmp / "classifier", {0: "NEGATIVE", 1: "POSITIVE"})
    code, _ = run_smoke(in_tmp, 1, "--set", f"teacher.source={folder}",
                        "--set", "teacher.fine_tune=false")
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith("error: teacher.label_map: the teacher's labels "
                                "['NEGATIVE', 'POSITIVE'] do not name"), error
    assert not (in_tmp / "study.journal").exists()  # nothing written
    code, storage = run_smoke(in_tmp, 1, "--set", f"teacher.source={folder}",
                              "--set", "teacher.fine_tune=false",
                              "--set", "teacher.label_map={NEGATIVE: rotten, POSITIVE: fresh}")
    assert code == 0
