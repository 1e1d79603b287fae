"""A student as it is deployed: one self-contained ONNX graph, exported with torch's dynamo
exporter (optimum's ONNX tooling does not support transformers 5, optimum-onnx#114), with
dynamic batch and sequence axes, and checked against the torch model before it is kept.

    path = export_onnx(model, folder / "model.onnx")
    check = verify_onnx(path, model, split, pad_id, batch_size=64)  # raises ExportError
    int8 = quantize_int8(path, folder / "model.int8.onnx")
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data import TokenizedSplit

# Dimensions of size 1 are specialised away by the exporter: the example batch is larger.
EXPORT_BATCH, EXPORT_LENGTH = 2, 16
# Largest |ONNX Runtime fp32 - torch fp32| logit difference accepted; both compute in fp32,
# so differences are reordered sums (~1e-6 on the tiny and the default study's students).
LOGIT_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """A model that cannot be exported, or whose export disagrees with it; says why."""


@dataclass(frozen=True)
class OnnxCheck:
    examples: int
    max_logit_difference: float
    argmax_agreement: float  # 1.0: every prediction the same


def input_names(model) -> tuple[str, ...]:
    """What the exported graph reads: token ids, the padding mask and, where the family has
    more than one segment embedding (BERT, ELECTRA), segment ids (as ``harness.train``'s
    ``model_inputs`` gives them)."""
    segments = getattr(model.config, "type_vocab_size", 0) > 1
    return ("input_ids", "attention_mask") + (("token_type_ids",) if segments else ())


def export_onnx(model, path: Path) -> Path:
    """``model`` (a sequence classifier; exported from an fp32 CPU copy, the model itself
    left where it is) as one ONNX file at ``path`` whose output is ``logits``."""
    model = _fp32_cpu_copy(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (EXPORT_BATCH, EXPORT_LENGTH),
                        generator=generator)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "token_type_ids": torch.zeros_like(ids)}
    names = input_names(model)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # the exporter's deprecation chatter
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (), kwargs={name: example[name] for name in names}, dynamo=True,
                dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                input_names=list(names), output_names=["logits"], verbose=False)
            program.save(str(path), external_data=False)
    except Exception as error:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f"{model.config.model_type}: the ONNX export failed "
                          f"({_first_line(error)})") from error
    return path


def _fp32_cpu_copy(model):
    return copy.deepcopy(model).float().cpu().eval()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def onnx_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session of ``path``: ``threads`` intra-op threads, sequential."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, split: TokenizedSplit, pad_id: int, batch_size: int) -> torch.Tensor:
    """Float32 logits (n, classes) of ``split`` in its order, batches padded as the harness
    pads them (``TokenizedSplit.batch``)."""
    names = [i.name for i in session.get_inputs()]
    order = torch.argsort(split.lengths(), stable=True)
    chunks = []
    for indices in order.split(batch_size):
        batch = split.batch(indices, pad_id)
        batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
        chunks.append(torch.from_numpy(session.run(
            ["logits"], {name: batch[name].numpy() for name in names})[0]).float())
    logits = torch.empty(len(split), chunks[0].shape[1])
    logits[order] = torch.cat(chunks)
    return logits


def verify_onnx(path: Path, model, split: TokenizedSplit, pad_id: int,
                batch_size: int) -> OnnxCheck:
    """ONNX Runtime's logits of ``path`` on ``split`` against ``model``'s in fp32 torch;
    ``ExportError`` unless every argmax agrees and every logit within ``LOGIT_TOLERANCE``."""
    from harness.train import model_inputs

    # Not harness.train.predict_logits: it runs under bf16 autocast where the hardware has
    # bf16, and the export is checked against the model in fp32.
    model = _fp32_cpu_copy(model)
    exported = onnx_logits(onnx_session(path), split, pad_id, batch_size)
    order = torch.argsort(split.lengths(), stable=True)
    reference = torch.empty_like(exported)
    with torch.no_grad():
        for indices in order.split(batch_size):
            batch = split.batch(indices, pad_id)
            reference[indices] = model(**model_inputs(model, batch)).logits.float()
    check = OnnxCheck(len(split), float((exported - reference).abs().max()),
                      float((exported.argmax(-1) == reference.argmax(-1)).double().mean()))
    if check.argmax_agreement < 1.0 or check.max_logit_difference > LOGIT_TOLERANCE:
        raise ExportError(f"{path.name}: ONNX Runtime and torch disagree (largest logit "
                          f"difference {check.max_logit_difference:.2e} > {LOGIT_TOLERANCE:g}, "
                          f"or argmax agreement {check.argmax_agreement:.4f} < 1)")
    return check


def quantize_int8(path: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``path`` (weights int8, activations
    quantized at run time), after its pre-processing (shape inference, graph clean-up);
    ``reduce_range`` (7-bit weights) where the CPU lacks VNNI, whose absence makes 8-bit
    products saturate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".prepared.onnx")
    try:
        # The dynamo graph defeats its symbolic shape inference; ONNX's own suffices.
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        logging.disable(logging.INFO)  # its root-logger line per unquantized tensor
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8,
                         reduce_range=not _has_vnni())
    except Exception as error:  # the quantizer raises many types; all mean "cannot"
        raise ExportError(f"{path.name}: int8 quantization failed "
                          f"({_first_line(error)})") from error
    finally:
        logging.disable(logging.NOTSET)
        prepared.unlink(missing_ok=True)
    return out


def _has_vnni() -> bool:
    """Whether this CPU has AVX512-VNNI or AVX-VNNI (Linux's /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@dataclass(frozen=True)
class DeployedLatency:
    median_ms: float  # batch 1
    p90_ms: float  # batch 1
    examples_per_second: float  # at batch 32


def onnx_latency(session, length: int, repeats: int = 50) -> DeployedLatency:
    """``session``'s latency at batch 1 (median and 90th percentile over ``repeats`` runs,
    after warm-up) and throughput at batch 32, on inputs of ``length`` tokens. Measure in
    a process of its own, never while peers train on the same cores."""
    feeds = {size: {i.name: torch.ones(size, length, dtype=torch.int64).numpy()
                    for i in session.get_inputs()} for size in (1, 32)}

    def seconds(size: int) -> float:
        started = time.perf_counter()
        session.run(["logits"], feeds[size])
        return time.perf_counter() - started

    for _ in range(5):
        seconds(1)
    single = sorted(seconds(1) for _ in range(repeats))
    batched = statistics.median(seconds(32) for _ in range(max(3, repeats // 10)))
    return DeployedLatency(1000 * statistics.median(single),
                           1000 * single[int(0.9 * (len(single) - 1))], 32 / batched)
