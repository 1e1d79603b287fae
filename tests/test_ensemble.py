"""A stronger teacher as a measured axis: ``teacher.ensemble: K`` fine-tunes on K seeds
whose averaged probabilities are the teacher's (harness.shared)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from harness.config import ConfigError
from harness.evaluation import score
from harness.shared import prepare_shared
from harness.study_file import study_config_from_dict


def test_the_ensembles_logits_are_its_members_averaged_probabilities(smoke_config, smoke_shared,
                                                                    tmp_path):
    teacher = dataclasses.replace(smoke_config.teacher, ensemble=2)
    shared = prepare_shared(dataclasses.replace(smoke_config, teacher=teacher),
                            torch.device("cpu"), tmp_path / "cache")
    (artifact,) = [p for p in (tmp_path / "cache" / "teacher").iterdir() if p.is_dir()]
    members = [load_file(str(artifact / "members" / str(k) / "logits.safetensors"))
               for k in range(2)]
    for split in ("train", "dev", "test"):
        # By hand, in float64: the mean of the two members' softmax, then its log.
        probabilities = [torch.exp(m[split].double() - torch.logsumexp(m[split].double(), -1,
                                                                        keepdim=True))
                         for m in members]
        expected = torch.log((probabilities[0] + probabilities[1]) / 2).float()
        torch.testing.assert_close(shared.teacher_logits[split], expected, rtol=0, atol=1e-6)
        # Member 0 is the teacher a study without an ensemble fine-tunes (the same seed).
        torch.testing.assert_close(members[0][split], smoke_shared.teacher_logits[split],
                                   rtol=0, atol=1e-5)
    assert not torch.equal(members[0]["dev"], members[1]["dev"])  # another seed, another model
    assert len(shared.teacher_members) == 2
    for member, stored in zip(members, shared.teacher_members):
        assert stored["dev"] == score(member["dev"], shared.text.tokens["dev"].labels).accuracy
    assert shared.teacher_key != smoke_shared.teacher_key


@pytest.mark.parametrize("extra, message", [
    ({"transfer": {"copies": 2}}, "a transfer set is labelled by one teacher"),
    ({"teacher": {"ensemble": 2, "fine_tune": False}}, "an ensemble is of fine-tunes"),
])
def test_an_ensemble_it_cannot_serve_is_refused(extra, message):
    raw = {"teacher": {"ensemble": 2, **extra.get("teacher", {})},
           **{k: v for k, v in extra.items() if k != "teacher"}}
    with pytest.raises(ConfigError, match=rf"^teacher\.ensemble: {message}"):
        study_config_from_dict(raw)


def test_the_reports_teacher_row_lists_an_ensembles_members(tmp_path):
    import json

    from analysis.frame import study_frame
    from analysis.report import build_report, front_rows
    from tests.synthetic import create_synthetic_study

    frame = study_frame(create_synthetic_study(f"journal:{tmp_path / 's.journal'}", "s"))
    assert front_rows(build_report(frame))[1][0][0] == "teacher (reference)"
    frame["teacher_member_dev_accuracies"] = json.dumps([0.801, 0.7925])
    (teacher_row, *_) = front_rows(build_report(frame))[1]
    assert teacher_row[0] == ("teacher: ensemble of 2 (reference; members' dev acc 80.1, 79.2)")
