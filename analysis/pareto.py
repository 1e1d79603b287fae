"""Pareto report of a kd-harness study: accuracy against compute, with honest intervals.

    python -m analysis.pareto --study-name NAME [--storage URL] [--x AXIS] [--out DIR]
                              [--compare OTHER_STUDY ...]

Writes into ``--out`` (default ``runs/reports/<study-name>/``):

- ``pareto.csv``: one row per front trial (``trial`` column, every stored field, and the
  derived intervals, retention, speed-up and ``indistinguishable`` flag);
- ``pareto.md``: the front with the teacher as reference row, KD gain per student size,
  the best student under 50/25/10% of the teacher's FLOPs, and how to read them;
- ``pareto.png``: dev accuracy against the compute axis (log scale);
- ``compare.png`` with ``--compare``: the fronts of this and the other studies;

and prints the front. ``--x`` is one of flops_per_example (default), params, latency_ms,
train_flops, int8_latency_ms, int8_bytes (the last two where the study deployed its
front: ``deploy.export``), flops_per_token (a generative study's). ``--storage`` defaults
to the journal file ``runs/optuna.journal``. Only complete trials are analysed; failed and pruned ones are counted.

Exit status 2, with the reason on stderr and nothing written, for an unknown study (the
message lists the studies in that storage), a study with no complete trial, an unknown
axis, or (without ``--out``) a study name that cannot name a folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from analysis.frame import StudyLoadError, load_study_frame
from analysis.front import AXES
from analysis.plots import plot_comparison, plot_front, png_bytes
from analysis.report import NoCompleteTrials, build_report, render_markdown, render_text
from harness.artifacts import write_files
from harness.config import ConfigError
from harness.study_file import check_study_name
from harness.sweep.storage import DEFAULT_STORAGE, StorageError, redact_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.pareto",
        description="Write pareto.csv, pareto.md and pareto.png for a kd-harness study.")
    parser.add_argument("--study-name", required=True, help="name of the Optuna study")
    parser.add_argument("--storage", default=None,
                        help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    parser.add_argument("--x", default="flops_per_example", choices=AXES,
                        help="compute axis to minimise (default flops_per_example)")
    parser.add_argument("--out", default=None,
                        help="report folder (default runs/reports/<study-name>/)")
    parser.add_argument("--compare", action="append", default=[], metavar="OTHER_STUDY",
                        help="also plot this study's front in compare.png (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = redact_url(args.storage or DEFAULT_STORAGE)
    try:
        out = Path(args.out) if args.out else default_out(args.study_name)
        frame = load_study_frame(args.study_name, args.storage)
        report = build_report(frame, args.x, study_name=args.study_name)
        others = {name: load_study_frame(name, args.storage) for name in args.compare}
    except (ConfigError, StudyLoadError, NoCompleteTrials, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Everything is rendered in memory first, so a failure leaves no half-written report.
    files = {"pareto.csv": report.front.to_csv(index=False).encode(),
             "pareto.md": render_markdown(report, storage).encode(),
             "pareto.png": png_bytes(plot_front(frame, args.x))}
    if others:
        files["compare.png"] = png_bytes(plot_comparison({args.study_name: frame, **others},
                                                         args.x))
    write_files(out, files)
    print(render_text(report))
    print(f"wrote {', '.join(str(out / name) for name in files)}")
    return 0


def default_out(study_name: str) -> Path:
    """``runs/reports/<study-name>``, for a name that cannot leave that folder."""
    try:
        return Path("runs", "reports", check_study_name(study_name, "--study-name"))
    except ConfigError as error:
        raise ConfigError(f"{error}; give the report folder with --out") from error


if __name__ == "__main__":
    sys.exit(main())
