"""arca-sweep: ARCA (Adapter-Residual Credit Assignment) and a LoRA-GRPO sweep harness.

See SPEC.md-derived docstrings in :mod:`arca_sweep.credit` for what every signal computes.
"""

__version__ = "0.1.0"
