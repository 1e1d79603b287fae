"""harness.sweep.objective.failure_reason: the fail_reason a failed trial stores."""

from __future__ import annotations

import pytest
import torch

from harness.sweep.objective import failure_reason
from harness.train import Diverged


class StageError(RuntimeError):
    pass


DIGITS = "".join(str(i % 10) for i in range(500))  # where it is cut shows


@pytest.mark.parametrize("error, reason", [
    (KeyboardInterrupt(), "interrupted"),
    (Diverged("distill: loss became nan at step 3"), "diverged"),
    # Recognised by its type, whatever its message says.
    (torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB"), "out of memory"),
    (RuntimeError("CUDA error: out of memory\nCompile with TORCH_USE_CUDA_DSA"), "out of memory"),
    (ValueError("bad shape"), "ValueError: bad shape"),
    (StageError("stage failed"), "StageError: stage failed"),  # the type's own name
    (KeyError("num_layers"), "KeyError: 'num_layers'"),
    (RuntimeError(DIGITS), "RuntimeError: " + DIGITS[:300]),
    (RuntimeError(DIGITS[:300]), "RuntimeError: " + DIGITS[:300]),
    (TypeError(""), "TypeError: "),
], ids=["ctrl-c", "diverged", "cuda-oom-type", "oom-message", "other", "subclass",
        "key-error", "long-message-cut", "300-characters-kept", "empty-message"])
def test_failure_reason(error, reason):
    assert failure_reason(error) == reason
