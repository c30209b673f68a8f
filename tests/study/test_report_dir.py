"""Where a study writes its report: by default into its workdir, never into docs/results.

configs/study_arith.py:small is run (`cmdp.study.compare.run_study`, as `python -m
cmdp.study` runs it) in a workdir whose stages have all finished: the cached supervised
stage (two tiny saved models), the calibration, the initial evaluation and every run's
result. The run reads them, trains nothing, and writes the report from them.
"""
import json
import os

import jax
import numpy as np

from cmdp import models
from cmdp.models.char_tokenizer import char_tokenizer
from cmdp.study import compare, pretrain, runner
from tests.training.tiny import _ROOT, load_config_file

BUDGETS = {"q50": 1.5, "q30": 0.8}
# (accuracy greedy, sampled satisfaction at q50, at q30) of each run, seed 0
RUNS = {"cmdp@3/q50": (0.30, 0.55, 0.35), "grpo": (0.40, 0.35, 0.20)}


def _metrics(accuracy: float, sat50: float, sat30: float) -> dict:
  return {"accuracy": accuracy, "accuracy_greedy": accuracy, "accuracy_sampled": accuracy / 2,
          "num_examples": 48, "satisfaction_sampled@q50": sat50,
          "satisfaction_sampled@q30": sat30, "satisfaction_greedy@q50": sat50,
          "satisfaction_greedy@q30": sat30}


def _write(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f)


def _finished_stages(study, workdir: str) -> int:
  """Every stage's output in `workdir`, as an earlier invocation leaves it; returns the
  saved models' parameter count."""
  tok = char_tokenizer()
  cfg = models.ModelConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                           num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
  shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.PRNGKey(0)))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # nothing compiled
  for role in pretrain.ROLES:
    models.save_pretrained(pretrain.hf_dir(workdir, role), cfg, params, tok)
  _write(os.path.join(workdir, "calibration.json"), {"budgets": BUDGETS})
  stage = {role: {"num_params": pretrain.count_params(pretrain.hf_dir(workdir, role)),
                  "wall_s": 60.0} for role in pretrain.ROLES}
  _write(os.path.join(workdir, "initial_eval.json"), {
      "teacher": _metrics(0.5, 0.9, 0.8), "student": _metrics(0.35, 0.5, 0.3),
      "pretrain": stage, "wall_s": 1.0})
  for m in runner.method_list(study):
    _write(os.path.join(runner.run_dir(workdir, m["name"], 0), runner.RESULT_FILE), {
        "method": m["name"], "objective": m["objective"], "seed": 0, "budget": BUDGETS["q50"],
        "metrics": _metrics(*RUNS[m["name"]]), "diagnostics": {}, "train_last": {},
        "wall_s": 30.0})
  return stage["student"]["num_params"]


def test_the_study_config_writes_its_report_into_the_workdir(tmp_path):
  study = load_config_file("study_arith.py", "small")
  # The committed report is regenerated with --output_dir docs/results, never by default.
  assert study.output_dir == ""
  study.compilation_cache = False  # keeps this process's JAX settings as they are
  committed = os.path.join(_ROOT, "docs", "results")
  before = {n: os.stat(os.path.join(committed, n)).st_mtime for n in os.listdir(committed)}
  workdir = str(tmp_path / "study")
  num_params = _finished_stages(study, workdir)
  assert sorted(m["name"] for m in runner.method_list(study)) == sorted(RUNS)

  payload = compare.run_study(study, workdir, "python -m cmdp.study (test)")

  results = os.path.join(workdir, "results")
  assert compare.report_dir(study, workdir) == results
  assert sorted(os.listdir(results)) == ["arith_v2.json", "arith_v2.md", "arith_v2.png"]
  saved = json.load(open(os.path.join(results, "arith_v2.json")))
  assert saved["budgets"] == payload["budgets"] == BUDGETS
  assert sorted(r["method"] for r in saved["runs"]) == sorted(RUNS)
  # grpo loses 15 points of satisfaction at q50 (0.50 -> 0.35): q50 is informative, and
  # cmdp@3 holds it (0.55) where no Lagrangian runs.
  assert saved["decisions"]["q50"]["informative"] is True
  assert saved["decisions"]["q50"]["holds"] == {"cmdp@3/q50": True}
  md = open(os.path.join(results, "arith_v2.md")).read()
  assert md.startswith(f"# {study.title}\n")
  assert "Command: `python -m cmdp.study (test)`. 2 runs" in md
  assert "**Verdict at q50.**" in md and "**Verdict at q30.**" in md
  assert "![accuracy against satisfaction](arith_v2.png)" in md
  assert f"The student: {num_params:,} parameters, trained from scratch in 1.0 min." in md
  with open(os.path.join(results, "arith_v2.png"), "rb") as f:
    assert f.read(4) == b"\x89PNG"
  # Nothing was trained (the report holds the finished runs' results), and the committed
  # report is as it was.
  assert {r["method"]: r["metrics"]["accuracy_greedy"] for r in saved["runs"]} == {
      name: run[0] for name, run in RUNS.items()}
  assert not [p for p in (tmp_path / "study").rglob("*") if p.name in ("metrics.jsonl",
                                                                        "checkpoints")]
  assert {n: os.stat(os.path.join(committed, n)).st_mtime
          for n in os.listdir(committed)} == before
