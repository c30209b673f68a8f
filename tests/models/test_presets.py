"""`cmdp.models.presets`: published parameter counts; a preset path trains from a random
init of its architecture."""
import functools

import jax
import pytest

from cmdp import models
from cmdp.models import presets
from tests.training.tiny import load_config_file


@pytest.mark.parametrize("name, published", [
    ("qwen2.5-math-7b", 7_615_616_512),
    ("qwen2.5-math-1.5b", 1_543_714_304),
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.2-1b", 1_235_814_400),
])
def test_presets_have_the_published_parameter_counts(name, published):
  cfg = presets.get("preset:" + name)
  shapes = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == published


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"preset:qwen2.5-math-7b"):
    presets.get("preset:qwen-9000")


def test_a_preset_path_trains_from_a_random_init_of_its_architecture(monkeypatch):
  from cmdp.training import models as model_lib  # pylint: disable=import-outside-toplevel
  tiny = models.ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2, num_kv_heads=1, head_dim=16)
  monkeypatch.setitem(presets.PRESETS, "tiny-test", tiny)
  config = load_config_file("tiny.py")
  config.teacher.path = config.student.path = "preset:tiny-test"
  teacher, student, tokenizer = model_lib.load_teacher_and_student(config, jax.random.key(0))
  assert teacher.config.num_layers == student.config.num_layers == 2
  assert teacher.config.dtype == config.teacher.dtype and len(tokenizer) <= 128
  assert teacher.params["embed_tokens"]["embedding"].shape == (128, 32)
  config.tokenizer = ""  # a preset brings no tokenizer
  with pytest.raises(ValueError,
                     match=r"config\.teacher\.path='preset:tiny-test'.*tokenizer='char'"):
    model_lib.load_teacher_and_student(config, jax.random.key(0))

