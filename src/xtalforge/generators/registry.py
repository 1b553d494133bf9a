"""The one registry of generators a config may name: config name -> constructor.

A shipped generator is one module plus one line in REGISTRY; a third party's is one
`register_generator(name, factory)` call from their own module, where
`factory(elements, max_atoms, options) -> Generator` (see generators/base.py for the role).
"""

from __future__ import annotations

from collections.abc import Callable

from xtalforge.generators.base import Generator


def _random_symmetric(elements, max_atoms, options) -> Generator:
    from xtalforge.generators.random_symmetric import RandomSymmetric

    return RandomSymmetric(elements, max_atoms, **options)


def _substitution(elements, max_atoms, options) -> Generator:
    from xtalforge.generators.substitution import Substitution

    return Substitution(elements, max_atoms, **options)


def _evolutionary(elements, max_atoms, options) -> Generator:
    from xtalforge.generators.evolutionary import Evolutionary

    return Evolutionary(elements, max_atoms, **options)


def _wyckoff(elements, max_atoms, options) -> Generator:
    from xtalforge.generators.wyckoff import WyckoffGenerator

    return WyckoffGenerator(elements, max_atoms, **options)


REGISTRY: dict[str, Callable[..., Generator]] = {
    "random_symmetric": _random_symmetric,
    "substitution": _substitution,
    "evolutionary": _evolutionary,
    "wyckoff": _wyckoff,
    "pool": lambda el, n, opt: __import__("xtalforge.generators.pool", fromlist=["_"]).PoolGenerator(el, n, **opt),
}


def register_generator(name: str, factory: Callable[..., Generator]) -> None:
    """Make `name` available to configs; `factory(elements, max_atoms, options)` builds it."""
    REGISTRY[name] = factory


def generator_names() -> list[str]:
    return sorted(REGISTRY)


def build_generator(name: str, elements: tuple[str, ...], max_atoms: int, options: dict | None = None) -> Generator:
    if name not in REGISTRY:
        raise ValueError(f"generator {name!r} is not available (have: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](elements, max_atoms, dict(options or {}))
