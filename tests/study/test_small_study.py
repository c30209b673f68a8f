"""`configs/study_arith.py:small` end to end through the CLI: the cached supervised stage,
the protocol's methods, md / json / png; a rerun resumes and writes where it is told."""
import json
import os
import re
import subprocess
import sys

from tests.training.tiny import load_config_file

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_small_study_end_to_end(tmp_path):
  workdir = tmp_path / "study"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  cmd = [sys.executable, "-m", "cmdp.study", "--config", "configs/study_arith.py:small",
         "--workdir", str(workdir)]
  done = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  # The supervised stage says what it trains (not its stand-in teacher), in readable units.
  out = done.stdout + done.stderr
  assert re.search(r"load +pretrain teacher: 1 layer \(\d+k parameters\) from random", out), out
  # It ends with where the report is and one verdict line per budget.
  assert f"report     {workdir / 'results' / 'arith_v2'}.md (.png, .json)" in out, out[-2000:]
  assert re.search(r"^- q50 \(d = [0-9.]+\): (not )?stressed: grpo (loses|gains) ", out, re.M)
  assert re.search(r"^- q30 \(d = [0-9.]+\): (not )?stressed: grpo (loses|gains) ", out, re.M)

  study = load_config_file("study_arith.py", "small")
  names = sorted(m["name"] for m in study.methods)
  results = workdir / "results"
  payload = json.loads((results / "arith_v2.json").read_text())
  assert sorted(r["method"] for r in payload["runs"]) == names
  # A finished run keeps its result and metrics, not its checkpoint (keep_run_checkpoints).
  run_dirs = [p.parent for p in (workdir / "runs").rglob("result.json")]
  assert len(run_dirs) == len(names) and all((d / "metrics.jsonl").exists() for d in run_dirs)
  assert not any((d / "checkpoints").exists() for d in run_dirs)
  budgets = payload["budgets"]
  assert list(budgets) == ["q50", "q30"] and 0 < budgets["q30"] <= budgets["q50"]
  for run in payload["runs"]:
    m = run["metrics"]
    assert m["num_examples"] == study.eval.num_examples
    assert 0 <= m["accuracy_greedy"] <= 1 and 0 <= m["satisfaction_sampled@q30"] <= 1
    assert m["kl_seq_greedy_q10"] <= m["kl_seq_greedy_q50"] <= m["kl_seq_greedy_q90"]
    assert "num_mul" in m  # the arithmetic sub-types are measured
    assert run["budget"] == budgets["q50"]  # grpo's config carries the first budget
  initial = json.loads((workdir / "initial_eval.json").read_text())
  assert {"teacher", "student"} <= set(initial["pretrain"])  # the supervised stage ran
  md = (results / "arith_v2.md").read_text()
  assert "## Protocol (declared before the runs)" in md and "**Verdict at q30.**" in md
  # After the verdict, the exploratory differences from grpo, each setting with its seeds.
  assert "Exploratory, read by no declared rule" in md
  assert set(payload["paired_vs_grpo"]) == {"q50", "q30"}
  assert re.search(r"^\| \S+ \(below grpo in [01] of 1 seeds\) \| 1 \|", md, re.M)
  assert "python -m cmdp.study --config configs/study_arith.py:small" in md
  assert (results / "arith_v2.png").read_bytes()[:4] == b"\x89PNG"

  # A second run finds every result and the cached models: nothing is retrained; given
  # --output_dir, it writes the report there.
  marker = workdir / "runs" / "grpo" / "seed0" / "result.json"
  stamp = marker.stat().st_mtime
  elsewhere = tmp_path / "report"
  again = subprocess.run([*cmd, "--output_dir", str(elsewhere)], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert marker.stat().st_mtime == stamp
  # Its progress bar starts at the runs already finished (it counted them as new ones).
  assert "2/2" in again.stderr and "0/2" not in again.stderr, again.stderr[-2000:]
  assert json.loads((elsewhere / "arith_v2.json").read_text())["budgets"] == budgets
  assert (elsewhere / "arith_v2.md").exists() and (elsewhere / "arith_v2.png").exists()
