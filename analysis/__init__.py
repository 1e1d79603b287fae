"""Turns an Optuna study of kd-harness trials into accuracy-versus-compute tables and plots."""
