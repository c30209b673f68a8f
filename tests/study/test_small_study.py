"""`configs/study_arith.py:small` end to end: the CLI writes md / json / png; a rerun resumes."""
import json
import os
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

  study = load_config_file("study_arith.py", "small")
  names = [m["name"] for m in study.methods]
  results = workdir / "results"
  payload = json.loads((results / "arith.json").read_text())
  # Raw per-seed numbers for every method and seed, and one run record each.
  assert sorted(payload["per_seed"]) == sorted(names)
  assert all(sorted(payload["per_seed"][n]) == ["0", "1"] for n in names)
  assert len(payload["runs"]) == len(names) * study.seeds
  d = payload["budget"]
  assert d > 0 and payload["budgets"] == {"reverse_kl/sum": d}
  for run in payload["runs"]:
    m = run["metrics"]
    assert m["num_examples"] == study.eval.num_examples
    assert 0 <= m["accuracy_greedy"] <= 1 and 0 <= m["satisfaction_sampled"] <= 1
    assert m["kl_seq_greedy_q10"] <= m["kl_seq_greedy_q50"] <= m["kl_seq_greedy_q90"]
    # Every method trains at d but cmdp@2d, whose budget is twice the calibrated d.
    expected = 2 * d if run["method"] == "cmdp@2d" else d
    assert abs(run["budget"] - expected) < 1e-9 and run["study_budget"] == d
  soft = [r for r in payload["runs"] if r["method"] == "soft_lagrangian@0.01"]
  assert all(r["metrics"]["lambda"] == 0.01 for r in soft)
  # Summary intervals over the 2 seeds and paired differences against cmdp.
  s = payload["summary"]["grpo"]["accuracy_greedy"]
  assert s["n"] == 2 and s["lo"] <= s["mean"] <= s["hi"]
  assert sorted(payload["paired_vs_reference"]) == sorted(n for n in names if n != "cmdp")
  teacher = payload["pretrain"]["eval"]["teacher"]
  assert teacher["num_examples"] == study.eval.num_examples and "kl_seq_greedy_mean" not in teacher

  md = (results / "arith.md").read_text()
  for heading in ("## Setting", "## How it was run", "## Teacher, student and budget",
                  "## Results", "## Paired comparisons with `cmdp`", "## Verdict"):
    assert heading in md
  assert "python -m cmdp.study --config configs/study_arith.py:small" in md
  assert all(f"| {n} | 2 |" in md for n in names)
  assert (results / "arith.png").read_bytes()[:4] == b"\x89PNG"

  # A second run finds every result and the cached models: nothing is retrained; given
  # --output_dir, it writes the report there.
  marker = workdir / "runs" / "grpo" / "seed1" / "result.json"
  stamp = marker.stat().st_mtime
  elsewhere = tmp_path / "report"
  again = subprocess.run([*cmd, "--output_dir", str(elsewhere)], cwd=_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert marker.stat().st_mtime == stamp
  assert json.loads((elsewhere / "arith.json").read_text())["per_seed"] == payload["per_seed"]
  assert (elsewhere / "arith.md").exists() and (elsewhere / "arith.png").exists()
