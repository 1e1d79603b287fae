"""kd-harness: knowledge-distillation sweeps for Transformer text classifiers.

Two layers. The modules here are the trial: everything ``pipeline.run_trial`` needs
(configuration, data, models, losses, the training loop, compute, artifacts), with no
Optuna and no ``analysis``. ``harness.sweep`` runs trials as an Optuna study. Importing
either loads no data, model or tokenizer.
"""
