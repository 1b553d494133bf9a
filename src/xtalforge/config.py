"""Campaign configuration: pydantic models, one error line per bad field."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pymatgen.core.periodic_table import Element


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratorConfig(_Strict):
    name: Literal["random_symmetric", "substitution", "evolutionary", "wyckoff", "pool"]
    weight: float = Field(1.0, gt=0, description="prior share of the proposal budget")
    options: dict = Field(default_factory=dict)


class MLIPConfig(_Strict):
    model: Literal["chgnet"] = "chgnet"
    fmax: float = Field(0.1, gt=0, description="force convergence, eV/Å")
    max_steps: int = Field(300, gt=0)
    relax_cell: bool = True
    timeout_s: float = Field(600.0, gt=0, description="per relaxation")
    workers: int = Field(2, ge=1)


class HullConfig(_Strict):
    references: list[str] = Field(default_factory=list, description="extra reference-entry files")
    stable_threshold: float = Field(0.0, ge=0, description="eV/atom; a hit is at or below this")
    apply_mp2020: bool = True


class AcquisitionConfig(_Strict):
    kind: Literal["qlognei", "ucb", "thompson", "random"] = "qlognei"
    batch_size: int = Field(6, gt=0, description="MLIP evaluations per round")


class RayConfig(_Strict):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


class TrackingConfig(_Strict):
    uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "xtalforge"
    top_k: int = Field(5, ge=0, description="CIFs logged per round")


_QUANTITY_NAME = r"[a-z][a-z0-9_]{0,39}"


class LabQuantity(_Strict):
    """One quantity a lab measures, e.g. band_gap (eV, float) or made (bool)."""

    name: str = Field(description="snake_case name, e.g. band_gap, made, lattice_a")
    unit: str = Field("", max_length=20, description="for people; values are taken as given in it")
    kind: Literal["float", "bool"] = "float"
    min: float | None = Field(None, description="lowest accepted value (float quantities)")
    max: float | None = Field(None, description="highest accepted value (float quantities)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(_QUANTITY_NAME, v):
            raise ValueError("use lower-case letters, digits and '_' (it names a CSV column)")
        if v in ("candidate_id", "status", "error") or v.endswith("_stdev"):
            raise ValueError(f"'{v}' is reserved in result files")
        return v

    @model_validator(mode="after")
    def _range(self) -> LabQuantity:
        if self.kind == "bool" and (self.min is not None or self.max is not None):
            raise ValueError("a bool quantity takes no min/max")
        for b in (self.min, self.max):
            if b is not None and not math.isfinite(b):
                raise ValueError("min and max must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class LabConfig(_Strict):
    """A lab (or any slow, human-run oracle) answering requests asynchronously, at fidelity 2."""

    name: str = Field("lab", description="the oracle name its measurements are stored under")
    quantities: list[LabQuantity]
    requests_per_round: int = Field(2, ge=0, description="lab requests sent per round")
    export_dir: str = Field("lab/requests", description="request files; relative to the run folder")
    wait: bool = Field(False, description="hold each round until its requests are answered")
    wait_timeout_s: float = Field(3600.0, gt=0, description="longest a round waits, seconds")
    trains: str | None = Field(
        None, description="a quantity that measures e_above_hull (eV/atom); its lab values "
        "replace the MLIP value in the surrogate's training set")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", v):
            raise ValueError("use letters, digits, '_', '-' (it names an oracle)")
        if v == "mlip":
            raise ValueError("'mlip' is the MLIP oracle's name")
        return v

    @model_validator(mode="after")
    def _quantities(self) -> LabConfig:
        names = [q.name for q in self.quantities]
        if not names:
            raise ValueError("quantities: name at least one")
        if len(set(names)) != len(names):
            raise ValueError("quantities: each name may appear once")
        if self.trains is not None:
            q = next((q for q in self.quantities if q.name == self.trains), None)
            if q is None or q.kind != "float":
                raise ValueError(f"trains: '{self.trains}' is not a float quantity of this lab")
        return self


class CampaignConfig(_Strict):
    name: str = "campaign"
    chemical_system: list[str]
    max_atoms: int = Field(10, gt=0, le=200)
    rounds: int = Field(3, gt=0)
    proposals_per_round: int = Field(60, gt=0)
    seed: int = 0
    update_generators: bool = Field(True, description="False freezes generators (an ablation)")
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(name="random_symmetric")]
    )
    mlip: MLIPConfig = Field(default_factory=MLIPConfig)
    hull: HullConfig = Field(default_factory=HullConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str = "runs"
    lab: LabConfig | None = Field(None, description="a lab oracle answering asynchronously")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use letters, digits, '_', '-', '.' (it names a folder)")
        return v

    @field_validator("chemical_system")
    @classmethod
    def _elements(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if not Element.is_valid_symbol(e)]
        if bad:
            raise ValueError(f"unknown element(s): {', '.join(bad)}")
        if len(set(v)) != len(v):
            raise ValueError("an element is listed twice")
        if not v:
            raise ValueError("name at least one element")
        return v

    @model_validator(mode="after")
    def _generators_unique(self) -> CampaignConfig:
        names = [g.name for g in self.generators]
        if len(set(names)) != len(names):
            raise ValueError("generators: each generator may appear once")
        if not names:
            raise ValueError("generators: name at least one")
        return self

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(self.chemical_system)

    @property
    def chemsys(self) -> str:
        return "-".join(sorted(self.chemical_system))

    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


class ConfigError(Exception):
    """A config that cannot run; `problems` holds one line per bad field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _format(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return lines


def parse_config(data: dict) -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read a campaign YAML (safe_load: never constructs arbitrary objects)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config: no such file {p}"])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"config: not valid YAML ({err})"]) from None
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping of keys to values"])
    return parse_config(data)
