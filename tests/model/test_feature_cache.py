"""The per-structure feature cache, with real structures from perov_5 and real CHGNet."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from xtalforge.model.descriptors import cached_chgnet_features, featurize, local_embed
from xtalforge.model.feature_cache import cached_rows, fingerprint


@pytest.fixture(scope="module")
def structures(data_dir):
    df = pd.read_csv(data_dir / "perov_5" / "val.csv", index_col=0).iloc[:6]
    return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


def test_rows_are_computed_once_and_served_in_any_order(structures, tmp_path):
    calls: list[int] = []

    def compute(chunk):
        calls.append(len(chunk))
        return featurize("magpie+structure", chunk)

    first = cached_rows(structures[:4], "magpie_structure", compute, root=tmp_path)
    again = cached_rows(structures[::-1], "magpie_structure", compute, root=tmp_path)
    assert calls == [4, 2]  # the second call computed only the two it had not seen
    np.testing.assert_allclose(again[::-1][:4], first)
    np.testing.assert_allclose(again, featurize("magpie+structure", structures[::-1]))


def test_a_moved_atom_is_a_new_key(structures):
    s = structures[0].copy()
    assert fingerprint(s) == fingerprint(structures[0].copy())
    s.translate_sites([0], [0.01, 0, 0])
    assert fingerprint(s) != fingerprint(structures[0])


def test_chgnet_rows_are_cached_and_match_a_fresh_run(structures, tmp_path):
    X = cached_chgnet_features(structures[:3], root=tmp_path)
    assert X.shape == (3, 66) and np.isfinite(X).all()
    assert (tmp_path / "chgnet.npz").is_file()
    emb = local_embed(tmp_path)(structures[:3])  # served from the cache
    np.testing.assert_allclose(emb, X[:, :64])
    from xtalforge.model.descriptors import chgnet_features

    np.testing.assert_allclose(chgnet_features(structures[:1]), X[:1], atol=1e-5)
