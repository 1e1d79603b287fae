"""The shipped study files, installed as package data of ``harness.studies`` so that
``python -m harness.study`` finds ``default.yaml`` from any folder after ``pip install .``."""
