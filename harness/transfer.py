"""The transfer set (``transfer:``): examples without labels that the fine-tuned teacher
labels once, on which the student learns from the KD term alone (Tang et al. 2019).

Augmented copies work on the teacher's word-pieces, so students of another tokenizer cannot
use them (``harness.shared`` refuses the combination before any training). Copy k of every
training example is made with its own seeded generator, so a trial distilling on c copies
uses exactly the first c of those the study built (``transfer_copies`` may be searched).
"""

from __future__ import annotations

import dataclasses
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
    ids = split.ids.clone()
    special = torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))
    if neighbours is not None and rules.neighbour_prob > 0:
        # A generator of its own, so copies made without neighbours stay as they were.
        drawn = torch.Generator().manual_seed(seed * 10_007 + copy + 1_000_003)
        replaced = (torch.rand(len(ids), generator=drawn) < rules.neighbour_prob) & ~special
        choice = torch.randint(neighbours.shape[1], (len(ids),), generator=drawn)
        ids[replaced] = neighbours[ids[replaced], choice[replaced]]
    masked = (torch.rand(len(ids), generator=generator) < rules.mask_prob) & ~special
    if masked.any():
        ids[masked] = mask_id
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
