"""Prompt and target texts of a generative study (``task: causal-lm`` or ``seq2seq``): a
local file (CSV/JSON/JSONL/Parquet) or a hub dataset with ``data.prompt_column`` and
``data.target_column``, read through datasets' loaders (``harness.data``) and split as the
classification data is: a missing dev or test split carved out of train, the select split
carved out of train (``data.select_fraction``), each subsampled where the study limits it."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from harness.config import DataConfig
from harness.data import CARVED_SHARE, SOURCE_SPLITS, SPLITS, DataError, load_dataset_dict


@dataclass(frozen=True)
class PromptTargets:
    prompts: tuple[str, ...]
    targets: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, rows) -> PromptTargets:
        return PromptTargets(tuple(self.prompts[i] for i in rows),
                             tuple(self.targets[i] for i in rows))


@dataclass(frozen=True)
class PromptTargetData:
    splits: dict[str, PromptTargets]  # train, select, dev, test
    fingerprint: str  # of every split's texts: part of the teacher's and cache's keys


def load_prompt_target_data(config: DataConfig) -> PromptTargetData:
    loaded = load_dataset_dict(config)
    if config.train_split not in loaded:
        raise DataError(f"data.train_split: no split {config.train_split!r}; the source has "
                        f"{sorted(loaded)}")
    columns = loaded[config.train_split].column_names
    for key, name in (("prompt_column", config.prompt_column),
                      ("target_column", config.target_column)):
        if name not in columns:
            raise DataError(f"data.{key}: no column {name!r}; the columns are {columns}")
    wanted = {"train": config.train_split, "dev": config.dev_split, "test": config.test_split}
    splits = {name: _texts(loaded[split], config) for name, split in wanted.items()
              if split is not None and split in loaded}
    for name, split in splits.items():
        if not split:
            raise DataError(f"data.{name}_split: split {wanted[name]!r} has no rows")
    missing = [name for name in SOURCE_SPLITS if name not in splits]
    counts = dict.fromkeys(missing, len(splits["train"]) // CARVED_SHARE)
    if config.select_fraction > 0:
        counts["select"] = max(1, round(config.select_fraction * len(splits["train"])))
    if any(count == 0 for count in counts.values()):
        raise DataError(f"data.source: {len(splits['train'])} training rows cannot give the "
                        f"{' and '.join(counts)} split(s); need at least {CARVED_SHARE} rows")
    splits.update(_carve(splits["train"], counts, config.split_seed))
    if "select" not in splits:  # select_fraction 0: checkpoints chosen on dev
        splits["select"] = splits["dev"]
    if not splits["train"]:
        raise DataError("data.select_fraction: no training rows are left after carving")
    limits = {"train": config.max_train_examples, "select": config.max_eval_examples,
              "dev": config.max_eval_examples, "test": config.max_eval_examples}
    splits = {name: _subsample(splits[name], limits[name], config.split_seed) for name in SPLITS}
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(json.dumps([splits[name].prompts, splits[name].targets]).encode())
    return PromptTargetData(splits, digest.hexdigest()[:16])


def _texts(split, config: DataConfig) -> PromptTargets:
    def column(name: str) -> tuple[str, ...]:
        return tuple("" if value is None else str(value) for value in split[name])

    return PromptTargets(column(config.prompt_column), column(config.target_column))


def _carve(train: PromptTargets, counts: dict[str, int], seed: int) -> dict[str, PromptTargets]:
    """``counts[name]`` seeded rows of train for each name; the rest stays train."""
    rows = list(range(len(train)))
    random.Random(seed).shuffle(rows)
    carved, taken = {}, 0
    for name, count in counts.items():
        carved[name] = train.take(sorted(rows[taken:taken + count]))
        taken += count
    carved["train"] = train.take(sorted(rows[taken:]))
    return carved


def _subsample(split: PromptTargets, limit: int | None, seed: int) -> PromptTargets:
    if limit is None or limit >= len(split):
        return split
    return split.take(sorted(random.Random(seed).sample(range(len(split)), limit)))
