r"""The planner: sizes a run on a TPU slice (or simulated CPU devices) without weights or a TPU.

    python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8 [--json plan.json] \
        [--smallest] [--config.batch_size=256 ...]

It builds the trainer's own `Experiment` with `jax.ShapeDtypeStruct` parameters on the
config's meshes (`cmdp.plan.abstract`), lowers and compiles the step's programs for the
topology (`cmdp.plan.phases`: rollout; teacher scoring, a phase of its own only for a
teacher on its own mesh, else part of the train step; train step), and reads XLA's
memory and cost analyses (`cmdp.plan.planner`, `cmdp.plan.report`). TPU topologies need
libtpu (`pip install -e ".[tpu]"`); `cpu:N` needs nothing.

Modules: `topology` (names, chips, devices; imports jax lazily so the CLI can configure it
first), `abstract`, `phases`, `buffers` (the peak's largest buffers, from XLA's dumps),
`flops` (the models' matmul FLOPs, a hand count), `planner` (the plan, the layout search,
the smallest slice), `report`, `__main__` (the CLI). This package
imports nothing heavy here: `topology` must be usable before jax starts.
"""
