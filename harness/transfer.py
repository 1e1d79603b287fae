"""The transfer set (``transfer:``): examples without labels that the fine-tuned teacher
labels once, on which the student learns from the KD term alone (Tang et al. 2019).

Augmented copies work on the teacher's word-pieces, so students of another tokenizer cannot
use them (``harness.shared`` refuses the combination before any training). Copy k of every
training example is made with its own seeded generator, so a trial distilling on c copies
uses exactly the first c of those the study built (``transfer_copies`` may be searched).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import DataConfig, TransferConfig
from harness.data import LOCAL_FORMATS, DataError, TokenizedSplit

UNLABELED = -1  # the label of a transfer example


@dataclass(frozen=True)
class TransferSet:
    tokens: TokenizedSplit  # copy 0 of every training example, copy 1, ..., then unlabeled texts
    teacher_logits: torch.Tensor  # (n, classes) float32
    copy_size: int  # training examples per copy
    copies: int
    key: str
    reused: bool  # came from the cache

    def examples(self, copies: int) -> int:
        """How many transfer examples a trial distilling on ``copies`` copies has."""
        return copies * self.copy_size + len(self.tokens) - self.copies * self.copy_size

    def for_trial(self, copies: int) -> tuple[TokenizedSplit, torch.Tensor]:
        """The examples (and teacher logits) of a trial distilling on ``copies`` copies."""
        kept = [(0, copies * self.copy_size), (self.copies * self.copy_size, len(self.tokens))]
        tokens = TokenizedSplit.concatenate([self.tokens.slice(a, b) for a, b in kept])
        logits = torch.cat([self.teacher_logits[a:b] for a, b in kept])
        return tokens, logits


def neighbour_table(embeddings: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """(vocabulary, k) word-piece ids: row i holds the ``k`` ``candidates`` nearest to
    word-piece i by cosine similarity of ``embeddings`` (itself excluded), for i among the
    candidates; any other row holds i itself."""
    k = min(k, len(candidates) - 1)
    table = torch.arange(len(embeddings))[:, None].repeat(1, max(k, 1))
    if k < 1:
        return table
    unit = torch.nn.functional.normalize(embeddings[candidates].double(), dim=-1)
    for rows in torch.arange(len(candidates)).split(1024):  # a few MB of similarities at once
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = -torch.inf
        table[candidates[rows]] = candidates[similarity.topk(k, dim=-1).indices]
    return table


def augmented_copy(split: TokenizedSplit, copy: int, rules: TransferConfig, mask_id: int | None,
                   special_ids: list[int], seed: int,
                   neighbours: torch.Tensor | None = None) -> TokenizedSplit:
    """Copy ``copy`` of every example of ``split``: each word-piece (not the template's
    special tokens) replaced with ``rules.neighbour_prob`` by a random one of its
    ``neighbours`` (a ``neighbour_table``), then by ``mask_id`` with ``rules.mask_prob``,
    then, with ``rules.ngram_prob``, a random n-gram of the example's word-pieces kept
    between its leading and trailing special tokens (single texts; a pair keeps both)."""
    generator = torch.Generator().manual_seed(seed * 10_007 + copy)
    special = torch.isin(split.ids, torch.tensor(special_ids, dtype=split.ids.dtype))
    ids = replaced_word_pieces(split.ids, special, rules, mask_id, neighbours, generator,
                               neighbour_seed=seed * 10_007 + copy + 1_000_003)
    draws = torch.rand(len(split), generator=generator)
    starts = torch.rand(len(split), generator=generator)
    lengths = torch.randint(1, rules.max_ngram + 1, (len(split),), generator=generator)
    sequences = []
    for i in range(len(split)):
        first, last = int(split.offsets[i]), int(split.offsets[i + 1])
        sequence, words = ids[first:last], (~special[first:last]).nonzero().flatten()
        if split.type_ids is not None or draws[i] >= rules.ngram_prob or len(words) < 2:
            sequences.append(sequence)
            continue
        a, b = int(words[0]), int(words[-1]) + 1  # the word-pieces between the specials
        n = min(int(lengths[i]), b - a)
        start = a + int(starts[i] * (b - a - n + 1))
        sequences.append(torch.cat([sequence[:a], sequence[start:start + n], sequence[b:]]))
    copied = TokenizedSplit.from_sequences(
        sequences, torch.full((len(split),), UNLABELED, dtype=torch.int64))
    # A pair is masked, never cut: its segment ids stay the split's.
    return dataclasses.replace(copied, type_ids=None if split.type_ids is None
                               else split.type_ids.clone())


def replaced_word_pieces(ids: torch.Tensor, fixed: torch.Tensor, rules: TransferConfig,
                         mask_id: int | None, neighbours: torch.Tensor | None,
                         generator: torch.Generator, neighbour_seed: int) -> torch.Tensor:
    """A copy of ``ids`` whose entries (but the ``fixed`` ones) are each replaced, with
    ``rules.neighbour_prob``, by a random one of their ``neighbours`` (a ``neighbour_table``),
    then by ``mask_id`` with ``rules.mask_prob``. The neighbours draw from a generator of
    their own (``neighbour_seed``), so views made without them stay as they were."""
    ids = ids.clone()
    if neighbours is not None and rules.neighbour_prob > 0:
        drawn = torch.Generator().manual_seed(neighbour_seed)
        replaced = (torch.rand(ids.shape, generator=drawn) < rules.neighbour_prob) & ~fixed
        choice = torch.randint(neighbours.shape[1], ids.shape, generator=drawn)
        ids[replaced] = neighbours[ids[replaced], choice[replaced]]
    masked = (torch.rand(ids.shape, generator=generator) < rules.mask_prob) & ~fixed
    if masked.any():
        ids[masked] = mask_id
    return ids


@dataclass(frozen=True)
class OnlineViews:
    """Consistent teaching, online (``transfer.online``; Beyer et al. 2022, "Knowledge
    distillation: a good teacher is patient and consistent"): every batch of the
    distillation phase, and of its label-only baseline, is replaced by a fresh view made by
    the transfer rules (neighbour replacement, masks; each example keeps its length), drawn
    from the phase's seed (the student's) and the step. Both arms have the same seed and
    data order, so they read the same views, and kd_gain measures the teacher's signal
    alone; the teacher scores the view the student reads (``harness.student_loss``), never
    a cached one."""

    rules: TransferConfig
    mask_id: int | None
    special_ids: tuple[int, ...]
    neighbours: torch.Tensor | None  # a neighbour_table, where rules.neighbour_prob > 0

    def __call__(self, batch: dict[str, torch.Tensor], seed: int,
                 step: int) -> dict[str, torch.Tensor]:
        """``batch`` (padded, on the CPU) as the student and teacher read it at ``step`` of a
        phase seeded with ``seed``."""
        ids = batch["input_ids"]
        fixed = torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype)) | (
            batch["attention_mask"] == 0)
        start = seed * 10_007 + step
        return {**batch, "input_ids": replaced_word_pieces(
            ids, fixed, self.rules, self.mask_id, self.neighbours,
            torch.Generator().manual_seed(start), neighbour_seed=start + 1_000_003)}

    def identity(self) -> dict:
        """What decides the views (with the phase's seed), for the keys of the artifacts
        trained on them."""
        return {"rules": {name: getattr(self.rules, name)
                          for name in ("neighbour_prob", "neighbours", "mask_prob")},
                "mask_id": self.mask_id,
                "neighbours": None if self.neighbours is None else hashlib.sha256(
                    self.neighbours.numpy().tobytes()).hexdigest()[:20]}


def unlabeled_texts(path: str, data: DataConfig, tokenizer) -> TokenizedSplit:
    """The texts of a local file, tokenized as the training data is."""
    import datasets

    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if not file.is_file() or suffix not in LOCAL_FORMATS:
        raise DataError(f"transfer.unlabeled: expected a local file, one of "
                        f"{sorted(LOCAL_FORMATS)}, got {path!r}")
    try:
        loaded = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(file))["train"]
    except Exception as error:  # empty, truncated or malformed files raise many types
        raise DataError(f"transfer.unlabeled: cannot read {file} ({type(error).__name__}: "
                        f"{str(error)[:200]})") from error
    missing = [column for column in data.columns if column not in loaded.column_names]
    if missing:
        raise DataError(f"transfer.unlabeled: {file} has no column {missing[0]!r}; its columns "
                        f"are {loaded.column_names}")
    texts = [list(loaded[column]) for column in data.columns]
    encoded = tokenizer(*texts, truncation=True, max_length=data.max_length)
    return TokenizedSplit.from_sequences(
        encoded["input_ids"], torch.full((len(loaded),), UNLABELED, dtype=torch.int64),
        encoded.get("token_type_ids") if len(texts) == 2 else None)
