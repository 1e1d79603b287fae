"""Compute cost of a sequence classifier: FLOPs, parameters and latency, measured not guessed.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`: FLOPs of matrix products (mm,
addmm, bmm, scaled-dot-product attention; 2 per multiply-add), the dominant cost; elementwise
ops (softmax, GELU, LayerNorm, dropout, adds) and embedding lookups are not counted.

On CPU, `sdpa` attention runs as `aten._scaled_dot_product_flash_attention_for_cpu` (and its
backward), for which FlopCounterMode has no formula: it counts such attention as 0 FLOPs,
so the same model would look cheaper with sdpa than with eager attention. We map both ops
to torch's sdpa formulas, so the two implementations give the same forward count.

Takes any Hugging Face *ForSequenceClassification model (input_ids, attention_mask) already
on `device`, a *ForCausalLM (its train FLOPs with a loss on every position;
``count_generated_token_flops`` for the cost of one generated token) or an encoder-decoder
(T5: its prompt of ``seq_len`` tokens encoded, its target of ``decoder_len`` decoded);
every function restores its training flag and leaves its `.grad`s as found.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


@dataclass(frozen=True)
class ComputeCost:
    flops_per_example: int  # forward FLOPs, batch 1, at seq_len tokens
    train_flops_per_example: int  # forward + backward of one example (CE loss on the logits)
    seq_len: int  # tokens per example the counts were made at
    params: int
    non_embedding_params: int  # params minus nn.Embedding tables (word, position, token type)
    latency_ms: float  # batch 1 forward, median over repeats, on the given device


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_counter() -> FlopCounterMode:
    # The CPU kernels take (query, key, value, ...) and (grad_out, query, key, value, ...)
    # like the CUDA ones, so torch's sdpa formulas apply (FlopCounterMode passes shapes).
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    })


@contextlib.contextmanager
def _mode(model: torch.nn.Module, training: bool):  # set train/eval, then restore the flag
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """No parameter requires a gradient, then each its own flag again. Used instead of
    ``torch.no_grad``: under it FlopCounterMode's module tracker fails on a parameter passed
    into a submodule as an input (DeBERTa's relative position embeddings)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _example_inputs(model: torch.nn.Module, seq_len: int, device,
                    decoder_len: int | None = None) -> dict[str, torch.Tensor]:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_position_embeddings {max_positions}")
    # Values do not change matmul FLOPs, but keep them valid and clear of the pad token
    # (RoBERTa-style models derive position ids from which tokens are padding).
    token = 2 if getattr(model.config, "pad_token_id", None) == 1 else 1
    input_ids = torch.full((1, seq_len), token, dtype=torch.long, device=device)  # (1, L)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if model.config.is_encoder_decoder:
        if decoder_len is None or decoder_len < 1:
            raise ValueError(f"an encoder-decoder needs decoder_len >= 1, got {decoder_len}")
        inputs["decoder_input_ids"] = torch.full((1, decoder_len), token, dtype=torch.long,
                                                 device=device)
    return inputs


def count_forward_flops(model: torch.nn.Module, seq_len: int, device,
                        decoder_len: int | None = None) -> int:
    """Forward FLOPs of one example (batch 1) of seq_len tokens, in eval mode."""
    inputs = _example_inputs(model, seq_len, device, decoder_len)
    with _mode(model, training=False), _frozen(model), _flop_counter() as counter:
        model(**inputs)
    return counter.get_total_flops()


def count_train_flops_per_example(model: torch.nn.Module, seq_len: int, device,
                                  decoder_len: int | None = None) -> int:
    """Forward + backward FLOPs of one example in train mode, loss = cross-entropy on the logits.

    About 3x forward: each matmul's backward computes both operands' gradients; fused sdpa
    backward kernels also recompute the attention scores, and that is counted too.
    """
    inputs = _example_inputs(model, seq_len, device, decoder_len)
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]  # the caller may be accumulating gradients
    for p in params:
        p.grad = None
    try:
        with _mode(model, training=True), torch.enable_grad(), _flop_counter() as counter:
            # (1, num_labels), or a causal LM's (1, seq_len, vocab): a loss on every position
            logits = model(**inputs).logits.flatten(0, -2)
            labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # any class
            torch.nn.functional.cross_entropy(logits, labels).backward()
    finally:
        for p, grad in zip(params, saved_grads):
            p.grad = grad
    return counter.get_total_flops()


def _decoding_step(model: torch.nn.Module, prompt_len: int, device):
    """The inputs of a cached decoding step after a prompt of ``prompt_len`` tokens, and the
    cache it reads, as ``generate`` runs it: a causal LM's cache holds the prompt; an
    encoder-decoder's holds the encoded prompt's cross-attention keys and values and the
    decoder's start token (the encoder ran once, before the first step, as a causal LM's
    prompt did)."""
    inputs = _example_inputs(model, prompt_len, device, decoder_len=1)
    token = inputs["input_ids"][:, :1]
    with _mode(model, training=False), torch.no_grad():
        if not model.config.is_encoder_decoder:
            cache = model(**inputs, use_cache=True).cache
            mask = torch.ones(1, prompt_len + 1, dtype=torch.long, device=device)
            return {"input_ids": token, "attention_mask": mask}, cache
        encoded = model.get_encoder()(input_ids=inputs["input_ids"],
                                      attention_mask=inputs["attention_mask"])
        step = {"encoder_outputs": encoded, "attention_mask": inputs["attention_mask"]}
        cache = model(**step, decoder_input_ids=inputs["decoder_input_ids"], use_cache=True).cache
        return {**step, "decoder_input_ids": token}, cache


def _next_step(step: dict) -> dict:
    """The step after ``step``: a causal LM's attention mask covers one more token (a
    decoder's self-attention reads its cache whole; its mask is the prompt's)."""
    if "decoder_input_ids" in step:
        return step
    mask = step["attention_mask"]
    return {**step, "attention_mask": torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)}


def count_generated_token_flops(model: torch.nn.Module, prompt_len: int, device) -> int:
    """Forward FLOPs of a generative model's next token after a prompt of ``prompt_len``
    tokens, read from its key-value cache (as ``generate`` does): the cost per generated
    token."""
    step, cache = _decoding_step(model, prompt_len, device)
    with _mode(model, training=False), _frozen(model), _flop_counter() as counter:
        model(**step, cache=cache, use_cache=True)
    return counter.get_total_flops()


def measure_token_latency_ms(model: torch.nn.Module, prompt_len: int, device,
                             repeats: int = 20) -> float:
    """Median wall time of one generated token (batch 1, a cached decoding step) after a
    prompt of ``prompt_len`` tokens, over up to ``repeats`` consecutive steps (fewer where
    the model's positions run out), as ``generate`` runs them."""
    max_positions = getattr(model.config, "max_position_embeddings", None) or prompt_len + repeats
    steps = max(1, min(repeats, max_positions - prompt_len))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda device: None
    times_ms = []
    step, cache = _decoding_step(model, prompt_len, device)
    with _mode(model, training=False), torch.no_grad():
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            cache = model(**step, cache=cache, use_cache=True).cache
            sync(device)
            times_ms.append((time.perf_counter() - start) * 1000.0)
            step = _next_step(step)
    return statistics.median(times_ms)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(params, non_embedding_params), tied weights counted once. Embedding params are the
    nn.Embedding tables (word, position, token type), as in Kaplan et al. 2020; the
    embeddings' LayerNorm is not a lookup table and counts as non-embedding, like every LayerNorm.
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    tables = {id(p): p.numel() for m in embeddings for p in m.parameters()}  # by id: tied once
    return total, total - sum(tables.values())


def measure_latency_ms(model: torch.nn.Module, seq_len: int, device, warmup: int = 3,
                       repeats: int = 20, decoder_len: int | None = None) -> float:
    """Median wall time of a batch-1 forward pass in eval mode, after `warmup` untimed runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    inputs = _example_inputs(model, seq_len, device, decoder_len)
    # CUDA kernels run asynchronously: synchronize so the clock sees only the finished forward.
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda device: None
    times_ms = []
    with _mode(model, training=False), torch.no_grad():
        for _ in range(warmup):  # first calls pay for allocation, kernel selection, caches
            model(**inputs)
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            model(**inputs)
            sync(device)
            times_ms.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times_ms)


def measure_compute(model: torch.nn.Module, seq_len: int, device, latency_repeats: int = 20,
                    decoder_len: int | None = None) -> ComputeCost:
    """All compute measures of `model` at `seq_len` tokens (the dataset's mean length,
    rounded; an encoder-decoder's mean prompt, and ``decoder_len``, its mean target)."""
    params, non_embedding_params = count_params(model)
    return ComputeCost(
        flops_per_example=count_forward_flops(model, seq_len, device, decoder_len),
        train_flops_per_example=count_train_flops_per_example(model, seq_len, device,
                                                              decoder_len),
        seq_len=seq_len,
        params=params,
        non_embedding_params=non_embedding_params,
        latency_ms=measure_latency_ms(model, seq_len, device, repeats=latency_repeats,
                                      decoder_len=decoder_len),
    )
