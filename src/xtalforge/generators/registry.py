"""Generator registry: config name -> constructor. Adding a generator is one line here."""

from __future__ import annotations

from collections.abc import Callable

from xtalforge.generators.base import Generator


def _random_symmetric(elements, max_atoms, options) -> Generator:
    from xtalforge.generators.random_symmetric import RandomSymmetric

    return RandomSymmetric(elements, max_atoms, **options)


REGISTRY: dict[str, Callable[..., Generator]] = {
    "random_symmetric": _random_symmetric,
}


def build_generator(name: str, elements: tuple[str, ...], max_atoms: int, options: dict | None = None) -> Generator:
    if name not in REGISTRY:
        raise ValueError(f"generator {name!r} is not available (have: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](elements, max_atoms, dict(options or {}))
