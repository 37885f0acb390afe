"""fdistill: knowledge distillation for text generation (f-DISTILL, GKD, AKL, DistiLLM) in one framework."""

__version__ = "0.1.0"
