"""PMO's screening baseline: library molecules in a seeded random order, each scored once, until
the budget is spent; invalid and repeated ones cost no calls."""

import random

import pytest

pytest.importorskip("rdkit")

from selfsup.chem.molecules import mol_to_smiles, to_mol  # noqa: E402
from selfsup.chem.objectives import qed  # noqa: E402
from selfsup.chem.oracle import Oracle  # noqa: E402
from selfsup.chem.screening import screening  # noqa: E402

LIBRARY = ["CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1OC(C)=O",
           "CCOC(=O)c1ccccc1N", "c1ccc2ccccc2c1", "CN1CCN(c2ccccc2)CC1", "CCO", "CCN",
           "c1ccncc1", "OC1CCCCC1", "not a molecule", "CC(=O)Nc1ccc(O)cc1",   # invalid, repeat
           "CCCCCC", "O=C1CCCN1", "Cc1ccccc1", "CC(C)O"]


def canon(s):
    return mol_to_smiles(to_mol(s))


def test_screening_scores_library_molecules_in_the_seeded_order_until_the_budget():
    oracle = Oracle(qed, 6)
    best = screening(oracle, LIBRARY, seed=3)
    assert oracle.calls == 6
    order = list(range(len(LIBRARY)))
    random.Random(3).shuffle(order)
    expected, seen = [], set()
    for i in order:                 # the naive reference: valid, first time, until 6
        mol = to_mol(LIBRARY[i])
        if mol is None or canon(LIBRARY[i]) in seen:
            continue
        seen.add(canon(LIBRARY[i]))
        expected.append(canon(LIBRARY[i]))
        if len(expected) == 6:
            break
    assert [s for s, _ in oracle.history] == expected
    assert [v for _, v in oracle.history] == [qed(to_mol(s)) for s in expected]
    assert best == sorted(oracle.history, key=lambda t: -t[1])[:10]
    again = Oracle(qed, 6)
    screening(again, LIBRARY, seed=3)
    assert again.history == oracle.history                       # seeded: the same draw
    other = Oracle(qed, 6)
    screening(other, LIBRARY, seed=4)
    assert other.history != oracle.history


def test_screening_stops_with_the_library_when_the_budget_is_larger():
    oracle = Oracle(qed, 1000)
    screening(oracle, LIBRARY, seed=0)
    valid = {canon(s) for s in LIBRARY if to_mol(s) is not None}
    assert oracle.calls == len(valid) == 14 and not oracle.exhausted
    assert {s for s, _ in oracle.history} == valid
