"""Study aggregation, report and figure on hand-computed numbers."""
import math
from typing import NamedTuple

import numpy as np
import pytest

from cmdp import evaluation
from cmdp.data import Example
from cmdp.evaluation.stats import Interval
from cmdp.objectives import ObjectiveConfig
from cmdp.study import evaluate, plot, report, stats


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


def test_tables_and_verdict():
  summary = {"cmdp": {"accuracy_greedy": _iv(0.5, 0.1), "kl_seq_greedy_mean": _iv(4.0, 0.5)},
             "soft_lagrangian@0.01": {"accuracy_greedy": _iv(0.52, 0.05)}}
  table = report.results_table(summary)
  assert "| cmdp | 5 | 50.0 ± 10.0 | 4.00 ± 0.50 |" in table
  assert "| soft_lagrangian@0.01 | 5 | 52.0 ± 5.0 | – |" in table
  diffs = {"soft_lagrangian@0.01": {"accuracy_greedy": _iv(0.02, 0.03),
                                    "satisfaction_greedy": _iv(-0.2, 0.05)},
           "soft_lagrangian@0.1": {"accuracy_greedy": _iv(-0.2, 0.05),
                                   "satisfaction_greedy": _iv(0.1, 0.05)}}
  comp = report.comparison_table(diffs, "cmdp", ("accuracy_greedy", "satisfaction_greedy"))
  assert "| soft_lagrangian@0.01 | +2.0 [-1.0, +5.0] | -20.0 [-25.0, -15.0] * |" in comp
  text = report.verdict(summary, diffs, "cmdp", ["soft_lagrangian@0.01", "soft_lagrangian@0.1"],
                        "soft_lagrangian@0.01")
  # @0.01: accuracy comparable, satisfaction lower (greedy; sampled not measured): beaten.
  # @0.1: accuracy lower and satisfaction higher: a trade-off.
  assert ("cmdp was more often within d at no lower accuracy than soft_lagrangian@0.01; "
          "a trade-off (more accurate or more often within d, not both): "
          "soft_lagrangian@0.1.") in text
  assert "So cmdp beat soft_lagrangian on satisfaction at comparable accuracy." in text
  assert "greedy accuracy no clear difference from cmdp's" in text
  assert "cmdp matched or exceeded it in accuracy." in text
  # A setting as often within d (greedy), more accurate when sampled: it beats cmdp.
  dominating = {"soft_lagrangian@0.3": {
      "accuracy_greedy": _iv(0.03, 0.05), "accuracy_sampled": _iv(0.03, 0.02),
      "satisfaction_greedy": _iv(0.0, 0.01), "satisfaction_sampled": _iv(-0.006, 0.014)},
      **diffs}
  text = report.verdict(summary, dominating, "cmdp",
                        ["soft_lagrangian@0.01", "soft_lagrangian@0.1", "soft_lagrangian@0.3"],
                        "soft_lagrangian@0.01")
  assert "more accurate at no lower satisfaction than cmdp: soft_lagrangian@0.3" in text
  assert ("So cmdp did not beat soft_lagrangian on satisfaction at comparable accuracy: "
          "soft_lagrangian@0.3 matched its satisfaction with higher accuracy.") in text
  worse = {"soft_lagrangian@0.01": {"accuracy_greedy": _iv(0.2, 0.05)}}
  text = report.verdict(summary, worse, "cmdp", ["soft_lagrangian@0.01"], "soft_lagrangian@0.01")
  assert "So cmdp did not beat soft_lagrangian" in text
  assert "higher than cmdp's" in text and "did not match its accuracy" in text
  assert report.to_jsonable({"a": _iv(1.0, float("nan"), 1)})["a"]["half"] is None
  tension = report.tension_text(
      {"grpo": {"accuracy_greedy": _iv(0.8, 0.01), "kl_seq_sampled_mean": _iv(9.0, 1.0),
                "satisfaction_sampled": _iv(0.3, 0.1)}}, budget=5.0,
      initial={"accuracy_greedy": 0.766, "kl_seq_sampled_mean": 2.5,
               "satisfaction_sampled": 0.9},
      distill_minus_rl={"accuracy_greedy": _iv(-0.05, 0.02)})
  table, sentences = tension.split("\n\n")
  assert "| initial student | 76.6 | – | – | – | 2.50 | 90.0 |" in table
  assert "| grpo | 80.0 ± 1.0 | – | – | – | 9.00 ± 1.00 | 30.0 ± 10.0 |" in table
  assert sentences == (
      "`grpo`: greedy accuracy 80.0 ± 1.0% (above the initial student's 76.6); mean sampled "
      "KL 9.00 ± 1.00 nats (above d = 5 on average, above the initial student's 2.50); "
      "30.0 ± 10.0% of sampled responses within d (below the initial student's 90.0). "
      "`gkd` has no results. Paired, `gkd` - `grpo` greedy accuracy: -5.0 ± 2.0 points (lower).")


def test_plot_points_frontier_and_file(tmp_path):
  summary = {"cmdp": {"kl_seq_greedy_mean": _iv(4.0, 0.5), "accuracy_greedy": _iv(0.5, 0.1)},
             "cmdp@2d": {"kl_seq_greedy_mean": _iv(8.0, 1.0), "accuracy_greedy": _iv(0.6, 0.1)},
             "cmdp@0.5d": {"kl_seq_greedy_mean": _iv(2.0, 0.2),
                           "accuracy_greedy": _iv(0.4, 0.1)},
             "gkd": {"accuracy_greedy": _iv(0.3, 0.1)}}  # no KL: not drawn
  pts = plot.points(summary)
  assert set(pts) == {"cmdp", "cmdp@2d", "cmdp@0.5d"}
  assert pts["cmdp"] == pytest.approx((4.0, 0.5, 50.0, 10.0))
  assert plot.frontier_line(pts, ["cmdp@2d", "cmdp", "cmdp@0.5d", "absent"]) == (
      [2.0, 4.0, 8.0], pytest.approx([40.0, 50.0, 60.0]))
  path = tmp_path / "f.png"
  plot.plot(summary, {"cmdp": ["cmdp", "cmdp@2d", "cmdp@0.5d"]}, 3.0, str(path),
            initial={"kl_seq_greedy_mean": 3.0, "accuracy_greedy": 0.45}, teacher_accuracy=0.8)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
