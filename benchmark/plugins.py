"""Classes named on the command line as `package.module:ClassName` (a method or metric of one's own)."""

from __future__ import annotations

import importlib


def load_class(spec: str, kind: str) -> type:
    """The class `spec` names; a one-line ValueError when it cannot be imported."""
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {kind} {spec!r}: {err}") from err
