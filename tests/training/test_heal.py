"""The heal stage: a cut student is first distilled on teacher samples, as a cached run of
its own that the main run starts from and the next run reuses."""
import json
import os
import signal
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmdp import evaluate, models
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import config as config_lib
from cmdp.training import eval_loop
from cmdp.training import experiment
from cmdp.training import rollouts
from cmdp.training import stages
from cmdp.training import step as step_lib
from cmdp.training import trainer
from cmdp.training.logging import read_metrics
from tests.training.tiny import tiny_config


def _no_eval(exp, params, step, hp):
  del exp, params, step, hp
  return {}


def _final_params(config, workdir):
  exp = experiment.build(config)
  state, _ = trainer.create_state(exp, exp.student.params)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  restored, _ = checkpointer.restore(state, exp.student.config)
  checkpointer.close()
  return jax.device_get(restored.params)


def test_heal_config_is_forward_kl_on_teacher_samples():
  config = tiny_config(probe_every=3, **{"heal.steps": 5, "heal.batch_size": 4,
                                         "heal.learning_rate": 3e-4, "loss.budget": 7.0, "dynamic_sampling.enabled": True,
                          "dynamic_sampling.generation_prompts": 2})
  h = config_lib.heal_config(config)
  config_lib.validate(h)  # a valid run of its own (no field the objective ignores)
  assert (h.objective, h.loss.gkd_beta, h.loss.budget) == ("gkd", 0.0, 7.0)
  assert (h.rollout.on_policy_fraction, h.rollout.sft_source) == (0.0, "teacher")
  assert not h.dynamic_sampling.enabled  # teacher samples: nothing to filter (the run's on)
  assert (h.num_steps, h.batch_size, h.optimizer.learning_rate) == (5, 4, 3e-4)
  assert (h.heal.steps, h.calibrate_budget_quantile, h.eval_at_end) == (0, 0.0, False)
  assert h.probe_every == 0 and config.probe_every > 0  # the probe set is the run's
  assert h.rollout.temperature == config.rollout.temperature
  assert h.data.to_dict() == config.data.to_dict()


def test_heal_runs_once_and_the_run_starts_from_it(tmp_path):
  """The heal runs first, the run starts from its student, the next run reuses it, another
  config's heal is refused there, and `cmdp.evaluate` starts from it too."""
  overrides = {"heal.steps": 2, "heal.batch_size": 8, "num_steps": 0}
  config = tiny_config(**overrides)
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir, evaluate_fn=_no_eval)
  heal_dir = os.path.join(workdir, "heal")
  rows = read_metrics(heal_dir)
  assert [r["step"] for r in rows] == [1, 2]
  assert all(r["train/on_policy"] == 0.0 for r in rows)  # teacher samples only
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["student"]["init_workdir"] == heal_dir

  # The run (0 steps) saved the student it started from: the heal's final student, which
  # differs from the untrained one.
  plain = tiny_config(num_steps=0)
  healed = _final_params(config_lib.heal_config(config), heal_dir)
  started = _final_params(plain, workdir)
  untrained = jax.device_get(experiment.build(plain).student.params)
  for a, b, c in zip(jax.tree.leaves(healed), jax.tree.leaves(started),
                     jax.tree.leaves(untrained)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(healed),
                                                       jax.tree.leaves(untrained)))

  # A second run pointed at that heal reuses it: no step is run again.
  before = os.path.getmtime(os.path.join(heal_dir, "metrics.jsonl"))
  again = tiny_config(**overrides, **{"heal.dir": heal_dir})
  trainer.train(again, str(tmp_path / "again"), evaluate_fn=_no_eval)
  assert os.path.getmtime(os.path.join(heal_dir, "metrics.jsonl")) == before
  assert len(read_metrics(heal_dir)) == 2

  # A heal of another config there is refused, never overwritten.
  other = tiny_config(**overrides, **{"heal.dir": heal_dir, "heal.learning_rate": 5e-4})
  with pytest.raises(ValueError, match=r"config\.heal\.dir=.*another config"):
    trainer.train(other, str(tmp_path / "other"), evaluate_fn=_no_eval)

  # `cmdp.evaluate` of the healed run: its initial student is the healed one (with no
  # training step, the same as the checkpoint's student), not the untrained one; a run
  # without its heal is an error naming the field.
  with_initial = tiny_config(**overrides, **{"eval.include_initial_student": True})
  results = evaluate.run(with_initial, workdir)
  assert results["initial_student"] == results["student"]
  exp = experiment.build(plain)
  untrained = eval_loop.evaluate(exp, exp.student.params, "student", exp.hp)
  assert untrained["kl_seq_greedy_mean"] != results["initial_student"]["kl_seq_greedy_mean"]
  os.rename(heal_dir, os.path.join(workdir, "gone"))
  with pytest.raises(FileNotFoundError, match=r"config\.heal: no finished heal \(2 steps\)"):
    evaluate.run(with_initial, workdir)


def test_heal_and_init_workdir_are_exclusive():
  with pytest.raises(ValueError, match=r"config\.heal\.steps: the student already starts"):
    config_lib.validate(tiny_config(**{"heal.steps": 2, "student.init_workdir": "/tmp/x"}))


def test_sigterm_during_the_heal_stops_the_run_and_resumes_there(tmp_path, monkeypatch):
  overrides = {"heal.steps": 2, "heal.batch_size": 8, "num_steps": 1}
  workdir = str(tmp_path / "run")
  real, calls = rollouts.make_batch, []

  def preempted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:  # during the heal's first step
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(rollouts, "make_batch", preempted)
  assert trainer.train(tiny_config(**overrides), workdir, evaluate_fn=_no_eval) == {}
  heal_dir = os.path.join(workdir, "heal")
  assert ckpt_lib.Checkpointer(heal_dir).latest_step() == 1
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # the run never began
  monkeypatch.setattr(rollouts, "make_batch", real)
  trainer.train(tiny_config(**overrides), workdir, evaluate_fn=_no_eval)
  assert [r["step"] for r in read_metrics(heal_dir)] == [1, 2]
  assert [r["step"] for r in read_metrics(workdir)] == [1]


def test_a_refit_heal_is_the_cut_refitted_on_teacher_samples(tmp_path, monkeypatch, capsys):
  """`student.refit_samples` alone: the heal stage saves the cut student refitted on teacher
  samples as its step 0, the run starts from it, the next run reuses it, and a refit of
  another size there is refused."""
  cut = {"student.cut_layers": (0,), "num_steps": 0}
  overrides = {**cut, "student.refit_samples": 8}
  config = tiny_config(**overrides)
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir, evaluate_fn=_no_eval)
  heal_dir = os.path.join(workdir, "heal")
  assert ckpt_lib.Checkpointer(heal_dir).latest_step() == 0
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)["student"]
  assert (record["init_workdir"], record["refit_samples"]) == (heal_dir, 0)

  # The run's student is the refit of the heal's teacher samples, drawn again here.
  hcfg = config_lib.heal_config(config)
  refit, fits = trainer.refit_student(experiment.build(hcfg), jax.random.PRNGKey(hcfg.seed + 3))
  assert [f.layer for f in fits] == [0] and fits[0].error_after < fits[0].error_before
  started = _final_params(tiny_config(**cut), workdir)
  plain = jax.device_get(experiment.build(tiny_config(**cut)).student.params)
  flat = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))
  for path, value in flat(started).items():
    np.testing.assert_allclose(value, flat(jax.device_get(refit))[path], atol=1e-6)
    if "down_proj" in jax.tree_util.keystr(path):  # the refit's only change to the cut
      assert not np.allclose(value, flat(plain)[path])
    else:
      np.testing.assert_array_equal(value, flat(plain)[path])

  # Reused: no refit runs again, and the run's own load has its console line.
  monkeypatch.setattr(stages, "refit_student", lambda *a: pytest.fail("refitted again"))
  capsys.readouterr()
  trainer.train(tiny_config(**overrides, **{"heal.dir": heal_dir}), str(tmp_path / "again"),
                evaluate_fn=_no_eval)
  names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert names[:2] == ["heal", "load"], names
  other = tiny_config(**{**overrides, "student.refit_samples": 16, "heal.dir": heal_dir})
  with pytest.raises(ValueError, match=r"config\.heal\.dir=.*another config"):
    trainer.train(other, str(tmp_path / "other"), evaluate_fn=_no_eval)


@pytest.mark.parametrize("overrides,message", [
    ({"student.refit_samples": -1}, "refit_samples: must be >= 0"),
    ({"student.refit_samples": 8}, "refit_samples: only a student cut from the teacher"),
    ({"student.refit_samples": 8, "student.cut_layers": (0,), "student.init_workdir": "/tmp/x"},
     "refit_samples: the student already starts"),
    ({"student.refit_samples": 8, "student.cut_layers": (0,), "student.refit_ridge": 0.0},
     "refit_ridge: must be > 0"),
])
def test_refit_fields_are_checked(overrides, message):
  with pytest.raises(ValueError, match=r"config\.student\." + message):
    config_lib.validate(tiny_config(**overrides))


def test_a_run_starts_from_the_params_of_a_run_with_another_state():
  """`student.init_workdir` reads only the params: the heal's objective (gkd, no state) and
  optimiser (Adam) differ from the run's (dual_lagrangian's lambda, SGD), as in the studies
  whose dual Lagrangian starts from the shared heal; another student shape is refused."""
  cfg = models.ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=8)
  params = models.init_params(cfg, jax.random.key(0))
  hp = ObjectiveConfig()
  heal = step_lib.init_state(params, optax.adam(1e-3), get_objective("gkd"), hp,
                             jax.random.key(1))
  with tempfile.TemporaryDirectory() as d:
    saver = ckpt_lib.Checkpointer(d)
    saver.save(0, heal, {"student_model": ckpt_lib.model_record(cfg)}, wait=True)
    saver.close()
    run = step_lib.init_state(jax.tree.map(jnp.zeros_like, params), optax.sgd(0.1),
                              get_objective("dual_lagrangian"), hp, jax.random.key(2))
    reader = ckpt_lib.Checkpointer(d)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="holds another train state"):
      reader.restore(run, cfg)  # the whole state: refused, as a resume must be
    got = reader.restore_params(run.params, cfg)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
      np.testing.assert_array_equal(g, w)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="hidden_size: checkpoint 16"):
      reader.restore_params(run.params, cfg.replace(hidden_size=24))
    reader.close()
