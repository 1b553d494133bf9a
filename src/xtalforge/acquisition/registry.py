"""The one registry of acquisition arms a config may name (`acquisition.kind`, `.portfolio`).

The shipped arms are listed in `_builtins` and join on first use, so importing this module stays
cheap; a third party's `register_arm` call may come before or after, and its class wins.
"""

from __future__ import annotations

from xtalforge.acquisition.base import AcquisitionArm, AcquisitionError

_REGISTRY: dict[str, type[AcquisitionArm]] = {}


class UnknownArm(AcquisitionError, KeyError):
    """A name no registered arm has."""

    def __str__(self) -> str:
        return self.args[0]


def register_arm(cls: type[AcquisitionArm]) -> type[AcquisitionArm]:
    """Make the arm class `cls` available under `cls.name`; registering a name again replaces
    the earlier class. Returns `cls`, so it also works as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, AcquisitionArm)):
        raise TypeError(f"register_arm takes an AcquisitionArm subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: set the class attribute `name` (the config name)")
    _REGISTRY[name] = cls
    return cls


def get_arm(name: str) -> type[AcquisitionArm]:
    """The arm class registered as `name`, or UnknownArm with one line naming the known arms."""
    _builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArm(f"unknown acquisition {name!r} (known: {', '.join(arm_names())})") from None


def arm_names(n_objectives: int | None = None) -> list[str]:
    """Registered arm names, sorted; only those serving `n_objectives` objectives if given."""
    _builtins()
    return sorted(k for k, cls in _REGISTRY.items() if n_objectives is None or cls.fits(n_objectives))


def _builtins() -> None:
    from xtalforge.acquisition.qlognehvi import QLogNEHVI
    from xtalforge.acquisition.qlognei import QLogNEI
    from xtalforge.acquisition.random import RandomArm
    from xtalforge.acquisition.thompson import Thompson
    from xtalforge.acquisition.ucb import QUCB

    for cls in (QLogNEI, QUCB, Thompson, RandomArm, QLogNEHVI):
        _REGISTRY.setdefault(cls.name, cls)
