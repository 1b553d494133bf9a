"""What a campaign has found so far: measurements by oracle, the convex hull they build, hits,
novelty, objective values, the surrogate's pick-time predictions and the round's metrics.

Everything here is rebuilt from the store (`CampaignResults.load`), so a resumed campaign, the
report and `xtalforge status` all read the same numbers. `record` is the one place a result
enters: it updates the hull (for the screening oracle's energies) before it is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from xtalforge.config import CampaignConfig
from xtalforge.loop.store import CampaignStore
from xtalforge.references.hull import Hull, mp2020_entry
from xtalforge.references.hulls import ReferenceHulls
from xtalforge.references.novelty import KnownStructures
from xtalforge.types import Candidate, Measurement, Status

log = logging.getLogger(__name__)


def known_materials(cfg: CampaignConfig, run_dir: Path):
    """The system's known phases from the configured sources (`references.sources`, plus the
    older `hull.references` entry files and `reference_structures` CIFs)."""
    from xtalforge.references.known import default_sources, load_known

    rc = cfg.references
    sources = list(default_sources() if rc.sources is None else rc.sources)
    sources += [*cfg.hull.references, *cfg.reference_structures]
    return load_known(cfg.elements, sources, exclude_chemsys=rc.exclude_chemsys, strict=False,
                      mp_cache_dir=Path(run_dir).parent / "mp_cache")


def build_hull(cfg: CampaignConfig, run_dir: Path, known=None):
    """The campaign's hulls before any of its own results (`references.hulls.ReferenceHulls`):
    the DFT reference hull of the known phases and, when the screening oracle is an MLIP and
    `references.oracle_consistent` is on, the known phases relaxed by that MLIP with the same
    settings (cached across campaigns), on which hits are decided."""
    from xtalforge.references.hulls import build_reference_hulls
    from xtalforge.references.relaxed import model_key, relax_settings

    known = known_materials(cfg, run_dir) if known is None else known
    m = cfg.mlip
    relax = None
    if m is not None and cfg.screen_oracle() is m and cfg.references.oracle_consistent:
        relaxer = []

        def relax_with_the_oracles_model(structures):
            # loaded only when the cache misses: a second campaign in the system pays nothing
            if not relaxer:
                from xtalforge.oracles.mlip.oracle import resolve_batched
                from xtalforge.oracles.mlip.relax import Relaxer

                relaxer.append(Relaxer(m.model, batched=resolve_batched(m.batched, m.model, "cpu"), threads=None,
                                       model_options=m.model_options, max_batch=m.max_batch))
            return relaxer[0].relax_many(list(structures), m.fmax, m.max_steps, m.relax_cell, m.timeout_s)

        relax = relax_with_the_oracles_model

    model = m.model if m is not None else ""
    return build_reference_hulls(
        known, relax, model_key(model) if relax else "", relax_settings(m.fmax, m.max_steps, m.relax_cell, m.model_options)
        if relax else None, cfg.references.cache_dir, apply_mp2020=cfg.hull.mp2020_for(model) if m else False,
        max_sites=cfg.references.max_sites, hit_threshold=cfg.hull.stable_threshold)


def hull_entry(m: Measurement):
    """The hull entry of a screening result, or None when it has no energy on the hull's scale:
    `corrected_energy_per_atom` (or `energy_per_atom`), eV/atom, times the relaxed cell's atoms."""
    if m.status != Status.ok or m.relaxed is None:
        return None
    e = m.values.get("corrected_energy_per_atom", m.values.get("energy_per_atom"))
    if e is None or not np.isfinite(e):
        return None
    return mp2020_entry(m.relaxed, float(e) * len(m.relaxed), m.candidate_id, apply=False)


class CampaignResults:
    """The campaign's findings over its store and hull. `measured` holds the screening oracle's
    results by candidate id (insertion order: the order they landed); `by_oracle` every oracle's."""

    def __init__(self, cfg: CampaignConfig, store: CampaignStore, run_dir: Path, hull: ReferenceHulls | Hull):
        self.cfg, self.store, self.run_dir, self.hull = cfg, store, Path(run_dir), hull
        self.screen = cfg.screen_oracle().name
        self.by_oracle: dict[str, dict[str, Measurement]] = {o.name: {} for o in cfg.oracle_specs()}
        self.measured = self.by_oracle[self.screen]
        # the surrogate's (mean, stdev) of e_above_hull (eV/atom) at pick time, and the round
        self.predicted: dict[str, tuple[float, float]] = {}
        self.predicted_round: dict[str, int] = {}
        self._known_index = None  # KnownStructures, built on first need
        self._matches: dict[tuple[str, bool], str] = {}  # (candidate id, relaxed?) -> material id or ""
        self._evaluated_index = KnownStructures()  # starting and relaxed structures of what was evaluated
        self._reduced: dict[str, Structure] = {}  # pool candidate -> its structure as the index compares it
        self._evaluated_seen: set[str] = set()
        self._duplicates: dict[str, str] = {}  # pool candidate -> the evaluated one it repeats
        # pool candidate -> how many structures of its formula's bucket it was matched against;
        # buckets only grow, so a later look needs only the ones added since
        self._checked_against: dict[str, int] = {}
        self.spacegroups: dict[str, str] = {}  # evaluated candidate -> space group of its result (report memo)

    @classmethod
    def load(cls, cfg: CampaignConfig, store: CampaignStore, run_dir: Path) -> CampaignResults:
        res = cls(cfg, store, run_dir, build_hull(cfg, run_dir))
        for name, table in res.by_oracle.items():
            for m in store.measurements(oracle=name):
                table[m.candidate_id] = m
                if name == res.screen and (entry := hull_entry(m)) is not None:
                    res.hull.add(m.candidate_id, entry)
        res.load_predictions()
        return res

    # -- results in ------------------------------------------------------------------------
    def record(self, m: Measurement) -> bool:
        """Commit one result (False: the store already had it). A screening result with an
        energy joins the hull first and carries e_form_per_atom and e_above_hull (eV/atom) as
        they stood when it landed; every view recomputes them against the current hull."""
        if m.oracle == self.screen and (entry := hull_entry(m)) is not None:
            self.hull.add(m.candidate_id, entry)
            m.values["e_form_per_atom"] = self.hull.e_form_per_atom(entry)
            m.values["e_above_hull"] = self.hull.e_above_hull(entry)
            if hasattr(self.hull, "e_above_hull_dft"):
                m.values["e_above_hull_dft"] = self.hull.e_above_hull_dft(entry)
        new = self.store.add_measurement(m)
        self.by_oracle.setdefault(m.oracle, {})[m.candidate_id] = m
        return new

    # -- views -----------------------------------------------------------------------------
    def e_above_hull(self) -> dict[str, float]:
        """Candidate id -> e_above_hull (eV/atom) against the current hull."""
        return self.hull.all_e_above_hull()

    def current(self, pairs: list[tuple[Candidate, Measurement]], e_hull: dict[str, float] | None = None
                ) -> list[tuple[Candidate, Measurement]]:
        """`pairs` with e_above_hull brought up to date from the hull (in place)."""
        e_hull = self.e_above_hull() if e_hull is None else e_hull
        for c, m in pairs:
            if c.id in e_hull:
                m.values["e_above_hull"] = e_hull[c.id]
        return pairs

    def history(self, known_before: int | None = None) -> list[tuple[Candidate, Measurement]]:
        """Successful screening results, best first by current e_above_hull; with
        `known_before`, only those from earlier rounds."""
        ok = {k: m for k, m in self.measured.items()
              if m.status == Status.ok and (known_before is None or m.round < known_before)}
        cands = {c.id: c for c in self.store.candidates(ids=list(ok))}
        pairs = self.current([(cands[k], m) for k, m in ok.items() if k in cands])
        pairs.sort(key=lambda t: t[1].values["e_above_hull"])
        return pairs

    def round_results(self, r: int) -> list[tuple[Candidate, Measurement]]:
        """Round r's screening picks with their stored results (current e_above_hull)."""
        ids = self.store.selected(self.screen, round=r)
        cands = {c.id: c for c in self.store.candidates(ids=ids)}
        return self.current([(cands[i], self.measured[i]) for i in ids if i in self.measured and i in cands])

    def known_index(self):
        """The known structures a candidate is matched against: every known phase of the system
        with a structure (snapshot, mp-api, user files) and the same phases as the MLIP relaxed
        them, under the same material id."""
        if self._known_index is None:
            hull = self.hull
            index = KnownStructures(getattr(getattr(hull, "known", None), "phases", ()))
            relaxed = getattr(hull, "relaxed", None)
            for e in (relaxed.entries if relaxed is not None else ()):
                if getattr(e, "structure", None) is not None:
                    index.add(str(e.entry_id), e.structure)
            self._known_index = index
        return self._known_index

    def known_match(self, c: Candidate) -> str:
        """The material id of the known phase `c` is ('' when none): its relaxed structure once
        the screening oracle measured it, its proposed structure before."""
        m = self.measured.get(c.id)
        relaxed = m is not None and m.status == Status.ok and m.relaxed is not None
        key = (c.id, relaxed)
        if key not in self._matches:
            self._matches[key] = self.known_index().match(m.relaxed if relaxed else c.structure)
        return self._matches[key]

    def novel(self, cands: Sequence[Candidate]) -> set[str]:
        """Ids among `cands` that match no known phase (a match is a rediscovery, never new)."""
        return {c.id for c in cands if not self.known_match(c)}

    def repeats_of_evaluated(self, cands: Sequence[Candidate], refresh: bool = True,
                             match: bool = True) -> dict[str, str]:
        """Among `cands` (not yet evaluated), those that StructureMatcher matches to the starting
        or the relaxed structure of a candidate the screening oracle already evaluated: id ->
        that candidate's id. An oracle call on them would be spent on a structure seen before.
        What was matched is kept, so a later call only checks what came in since. With
        `refresh=False` the evaluated structures are not taken in first: a thread other than
        the one recording results may then check new candidates against those already in. With
        `match=False` nothing is matched: only the repeats found by earlier calls are returned."""
        if not match:
            return {c.id: self._duplicates[c.id] for c in cands if c.id in self._duplicates}
        new = [k for k in self.measured if k not in self._evaluated_seen] if refresh else []
        index = self._evaluated_index
        if new:
            starts = {c.id: c.structure for c in self.store.candidates(ids=new)}
            for k in new:
                m = self.measured[k]
                for s in (starts.get(k), m.relaxed if m.status == Status.ok else None):
                    if s is not None:
                        index.add(k, s)
                self._evaluated_seen.add(k)
        out = {}
        checked = self._checked_against
        for c in cands:
            if c.id in self._duplicates:
                out[c.id] = self._duplicates[c.id]
                continue
            formula = c.structure.composition.element_composition.reduced_formula
            done, n = checked.get(c.id, 0), index.count(formula)
            if done < n:
                if c.id not in self._reduced:  # reduced once, however many rounds it waits in the pool
                    self._reduced[c.id] = index.reduced(c.structure)
                hit = index.match(self._reduced[c.id], start=done, reduced=True)
                checked[c.id] = n
                if hit:
                    self._duplicates[c.id] = out[c.id] = hit
                    self._reduced.pop(c.id, None)
        return out

    def stable(self, e_hull: dict[str, float] | None = None) -> list[str]:
        """Evaluated candidates within hull.stable_threshold (eV/atom) of the current hull."""
        e_hull = self.e_above_hull() if e_hull is None else e_hull
        return [k for k, v in e_hull.items() if v <= self.cfg.hull.stable_threshold + 1e-9]

    def hits(self, e_hull: dict[str, float] | None = None) -> set[str]:
        """Evaluated candidates that are stable, unique and new: stable within
        hull.stable_threshold and matching no known phase."""
        from xtalforge.loop.metrics import hit_ids

        e_hull = self.e_above_hull() if e_hull is None else e_hull
        stable = self.stable(e_hull)
        novel = self.novel(self.store.candidates(ids=stable)) if stable else set()
        return set(hit_ids(e_hull, novel, self.cfg.hull.stable_threshold))

    def rediscovered(self, e_hull: dict[str, float] | None = None) -> dict[str, str]:
        """Stable evaluated candidates that are known phases: id -> material id."""
        stable = self.stable(e_hull)
        cands = self.store.candidates(ids=stable) if stable else []
        return {c.id: mid for c in cands if (mid := self.known_match(c))}

    def e_above_hull_dft(self) -> dict[str, float]:
        """Candidate id -> e_above_hull (eV/atom) against the DFT reference hull (MP energies of
        the known phases), where one is built."""
        dft = getattr(self.hull, "dft", None)
        return dft.all_e_above_hull() if dft is not None else {}

    def objectives(self) -> tuple[list[str], list[bool]]:
        """(names, minimize flags) of the objectives behind the hypervolume and the Pareto
        plot: the configured acquisition objectives when there are several, else e_above_hull
        against p_synth (used only where candidates carry a synthesizability score)."""
        objs = self.cfg.acquisition.objectives
        if len(objs) >= 2:
            return [o.name for o in objs], [bool(o.minimize) for o in objs]
        return ["e_above_hull", "p_synth"], [True, False]

    def objective_values(self, names: list[str], e_hull: dict[str, float]) -> dict[str, list[float]]:
        """Candidate id -> its values of `names` (e_above_hull from the current hull, others from
        the screening measurement or candidate.meta), for evaluated candidates that have them all."""
        ids = [k for k, m in self.measured.items() if m.status == Status.ok]
        out = {}
        for c in self.store.candidates(ids=ids):
            m, row = self.measured[c.id], []
            for n in names:
                v = e_hull.get(c.id) if n == "e_above_hull" else m.values.get(n, (c.meta or {}).get(n))
                row.append(float(v) if isinstance(v, (int, float)) else float("nan"))
            if np.all(np.isfinite(row)):
                out[c.id] = row
        return out

    def describe(self) -> list[str]:
        """What the hulls hold and which references decided "stable" and "novel"."""
        return self.hull.describe() if hasattr(self.hull, "describe") else []

    def save_current(self, r: int) -> None:
        """e_above_hull of every evaluated candidate against the hulls as they stand after round
        r (eV/atom; oracle-consistent and DFT): the values in the measurements are those at
        measurement time, which go stale as the hull moves."""
        e_hull, e_dft = self.e_above_hull(), self.e_above_hull_dft()
        self.store.save_state("e_above_hull_current", r,
                              {k: [v, e_dft.get(k, float("nan"))] for k, v in e_hull.items()})

    # -- the surrogate's predictions at pick time ------------------------------------------
    def load_predictions(self) -> None:
        """The surrogate's pick-time predictions, back from the store after a resume."""
        for cid, (mean, std, rr) in (self.store.load_state("surrogate_predictions") or {}).items():
            self.predicted.setdefault(cid, (float(mean), float(std)))
            self.predicted_round.setdefault(cid, int(rr))

    def save_predictions(self, r: int) -> None:
        state = {cid: [mean, std, self.predicted_round.setdefault(cid, r)]
                 for cid, (mean, std) in self.predicted.items()}
        if state:
            self.store.save_state("surrogate_predictions", r, state)

    def predictions(self) -> dict[str, tuple[float, float, int]]:
        """Candidate id -> (predicted e_above_hull, its stdev, both eV/atom; round picked)."""
        return {cid: (m, s, self.predicted_round.get(cid, -1)) for cid, (m, s) in self.predicted.items()}

    # -- the round's numbers ---------------------------------------------------------------
    def round_metrics(self, r: int, results: list[tuple[Candidate, Measurement]],
                      generators: Sequence[str]) -> dict[str, float]:
        """Hits, evaluations per oracle, novelty per generator, surrogate calibration and the
        hypervolume; names, units and meanings are in tracking.ROUND_METRICS."""
        from xtalforge.loop.metrics import hypervolume, reference_point

        e_hull = self.e_above_hull()
        ok = [m for m in self.measured.values() if m.status == Status.ok]
        evals = len(self.measured)
        hits = self.hits(e_hull)
        this = [m for _, m in results]
        s = self.screen
        out = {
            f"evaluations_{s}": float(len(this)),
            f"failed_{s}": float(sum(m.status != Status.ok for m in this)),
            "evaluations_total": float(evals),
            f"evaluations_total_{s}": float(evals),
            f"failed_total_{s}": float(sum(m.status != Status.ok for m in self.measured.values())),
            "sun_count": float(len(hits)),
            "sun_rate": float(len(hits) / evals) if evals else 0.0,
            "rediscovered_count": float(len(self.rediscovered(e_hull))),
            "best_e_above_hull": float(min(e_hull.values())) if e_hull else float("nan"),
            "ok_total": float(len(ok)),
        }
        # the store keeps only unique candidates, so this round's stored ones are its unique ones
        fresh = self.store.candidates(round=r)
        novel = self.novel(fresh)
        for g in generators:
            out[f"novel_{g}"] = float(sum(c.id in novel for c in fresh if c.source == g))
        out["novel"] = float(sum(out[f"novel_{g}"] for g in generators))
        out.update(self._other_oracle_counts(r))
        pairs = [(self.predicted[c.id], e_hull[c.id]) for c, _ in results if c.id in self.predicted and c.id in e_hull]
        if pairs:
            out["surrogate_mae_last_round"] = float(np.mean([abs(p[0] - y) for p, y in pairs]))
            z = [abs(p[0] - y) / max(p[1], 1e-9) for p, y in pairs]
            out["surrogate_within_1sigma"] = float(np.mean([v <= 1 for v in z]))
            out["surrogate_within_2sigma"] = float(np.mean([v <= 2 for v in z]))
        names, minimize = self.objectives()
        table = self.objective_values(names, e_hull)
        if table:
            Y = np.array(list(table.values()))
            out["hypervolume"] = hypervolume(np.where(minimize, Y, -Y), reference_point(names, minimize, Y))
        return out

    def _other_oracle_counts(self, r: int) -> dict[str, float]:
        """evaluations_/failed_ for each oracle besides the screening one (a lab answers days
        later, so its count is what arrived since the previous round was recorded)."""
        prev = self.store.round_metrics().get(r - 1, {})
        out: dict[str, float] = {}
        for name in self.by_oracle:
            if name == self.screen:
                continue
            ms = self.store.measurements(oracle=name)
            total, failed = len(ms), sum(m.status != Status.ok for m in ms)
            out |= {f"evaluations_{name}": float(total - prev.get(f"evaluations_total_{name}", 0)),
                    f"failed_{name}": float(failed - prev.get(f"failed_total_{name}", 0)),
                    f"evaluations_total_{name}": float(total), f"failed_total_{name}": float(failed)}
        return out
