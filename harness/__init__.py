"""kd-harness: knowledge-distillation sweeps for Transformer text classifiers.

Importing this package loads no data, model or tokenizer.
"""
