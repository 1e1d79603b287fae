"""`python -m analysis.pareto` on a synthetic study, its bad inputs, and the report notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nbformat
import optuna
import pandas as pd
import pytest
from nbclient import NotebookClient

from analysis.pareto import main
from harness.sweep.storage import open_storage

from .synthetic import create_synthetic_study

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "analysis" / "pareto_report.ipynb"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"journal:{tmp_path_factory.mktemp('cli')}/s.journal"
    create_synthetic_study(url, "smoke", n_complete=10, seed=1)
    create_synthetic_study(url, "other", n_complete=6, seed=2, failed=0, pruned=0)
    create_synthetic_study(url, "broken", n_complete=0, failed=2, pruned=1)
    return url


def test_cli_writes_the_three_files(storage, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--study-name", "smoke", "--storage", storage, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pareto.csv", "pareto.md", "pareto.png"]
    printed = capsys.readouterr().out
    assert "10 complete, 1 pruned, 1 failed" in printed and "teacher (reference)" in printed

    front = pd.read_csv(out / "pareto.csv")
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert set(front["trial"]) == {t.number for t in study.best_trials}
    assert (front["state"] == "COMPLETE").all()
    for name in ("dev_accuracy", "test_accuracy", "kd_gain", "flops_per_example", "T",
                 "alpha", "dev_accuracy_ci_low", "kd_gain_ci_high", "indistinguishable"):
        assert name in front.columns

    markdown = (out / "pareto.md").read_text()
    assert "| teacher (reference) |" in markdown and "KD gain, dev" in markdown
    assert "reported only" in markdown and "Best student under compute budgets" in markdown

    image = matplotlib.image.imread(out / "pareto.png")
    height, width = image.shape[:2]
    assert width >= 600 and height >= 400 and image.std() > 0.01  # not a blank canvas


def test_cli_replaces_an_old_report_and_compares_studies(storage, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "pareto.md").write_text("stale")
    args = ["--study-name", "smoke", "--storage", storage, "--out", str(out),
            "--x", "params", "--compare", "other"]
    assert main(args) == 0
    assert "parameters (count)" in (out / "pareto.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.png", "pareto.csv", "pareto.md", "pareto.png"]  # no staging folder left


def run_bad(args, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(args + ["--out", str(out)])
    return code, capsys.readouterr().err, out


def test_unknown_study_lists_studies_and_writes_nothing(storage, tmp_path, capsys):
    code, err, out = run_bad(["--study-name", "nope", "--storage", storage], tmp_path, capsys)
    assert code == 2 and "no study named 'nope'" in err
    assert "broken, other, smoke" in err and not out.exists()


def test_a_study_name_unfit_for_a_folder_needs_out(tmp_path, monkeypatch, capsys):
    # Studies made outside the harness (or before names were checked) may have any name.
    url = f"journal:{tmp_path / 'odd.journal'}"
    create_synthetic_study(url, "../escape", n_complete=4, seed=5)
    monkeypatch.chdir(tmp_path)
    assert main(["--study-name", "../escape", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study-name: study name '../escape' may hold only")
    assert "give the report folder with --out" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()
    assert main(["--study-name", "../escape", "--storage", url, "--out", "report"]) == 0
    assert (tmp_path / "report" / "pareto.csv").is_file()


def test_study_without_complete_trial_exits_2(storage, tmp_path, capsys):
    code, err, out = run_bad(["--study-name", "broken", "--storage", storage], tmp_path, capsys)
    assert code == 2 and "no complete trial" in err and "2 failed" in err
    assert not out.exists()


def test_unknown_axis_names_the_valid_ones(storage, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--study-name", "smoke", "--storage", storage, "--x", "seconds",
              "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    for axis in ("flops_per_example", "params", "latency_ms", "train_flops"):
        assert axis in err
    assert not (tmp_path / "report").exists()


def test_missing_journal_and_password_never_printed(tmp_path, capsys):
    code, err, out = run_bad(["--study-name", "x", "--storage",
                              f"journal:{tmp_path}/absent.journal"], tmp_path, capsys)
    assert code == 2 and "does not exist" in err and not (tmp_path / "absent.journal").exists()
    code, err, out = run_bad(["--study-name", "x", "--storage",
                              "postgresql://user:s3cret@127.0.0.1:1/db"], tmp_path, capsys)
    assert code == 2 and "s3cret" not in err and "***" in err and not out.exists()


def test_module_entry_point(storage, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "analysis.pareto", "--study-name", "smoke", "--storage", storage,
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": _pythonpath()})
    assert result.returncode == 0, result.stderr
    assert (out / "pareto.png").is_file() and "10 complete" in result.stdout


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


# ---- notebook ------------------------------------------------------------------------


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first = notebook.cells[0]
    assert "STORAGE" in first.source and "STUDY_NAME" in first.source
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.fixture
def private_kernel(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter, found only through JUPYTER_PATH.

    Nothing is installed globally, and the kernel is this test's Python even where a
    user-level "python3" kernelspec points elsewhere or no venv is activated.
    """
    spec = tmp_path / "jupyter" / "kernels" / "kd-harness-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kd-harness test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())  # the kernel imports analysis from here
    return "kd-harness-test"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(storage, private_kernel, monkeypatch):
    monkeypatch.setenv("KD_STORAGE", storage)
    monkeypatch.setenv("KD_STUDY_NAME", "smoke")
    monkeypatch.setenv("KD_COMPARE", "other")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name=private_kernel,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError if any cell fails
    outputs = [out for cell in notebook.cells if cell.cell_type == "code"
               for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 3  # front, KD gain vs parameters, comparison
    text = "".join(out.get("text", "") for out in outputs)
    assert "10 complete, 1 pruned, 1 failed" in text
