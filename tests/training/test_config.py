"""Configs fail at start with a message naming the field; every config file builds."""
import os

import jax
import pytest

from cmdp import models
from cmdp.models.char_tokenizer import char_tokenizer
from cmdp.training import config as config_lib
from cmdp.training import experiment
from cmdp.training import models as model_lib
from tests.training.tiny import load_config_file, run_train, tiny_config


@pytest.mark.parametrize("overrides, field", [
    ({"batch_size": 7}, "config.batch_size: 7 is not a multiple of rollout.group_size=2"),
    ({"grad_accum_steps": 3}, "config.grad_accum_steps"),
    ({"loss.budget": 0.0}, "budget"),
    ({"loss.budget": -1.0}, "budget"),
    ({"loss.penalty": "huge"}, "penalty"),
    ({"rollout.temperature": 0.0}, "config.rollout.temperature"),
    ({"optimizer.name": "lion"}, "config.optimizer.name"),
    ({"calibrate_budget_quantile": 1.5}, "config.calibrate_budget_quantile"),
    ({"calibration_batch_size": 3}, "config.calibration_batch_size"),
    ({"calibration_samples_per_prompt": -1}, "config.calibration_samples_per_prompt"),
    ({"calibration_samples_per_prompt": 3}, "config.calibration_batch_size"),
    ({"dynamic_sampling.enabled": True, "dynamic_sampling.keep_teacher_logits": True,
      "mesh.teacher_disjoint": True}, "config.dynamic_sampling.keep_teacher_logits"),
    ({"dynamic_sampling.enabled": True, "dynamic_sampling.keep_teacher_logits": True,
      "mesh.teacher_tensor": 2}, "config.dynamic_sampling.keep_teacher_logits"),
])
def test_impossible_values_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
    config_lib.validate(tiny_config(**overrides))


def test_unknown_objective_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"config\.objective: 'ppo' is not registered.*'cmdp'"):
    config_lib.validate(tiny_config(objective="ppo"))


def test_unknown_keys_fail():
  config = tiny_config()
  with pytest.raises(AttributeError, match="budgt"):
    config.loss.budgt = 1.0
  with pytest.raises(ValueError, match="unknown config argument|config argument 'objectiv'"):
    load_config_file("tiny.py", "objectiv=grpo")


def test_group_size_is_the_rollouts_and_its_old_field_is_refused():
  """The samples per prompt are `rollout.group_size` (the objectives read them from their
  hyper-parameters); a config that still sets `loss.group_size` is refused, naming the new
  field, before anything reads it."""
  assert "group_size" not in config_lib.base_config().loss
  config = tiny_config(**{"rollout.group_size": 4})
  assert config_lib.objective_config(config).group_size == 4
  config_lib.validate(config)
  moved = r"^config\.loss\.group_size moved to config\.rollout\.group_size; set that instead\.$"
  old = tiny_config(**{"loss.group_size": 4})  # a config file sets it before the lock
  for check in (config_lib.validate, config_lib.objective_config):
    with pytest.raises(ValueError, match=moved):
      check(old)
  with pytest.raises(ValueError, match=r"config\.rollout\.group_size: must be >= 1"):
    config_lib.validate(tiny_config(**{"rollout.group_size": 0}))


def test_unknown_override_on_the_command_line_fails():
  proc = run_train("tiny.py", "/tmp/never_written", "--config.loss.budgt=2.0")
  assert proc.returncode != 0
  assert "budgt" in proc.stderr
  assert not os.path.exists("/tmp/never_written")


def test_batch_must_split_over_the_mesh():
  with pytest.raises(ValueError, match=r"config\.batch_size=2 must be a multiple of the mesh"):
    experiment.build(tiny_config(batch_size=2, **{"mesh.data": 8}))


def test_teacher_and_student_with_different_vocabularies(tmp_path):
  other = char_tokenizer("0123456789+-= #")
  small = models.ModelConfig(vocab_size=len(other), hidden_size=16, intermediate_size=32,
                             num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
  models.save_pretrained(str(tmp_path / "student"), small,
                         models.init_params(small, jax.random.PRNGKey(0)), other)
  config = tiny_config(**{"student.path": str(tmp_path / "student")})
  with pytest.raises(ValueError, match=r"config\.student.*(tokenizer|vocabulary)"):
    model_lib.load_teacher_and_student(config, jax.random.PRNGKey(0))


def test_stop_tokens_end_responses_and_must_be_one_token():
  """rollout.stop_tokens join EOS among the sampler's stops (and so the evaluation's);
  a text of several tokens, or an empty one, is refused naming the field."""
  exp = experiment.build(tiny_config(**{"rollout.stop_tokens": ("\n",)}))
  newline = char_tokenizer()("\n", add_special_tokens=False)["input_ids"]
  assert set(exp.eos_ids) == {exp.tokenizer.eos_token_id, *newline}
  with pytest.raises(ValueError, match=r"config\.rollout\.stop_tokens: '\\n\\n' is 2 tokens"):
    experiment.build(tiny_config(**{"rollout.stop_tokens": ("\n\n",)})).eos_ids
  with pytest.raises(ValueError, match=r"config\.rollout\.stop_tokens"):
    config_lib.validate(tiny_config(**{"rollout.stop_tokens": ("\n", "")}))
  with pytest.raises(ValueError, match=r"config\.data\.prompt_format: 'html'"):
    config_lib.validate(tiny_config(**{"data.prompt_format": "html"}))


def test_tokenizer_from_a_directory(tmp_path):
  """config.tokenizer may name a directory of tokenizer files (e.g. for a preset teacher):
  the run gets that tokenizer; a path without them is refused, naming the field."""
  char_tokenizer().save_pretrained(tmp_path / "tok")
  config = tiny_config(tokenizer=str(tmp_path / "tok"))
  _, student, tok = model_lib.load_teacher_and_student(config, jax.random.PRNGKey(0))
  assert tok("12+3")["input_ids"] == char_tokenizer()("12+3")["input_ids"]
  assert student.config.vocab_size == len(char_tokenizer())
  for bad in (str(tmp_path), str(tmp_path / "missing")):
    with pytest.raises(ValueError, match=r"config\.tokenizer=.*tokenizer files"):
      model_lib.load_teacher_and_student(tiny_config(tokenizer=bad), jax.random.PRNGKey(0))


def test_padded_vocabularies_share_their_rows():
  t = model_lib.LoadedModel(models.ModelConfig(
      vocab_size=120, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
      num_kv_heads=1, head_dim=8), None)
  s = model_lib.LoadedModel(t.config.replace(vocab_size=112), None)
  t2, s2 = model_lib.share_vocabulary(t, s, tokenizer_size=104)
  assert t2.config.output_vocab == s2.config.output_vocab == 112
  with pytest.raises(ValueError, match="does not cover the tokenizer's 113 ids"):
    model_lib.share_vocabulary(t, s, tokenizer_size=113)


@pytest.mark.parametrize("name, arg", [
    ("tiny.py", "objective=worst_case"),
    ("smollm2_sums.py", "objective=grpo,task=gsm8k,keep=half"),
    ("smollm2_sums.py", "small"),
    ("qwen_math.py", "task=math"),
    ("qwen_math.py", "small"),
])
def test_config_files_validate(name, arg):
  config = load_config_file(name, arg)
  config_lib.validate(config)
  assert config.objective == (arg.split("objective=")[1].split(",")[0]
                              if "objective=" in arg else "cmdp")


def test_training_rollouts_sample_the_policy_itself():
  with pytest.raises(ValueError, match=r"config\.rollout\.top_k: training rollouts"):
    config_lib.validate(tiny_config(**{"rollout.top_k": 20}))
  with pytest.raises(ValueError, match=r"config\.rollout\.top_p"):
    config_lib.validate(tiny_config(**{"rollout.top_p": 0.9}))
