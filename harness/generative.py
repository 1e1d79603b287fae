"""Generative examples for a causal LM: a prompt, then a target the model learns to write.

Each example is one token sequence, ``prompt + target + eos``; the model is trained and
scored on the target's tokens only (the next-token predictions at the positions before
them), so a prompt is read, never learned. ``GenerativeSplit`` has the interface
``harness.train.train_phase`` batches over (``len``, ``lengths``, ``batch``), so every
phase runs in the one training loop; with a teacher's top-k cache attached
(``with_teacher``) a batch carries the teacher's rows for its target tokens.

Scores: token accuracy and per-token NLL (teacher-forced, on the target tokens) and the
exact match of greedy generation (transformers' ``generate``, the prompts left-padded).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from harness.token_kd import TopK
from harness.train import autocast

IGNORE = -100  # a position whose next token is not a target token


@dataclass(frozen=True)
class GenerativeScores:
    token_accuracy: float
    nll: float  # mean negative log-likelihood per target token, nats
    exact_match: float  # share of examples whose greedy generation is the target exactly
    examples: int
    target_tokens: int


@dataclass(frozen=True)
class GenerativeData:
    train: GenerativeSplit
    select: GenerativeSplit  # chooses checkpoints
    dev: GenerativeSplit
    test: GenerativeSplit
    pad_id: int
    eos_id: int

    @property
    def max_new_tokens(self) -> int:
        """What greedy generation may write: the longest training target, eos included
        (from train, so no evaluation label sets the decoding budget)."""
        return int(self.train.target_lengths().max())


@dataclass(frozen=True)
class GenerativeSplit:
    """Token ids of every example, unpadded: example i is ids[offsets[i]:offsets[i+1]], its
    first ``prompt_lengths[i]`` tokens the prompt; ``teacher`` holds the teacher's top-k at
    every target token, example by example in order (None: no teacher attached)."""

    ids: torch.Tensor  # (total_tokens,) int64
    offsets: torch.Tensor  # (n + 1,) int64
    prompt_lengths: torch.Tensor  # (n,) int64
    teacher: TopK | None = None
    teacher_starts: torch.Tensor | None = None  # (n + 1,) example i's first row of ``teacher``

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def target_lengths(self) -> torch.Tensor:
        return self.lengths() - self.prompt_lengths

    def sequence(self, i: int) -> torch.Tensor:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def with_teacher(self, teacher: TopK) -> GenerativeSplit:
        if len(teacher.ids) != int(self.target_lengths().sum()):
            raise ValueError(f"the teacher's cache has {len(teacher.ids)} target tokens, the "
                             f"split {int(self.target_lengths().sum())}")
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), self.target_lengths().cumsum(0)])
        return dataclasses.replace(self, teacher=teacher, teacher_starts=starts)

    def batch(self, indices: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` (B, L) and ``labels`` (B, L): at
        each position the next token where it is a target token, else ``IGNORE``; with a
        teacher, ``top_ids``, ``top_log_probs`` (N, k) and ``top_tail`` (N,) for the batch's
        N target tokens in the order ``labels != IGNORE`` reads them (row by row)."""
        indices = indices.tolist()
        width = int(self.lengths()[indices].max())
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE)
        for row, i in enumerate(indices):
            sequence, prompt = self.sequence(i), int(self.prompt_lengths[i])
            input_ids[row, :len(sequence)] = sequence
            attention_mask[row, :len(sequence)] = 1
            labels[row, prompt - 1:len(sequence) - 1] = sequence[prompt:]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.teacher is not None:
            starts = self.teacher_starts
            rows = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in indices])
            top = self.teacher.rows(rows)
            batch.update(top_ids=top.ids, top_log_probs=top.log_probs, top_tail=top.tail)
        return batch


def tokenize_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str],
                      max_length: int) -> GenerativeSplit:
    """``prompt + target + eos`` per example, at most ``max_length`` tokens: a target is cut
    to half of them at most, then the prompt loses its start (the end is what the target
    continues)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: a generated target could not end")
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    target_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    sequences, prompt_lengths = [], []
    for prompt, target in zip(prompt_ids, target_ids, strict=True):
        target = target[:max(1, max_length // 2) - 1] + [tokenizer.eos_token_id]
        prompt = prompt[max(0, len(prompt) - (max_length - len(target))):]
        if not prompt:
            raise ValueError(f"max_length {max_length} leaves no room for a prompt")
        sequences.append(prompt + target)
        prompt_lengths.append(len(prompt))
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    return GenerativeSplit(torch.tensor([t for s in sequences for t in s], dtype=torch.int64),
                           torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                           torch.tensor(prompt_lengths, dtype=torch.int64))


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits at the batch's target positions (N, V) and the targets (N,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    where = batch["labels"] != IGNORE
    return logits[where], batch["labels"][where]


def label_loss(model, batch) -> dict[str, torch.Tensor]:
    """Cross-entropy on the target tokens: the teacher's fine-tune and the baseline."""
    logits, targets = target_logits(model, batch)
    return {"loss": F.cross_entropy(logits.float(), targets)}


def batches(split: GenerativeSplit, batch_size: int) -> list[torch.Tensor]:
    """Examples in length order, in batches: little compute on padding, the same order on
    every call."""
    return torch.argsort(split.lengths(), stable=True).split(batch_size)


@torch.no_grad()
def teacher_top_k(teacher, split: GenerativeSplit, k: int, batch_size: int,
                  device: torch.device, pad_id: int) -> TopK:
    """The teacher's top-k at every target token of ``split``, in the split's order (in
    float32: the cache is what every student learns from)."""
    was_training = teacher.training
    teacher.eval()
    per_example: list[TopK | None] = [None] * len(split)
    for indices in batches(split, batch_size):
        batch = {name: value.to(device) for name, value in split.batch(indices, pad_id).items()}
        logits, _ = target_logits(teacher, batch)
        on_device = TopK.of(logits, k)  # (N, V) stays where it is; only (N, k) moves
        top = TopK(on_device.ids.cpu(), on_device.log_probs.cpu(), on_device.tail.cpu(),
                   on_device.vocab_size)
        ends = split.target_lengths()[indices].cumsum(0).tolist()
        for i, start, end in zip(indices.tolist(), [0] + ends[:-1], ends):
            per_example[i] = top.rows(torch.arange(start, end))
    teacher.train(was_training)
    return TopK(torch.cat([t.ids for t in per_example]),
                torch.cat([t.log_probs for t in per_example]),
                torch.cat([t.tail for t in per_example]), per_example[0].vocab_size)


@torch.no_grad()
def greedy_targets(model, split: GenerativeSplit, batch_size: int, device: torch.device,
                   pad_id: int, eos_id: int, max_new_tokens: int) -> list[list[int]]:
    """Each example's greedy generation after its prompt, up to its first eos (excluded),
    in the training's precision. Pinned to greedy whatever the checkpoint's own generation
    config (a hub model's may sample, or penalise repeats), so teacher and students compare."""
    was_training = model.training
    model.eval()
    generated: list[list[int]] = [[] for _ in range(len(split))]
    greedy = GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                              pad_token_id=pad_id)
    prompt_lengths = split.prompt_lengths
    for indices in torch.argsort(prompt_lengths, stable=True).split(batch_size):
        width = int(prompt_lengths[indices].max())
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(indices.tolist()):  # left-padded: generation continues at the end
            prompt = split.sequence(i)[:int(prompt_lengths[i])]
            input_ids[row, width - len(prompt):] = prompt
            attention_mask[row, width - len(prompt):] = 1
        with autocast(device):
            out = model.generate(input_ids=input_ids.to(device),
                                 attention_mask=attention_mask.to(device),
                                 generation_config=greedy)[:, width:].cpu()
        for row, i in enumerate(indices.tolist()):
            tokens = out[row].tolist()
            generated[i] = tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens
    model.train(was_training)
    return generated


@torch.no_grad()
def teacher_forced(model, split: GenerativeSplit, batch_size: int, device: torch.device,
                   pad_id: int) -> tuple[float, float, int]:
    """Token accuracy and mean NLL on the target tokens, and how many there are."""
    was_training = model.training
    model.eval()
    correct, nll, tokens = 0, 0.0, 0
    for indices in batches(split, batch_size):
        batch = {name: value.to(device) for name, value in split.batch(indices, pad_id).items()}
        with autocast(device):
            logits, targets = target_logits(model, batch)
        correct += int((logits.argmax(-1) == targets).sum())
        nll += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        tokens += len(targets)
    model.train(was_training)
    return correct / tokens, nll / tokens, tokens


def score_generative(model, split: GenerativeSplit, batch_size: int, device: torch.device,
                     pad_id: int, eos_id: int,
                     max_new_tokens: int) -> tuple[GenerativeScores, list[list[int]]]:
    """Token accuracy and NLL on the target tokens, greedy generation's exact match, and
    each example's generation."""
    token_accuracy, nll, tokens = teacher_forced(model, split, batch_size, device, pad_id)
    generated = greedy_targets(model, split, batch_size, device, pad_id, eos_id,
                               max_new_tokens)
    matches = exact_matches(generated, split)
    return GenerativeScores(token_accuracy=token_accuracy, nll=nll,
                            exact_match=sum(matches) / len(split), examples=len(split),
                            target_tokens=tokens), generated


def exact_matches(generated: list[list[int]], split: GenerativeSplit) -> list[bool]:
    """Per example: is its generation its target exactly (the target's eos apart)?"""
    return [tokens == split.sequence(i)[int(split.prompt_lengths[i]):-1].tolist()
            for i, tokens in enumerate(generated)]


def mean_prompt_length(split: GenerativeSplit) -> int:
    return max(1, math.floor(float(split.prompt_lengths.float().mean()) + 0.5))
