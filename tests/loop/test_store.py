from pymatgen.core import Lattice, Structure

from xtalforge.loop.store import CampaignStore
from xtalforge.types import Candidate, Measurement, Status


def _nacl(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_candidates_and_measurements_survive_reopen(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    st = CampaignStore(url)
    c = Candidate(structure=_nacl(), source="test", round=0)
    assert st.add_candidates([c, c]) == 1
    assert st.add_candidates([c]) == 0
    m = Measurement(candidate_id=c.id, oracle="mlip", fidelity=1, values={"e_above_hull": 0.01},
                    relaxed=_nacl(5.7), round=0)
    assert st.add_measurement(m) is True
    # a second result for the same candidate and oracle is refused, not duplicated
    assert st.add_measurement(Measurement(candidate_id=c.id, oracle="mlip", fidelity=1, status=Status.failed)) is False
    st.close()

    st = CampaignStore(url)
    [back] = st.measurements()
    assert back.values == {"e_above_hull": 0.01}
    assert abs(back.relaxed.lattice.a - _nacl(5.7).lattice.a) < 1e-9
    assert st.candidates()[0].id == c.id
    assert st.integrity_problems() == []


def test_same_crystal_same_id():
    s = _nacl()
    sup = s.copy()
    sup.make_supercell([2, 1, 1])
    assert Candidate(structure=s, source="a", round=0).id == Candidate(structure=sup, source="b", round=0).id
    assert Candidate(structure=s, source="a", round=0).id != Candidate(structure=_nacl(6.5), source="a", round=0).id
