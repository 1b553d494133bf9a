"""Campaign configuration: pydantic models, one error line per bad field."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pymatgen.core.periodic_table import Element


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratorConfig(_Strict):
    name: str = Field(description="a registered generator (xtalforge.generators.registry)")
    weight: float = Field(1.0, gt=0, description="prior share of the proposal budget")
    options: dict = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from xtalforge.generators.registry import generator_names

        if v not in generator_names():
            raise ValueError(f"unknown generator {v!r} (known: {', '.join(generator_names())})")
        return v


class MLIPConfig(_Strict):
    """The MLIP oracle (`oracles: [{kind: mlip, ...}]`): relaxations on a Ray actor pool."""

    name: str = Field("mlip", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$", description="its measurements are stored under it")
    model: str = Field("chgnet", description="'chgnet' (bundled weights) or an ASE calculator, "
                                             "'ase:package.module.Class'")
    model_options: dict = Field(default_factory=dict, description="keyword arguments of the ASE calculator")
    fmax: float = Field(0.1, gt=0, description="force convergence, eV/Å")
    max_steps: int = Field(300, gt=0)
    relax_cell: bool = True
    timeout_s: float = Field(600.0, gt=0, description="per relaxation")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        2, description="MLIP actors, one CPU each; 'auto': one per CPU of the Ray cluster")
    batched: Literal["auto", True, False] = Field("auto", description="relax many structures per model call (CHGNet)")
    max_batch: int = Field(16, ge=1, description="structures relaxed together by one worker")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    properties: list[Literal["bulk_modulus"]] = Field(
        default_factory=list, description="property oracles run on each relaxed structure")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v == "chgnet" or re.fullmatch(r"ase:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v):
            return v
        raise ValueError("use 'chgnet' or an ASE calculator as 'ase:package.module.Class' "
                         "(e.g. ase:ase.calculators.emt.EMT)")

    @model_validator(mode="after")
    def _ase_calculator(self) -> MLIPConfig:
        # checked here, before anything runs: a config names a class to construct, and only an
        # ASE calculator may be one (`ase:os.system` with a `command` option would run a shell)
        if self.model.startswith("ase:"):
            from xtalforge.oracles.mlip.relax import ase_calculator_class

            ase_calculator_class(self.model, self.model_options)
        return self


class HullConfig(_Strict):
    references: list[str] = Field(default_factory=list, description="extra reference-entry files")
    stable_threshold: float = Field(
        0.0, ge=0, description="eV/atom above the hull (the oracle-consistent one when built) at or below "
        "which a candidate counts as stable; CHGNet's energy error is about 0.03 eV/atom")
    # CHGNet is trained on MPtrj energies that already carry the MP2020 corrections (its
    # fine-tuning guide corrects labels with MaterialsProject2020Compatibility), so correcting
    # its output again double-counts them (Fe2O3: -2.88 vs MP's -1.71 eV/atom formation energy).
    # "auto" corrects only energies from models trained on raw GGA/GGA+U energies.
    apply_mp2020: Literal["auto"] | bool = "auto"

    def mp2020_for(self, model: str) -> bool:
        """Whether MLIP energies from `model` need the MP2020 corrections applied."""
        if isinstance(self.apply_mp2020, bool):
            return self.apply_mp2020
        return not model.startswith("chgnet")


class ReferencesConfig(_Strict):
    """The known materials every claim is made against (xtalforge.references): they build the
    hulls that decide "stable" and the structures that decide "novel"."""

    sources: list[str] | None = Field(
        None, description="'snapshot' (the shipped Materials Project subset), 'mp-api' (needs MP_API_KEY), "
        "or CIF/CSV/JSON files or folders of known phases; default: mp-api with MP_API_KEY set, else the snapshot")
    exclude_chemsys: list[str] = Field(
        default_factory=list, description="systems whose known phases are hidden (leave-system-out benchmarks)")
    oracle_consistent: bool = Field(
        True, description="relax the known phases with the campaign's MLIP (cached) and decide hits on that hull")
    max_sites: int = Field(20, ge=1, description="largest known phase relaxed into the oracle-consistent hull")
    cache_dir: str | None = Field(
        None, description="relaxed known phases, shared by campaigns (default ~/.cache/xtalforge/known_relaxed "
        "or $XTALFORGE_CACHE_DIR)")


class ObjectiveConfig(_Strict):
    """A quantity the campaign optimizes; some oracle must measure it (e.g. e_above_hull)."""

    name: str
    minimize: bool = True


class ConstraintConfig(_Strict):
    """value `op` threshold, e.g. e_above_hull <= 0.1 (eV/atom) or p_synth >= 0.5: a modeled
    outcome constraint when an oracle measures the value, a pool filter when every candidate
    carries it (candidate.meta)."""

    name: str
    op: Literal["<=", ">="]
    threshold: float


class AcquisitionConfig(_Strict):
    kind: str = Field("qlognei", description="a registered acquisition arm (xtalforge.acquisition.arm_names())")
    batch_size: int = Field(6, gt=0, description="MLIP evaluations per round")
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig(name="e_above_hull", minimize=True)],
        description="what to optimize; each arm declares whether it serves one objective or several")
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    portfolio: list[str] = Field(
        default_factory=list, description="GP-Hedge over these acquisition functions (empty: `kind` alone)")
    hedge_eta: float = Field(1.0, gt=0, description="GP-Hedge learning rate")
    shortlist: int = Field(512, ge=16, description="candidates kept by the pool screen for the exact batch step")
    mc_samples: int = Field(2048, ge=64, description="joint posterior draws for the batch step")
    ucb_beta: float = Field(2.0, gt=0)
    max_exact_gp: int = Field(2000, ge=50, description="training points past which the GP uses a subset of data")
    hyper_subset: int = Field(600, ge=50, description="points the GP hyperparameters are fitted on")
    featurizer: Literal["chgnet+composition", "magpie+structure", "chgnet+magpie+structure"] = "chgnet+composition"
    single_point: bool = Field(
        True, description="give the surrogate each proposal's MLIP single-point e_above_hull as a low "
        "fidelity of e_above_hull (free with the chgnet+composition featurizer: the same forward pass)")

    @model_validator(mode="after")
    def _kinds_fit_objectives(self) -> AcquisitionConfig:
        names = [o.name for o in self.objectives]
        if not names:
            raise ValueError("objectives: name at least one")
        if len(set(names)) != len(names):
            raise ValueError("objectives: each name may appear once")
        from xtalforge.acquisition.registry import UnknownArm, arm_names, get_arm

        key = "portfolio" if self.portfolio else "kind"
        try:
            arms = [get_arm(k) for k in self.portfolio or [self.kind]]
        except UnknownArm as err:
            raise ValueError(f"{key}: {err}") from None
        misfit = [a.name for a in arms if not a.fits(len(names))]
        if misfit:
            n = "one objective" if len(names) == 1 else f"{len(names)} objectives"
            raise ValueError(f"{key}: {', '.join(misfit)} does not serve {n} "
                             f"(use: {', '.join(arm_names(len(names)))})")
        return self


class RayConfig(_Strict):
    """Where the campaign's Ray runs (see xtalforge.loop.executor)."""

    address: str | None = Field(
        None, description="None: a Ray of the campaign's own on this machine; 'HOST:PORT': join the "
        "cluster whose head's GCS listens there; 'ray://HOST:PORT': join through the Ray Client; 'auto': "
        "the cluster this machine belongs to")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray of the campaign's own")
    runtime_env: dict | None = Field(
        None, description="Ray runtime environment for the workers, e.g. {pip: [xtalforge]} or "
        "{working_dir: ., env_vars: {...}}, so workers on other nodes get the package")
    proposals_per_task: int = Field(
        50, ge=1, description="proposals per Ray generation task; a generator asked for fewer than "
        "twice this proposes in the campaign's process (a task on a fresh worker costs seconds)")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        if v == "local":
            return None
        if not re.fullmatch(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}", v):
            raise ValueError("use HOST:PORT (a head node's GCS port, 6379 by default), ray://HOST:PORT "
                             "(the Ray Client, 10001 by default) or 'auto'")
        return v


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


class SynthesisConfig(_Strict):
    """How synthesizability steers the campaign (see xtalforge.synthesis)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    model: str | None = Field(None, description="PU model file from `xtalforge synth train` (.npz)")
    min_p_synth: float = Field(0.5, ge=0, le=1, description="P(synthesizable) a pick must reach")
    use: Literal["constraint", "objective", "off"] = Field(
        "constraint", alias="as", description="constraint: filter the pool; objective: score, log and reward generators without filtering; off")
    precursors: str | None = Field(None, description="precursor CSV for routes (default: shipped list)")
    routes_per_target: int = Field(3, ge=0, description="synthesis routes reported per top candidate")

    @field_validator("model", "precursors")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file() and not Path(v + ".npz").is_file():
            raise ValueError(f"no such file {v}")
        return v


class CampaignConfig(_Strict):
    name: str = "campaign"
    chemical_system: list[str]
    max_atoms: int = Field(10, gt=0, le=200)
    rounds: int = Field(3, gt=0)
    proposals_per_round: int = Field(60, gt=0)
    seed: int = 0
    reference_structures: list[str] = Field(
        default_factory=list, description="CIF files or folders of known structures; a match is not novel")
    update_generators: bool = Field(True, description="False freezes generators (an ablation)")
    overlap: bool = Field(
        True, description="while round r's oracle runs, generate round r+1's candidates (they then "
        "learn from results up to round r-1: one round of lag), write round r-1's files and, during "
        "round r's last relaxations, fit the surrogate's hyperparameters for round r+1's picks, "
        "instead of keeping the oracle waiting for them")
    generators: list[GeneratorConfig] = Field(
        default_factory=lambda: [GeneratorConfig(name="random_symmetric")]
    )
    oracles: list[dict] = Field(
        default_factory=lambda: [{"kind": "mlip"}],
        description="what measures candidates: one `screen` oracle (the acquisition's picks; "
        "default the MLIP) and any `confirm` oracles (a lab, DFT); each entry is {kind: ..., "
        "options...}. The top-level `mlip:` and `lab:` keys are shorthand for the entry of that kind")
    hull: HullConfig = Field(default_factory=HullConfig)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str = "runs"
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    _specs: list = PrivateAttr(default_factory=list)

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

    @model_validator(mode="before")
    @classmethod
    def _oracle_shorthand(cls, data):
        """`mlip:` and `lab:` at the top level replace (or add) the `oracles` entry of that
        kind; `lab: null` removes the lab."""
        if not isinstance(data, dict) or not ({"mlip", "lab"} & set(data)):
            return data
        data = dict(data)
        entries = [dict(e) if isinstance(e, dict) else e for e in data.get("oracles") or [{"kind": "mlip"}]]
        for kind in ("mlip", "lab"):
            if kind not in data:
                continue
            value = data.pop(kind)
            at = next((i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("kind") == kind), None)
            if value is None:
                entries = [e for i, e in enumerate(entries) if i != at]
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{kind}: expected a mapping of options")
            entry = {"kind": kind, **value, "__key__": kind}
            if at is None:
                entries.append(entry)
            else:
                entries[at] = entry
        data["oracles"] = entries
        return data

    @field_validator("oracles")
    @classmethod
    def _oracles_known(cls, entries: list[dict]) -> list[dict]:
        """Each entry validated by its registered kind's own model, and written back in full
        (defaults included), so config.yaml says what ran. Problems are reported under the key
        the user wrote (`mlip.fmax` for the shorthand, `oracles.1.fmax` in the list)."""
        from xtalforge.oracles.base import UnknownOracle, oracle_kind

        out, roles, problems = [], [], []
        for i, entry in enumerate(entries):
            entry = dict(entry)
            where = entry.pop("__key__", f"oracles.{i}")
            if not isinstance(entry.get("kind"), str):
                problems.append(f"{where}: name its kind, e.g. {{kind: mlip}}")
                continue
            try:
                kind = oracle_kind(entry["kind"])
                spec = kind.options.model_validate({k: v for k, v in entry.items() if k != "kind"})
            except UnknownOracle as err:
                problems.append(f"{where}.kind: {err}")
                continue
            except ValidationError as err:
                problems += [f"{where}.{line}" for line in _format(err)]
                continue
            out.append({"kind": kind.kind, **spec.model_dump()})
            roles.append(kind.role)
        if not problems and roles.count("screen") != 1:
            problems.append(f"oracles: name exactly one oracle that evaluates the acquisition's picks "
                            f"(role screen, e.g. kind mlip); found {roles.count('screen')}")
        names = [e.get("name", e["kind"]) for e in out]
        if not problems and len(set(names)) != len(names):
            problems.append(f"oracles: each oracle needs its own name (got {', '.join(names)})")
        if problems:
            raise ValueError(_LINES + "\n".join(problems))
        return out

    @model_validator(mode="after")
    def _oracle_specs(self) -> CampaignConfig:
        from xtalforge.oracles.base import oracle_kind

        self._specs = []
        for e in self.oracles:
            kind = oracle_kind(e["kind"])
            self._specs.append((kind, kind.options.model_validate({k: v for k, v in e.items() if k != "kind"})))
        return self

    def tracking_params(self) -> dict:
        """The config as MLflow params: each oracle under its own name (`mlip.fmax`)."""
        out = {k: v for k, v in self.model_dump().items() if k != "oracles"}
        for e in self.oracles:
            out[e.get("name", e["kind"])] = {k: v for k, v in e.items() if k != "name"}
        return out

    def oracle_specs(self) -> list:
        """The validated options of each oracle, in config order (each has `.name`)."""
        return [s for _, s in self._specs]

    def oracle_kinds(self) -> list:
        """(OracleKind, options) per oracle, in config order."""
        return list(self._specs)

    def screen_oracle(self):
        """The options of the oracle that evaluates the acquisition's picks."""
        return next(s for k, s in self._specs if k.role == "screen")

    def oracle_of_kind(self, kind: str):
        """The options of the first oracle of `kind`, or None."""
        return next((s for k, s in self._specs if k.kind == kind), None)

    @property
    def mlip(self) -> MLIPConfig | None:
        return self.oracle_of_kind("mlip")

    @property
    def lab(self) -> LabConfig | None:
        return self.oracle_of_kind("lab")

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


# a validator's message that is already one "where: what" line per problem
_LINES = "\x00lines\x00"


def _format(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(_LINES):
            lines += msg.removeprefix(_LINES).split("\n")
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return lines


def parse_config(data: dict) -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path, relative_to: str | Path | None = None) -> CampaignConfig:
    """Read a campaign YAML (safe_load: never constructs arbitrary objects).

    With `relative_to` (a run folder), relative file paths and SQLite tracking URIs in the file
    are taken relative to that folder (a run folder's config.yaml), not the working folder.
    Everything a config names is checked here, before anything is created: a file that is not
    text, invalid settings, elements xtalforge has no data for."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config: no such file {p}"])
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"config: {p} is not a text file (byte {err.start} is not UTF-8)"]) from None
    if "\x00" in text:
        raise ConfigError([f"config: {p} is not a text file (it holds NUL bytes)"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"config: not valid YAML ({' '.join(str(err).split())})"]) from None
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping of keys to values"])
    if relative_to is not None:
        from xtalforge.loop.run_paths import resolved_config

        data = resolved_config(data, Path(relative_to))
    cfg = parse_config(data)
    problems = element_data_problems(cfg.chemical_system, has_references=bool(cfg.hull.references))
    if problems:
        raise ConfigError(problems)
    return cfg


def element_data_problems(elements: list[str], has_references: bool = False) -> list[str]:
    """One line per element a campaign cannot work with: no oxidation-state and
    electronegativity data (SMACT, which composition enumeration needs), or no elemental
    reference energy in the shipped Materials Project snapshot (the convex hull needs one for
    every element; `has_references`: the config names its own reference files, which may)."""
    import gzip
    from importlib import resources

    import smact

    with gzip.open(resources.files("xtalforge").joinpath("data/mp_elemental_refs.json.gz")) as fh:
        shipped = set(json.load(fh))
    problems = []
    for el in elements:
        try:
            smact.Element(el)
        except (KeyError, ValueError, NameError):
            problems.append(f"chemical_system: no element data (oxidation states, electronegativity) for {el}; "
                            "compounds with it cannot be proposed")
            continue
        if el not in shipped and not has_references:
            problems.append(f"chemical_system: no elemental reference energy for {el} in the shipped Materials "
                            "Project snapshot, so no convex hull can be built; name reference entries that "
                            "include it in hull.references")
    return problems
