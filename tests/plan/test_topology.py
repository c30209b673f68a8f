"""`cmdp.plan.topology`: accelerator names, chip tables; the paper configs' slices."""
import os

import pytest

from cmdp.plan import topology
from tests.training.tiny import _ROOT, load_config_file


@pytest.mark.parametrize("name, desc, chips, kind", [
    ("v5e-32", "v5e:4x8", 32, "v5e"),
    ("v5litepod-32", "v5e:4x8", 32, "v5e"),
    ("v5e-8", "v5e:2x4", 8, "v5e"),
    ("v4-8", "v4:2x2x1", 4, "v4"),
    ("v4-64", "v4:2x4x4", 32, "v4"),  # v4 counts TensorCores: 64 cores = 32 chips
    ("v4-128", "v4:4x4x4", 64, "v4"),
    ("v5p-128", "v5p:4x4x4", 64, "v5p"),
    ("v5p-256", "v5p:4x4x8", 128, "v5p"),
    ("v6e-64", "v6e:8x8", 64, "v6e"),
])
def test_accelerator_types_map_to_chip_grids(name, desc, chips, kind):
  t = topology.parse(name)
  assert (t.platform, t.desc_name, t.num_devices, t.chip.kind) == ("tpu", desc, chips, kind)


def test_cpu_topology_and_unknown_names():
  t = topology.parse("cpu:8")
  assert (t.platform, t.num_devices, t.chip) == ("cpu", 8, None)
  for bad in ("v5e-33", "v4-63", "tpu-8", "cpu:0", "v7-8"):
    with pytest.raises(ValueError, match=r"--topology=.*Valid: .*v5litepod-32.*cpu:N"):
      topology.parse(bad)


def test_hbm_table():
  gib = 1 << 30
  assert {k: c.hbm_bytes // gib for k, c in topology.CHIPS.items()} == {
      "v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def test_chip_table_has_published_flops_and_bandwidth():
  assert {k: (c.peak_flops / 1e12, c.hbm_bandwidth / 1e9) for k, c in topology.CHIPS.items()} \
      == {"v4": (275, 1228), "v5e": (197, 819), "v5p": (459, 2765), "v6e": (918, 1640)}


@pytest.mark.parametrize("name", ["llama_math.py", "qwen_math.py"])
def test_paper_configs_name_their_slice_and_validate(name):
  from cmdp.objectives import available_objectives  # pylint: disable=import-outside-toplevel
  from cmdp.training import config as config_lib  # pylint: disable=import-outside-toplevel
  for objective in sorted(available_objectives()):
    for arg in ("", ",task=math", ",small"):
      config_lib.validate(load_config_file(name, f"objective={objective}{arg}"))
  with open(os.path.join(_ROOT, "configs", name)) as f:
    slice_line = [l for l in f if l.startswith("SLICE = ")]
  assert len(slice_line) == 1
  assert topology.parse(slice_line[0].split('"')[1]).platform == "tpu"

