"""Test set-up: 8 simulated CPU devices so sharded paths run on a laptop."""
import os

# The tests' programs are tiny: compiling them, not running them, takes most of the suite's
# time, and LLVM's optimisation passes most of the compiling (-33% CPU with them off). XLA's
# own passes (fusion, sharding) still run. Commands tests run "as a user runs them" (the
# main job on the real SmolLM2) drop this flag: there running dominates.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole run: the controller makes it, and the
# xdist workers and the commands tests start as processes inherit the variable, so a
# program that several tests compile (the SmolLM2 stages, the tiny config's step) is
# compiled once. Compiling is deterministic: a cached program is the same program.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cmdp_test_jax_cache_")
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
  _OWN_CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The slow tier (`pytest.ini`'s `slow` marker): whole trainings and studies, the SmolLM2
# teacher, compiled steps, slice compiles and commands run as processes. The full suite runs
# everything (CI, `python -m pytest -q -n 2 tests`: about 13 minutes on 2 cores);
# `python -m pytest -q -n 2 -m "not slow" tests` is the fast tier of the edit-test loop. A
# test is slow when its file is listed here, when its node id starts with an entry of
# SLOW_TESTS, or when it carries `@pytest.mark.slow` itself.
SLOW_FILES = {
    "tests/models/test_smollm2.py", "tests/study/test_small_study.py",
    "tests/study/test_smollm2_study.py", "tests/training/test_evaluate.py",
    "tests/training/test_make_batch.py", "tests/training/test_step_program.py",
    "tests/training/test_train.py", "tests/test_cli.py", "tests/test_fsdp.py",
    "tests/test_benchmarks.py",
}
SLOW_TESTS = (
    "tests/models/test_decode.py::test_forward_with_cache_matches_forward[qwen3_qk_norm_tied_bf16]",
    "tests/models/test_decode.py::test_forward_with_cache_matches_forward[llama3_rope_output_vocab]",
    "tests/models/test_decode.py::test_forward_with_cache_matches_forward[qwen2_bias]",
    "tests/models/test_loading.py::",
    "tests/models/test_refit.py::test_matches_the_fit_by_hand[keep0-0]",
    "tests/models/test_refit.py::test_matches_the_fit_by_hand[keep3-4]",
    "tests/models/test_shared_prefix.py::test_forward_equals_the_left_padded_layout[0]",
    "tests/models/test_shared_prefix.py::test_gradient_equals_the_left_padded_layout",
    "tests/models/test_shared_prefix.py::test_sampler_equals_the_left_padded_layout",
    "tests/models/test_shared_prefix.py::test_train_step_equals_the_left_padded_layout",
    "tests/objectives/test_losses.py::test_grad_accumulation_equals_full_batch",
    "tests/objectives/test_losses.py::test_time_chunked_vocabulary_terms_change_nothing",
    "tests/rollout/test_processors.py::test_categorical_one_token_and_reproducible",
    "tests/rollout/test_sampler.py::test_repeat_inside_equals_prompts_repeated_on_the_host",
    "tests/rollout/test_sampler.py::test_logprobs_match_forward",
    "tests/test_divergences.py::test_chunked_equals_unchunked_values_and_grads",
    "tests/plan/test_phases.py::test_train_step_needs_every_teacher_layer_added",
    "tests/plan/test_main.py::test_cli_plans_the_small_qwen_config",
    "tests/plan/test_planner.py::test_resident_bytes_equal_hand_counts_on_cpu8",
    "tests/plan/test_buffers.py::test_peak_buffers_name_the_largest_live_arrays",
    "tests/plan/test_planner.py::test_tpu_topology_bytes_and_compile",
    "tests/test_readme.py::test_library_snippet_runs",
    "tests/test_sharding.py::test_sharded_forward_and_greedy_match_single_device[odd_heads]",
    "tests/test_sharding.py::test_sharded_forward_and_greedy_match_single_device[data8]",
    "tests/training/test_heal.py::test_heal_runs_once_and_the_run_starts_from_it",
    "tests/training/test_heal.py::test_sigterm_during_the_heal_stops_the_run",
    "tests/training/test_heal.py::test_a_refit_heal_is_the_cut_refitted_on_teacher_samples",
    "tests/training/test_multihost.py::test_two_processes_match_one",
)


def pytest_collection_modifyitems(items):
  for item in items:
    if (item.nodeid.split("::")[0] in SLOW_FILES
        or item.nodeid.startswith(SLOW_TESTS)):
      item.add_marker(pytest.mark.slow)



def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:  # the process that made the cache (not a worker) removes it
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
