"""`python -m cmdp.plan` (`cmdp/plan/__main__.py`): the small Qwen config planned as a user
runs it."""
import json
import os
import subprocess
import sys

from tests.training.tiny import _ROOT


def test_cli_plans_the_small_qwen_config(tmp_path):
  out = tmp_path / "plan.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "cmdp.plan", "--config",
       os.path.join(_ROOT, "configs/qwen_math.py:small"), "--topology", "cpu:4",
       "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=_ROOT, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == ""  # a quiet report
  assert "per device" in proc.stdout and "fits" in proc.stdout
  plan = json.loads(out.read_text())
  assert set(plan["per_device_bytes"]) >= {"student_params", "optimizer", "teacher_params",
                                           "kv_cache", "temp", "total"}
  for key in ("hbm_bytes", "fits", "flops_per_step", "estimated_step_s", "mesh"):
    assert key in plan
  assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert plan["fits"] is True and plan["hbm_bytes"] is None
  # The teacher shares the student's mesh: it runs inside the train step, no phase of its own.
  assert set(plan["phases"]) == {"rollout", "train step"}
  assert 0 < plan["teacher_in_train_step"]["flops"] < plan["phases"]["train step"]["flops"]
  assert plan["flops_per_step"] > 0
  assert plan["param_dtypes"] == {"teacher": "float32", "student": "float32"}
  assert 0 < plan["model_matmul_flops_per_step"] < plan["flops_per_step"]
  assert plan["peak_buffers"] and all(b["bytes"] > 0 for b in plan["peak_buffers"])
  assert "largest buffers live at the" in proc.stdout
  # No chip figures for CPU devices: no roofline; the tokens generated are still counted.
  assert plan["roofline"] is None
  assert plan["generated_tokens_per_step"] == plan["batch_size"] * 8
  assert set(plan["tokens_per_s_per_chip"]) == {"rollout", "step"}

