"""The kernels compiled ahead of their first call (rec_core.kernels): every kernel is listed, every listed
signature compiles."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from numba.core.registry import CPUDispatcher

import rec_core
from rec_core.kernels import SIGNATURES, compile_all, kernel


def _kernels_called_from_python() -> set[str]:
    """Every ``@njit`` function of rec_core that Python calls: those not inlined into another kernel."""
    found = set()
    for info in pkgutil.walk_packages(rec_core.__path__, "rec_core."):
        source = Path(importlib.util.find_spec(info.name).origin)  # type: ignore[union-attr, arg-type]
        if info.ispkg or "@njit" not in source.read_text():
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            called = isinstance(value, CPUDispatcher) and value.targetoptions.get("inline") != "always"
            if called and value.__module__ == info.name:
                found.add(f"{info.name}.{name}")
    return found


def test_every_kernel_python_calls_is_compiled_ahead() -> None:
    assert _kernels_called_from_python() == set(SIGNATURES)


def test_every_listed_signature_compiles() -> None:
    """From numba's cache where `make setup` filled it; compiled here otherwise (about a minute)."""
    took = compile_all()
    assert set(took) == set(SIGNATURES)
    for name, signatures in SIGNATURES.items():
        compiled = {tuple(signature) for signature in kernel(name).signatures}
        assert set(signatures) <= compiled, name
