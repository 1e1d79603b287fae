"""Load an Optuna study of kd-harness trials into a pandas DataFrame.

One row per trial: ``trial`` (the trial number), ``state`` (``COMPLETE``, ``PRUNED``,
``FAIL``, ``RUNNING`` or ``WAITING``), every stored user attribute under its own name
(the contract fields such as ``dev_accuracy`` and ``flops_per_example``, the paired
counts, the teacher's numbers, ``fail_reason`` on failed trials), the fields of the
trial's deployment where the study recorded one after it (``harness.sweep.deployment``:
``int8_dev_accuracy``, ``int8_latency_ms``, ... or ``deploy_error``), then any sampled
parameter or objective value not already stored as a user attribute. User attributes
come first because they hold both the sampled and the fixed values of a trial.

The rest of ``analysis`` reads such frames through two helpers here: ``column`` (a field
as float64, NaN where missing) and ``complete_trials`` (the rows that count).

Only this module and ``analysis.pareto`` touch Optuna; everything else takes DataFrames.
"""

from __future__ import annotations

import json
import numbers

import numpy as np
import optuna
import pandas as pd

from harness.sweep.storage import DEFAULT_STORAGE, journal_path, open_storage, redact_url
from harness.sweep.study_record import DEPLOYED

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


class StudyLoadError(LookupError):
    """A study that cannot be loaded; the message says why and lists what exists."""


def open_existing_storage(storage: str | None) -> optuna.storages.BaseStorage:
    """Open ``storage`` for reading without creating a journal file that is not there."""
    url = storage or DEFAULT_STORAGE
    path = journal_path(url)
    if path is not None and not path.is_file():
        # open_storage would create an empty journal (and its folder) as a side effect.
        raise StudyLoadError(f"no study storage at {redact_url(url)}: {path} does not exist")
    return open_storage(url)


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    """The study called ``study_name``; an unknown name lists the studies that exist."""
    backend = open_existing_storage(storage)
    names = sorted(optuna.get_all_study_names(storage=backend))
    if study_name not in names:
        listing = ", ".join(names) if names else "(none)"
        raise StudyLoadError(f"no study named {study_name!r} in "
                             f"{redact_url(storage or DEFAULT_STORAGE)}; studies there: {listing}")
    return optuna.load_study(study_name=study_name, storage=backend)


def load_study_frame(study_name: str, storage: str | None = None) -> pd.DataFrame:
    """Load a study by name from a storage URL (None: the default journal) as a DataFrame."""
    return study_frame(load_study(study_name, storage))


def study_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of ``study``; ``frame.attrs`` holds the study name and objectives."""
    objectives = list(study.user_attrs.get("objectives") or [])
    attrs = study.user_attrs
    rows = [_trial_row(trial, objectives, attrs.get(f"{DEPLOYED}{trial.number}") or {})
            for trial in study.get_trials(deepcopy=False)]
    columns = _column_order(rows)
    frame = pd.DataFrame(rows, columns=columns)
    for name in columns:
        if _all_ints(row.get(name) for row in rows):
            # Counts stay integers even where failed trials leave them empty.
            frame[name] = frame[name].astype("Int64")
    frame.attrs["study_name"] = study.study_name
    frame.attrs["objectives"] = objectives
    frame.attrs["directions"] = [d.name.lower() for d in study.directions]
    return frame


def _trial_row(trial: optuna.trial.FrozenTrial, objectives: list[str], deployed: dict) -> dict:
    row = {"trial": trial.number, "state": trial.state.name}
    row.update(trial.user_attrs)
    for name, value in deployed.items():  # the front's deployment, recorded after the trial
        row.setdefault(name, value)
    for name, value in trial.params.items():
        row.setdefault(name, value)
    # Objective values back the stored metrics; name them only where nothing else does.
    if trial.values is not None and len(objectives) == len(trial.values):
        for name, value in zip(objectives, trial.values):
            row.setdefault(name, value)
    return {key: _scalar(value) for key, value in row.items()}


def _scalar(value):
    """Keep scalars; turn lists and dicts (JSON-valued attributes) into JSON text."""
    if value is None or isinstance(value, (str, bool, numbers.Number)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _all_ints(values) -> bool:
    """True when every present value is an int (bools excluded) and at least one is."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 for v in present)


def _column_order(rows: list[dict]) -> list[str]:
    """``trial`` and ``state`` first, then columns in the order trials first stored them."""
    order = {"trial": None, "state": None}
    for row in rows:
        order.update(dict.fromkeys(row))
    return list(order)


def state_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Number of trials in each Optuna state (every state present, zero if none)."""
    counts = frame["state"].value_counts() if "state" in frame.columns else pd.Series()
    return {state: int(counts.get(state, 0)) for state in STATES}


def state_summary(frame: pd.DataFrame) -> str:
    """``"N complete, M pruned, K failed"``, plus running/waiting trials when there are any."""
    counts = state_counts(frame)
    text = f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
    for state in ("RUNNING", "WAITING"):
        if counts[state]:
            text += f", {counts[state]} {state.lower()}"
    return text


def complete_mask(frame: pd.DataFrame) -> np.ndarray:
    """True on COMPLETE rows; all True for a frame without ``state``.

    A frame without ``state`` is one built by hand (tests, a front already filtered), so
    every row of it counts as complete.
    """
    if "state" not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    return (frame["state"] == "COMPLETE").to_numpy()


def complete_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """The COMPLETE rows only (every row without ``state``), indexed from 0.

    Failed, pruned and unfinished trials are left out of every table, plot and front.
    """
    return frame[complete_mask(frame)].reset_index(drop=True)


def column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float64: NaN where missing or not a number, all NaN if not stored."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    values = pd.to_numeric(frame[name], errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)
