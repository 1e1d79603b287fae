"""Generative examples: a prompt, then a target the model learns to write.

Each example is one token sequence, ``prompt + target + eos``; the model is trained and
scored on the target's tokens only, so a prompt is read, never learned. A causal LM reads
the sequence and predicts each target token at the position before it; an encoder-decoder
(``decoder_start_id`` set: T5) encodes the prompt and its decoder reads
``[start] + target`` shifted by one, as transformers' ``shift_tokens_right`` builds it.
``GenerativeSplit`` has the interface ``harness.train.train_phase`` batches over (``len``,
``lengths``, ``batch``), so every
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

import sacrebleu
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
    decoder_start_id: int | None = None  # set for an encoder-decoder: its decoder's first input

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
        """Right-padded ``input_ids`` and ``attention_mask`` (B, L) and ``labels``: at each
        position the next token where it is a target token, else ``IGNORE``. A causal LM's
        (B, L) read the whole sequence; an encoder-decoder's ``input_ids`` are the prompt,
        its ``labels`` (B, T) the target, read by ``decoder_input_ids`` (B, T). With a
        teacher, ``top_ids``, ``top_log_probs`` (N, k) and ``top_tail`` (N,) for the batch's
        N target tokens in the order ``labels != IGNORE`` reads them (row by row)."""
        indices = indices.tolist()
        batch = (self._causal_batch(indices, pad_id) if self.decoder_start_id is None
                 else self._encoder_decoder_batch(indices, pad_id))
        if self.teacher is not None:
            starts = self.teacher_starts
            rows = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in indices])
            top = self.teacher.rows(rows)
            batch.update(top_ids=top.ids, top_log_probs=top.log_probs, top_tail=top.tail)
        return batch

    def _causal_batch(self, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        width = int(self.lengths()[indices].max())
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE)
        for row, i in enumerate(indices):
            sequence, prompt = self.sequence(i), int(self.prompt_lengths[i])
            input_ids[row, :len(sequence)] = sequence
            attention_mask[row, :len(sequence)] = 1
            labels[row, prompt - 1:len(sequence) - 1] = sequence[prompt:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _encoder_decoder_batch(self, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        prompt_width = int(self.prompt_lengths[indices].max())
        target_width = int(self.target_lengths()[indices].max())
        input_ids = torch.full((len(indices), prompt_width), pad_id, dtype=torch.int64)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(indices), target_width), IGNORE, dtype=torch.int64)
        decoder_input_ids = torch.full_like(labels, pad_id)
        for row, i in enumerate(indices):
            sequence, prompt = self.sequence(i), int(self.prompt_lengths[i])
            target = sequence[prompt:]
            input_ids[row, :prompt] = sequence[:prompt]
            attention_mask[row, :prompt] = 1
            labels[row, :len(target)] = target
            decoder_input_ids[row, 0] = self.decoder_start_id
            decoder_input_ids[row, 1:len(target)] = target[:-1]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "decoder_input_ids": decoder_input_ids}


def tokenize_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str],
                      max_length: int, decoder_start_id: int | None = None) -> GenerativeSplit:
    """``prompt + target + eos`` per example, at most ``max_length`` tokens: a target is cut
    to half of them at most, then the prompt loses its start (the end is what the target
    continues). ``decoder_start_id``: the examples of an encoder-decoder."""
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
    return _split_of(sequences, torch.tensor(prompt_lengths, dtype=torch.int64),
                     decoder_start_id)


def with_targets(split: GenerativeSplit, targets: Sequence[Sequence[int]], eos_id: int,
                 max_length: int) -> GenerativeSplit:
    """``split``'s prompts, each followed by its new target (the teacher's generation, for
    sequence-level KD) and eos, the target cut where the example would pass ``max_length``
    tokens (the prompt is kept whole: the baseline's example has it so)."""
    sequences = []
    for i, target in enumerate(targets):
        prompt = split.sequence(i)[:int(split.prompt_lengths[i])].tolist()
        room = max(0, max_length - len(prompt) - 1)
        sequences.append(prompt + list(target)[:room] + [eos_id])
    return _split_of(sequences, split.prompt_lengths.clone(), split.decoder_start_id)


def _split_of(sequences: list[list[int]], prompt_lengths: torch.Tensor,
              decoder_start_id: int | None) -> GenerativeSplit:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    return GenerativeSplit(torch.tensor([t for s in sequences for t in s], dtype=torch.int64),
                           torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                           prompt_lengths, decoder_start_id=decoder_start_id)


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits at the batch's target positions (N, V) and the targets (N,)."""
    decoder = ({"decoder_input_ids": batch["decoder_input_ids"]}
               if "decoder_input_ids" in batch else {})
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   **decoder).logits
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
                                 generation_config=greedy).cpu()
        # A causal LM's output continues its prompt; a decoder's starts at its start token.
        out = out[:, 1:] if model.config.is_encoder_decoder else out[:, width:]
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


def bleu(tokenizer, generated: list[list[int]], split: GenerativeSplit) -> float:
    """Corpus BLEU (sacrebleu, with its standard 13a tokenisation of detokenised text) of
    the decoded generations against the decoded targets, in 0-100."""
    def text(tokens) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True)

    references = [text(split.sequence(i)[int(split.prompt_lengths[i]):-1])
                  for i in range(len(split))]
    return sacrebleu.corpus_bleu([text(tokens) for tokens in generated], [references]).score
