"""The task source names are spelt once (`cmdp.sources`): the loaders write them into their
examples and the rewards dispatch on them."""
from cmdp import data, rewards, sources


def test_loaders_write_the_names_the_rewards_read():
  arith = data.load_task(sources.ARITH, size=2)
  assert {ex.source for ex in arith} == {sources.ARITH}
  assert arith[0].uid.startswith(f"{sources.ARITH}/train/")
  gym = data.load_task(f"{sources.REASONING_GYM}:basic_arithmetic", size=2)
  assert {ex.source for ex in gym} == {"reasoning_gym/basic_arithmetic"}
  assert gym[0].uid.startswith("reasoning_gym/basic_arithmetic/")
  assert data.Example(uid="u", question="q", answer="1").source == sources.GSM8K
  assert sources.reasoning_gym_task(gym[0].source) == "basic_arithmetic"
  assert [sources.reasoning_gym_task(s) for s in (sources.MATH, sources.GSM8K)] == [None, None]
  # Each source's answers are checked by its own reward: the verifier of the reasoning-gym
  # task, the '#### n' line for arith.
  done = [f"#### {ex.answer}" for ex in arith + gym]
  assert rewards.score_completions(done, arith + gym).tolist() == [1.0] * 4
  assert rewards.score_one(r"\boxed{3}", data.Example(
      uid="m", question="q", answer="3", source=sources.MATH)).task == 1.0
