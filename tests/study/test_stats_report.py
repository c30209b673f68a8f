"""Study aggregation, report and figure on hand-computed numbers."""
import math
from typing import NamedTuple

import numpy as np
import pytest

from cmdp import evaluation
from cmdp.data import Example
from cmdp.evaluation.stats import Interval
from cmdp.objectives import ObjectiveConfig
from cmdp.study import analysis, evaluate, plot, report, stats


def test_summarize_and_paired_differences_by_hand():
  per_seed = {"cmdp": {0: {"acc": 0.4}, 1: {"acc": 0.6}, 2: {"acc": 0.5}},
              "grpo": {0: {"acc": 0.5}, 1: {"acc": 0.6}, 2: {"acc": 0.7}, 3: {"acc": 0.9}}}
  d = stats.paired_differences(per_seed, "cmdp", ["acc"])["grpo"]["acc"]
  # Seed 3 has no cmdp run: diffs (0.1, 0.0, 0.2), mean 0.1, s 0.1, t_{0.975, 2} = 4.302653.
  assert d.n == 3 and d.mean == pytest.approx(0.1)
  assert d.half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
  s = stats.summarize(per_seed, ["acc", "missing"])
  assert s["grpo"]["acc"].mean == pytest.approx(0.675) and "missing" not in s["grpo"]
  with pytest.raises(ValueError, match="reference method 'sft'"):
    stats.paired_differences(per_seed, "sft", ["acc"])


class _Rollout(NamedTuple):
  rows: np.ndarray  # which prompt row each response answers
  lengths: np.ndarray


def _fake_fns(greedy_ok, sampled_ok):
  """ModelFns over examples whose uid is an index: greedy / sampled 0/1 read from tables."""
  def prompts(examples):
    rows = np.asarray([int(ex.uid) for ex in examples])
    return rows, np.ones_like(rows)

  def decoder(table):
    return lambda params, rows, mask, rng: _Rollout(np.asarray([table[r] for r in rows]),
                                                    np.full(len(rows), 3))

  return evaluation.ModelFns(
      prompts=prompts, greedy=decoder(greedy_ok), sample=decoder(sampled_ok),
      decode=lambda rollout: [str(int(v)) for v in rollout.rows],
      reward=lambda completions, examples: np.asarray([float(c) for c in completions]),
      score=None)


def test_subtype_accuracy_from_evaluate_model_by_hand():
  # 5 problems, batches of 2 (the last padded by repeating problem 4): the padding row is
  # counted once, and the sub-type accuracies come from evaluate_model's own decodes.
  examples = [Example(uid=str(i), question="q", answer="1", entry={"has_mul": i in (1, 4)})
              for i in range(5)]
  greedy_ok, sampled_ok = [1, 1, 0, 1, 0], [0, 1, 0, 0, 1]
  fns, record = evaluate.recording(_fake_fns(greedy_ok, sampled_ok))
  out = evaluation.evaluate_model(fns, None, examples, batch_size=2, pass_k=1)
  out.update(evaluate.subtype_metrics(record, examples))
  assert out["accuracy_greedy"] == pytest.approx(0.6) and out["num_greedy"] == 5
  assert out["accuracy_sampled"] == pytest.approx(0.4) and out["num_sampled"] == 5
  assert out["num_mul"] == 2 and out["num_nomul"] == 3
  assert out["accuracy_greedy_mul"] == 0.5 and out["accuracy_greedy_nomul"] == pytest.approx(2 / 3)
  assert out["accuracy_sampled_mul"] == 1.0 and out["accuracy_sampled_nomul"] == 0.0
  assert out["num_correct_greedy"] == 3 and out["num_correct_sampled_mul"] == 2
  hp = ObjectiveConfig(budget=3.0)
  moved = evaluate.study_hp(hp, "teacher_nll", "prefix_mean", 1.5)
  assert (moved.cost, moved.constraint, moved.budget, moved.group_size) == (
      "teacher_nll", "prefix_mean", 1.5, hp.group_size)


def _iv(mean, half, n=5):
  return Interval(mean, mean - half, mean + half, half, n)


def test_results_table_and_json():
  summary = {"cmdp": {"accuracy_greedy": _iv(0.5, 0.1), "kl_seq_greedy_mean": _iv(4.0, 0.5)},
             "soft_lagrangian@0.01": {"accuracy_greedy": _iv(0.52, 0.05)}}
  columns = (("accuracy_greedy", "accuracy greedy %", 100.0),
             ("kl_seq_greedy_mean", "KL greedy mean", 1.0), ("absent", "never shown", 1.0))
  table = report.results_table(summary, columns)
  assert table.splitlines()[0] == "| method | seeds | accuracy greedy % | KL greedy mean |"
  assert "| cmdp | 5 | 50.0 ± 10.0 | 4.00 ± 0.50 |" in table
  assert "| soft_lagrangian@0.01 | 5 | 52.0 ± 5.0 | – |" in table
  assert analysis.plain({"a": _iv(1.0, float("nan"), 1)})["a"]["half"] is None


def test_pareto_front_and_figure(tmp_path):
  # (satisfaction, accuracy): (50, 40) is beaten by (60, 45) on both; the rest trade off.
  assert plot.pareto([(50, 40), (60, 45), (70, 30), (40, 50)]) == [(40, 50), (60, 45),
                                                                   (70, 30)]
  summary = {"cmdp@1/q50": {"satisfaction_sampled": _iv(0.5, 0.05),
                            "accuracy_greedy": _iv(0.6, 0.02)},
             "cmdp@3/q50": {"satisfaction_sampled": _iv(0.6, 0.05),
                            "accuracy_greedy": _iv(0.5, 0.02)},
             "grpo": {"satisfaction_sampled": _iv(0.3, 0.05), "accuracy_greedy": _iv(0.7, 0.02)}}
  methods = [dict(name="cmdp@1/q50", family="cmdp"), dict(name="cmdp@3/q50", family="cmdp"),
             dict(name="grpo", family="grpo")]
  path = tmp_path / "f.png"
  plot.fronts({"q50": summary}, methods, {"accuracy": 0.6, "satisfaction_sampled@q50": 0.5},
              str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("loss, informative, text", [
    (0.19, True, "grpo loses 19.0 points"),
    (-0.0286, False, "grpo gains 2.9 points"),
    (0.0498, False, "grpo loses 4.98 points"),  # "5.0" would contradict "not stressed"
    (0.0500, True, "grpo loses 5.0 points"),
    (0.0451, False, "grpo loses 4.5 points"),
])
def test_grpo_change_never_rounds_across_the_threshold(loss, informative, text):
  decision = dict(grpo_loss=loss, stress_points=0.05, informative=informative)
  assert report.grpo_change(decision) == text


def test_paired_against_grpo_by_hand():
  """Differences from grpo over shared seeds: cmdp (0.40, 0.50, 0.44) against grpo (0.45,
  0.46, 0.50): -0.05, +0.04, -0.06, mean -0.07 / 3, half = 4.302653 s / sqrt 3 = 0.1368;
  below grpo in 2 of 3 seeds. Seed 3 (grpo only) is not paired."""
  sat = {"cmdp": [0.40, 0.50, 0.44], "grpo": [0.45, 0.46, 0.50, 0.9]}
  per_seed = {m: {s: {"satisfaction_sampled": v, "accuracy_greedy": 0.5}
                  for s, v in enumerate(vals)} for m, vals in sat.items()}
  paired, below = analysis.paired_against(per_seed)
  iv = analysis.interval(paired["cmdp"]["satisfaction_sampled"])
  half = 4.302653 * np.std([-0.05, 0.04, -0.06], ddof=1) / math.sqrt(3)
  assert iv.n == 3 and iv.mean == pytest.approx(-0.07 / 3) and iv.half == pytest.approx(half, 1e-5)
  assert below == {"cmdp": {"below": 2, "seeds": 3}}
  table = report.paired_table(paired, below)
  assert "| cmdp (below grpo in 2 of 3 seeds) | 3 | -2.3 ± 13.7 | 0.0 ± 0.0 |" in table
  assert analysis.paired_against({"cmdp": per_seed["cmdp"]}) == ({}, {})


def test_reward_cost_table_per_method():
  summary = {"cmdp": {"corr_pearson_sampled": _iv(-0.2, 0.05),
                      "sequence_cost_sampled_right_q50": _iv(0.3, 0.1)},
             "grpo": {"accuracy_greedy": _iv(0.5, 0.1)}}
  text = report.reward_cost_table(summary)
  assert text.startswith("Task reward R and cost C(y)")
  assert "| method | seeds | corr(R, C) | C right q50 |" in text
  assert "| cmdp | 5 | -0.20 ± 0.05 | 0.30 ± 0.10 |" in text
  assert report.reward_cost_table({"grpo": {"accuracy_greedy": _iv(0.5, 0.1)}}) == ""
