"""Tests for harness.shared: a hub teacher is keyed by the revision (commit) it resolves
to, so a changed hub model trains a new teacher instead of reusing the old one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from harness.config import TeacherConfig
from harness.models import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
COMMITS = ("1" * 40, "2" * 40)

# Run in a fresh interpreter: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once,
# at import. Each commit given is pointed to by refs/main in turn, as a hub update would.
PREPARE = textwrap.dedent("""
    import dataclasses, json, sys
    from pathlib import Path
    import torch
    from harness.config import DataConfig
    from harness.shared import prepare_shared
    from harness.study_file import load_study_config

    csv, cache, smoke, main_ref, *commits = sys.argv[1:]
    config = load_study_config(smoke)
    config = dataclasses.replace(
        config, data=DataConfig(source=csv, dev_split=None, test_split=None, max_length=16),
        teacher=dataclasses.replace(config.teacher, source="kd-test/tiny", architecture=None,
                                    epochs=1.0))
    results = []
    for commit in commits:
        Path(main_ref).write_text(commit)
        shared = prepare_shared(config, torch.device("cpu"), Path(cache))
        manifest = json.loads((Path(cache) / "teacher" / shared.teacher_key / "manifest.json")
                              .read_text())
        results.append({"key": shared.teacher_key, "source": manifest["fields"]["source"],
                        "reused": shared.reused["teacher"],
                        "pooler": shared.pretrained_teacher.bert.pooler.dense.bias.tolist()})
    print(json.dumps(results))
""")


def write_hub_snapshot(hub: Path, commit: str, seed: int) -> transformers.PreTrainedModel:
    """A tiny BERT saved as the hub cache stores revision ``commit`` of kd-test/tiny."""
    tokenizer = load_tokenizer(TeacherConfig())
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.BertModel(config)
    snapshot = hub / "models--kd-test--tiny" / "snapshots" / commit
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    return model


@pytest.mark.slow
def test_a_hub_teacher_is_keyed_by_the_revision_it_resolves_to(tmp_path):
    hub = tmp_path / "hf" / "hub"
    models = [write_hub_snapshot(hub, commit, seed) for seed, commit in enumerate(COMMITS)]
    refs = hub / "models--kd-test--tiny" / "refs"
    refs.mkdir()
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f"review number {i} {'good' if i % 2 else 'bad'},"
                                            f"{i % 2}\n" for i in range(60)))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PREPARE, str(csv), str(tmp_path / "cache"),
                           str(REPO / "studies" / "smoke.yaml"), str(refs / "main"),
                           COMMITS[0], COMMITS[0], COMMITS[1]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, again, updated = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["source"] == f"kd-test/tiny@{COMMITS[0]}" and not first["reused"]
    assert again["key"] == first["key"] and again["reused"]
    assert updated["source"] == f"kd-test/tiny@{COMMITS[1]}" and not updated["reused"]
    assert updated["key"] != first["key"]
    # Students copy the weights of the revision the key names.
    for result, model in ((first, models[0]), (updated, models[1])):
        assert result["pooler"] == model.pooler.dense.bias.tolist()
