"""Tests for harness.pipeline.save_student: a saved student folder appears whole or not at
all, and replaces an older folder of the same name whole."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import harness.pipeline
from harness.config import TeacherConfig
from harness.models import load_tokenizer
from harness.pipeline import save_student


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TeacherConfig())


@pytest.fixture(scope="module")
def student(tokenizer):
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


LOGITS = {"dev": torch.zeros(3, 2), "test": torch.ones(4, 2)}


def test_a_crash_while_saving_leaves_no_student_folder(student, tokenizer, tmp_path, monkeypatch):
    def failing_save_file(tensors, path):
        raise OSError("disk full")  # after the model and tokenizer files are written

    monkeypatch.setattr(harness.pipeline, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_student(student, tokenizer, LOGITS, tmp_path / "students" / "trial-0")
    assert list((tmp_path / "students").iterdir()) == []  # no half student, no staging folder


def test_a_crash_while_saving_keeps_the_older_folder(student, tokenizer, tmp_path, monkeypatch):
    folder = tmp_path / "trial-0"
    save_student(student, tokenizer, LOGITS, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    retrained = copy.deepcopy(student)
    with torch.no_grad():
        retrained.classifier.weight.add_(1.0)
    monkeypatch.setattr(harness.pipeline, "save_file", lambda tensors, path: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_student(retrained, tokenizer, LOGITS, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["trial-0"]


def test_saving_again_replaces_the_older_folder_whole(student, tokenizer, tmp_path):
    folder = tmp_path / "trial-0"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"an older run's pickle")
    save_student(student, tokenizer, LOGITS, folder)
    assert not (folder / "pytorch_model.bin").exists()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert torch.equal(reloaded.classifier.weight, student.classifier.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["trial-0"]
