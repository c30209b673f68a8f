"""The figures the docs quote are written from committed JSON (`cmdp.quote`): a plan's and a
study's summary by hand, the block rewriting, and every quoted block of the README, the docs
and the configs equal to its JSON."""
import json
import os

import pytest

from cmdp import quote
from cmdp.plan import quote as plan_quote
from cmdp.study import analysis, protocol
from cmdp.study import quote as study_quote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan():
  r = lambda s, bound: {"seconds": s, "bound": bound}
  return {
      "config": "configs/x.py", "topology": "v5e-8", "num_devices": 8,
      "mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "batch_size": 512,
      "per_device_bytes": {"total": 3 * 2 ** 30}, "hbm_bytes": 16 * 2 ** 30,
      "peak_phase": "rollout", "estimated_step_s": 20.25,
      "flops_per_step": 4e15, "teacher_in_train_step": {"flops": 1e15},
      "roofline": {
          "programs": {"rollout": {"prefill": r(0.5, "memory"), "decode": r(6.0, "memory")},
                       "train step": {"train step": r(13.75, "compute")}},
          "decode_loop": {"steps": 500, "ratio": 1.25, "total": {"seconds": 6.0},
                          "floor": {"seconds": 4.8}}},
      "tokens_per_s_per_chip": {"rollout": 5000.4, "step": 1618.2},
  }


def test_summary_states_the_plans_figures():
  text = plan_quote.summary(_plan())
  for part in ("`configs/x.py` on v5e-8 (8 chips, fsdp=8, 512 sequences a step)",
               "peak 3.00 GiB of 16 GiB per chip (rollout)", "planned step 20.2 s",
               "rollout prefill 500 ms (memory-bound)", "rollout decode 6.0 s (memory-bound)",
               "train step 13.8 s (compute-bound)",
               "1.00e+15 of the step's 4.00e+15 FLOPs per chip (25%)",
               "500 steps of 12.0 ms, 1.25 x its bandwidth floor of 4.8 s",
               "5,000 generated tokens/s per chip over the rollout, 1,618 over the whole step"):
    assert part in text, part
  assert plan_quote.summary(_plan(), short=True) == (
      "Planned for `configs/x.py` on v5e-8: 20.2 s a step, 5,000 generated tokens/s per chip "
      "over the rollout; the decode loop at 1.25 x its floor; peak 3.00 of 16 GiB.")


def test_render_rewrites_only_the_quoted_blocks(tmp_path):
  (tmp_path / "plan.json").write_text(json.dumps(_plan()))
  text = ("# title\n<!-- plan-quote: plan.json -->\nstale figures\n<!-- /plan-quote -->\n"
          "kept\n  plan-quote: plan.json short\n  old\n  /plan-quote\n")
  out = quote.render(text, str(tmp_path), width=60).split("\n")
  assert out[:2] == ["# title", "<!-- plan-quote: plan.json -->"]
  close = out.index("<!-- /plan-quote -->")
  assert " ".join(out[2:close]) == plan_quote.summary(_plan())
  assert all(len(line) <= 60 for line in out)
  assert out[close + 1:close + 3] == ["kept", "  plan-quote: plan.json short"]
  indented = out[close + 3:out.index("  /plan-quote")]
  assert all(line.startswith("  ") for line in indented)
  assert " ".join(x.strip() for x in indented) == plan_quote.summary(_plan(), short=True)
  assert quote.render("\n".join(out), str(tmp_path), width=60) == "\n".join(out)  # fixed point
  with pytest.raises(ValueError, match="has no '/plan-quote'"):
    quote.quoted_blocks("plan-quote: plan.json\nno end\n")


@pytest.mark.parametrize("name", quote.QUOTING)
def test_the_docs_quote_the_committed_json(name):
  with open(os.path.join(ROOT, name)) as f:
    text = f.read()
  blocks = quote.quoted_blocks(text)
  assert blocks, f"{name} quotes nothing"
  assert quote.render(text, ROOT) == text, (
      f"{name}: a quoted plan block differs from its JSON; run python -m cmdp.quote")


def _study():
  """Two seeds of two cmdp settings, one soft Lagrangian setting and grpo at budget q50;
  the initial student: 50% accurate, 50% of samples within d."""
  methods = [m for m in protocol.methods((1, 3), (0.5,), ("cmdp", "soft_lagrangian", "grpo"))
             if m["name"] != "soft_lagrangian@3/q50"]
  values = {"cmdp@1/q50": ((0.60, 0.62), (0.49, 0.50)),  # holds, the most accurate holding
            "cmdp@3/q50": ((0.55, 0.55), (0.60, 0.62)),  # holds
            "soft_lagrangian@1/q50": ((0.70, 0.72), (0.40, 0.42)),  # does not hold
            "grpo": ((0.75, 0.77), (0.30, 0.32))}  # loses 19 points: the budget is stressed
  runs = [{"method": name, "seed": seed,
           "metrics": {"accuracy_greedy": acc[seed], "satisfaction_sampled@q50": sat[seed]}}
          for name, (acc, sat) in values.items() for seed in (0, 1)]
  initial = {"accuracy": 0.5, "satisfaction_sampled@q50": 0.5}
  rules = {"hold_margin": 0.02, "stress_points": 0.05}
  per_seed = analysis.per_budget(methods, runs, "q50")
  decision = protocol.decide(per_seed, methods, initial, "q50", **rules)
  return {"methods": methods, "runs": runs, "budgets": {"q50": 0.25},
          "initial": {"student": initial}, "decisions": {"q50": decision},
          "config": {"rules": rules}}


def test_results_summary_states_the_studys_findings():
  # t-intervals over 2 seeds: half-width = t(0.975, 1 dof) * |a - b| / 2, t = 12.7062
  lines = study_quote.summary(_study()).split("\n")
  assert lines[0] == ("**q50**, d = 0.25 nats per sequence: the initial student is 50.0% "
                      "accurate (greedy) with 50.0% of its samples within d. Seeds [0, 1], "
                      "mean ± 95% t-interval:")
  table = [line for line in lines if line.startswith("| `")]
  assert table == [
      "| `cmdp`: best holding, `cmdp@1/q50` | 61.0 ± 12.7 | 49.5 ± 6.4 | yes |",
      "| `soft_lagrangian`: none holds; most satisfied, `soft_lagrangian@1/q50` | 71.0 ± 12.7 "
      "| 41.0 ± 12.7 | no |",
      "| `grpo` (anchor) | 76.0 ± 12.7 | 31.0 ± 12.7 | – |"]
  verdict = "\n".join(lines[lines.index(table[-1]) + 1:])
  assert "grpo loses 19.0 points of sampled satisfaction (from 50.0%)" in verdict
  assert "Settings that hold it in every seed: cmdp@1/q50, cmdp@3/q50." in verdict
  assert "it holds the budget where no Lagrangian setting does" in verdict
  assert study_quote.summary(_study(), short=True) == (
      "- q50 (d = 0.25): stressed: grpo loses 19.0 points of sampled satisfaction; `cmdp` "
      "beats the Lagrangians (it holds the budget where no Lagrangian setting does).")


def test_render_writes_a_results_block_and_refuses_a_missing_json(tmp_path):
  (tmp_path / "study.json").write_text(json.dumps(_study()))
  text = "a\n<!-- results-quote: study.json -->\nold\n<!-- /results-quote -->\nb\n"
  out = quote.render(text, str(tmp_path))
  inner = out.split("\n")[2:out.split("\n").index("<!-- /results-quote -->")]
  assert "\n".join(inner) == study_quote.summary(_study())
  assert quote.render(out, str(tmp_path)) == out  # fixed point
  with pytest.raises(FileNotFoundError, match="names missing.json"):
    quote.render("results-quote: missing.json\n/results-quote\n", str(tmp_path))
  with pytest.raises(ValueError, match="has no '/results-quote'"):
    quote.quoted_blocks("results-quote: study.json\n/plan-quote\n")


def test_a_rise_in_grpos_satisfaction_reads_as_a_gain():
  payload = _study()
  payload["runs"] = [dict(r, metrics={**r["metrics"], "satisfaction_sampled@q50": 0.53})
                     if r["method"] == "grpo" else r for r in payload["runs"]]
  payload["decisions"]["q50"] = protocol.decide(
      analysis.per_budget(payload["methods"], payload["runs"], "q50"), payload["methods"],
      payload["initial"]["student"], "q50", **payload["config"]["rules"])
  assert study_quote.summary(payload, short=True).startswith(
      "- q50 (d = 0.25): not stressed: grpo gains 3.0 points of sampled satisfaction; ")
  assert "grpo gains 3.0 points of sampled satisfaction (from 50.0%): the budget is not " \
         "stressed" in study_quote.summary(payload)


def test_a_results_block_can_quote_one_budget(tmp_path):
  two = _study()
  two["decisions"]["q90"] = two["decisions"]["q50"]  # a second budget the option leaves out
  alone = study_quote.summary(two, only="q50").split("\n")
  full = study_quote.summary(_study()).split("\n")
  assert alone[:-1] == full[:len(alone) - 1]  # the heading and table, as in the full form
  assert alone[-1] == (  # the verdict in one line
      "**Verdict at q50:** stressed: grpo loses 19.0 points of sampled satisfaction; `cmdp` "
      "beats the Lagrangians (it holds the budget where no Lagrangian setting does).")
  (tmp_path / "study.json").write_text(json.dumps(two))
  out = quote.render("<!-- results-quote: study.json q50 -->\n<!-- /results-quote -->",
                     str(tmp_path)).split("\n")
  assert out[0] == "<!-- results-quote: study.json q50 -->"
  assert out[1:-1] == alone
  with pytest.raises(ValueError, match=r"'short', a budget of the study \(q50, q90\)"):
    quote.render("results-quote: study.json q75\n/results-quote\n", str(tmp_path))
  with pytest.raises(ValueError, match="plan-quote takes the option 'short' or none"):
    quote.render("plan-quote: study.json q50\n/plan-quote\n", str(tmp_path))
