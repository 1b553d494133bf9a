"""Property oracles on a relaxed structure: bulk modulus (GPa) from an energy-volume fit, and
density (g/cm^3).

They run inside the MLIP actor right after the relaxation, on the same model, so they cost no
second model load and no extra transfer. The bulk modulus is the B0 of a Birch-Murnaghan fit
(pymatgen.analysis.eos) to energies at isotropically scaled cells around the relaxed volume,
with the ions relaxed at each fixed cell by default (without that, structures with free
internal coordinates come out too stiff).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Structure

PROPERTIES = ("bulk_modulus",)
# energies (eV per cell) of structures at fixed cells; NaN where one failed
EnergyFn = Callable[[Sequence[Structure]], np.ndarray]


def density(structure: Structure) -> float:
    """Mass density in g/cm^3."""
    return float(structure.density)


def scaled_cells(structure: Structure, n_points: int = 7, max_volume_strain: float = 0.06) -> list[Structure]:
    """Copies of `structure` at volumes V0 * (1 + s), s evenly spaced in ±max_volume_strain,
    fractional coordinates kept."""
    out = []
    for s in np.linspace(-max_volume_strain, max_volume_strain, n_points):
        c = structure.copy()
        c.scale_lattice(structure.volume * (1.0 + s))
        out.append(c)
    return out


def bulk_modulus(structure: Structure, energies: EnergyFn, n_points: int = 7, max_volume_strain: float = 0.06,
                 eos: str = "birch_murnaghan") -> float:
    """B0 in GPa of an equation of state fitted to `energies` of scaled copies of `structure`.

    Raises ValueError when the fit cannot be trusted: a failed energy, a minimum outside the
    sampled volumes (the structure was not relaxed), or a non-positive or non-finite B0."""
    from pymatgen.analysis.eos import EOS

    cells = scaled_cells(structure, n_points, max_volume_strain)
    e = np.asarray(energies(cells), dtype=float)
    if e.shape != (len(cells),) or not np.isfinite(e).all():
        raise ValueError("an energy at a scaled cell failed")
    volumes = np.array([c.volume for c in cells])
    if int(np.argmin(e)) in (0, len(e) - 1):
        raise ValueError("energy minimum at the edge of the sampled volumes; relax the structure first")
    fit = EOS(eos).fit(volumes, e)
    b0 = float(fit.b0_GPa)
    if not math.isfinite(b0) or b0 <= 0:
        raise ValueError(f"equation-of-state fit gave B0 = {b0}")
    return b0


def compute_properties(names: Sequence[str], structure: Structure, energies: EnergyFn) -> tuple[dict[str, float], dict[str, str]]:
    """The requested properties of a relaxed structure: (values, errors by name). A property
    that fails is left out of the values with its reason; it never fails the relaxation."""
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            if name == "bulk_modulus":
                values[name] = bulk_modulus(structure, energies)
            elif name == "density":
                values[name] = density(structure)
            else:
                errors[name] = f"unknown property (known: {', '.join(PROPERTIES)})"
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    return values, errors
