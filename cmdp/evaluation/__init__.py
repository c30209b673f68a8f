"""Evaluation of students (and baselines): accuracy, pass@k, constraint satisfaction, KL."""
from cmdp.evaluation.evaluator import (evaluate_and_write, evaluate_baselines, evaluate_model,
                                       markdown_table, write_results)
