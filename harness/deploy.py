"""A saved student as it is shipped: exported to ONNX (``model.onnx``), checked against
torch on dev, quantized to dynamic int8 (``model.int8.onnx``), both files beside the
student so ``onnxruntime.InferenceSession`` loads them with its tokenizer; the int8 model
scored on dev and test against the trial's own predictions and, when asked, every form
timed on one CPU thread.

    fields = deploy_student(folder, text, batch_size=64, latency_repeats=50)

The fields are stored as they are named here (``int8_dev_accuracy``, ``int8_bytes``,
``int8_latency_ms``, ...). ``ExportError`` says why a student cannot be deployed; its files
are then removed, never kept unchecked.
"""

from __future__ import annotations

import functools
import platform
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.compute import measure_latency_ms
from harness.data import TokenizedData
from harness.models import load_saved_model
from harness.onnx_export import (export_onnx, onnx_latency, onnx_logits,
                                 onnx_session, quantize_int8, verify_onnx)

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
SCORED_SPLITS = ("dev", "test")
# The CPU features ONNX Runtime's int8 and fp32 kernels choose between.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def deploy_student(folder: Path, text: TokenizedData, batch_size: int,
                   latency_repeats: int | None) -> dict:
    """Export, check, quantize and score the student saved in ``folder`` (by
    ``harness.pipeline.save_student``) on ``text``, its tokenizer's view of the data;
    with ``latency_repeats``, also time torch eager, ONNX Runtime fp32 and int8 at batch 1
    at the data's mean length (and ONNX Runtime at batch 32). Run it alone on the machine
    when timing: the figures are for one thread with nothing else running."""
    model = load_saved_model(folder).eval()
    measured = load_file(str(folder / "logits.safetensors"))
    onnx, int8 = folder / ONNX_FILE, folder / INT8_FILE
    try:
        export_onnx(model, onnx)
        check = verify_onnx(onnx, model, text.tokens["dev"], text.pad_id, batch_size)
        quantize_int8(onnx, int8)
        fields = {"onnx_bytes": onnx.stat().st_size, "int8_bytes": int8.stat().st_size,
                  "onnx_max_logit_difference": check.max_logit_difference}
        session = onnx_session(int8)
        for split in SCORED_SPLITS:
            tokens = text.tokens[split]
            quantized = onnx_logits(session, tokens, text.pad_id, batch_size).argmax(-1)
            fields.update(int8_scores(split, quantized, measured[split].argmax(-1),
                                      tokens.labels))
    except BaseException:
        onnx.unlink(missing_ok=True)
        int8.unlink(missing_ok=True)
        raise
    if latency_repeats:
        fields.update(deployed_latency(model, onnx, int8, text.seq_len, latency_repeats))
    fields["deploy_provenance"] = deploy_provenance()
    return fields


def time_deployed_student(folder: Path, length: int, repeats: int) -> dict:
    """``deployed_latency`` of a student ``deploy_student`` already exported and checked."""
    return {**deployed_latency(load_saved_model(folder).eval(), folder / ONNX_FILE,
                               folder / INT8_FILE, length, repeats),
            "deploy_provenance": deploy_provenance()}


def int8_scores(split: str, int8_predictions: torch.Tensor, fp32_predictions: torch.Tensor,
                labels: torch.Tensor) -> dict:
    """The int8 model's accuracy on ``split``, its agreement with the fp32 student (the
    trial's own predictions) and the paired counts of the int8-minus-fp32 difference:
    examples only int8 gets right (``gained``) and only fp32 gets right (``lost``)."""
    int8_right, fp32_right = int8_predictions == labels, fp32_predictions == labels
    return {f"int8_{split}_accuracy": float(int8_right.double().mean()),
            f"int8_{split}_agreement": float((int8_predictions == fp32_predictions)
                                             .double().mean()),
            f"int8_{split}_gained": int((int8_right & ~fp32_right).sum()),
            f"int8_{split}_lost": int((fp32_right & ~int8_right).sum())}


def deployed_latency(model, onnx: Path, int8: Path, length: int, repeats: int) -> dict:
    """Batch-1 latency (median and p90, ms) and batch-32 throughput (examples/s) of the
    ONNX Runtime fp32 and int8 files, one intra-op thread, sequential; torch eager's
    batch-1 median on one thread beside them."""
    fields = {}
    for name, path in (("onnx", onnx), ("int8", int8)):
        latency = onnx_latency(onnx_session(path, threads=1), length, repeats)
        fields.update({f"{name}_latency_ms": latency.median_ms,
                       f"{name}_latency_p90_ms": latency.p90_ms,
                       f"{name}_examples_per_second": latency.examples_per_second})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fields["eager_latency_ms"] = measure_latency_ms(model, length, "cpu", repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    fields["deploy_length"] = length
    return fields


@functools.cache
def deploy_provenance() -> dict:
    """Where deployed figures were measured: the CPU, the features its kernels use, ONNX
    Runtime's version."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    return {"cpu": model, "cpu_features": [name for name in CPU_FEATURES if name in flags],
            "onnxruntime": version("onnxruntime"), "onnx_threads": 1}
