"""Turns an Optuna study of kd-harness trials into accuracy-versus-compute tables and plots.

- ``analysis.frame``: study (storage URL + name) -> DataFrame, one row per trial; the
  numeric-column helper and the complete-trials filter every other module reads through;
- ``analysis.stats``: Wilson and Newcombe (paired / independent) 95% intervals, and the
  interval, retention and speed-up columns they add to a study frame;
- ``analysis.front``: Pareto front, dominated flag, hypervolume, and the tables beside
  it: the front with intervals, KD gain per student size, best student under budgets;
- ``analysis.report``: the report object and its markdown and text rendering;
- ``analysis.plots``: front, study comparison and KD-gain-vs-parameter figures;
- ``analysis.pareto``: the command line, ``python -m analysis.pareto --study-name NAME``;
- ``analysis/pareto_report.ipynb``: the same in a notebook, plus T / T_s / alpha effects.
"""
