"""`cmdp.plan.abstract`: a hub id without files falls back to its preset."""
import pytest

from cmdp.models import presets
from cmdp.plan import abstract


def test_hub_ids_without_files_fall_back_to_presets():
  assert abstract.architecture("Qwen/Qwen2.5-Math-7B", "teacher.path") == presets.get(
      "qwen2.5-math-7b")
  with pytest.raises(ValueError, match=r"config\.student\.path='nobody/nothing'.*preset:NAME"):
    abstract.architecture("nobody/nothing", "student.path")

