"""Batch stages: one module per stage, each a plain function plus ``python -m jobs.<stage>``."""
