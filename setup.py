"""cmdp: reward-aware LLM distillation as a constrained MDP, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="cmdp",
    version="0.1.0",
    description="Reward-aware LLM distillation as a constrained Markov decision process (JAX/Flax).",
    packages=find_packages(include=["cmdp", "cmdp.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "transformers==5.23.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "jinja2>=3.1",
        "ml-collections==1.1.0",
        "datasets==5.2.0",
        "gguf==0.19.0",
        "reasoning-gym==0.1.25",
        "math-verify==0.9.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "numpy>=1.26",
        "absl-py>=2.1",
        "scipy==1.17.1",  # confidence intervals in reports
        "matplotlib==3.11.2",  # the end-of-run and study plots
    ],
    extras_require={
        # torch is only used by tests that compare against the Hugging Face PyTorch models.
        # libtpu stays out of it: installed, it makes every jax start on a machine without a
        # TPU print an initialisation error (tests/plan/test_planner.py runs its TPU case with it).
        # pytest-xdist: the suite runs on two processes (`-n 2`).
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "torch==2.13.0"],
        # libtpu: the TPU runtime on a TPU VM, and `python -m cmdp.plan` for TPU topologies.
        "tpu": ["libtpu==0.0.42.1"],
    },
)
