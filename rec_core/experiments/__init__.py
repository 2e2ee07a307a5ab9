"""Experiments: arms of users served different feeds side by side (spec, registry file, arm assignment)."""
