"""Students as deployed: every family exports to one ONNX file that ONNX Runtime
runs with the torch model's logits, on padded texts of lengths never seen at export."""

from __future__ import annotations

import pytest
import torch
import transformers

from harness.data import TokenizedSplit
from harness.models import CLASSIFIER_FAMILIES, as_classifier, load_source_tokenizer
from harness.onnx_export import (EXPORT_LENGTH, ExportError, export_onnx, input_names,
                                 onnx_latency, onnx_logits, onnx_session, quantize_int8,
                                 verify_onnx)
from harness.train import model_inputs

from .families import bpe_tokenizer, save_tiny_model


@pytest.fixture(scope="module")
def bpe(smoke_shared):
    return bpe_tokenizer(smoke_shared.data.train.texts)


def _texts(tokenizer, texts: list[str]) -> TokenizedSplit:
    # From a few word-pieces to 64, far past the export's EXPORT_LENGTH.
    encoded = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    return TokenizedSplit.from_sequences(encoded, torch.zeros(len(encoded), dtype=torch.int64))


@pytest.mark.slow
@pytest.mark.parametrize("family", CLASSIFIER_FAMILIES)
def test_every_family_exports_and_onnx_runtime_reproduces_its_logits(family, bpe, smoke_shared,
                                                                     tmp_path):
    folder = save_tiny_model(family, tmp_path / family, bpe)
    # As the harness loads a checkpoint: decoder-only ones get a pad token (eos).
    tokenizer = load_source_tokenizer(str(folder), "student.source")
    model = as_classifier(transformers.AutoModelForSequenceClassification.from_pretrained(folder),
                          tokenizer.pad_token_id).eval()
    texts = smoke_shared.data.train.texts
    split = _texts(tokenizer, ["fine", "a dull film", *texts[:40], " ".join(texts[:6])])
    assert int(split.lengths().max()) > 3 * EXPORT_LENGTH and int(split.lengths().min()) < 6
    path = export_onnx(model, tmp_path / "model.onnx")
    assert list(tmp_path.glob("*.data")) == []  # one self-contained file
    session = onnx_session(path)
    assert tuple(i.name for i in session.get_inputs()) == input_names(model)
    # Mixed lengths in one padded batch, and batches of other sizes than the export's.
    for batch_size in (1, 7, 64):
        exported = onnx_logits(session, split, tokenizer.pad_token_id, batch_size)
        with torch.no_grad():
            reference = torch.cat([model(**model_inputs(model, split.batch(
                torch.tensor([i]), tokenizer.pad_token_id))).logits for i in range(len(split))])
        torch.testing.assert_close(exported, reference, rtol=0, atol=1e-4)
    check = verify_onnx(path, model, split, tokenizer.pad_token_id, batch_size=16)
    assert check.examples == len(split) and check.argmax_agreement == 1.0


def test_an_export_that_disagrees_with_its_model_is_refused(bpe, smoke_shared, tmp_path):
    folder = save_tiny_model("bert", tmp_path / "bert", bpe)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    split = _texts(tokenizer, smoke_shared.data.train.texts[:20])
    path = export_onnx(model, tmp_path / "model.onnx")
    with torch.no_grad():
        model.classifier.bias += 1.0  # the model moved on since its export
    with pytest.raises(ExportError, match="disagree"):
        verify_onnx(path, model, split, tokenizer.pad_token_id, batch_size=16)


def test_int8_quantization_keeps_a_trained_students_predictions_close(smoke_shared, tmp_path):
    # A student the smoke study's pipeline trained (random int8 weights of an untrained model
    # would say nothing): the teacher, fine-tuned on the smoke data.
    teacher, text = smoke_shared.teacher, smoke_shared.text
    path = export_onnx(teacher, tmp_path / "model.onnx")
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
    assert int8.stat().st_size < 0.6 * path.stat().st_size  # int8 weights: about a quarter
    dev = text.tokens["dev"]
    fp32 = onnx_logits(onnx_session(path), dev, text.pad_id, 64)
    quantized = onnx_logits(onnx_session(int8), dev, text.pad_id, 64)
    assert not torch.equal(fp32, quantized)  # it did quantize
    agreement = (fp32.argmax(-1) == quantized.argmax(-1)).double().mean().item()
    assert agreement > 0.9
    latency = onnx_latency(onnx_session(int8), length=16, repeats=10)
    assert 0 < latency.median_ms <= latency.p90_ms and latency.examples_per_second > 0
