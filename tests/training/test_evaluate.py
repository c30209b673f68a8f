"""Evaluation during training and from the command line (qwen_math.py:small plumbing)."""
import json
import os

import numpy as np
import pytest

from cmdp import evaluate
from cmdp.training import trainer
from cmdp.training.logging import read_metrics
from tests.training.metrics_doc import undocumented
from tests.training.tiny import load_config_file


def test_train_then_evaluate(tmp_path):
  config = load_config_file("qwen_math.py", "small")  # grad accumulation 2, pass@2
  config.eval.include_teacher = True
  config.eval.include_initial_student = True
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir)

  with open(f"{workdir}/eval.json") as f:
    report = json.load(f)
  assert report["step"] == 2
  assert set(report["models"]) == {"student", "teacher", "initial_student"}
  student = report["models"]["student"]
  assert student["num_examples"] == student["num_greedy"] == 4
  assert student["num_sampled"] == 8  # pass@2: two samples per prompt at the rollout temperature
  assert 0.0 <= student["pass@2"] <= 1.0
  for kind in ("greedy", "sampled"):
    q = [student[f"kl_seq_{kind}_q{p}"] for p in (10, 50, 90)]
    assert q == sorted(q) and student[f"kl_seq_{kind}_mean"] >= 0
    assert student[f"satisfaction_{kind}"] in {i / student[f"num_{kind}"]
                                              for i in range(student[f"num_{kind}"] + 1)}
  assert "satisfaction_greedy" not in report["models"]["teacher"]  # no cost vs itself
  # Every eval.json figure and every logged key has its row in docs/metrics.md.
  for model in report["models"].values():
    assert not undocumented(model, "eval.json"), "add rows to docs/metrics.md"
  assert not undocumented(set().union(*read_metrics(workdir)), "metrics.jsonl")
  # The end-of-training evaluation is logged too.
  last = read_metrics(workdir)[-1]
  assert last["eval/student/accuracy"] == student["accuracy"]
  assert os.path.getsize(f"{workdir}/run.png") > 10_000  # the end-of-run picture
  table = open(f"{workdir}/eval.md").read()
  assert "| initial_student |" in table and "| teacher |" in table

  # The command-line evaluation of the final checkpoint, under the config the run wrote
  # (`python -m cmdp.evaluate --workdir DIR`), reproduces the student's numbers.
  results = evaluate.run(evaluate.run_config(workdir), workdir)
  for key in ("accuracy", "kl_seq_greedy_mean", "satisfaction_greedy", "satisfaction_sampled",
              "accuracy_sampled", "response_length"):
    assert results["student"][key] == pytest.approx(student[key], rel=1e-5), key
  assert np.isclose(results["student"]["budget"], student["budget"])
