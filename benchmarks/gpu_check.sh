#!/usr/bin/env bash
# GPU check (issue 8): see benchmarks/gpu_check.py for what it measures.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, with PyPI: what the GPU machine lacks, into .whl/
#   bash benchmarks/gpu_check.sh             # there (no network; carry .whl); sized for < 5 min
#   bash benchmarks/gpu_check.sh --quick     # anywhere, toy sizes: a try before spending GPU time
#
# The GPU machine's python3 has torch, transformers, pandas, yaml, tqdm and safetensors,
# but not optuna or datasets. .whl/ carries those (Python 3.12 wheels of this venv's
# versions), pyarrow (datasets needs >= 24; the machine's is of unknown version; 53 of the
# 60 MB) and the teacher's tokenizer saved as a folder (the packaged teacher's wheel is
# 83 MB, over the 64 MiB a device call carries).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
CARRIED="optuna alembic sqlalchemy colorlog mako datasets dill multiprocess pyarrow"

if [[ "${1:-}" == --prepare ]]; then
    mkdir -p "$WHEELS"
    grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    pins=$(python -m pip freeze | grep -iE "^($(echo $CARRIED | tr ' ' '|'))==")
    python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" $pins
    python -c "
from harness.config import TeacherConfig
from harness.models import load_tokenizer
load_tokenizer(TeacherConfig()).save_pretrained('$WHEELS/tokenizer')"
    du -sh "$WHEELS"
    exit 0
fi

if ! python3 -c "import optuna, datasets" 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then  # say so now, not as pip's error
        echo "error: gpu_check.sh: needs optuna and datasets, and $WHEELS/ holds no wheels;" \
             "make them with: bash benchmarks/gpu_check.sh --prepare (where PyPI answers)" >&2
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 benchmarks/gpu_check.py "$@"
