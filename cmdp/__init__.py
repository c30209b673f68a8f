"""cmdp: reward-aware LLM distillation as a constrained Markov decision process."""
__version__ = "0.1.0"
