"""Turns an Optuna study of kd-harness trials into accuracy-versus-compute tables and plots.

- ``analysis.frame``: study (storage URL + name) -> DataFrame, one row per trial;
- ``analysis.front``: Pareto front, dominated flag, hypervolume (pure functions);
- ``analysis.stats``: Wilson and Newcombe (paired / independent) 95% intervals;
- ``analysis.tables``: intervals, retention, speed-up, KD gain per size, budgets;
- ``analysis.report`` / ``analysis.render``: the report object, markdown and text;
- ``analysis.plots``: front, study comparison and KD-gain-vs-parameter figures;
- ``analysis.pareto``: the command line, ``python -m analysis.pareto --study-name NAME``;
- ``analysis/pareto_report.ipynb``: the same in a notebook, plus T / T_s / alpha effects.
"""
