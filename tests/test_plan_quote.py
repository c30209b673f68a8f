"""The plan figures the docs quote are written from the committed planner JSON
(`cmdp.plan.quote`): the summary's arithmetic by hand, the block rewriting, and every
quoted block of the README, docs/performance.md and the config equal to its JSON."""
import os

import pytest

from cmdp.plan import quote

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
  text = quote.summary(_plan())
  for part in ("`configs/x.py` on v5e-8 (8 chips, fsdp=8, 512 sequences a step)",
               "peak 3.00 GiB of 16 GiB per chip (rollout)", "planned step 20.2 s",
               "rollout prefill 500 ms (memory-bound)", "rollout decode 6.0 s (memory-bound)",
               "train step 13.8 s (compute-bound)",
               "1.00e+15 of the step's 4.00e+15 FLOPs per chip (25%)",
               "500 steps of 12.0 ms, 1.25 x its bandwidth floor of 4.8 s",
               "5,000 generated tokens/s per chip over the rollout, 1,618 over the whole step"):
    assert part in text, part
  assert quote.summary(_plan(), short=True) == (
      "Planned for `configs/x.py` on v5e-8: 20.2 s a step, 5,000 generated tokens/s per chip "
      "over the rollout; the decode loop at 1.25 x its floor; peak 3.00 of 16 GiB.")


def test_render_rewrites_only_the_quoted_blocks(tmp_path):
  (tmp_path / "plan.json").write_text(__import__("json").dumps(_plan()))
  text = ("# title\n<!-- plan-quote: plan.json -->\nstale figures\n<!-- /plan-quote -->\n"
          "kept\n  plan-quote: plan.json short\n  old\n  /plan-quote\n")
  out = quote.render(text, str(tmp_path), width=60).split("\n")
  assert out[:2] == ["# title", "<!-- plan-quote: plan.json -->"]
  close = out.index("<!-- /plan-quote -->")
  assert " ".join(out[2:close]) == quote.summary(_plan())
  assert all(len(line) <= 60 for line in out)
  assert out[close + 1:close + 3] == ["kept", "  plan-quote: plan.json short"]
  indented = out[close + 3:out.index("  /plan-quote")]
  assert all(line.startswith("  ") for line in indented)
  assert " ".join(x.strip() for x in indented) == quote.summary(_plan(), short=True)
  assert quote.render("\n".join(out), str(tmp_path), width=60) == "\n".join(out)  # fixed point
  with pytest.raises(ValueError, match="has no '/plan-quote'"):
    quote.quoted_blocks("plan-quote: plan.json\nno end\n")


@pytest.mark.parametrize("name", quote.QUOTING)
def test_the_docs_quote_the_committed_plans(name):
  with open(os.path.join(ROOT, name)) as f:
    text = f.read()
  blocks = quote.quoted_blocks(text)
  assert blocks, f"{name} quotes no plan"
  assert quote.render(text, ROOT) == text, (
      f"{name}: a quoted plan block differs from its JSON; run python -m cmdp.plan.quote")
