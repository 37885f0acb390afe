"""The divergence registry: one decorator, duplicate names rejected, unknown names list the valid ones."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from fdistill.divergences.losses import Divergence

DivergenceClass = TypeVar("DivergenceClass", bound="type[Divergence]")

_REGISTRY: dict[str, type[Divergence]] = {}


def register_divergence(name: str):
    """Class decorator registering a :class:`Divergence` subclass under ``name`` (the config key)."""

    def decorator(cls: DivergenceClass) -> DivergenceClass:
        if name in _REGISTRY:
            raise ValueError(
                f"divergence name {name!r} is already registered by {_REGISTRY[name].__qualname__}; "
                f"pick a new name for {cls.__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_divergences() -> list[str]:
    """Sorted names accepted by :func:`get_divergence`."""
    return sorted(_REGISTRY)


def get_divergence(name: str, temperature: float = 1.0, **params) -> Divergence:
    """Build the divergence ``name`` with its parameters validated (clear errors for bad names/values)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown divergence {name!r}; valid names: {', '.join(available_divergences())}")
    cls = _REGISTRY[name]
    from fdistill.divergences.losses import Divergence

    def named(function) -> list[str]:
        return [key for key, parameter in inspect.signature(function).parameters.items()
                if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and key != "self"]

    accepted = [p for p in dict.fromkeys([*named(cls.__init__), *named(Divergence.__init__)]) if p != "temperature"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"divergence {name!r} got unknown parameter(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(temperature=temperature, **params)
