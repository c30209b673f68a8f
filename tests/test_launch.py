"""Each launch script, run with --dry-run, prints the commands it would run (and runs none)."""
import os
import shlex
import subprocess

import pytest

from tests.training.tiny import _ROOT


def _dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
  """The printed commands of `launch/<script> --dry-run args`, split into argv lists."""
  proc = subprocess.run(["bash", os.path.join(_ROOT, "launch", script), "--dry-run", *args],
                        capture_output=True, text=True, timeout=60, cwd=_ROOT,
                        env={**os.environ, **(env or {})})
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def test_local_trains_then_evaluates(tmp_path):
  workdir = str(tmp_path / "run")
  cmds = _dry_run("local.sh", "--plan=cpu:8", "--cpu-devices=8", "configs/tiny.py", workdir,
                  "--config.num_steps=3")
  flags = ["--config", "configs/tiny.py"]
  assert cmds[0] == ["python", "-m", "cmdp.plan", *flags, "--topology", "cpu:8",
                     "--config.num_steps=3"]
  env = ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=8"]
  assert cmds[1] == [*env, "python", "-m", "cmdp.train", *flags, "--workdir", workdir,
                     "--config.num_steps=3"]
  assert cmds[2] == [*env, "python", "-m", "cmdp.evaluate", *flags, "--workdir", workdir,
                     "--config.num_steps=3"]
  assert cmds[3] == ["cat", f"{workdir}/eval.md"]
  assert not os.path.exists(workdir)  # nothing ran


def test_tpu_pod_creates_installs_runs_and_collects(tmp_path):
  logs = str(tmp_path / "logs")
  cmds = _dry_run("tpu_pod.sh", "--accelerator-type=v5litepod-32", "--spot",
                  "--repo=https://example.org/cmdp.git", f"--logs={logs}", "--plan",
                  "cmdp-v5e", "europe-west4-b", "configs/qwen_math.py:task=math", "gs://b/run",
                  "--config.num_steps=5")
  where = ["--zone", "europe-west4-b"]
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert cmds[0] == ["mkdir", "-p", logs]
  assert cmds[1] == ["python", "-m", "cmdp.plan", "--config", "configs/qwen_math.py:task=math",
                     "--topology", "v5litepod-32", "--json", f"{logs}/plan.json",
                     "--config.num_steps=5"]
  assert cmds[2] == [*tpu, "create", "cmdp-v5e", *where, "--accelerator-type", "v5litepod-32",
                     "--version", "v2-alpha-tpuv5-lite", "--spot"]
  assert cmds[3][:-2] == [*tpu, "ssh", "cmdp-v5e", *where, "--worker=all"]
  assert cmds[3][-2] == "--command"
  install = cmds[3][-1]
  assert "git clone -q https://example.org/cmdp.git cmdp" in install
  assert "pip install -q -e '.[tpu]'" in install
  train = cmds[4][-1]
  assert cmds[4][:-1] == [*tpu, "ssh", "cmdp-v5e", *where, "--worker=all", "--command"]
  assert ("CMDP_MULTIHOST=1 python3 -m cmdp.train --config configs/qwen_math.py:task=math "
          "--workdir gs://b/run --config.num_steps=5") in train
  assert cmds[5] == [*tpu, "scp", "cmdp-v5e:cmdp_run.log", f"{logs}/worker-W.log", *where,
                     "--worker=W"]
  assert not os.path.exists(logs)


def test_tpu_pod_needs_a_repo_and_its_arguments():
  proc = subprocess.run(["bash", os.path.join(_ROOT, "launch", "tpu_pod.sh"), "--dry-run", "x"],
                        capture_output=True, text=True, timeout=60, cwd=_ROOT)
  assert proc.returncode == 2 and "usage:" in proc.stderr


def test_slurm_sets_the_coordinator_from_the_job(tmp_path):
  logs = str(tmp_path / "logs")
  env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_NNODES": "2",
         "PATH": "/usr/bin:/bin"}  # no scontrol: the plain node list is cut
  cmds = _dry_run("slurm_gpu.sh", "--install", f"--logs={logs}", "configs/qwen_math.py",
                  "/shared/run", "--config.batch_size=256", env=env)
  srun = ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  assert cmds[0] == [*srun, "python3", "-m", "pip", "install", "-q", "-e", ".",
                     "jax[cuda12]==0.10.2"]
  assert cmds[1] == ["mkdir", "-p", logs]
  assert cmds[2][:6] == [*srun, f"--output={logs}/process-%t.log", "bash"]
  task = cmds[2][-1]
  assert "JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID" in task
  assert "JAX_COORDINATOR_ADDRESS=gpu-a:12242 CMDP_MULTIHOST=1" in task  # 12000 + 4242 % 1000
  assert ("python3 -m cmdp.train --config configs/qwen_math.py --workdir /shared/run "
          "--config.batch_size=256") in task


def test_slurm_outside_a_job_says_how_to_submit():
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  proc = subprocess.run(["bash", os.path.join(_ROOT, "launch", "slurm_gpu.sh"), "--dry-run",
                         "configs/tiny.py", "/tmp/x"], capture_output=True, text=True,
                        timeout=60, cwd=_ROOT, env=env)
  assert proc.returncode == 2 and "submit with sbatch" in proc.stderr


@pytest.mark.parametrize("script", ["local.sh", "tpu_pod.sh", "slurm_gpu.sh"])
def test_unknown_options_fail(script):
  proc = subprocess.run(["bash", os.path.join(_ROOT, "launch", script), "--bogus", "a", "b"],
                        capture_output=True, text=True, timeout=60, cwd=_ROOT)
  assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
