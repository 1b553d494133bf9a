"""The leave-system-out rediscovery benchmark: its targets, what it hides, and one tiny real run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from xtalforge.config import parse_config
from xtalforge.references.known import load_known
from xtalforge.references.novelty import KnownStructures


def _script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "discovery.py"
    spec = importlib.util.spec_from_file_location("discovery_script", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _script()


def test_targets_are_the_small_mp20_ground_states(bench):
    """Sr-Ti-O within 12 sites: Sr2TiO4 (K2NiF4), tetragonal SrTiO3 and Sr3Ti2O7; cubic SrTiO3
    has no structure in the snapshot and Sr4Ti3O10 (17 sites) is too big."""
    ids = [p.material_id for p in bench.rediscovery_targets("Sr-Ti-O", 12)]
    assert ids == ["mp-5532", "mp-4651", "mp-3349"]
    assert [p.material_id for p in bench.rediscovery_targets("Ti-O-Sr", 8)] == ["mp-5532"]
    for cs in bench.SHOWCASE:
        targets = bench.rediscovery_targets(cs, 12)
        assert 3 <= len(targets) <= 4, cs
        for p in targets:
            assert p.chemsys == "-".join(sorted(cs.split("-"))) and p.source == "mp20" and len(p.structure) <= 12


def test_campaign_config_hides_the_target_system(bench, tmp_path):
    from xtalforge.loop.proposals import generator_options

    d = bench.method_config("loop", "O-Sr-Ti", 12, 6, 0, tmp_path, 12, 50)
    cfg = parse_config(d)
    assert cfg.references.exclude_chemsys == ["O-Sr-Ti"] and cfg.update_generators
    assert cfg.acquisition.single_point
    sub = next(g for g in cfg.generators if g.name == "substitution")
    # the snapshot library by default, with the hidden system passed on by the campaign
    assert sub.options == {} and generator_options(cfg, sub) == {"exclude_chemsys": ["O-Sr-Ti"]}
    textbook = parse_config(bench.method_config("loop", "O-Sr-Ti", 12, 6, 0, tmp_path, 12, 50, textbook=True,
                                                 single_point=False))
    assert next(g for g in textbook.generators if g.name == "substitution").options == {"prototypes": []}
    assert not textbook.acquisition.single_point
    # what the campaign then sees: the binaries and elements, none of the targets
    known = load_known(cfg.elements, cfg.references.sources, exclude_chemsys=cfg.references.exclude_chemsys)
    assert {p.chemsys for p in known.phases} <= {"O", "Sr", "Ti", "O-Sr", "O-Ti", "Sr-Ti"}
    index = KnownStructures(known.with_structure())
    assert all(index.match(t.structure) == "" for t in bench.rediscovery_targets("Sr-Ti-O", 12))
    rnd = parse_config(bench.method_config("random", "O-Sr-Ti", 12, 6, 0, tmp_path, 12, 50))
    assert [g.name for g in rnd.generators] == ["random_symmetric"] and rnd.acquisition.kind == "random"
    assert not rnd.update_generators


def test_bad_input_is_one_line(bench, capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--chemsys", "Sr-Ti", "--targets-only"])
    assert err.value.code == 2 and "ternary" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--chemsys", "Sr-Ti-O", "--methods", "loop,magic"])
    assert "unknown method magic" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_random_run_scores_and_ends_with_the_ratio(bench, tmp_path, capsys):
    """One system, one round of 6 real CHGNet relaxations, random search: targets printed first,
    the ratio last; reusing the finished run scores it again without rerunning."""
    args = ["--chemsys", "Ba-O-Sn", "--max-atoms", "8", "--relaxations", "6", "--seeds", "1",
            "--methods", "random", "--max-steps", "60", "--out", str(tmp_path)]
    ratio = bench.main(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("Targets") and "BaSnO3" in out[1]
    assert out[-1] == f"rediscovery_ratio={ratio:.2f}"
    assert any(line.strip().startswith("Ba-O-Sn   s0:") for line in out)
    assert any("new SUN per 100 relaxations" in line for line in out)
    assert (tmp_path / "runs" / "random-Ba-O-Sn-s0" / "store.db").is_file()
    again = bench.main([*args, "--reuse"])
    out2 = capsys.readouterr()
    assert again == ratio and "random-Ba-O-Sn-s0:" not in out2.err  # scored, not rerun


def test_scoring_counts_a_found_target_and_a_new_ground_state(bench, tmp_path):
    """A real store with three relaxations: a loose random cell (far above the hull), the hidden
    BaSnO3 at its MP energy (found at relaxation 2, stable but known: no new SUN) and a BaSn2O5
    no one knows, put below the hull (the one new SUN)."""
    from pymatgen.core import Lattice, Structure

    from xtalforge.loop.store import CampaignStore
    from xtalforge.references.hulls import build_reference_hulls
    from xtalforge.types import Candidate, Measurement

    targets = bench.rediscovery_targets("Ba-O-Sn", 8)
    basno3 = next(p for p in targets if p.formula == "BaSnO3")
    junk = Structure(Lattice.cubic(6.0), ["Ba", "Sn", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]])
    new = Structure(Lattice.tetragonal(4.0, 12.0), ["Ba", "Sn", "Sn"] + ["O"] * 5,
                    [[0, 0, 0], [0.5, 0.5, 0.2], [0.5, 0.5, 0.8], [0.5, 0, 0.2], [0, 0.5, 0.2], [0.5, 0, 0.8],
                     [0, 0.5, 0.8], [0.5, 0.5, 0.5]])
    rows = [(junk, 0.0), (basno3.structure, basno3.energy_per_atom), (new, basno3.energy_per_atom - 1.0)]
    run = tmp_path / "run"
    run.mkdir()
    st = CampaignStore(f"sqlite:///{run / 'store.db'}")
    for i, (s, e) in enumerate(rows):
        c = Candidate(structure=s, source=["random_symmetric", "substitution", "evolutionary"][i], round=i + 1)
        st.add_candidates([c])
        st.add_measurement(Measurement(candidate_id=c.id, oracle="mlip", fidelity=1, values={"energy_per_atom": e},
                                       relaxed=s))
    st.close()
    known = load_known("Ba-O-Sn", ["snapshot"])
    hulls = build_reference_hulls(known, None)  # the DFT hull: MP energies stand in for the MLIP's here
    index = KnownStructures(known.with_structure())
    score = bench.score_run("loop", "Ba-O-Sn", 0, run, targets, hulls, index, 0.001, 0.05)
    assert score.relaxations == 3
    assert score.found == {"mp-3163": 2} and score.found_by == {"mp-3163": "substitution"}
    assert score.proposed == {"mp-3163": "substitution"}
    assert score.new_sun == 1 and score.near == 1
    assert hulls.dft.all_e_above_hull() == {}, "scoring works on a copy of the hulls"
