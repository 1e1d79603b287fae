"""Provenance stored with every trial: code version, libraries, device."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

LIBRARIES = ("torch", "transformers", "datasets", "optuna", "wandb", "kd-harness")


@functools.cache
def _code_version() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=5).stdout)
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = None
    return {"git_commit": commit or None, "git_dirty": dirty, "python": platform.python_version(),
            "libraries": libraries}


def provenance(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {**_code_version(), "device": str(device), "device_name": name or platform.machine(),
            "torch_threads": torch.get_num_threads()}
