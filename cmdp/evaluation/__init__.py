"""Evaluation of students (and baselines): accuracy, pass@k, constraint satisfaction, KL.

It is given functions (`ModelFns`: prompts, samplers, decoding, the verifier, the scorer)
and examples, and imports nothing from training.
"""
from cmdp.evaluation.evaluator import (ModelFns, evaluate_model, markdown_table, scalars,
                                       write_results)
