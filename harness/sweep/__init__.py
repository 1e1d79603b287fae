"""The sweep layer: the study's command line and driver loop, the search space, the front's
confirmation over seeds, workers, storages, tracking and provenance. It alone imports
Optuna and W&B; it runs trials through ``harness.pipeline.run_trial`` and reaches
``analysis`` through one entry, the end-of-run report (``harness.sweep.report``)."""
