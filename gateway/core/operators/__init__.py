"""Field actions, one operator class per module of this package (see base.py for the interface).

Adding an action means adding one module here that defines an `Operator` subclass with a `name`:
the policy compiler finds it by that name, and the sanitizer and the decrypt path call it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from gateway.core.operators.base import Operator


@functools.cache
def registry() -> dict[str, type[Operator]]:
    """Every operator of the package by its name (modules imported once, on first use)."""
    found: dict[str, type[Operator]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if (isinstance(value, type) and issubclass(value, Operator) and value.name
                    and value.__module__ == loaded.__name__):
                if value.name in found:
                    raise RuntimeError(f"two operators are called '{value.name}'")
                found[value.name] = value
    return found


def names() -> tuple[str, ...]:
    return tuple(sorted(registry()))
