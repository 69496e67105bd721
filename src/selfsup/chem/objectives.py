"""Molecular objectives: QED, penalized logP (with the SA score), GuacaMol-style similarity and
multi-property (MPO) scores, structural-alert filters. Each objective maps an RDKit molecule to a
float (higher is better); ``OBJECTIVES`` holds the names users type.

- QED: Bickerton et al. (2012), RDKit's implementation.
- SA score: Ertl & Schuffenhauer (2009), the scorer RDKit ships in Contrib/SA_Score.
- penalized logP: logP - SA - max(0, largest ring size - 6). ``penalized_logp`` is the plain
  sum; ``penalized_logp_normalized`` standardises each term by its ZINC-250k mean and std
  (JT-VAE's statistics, rings from RDKit's ring perception); ``penalized_logp_gegl`` is GEGL's
  Table 1(a) objective (sungsoo-ahn/genetic-expert-guided-learning,
  ``util/chemistry/benchmarks.py``, ``_penalized_logp_cyclebasis``): terms z-scored with GEGL's
  ZINC statistics, the ring term from networkx's cycle basis of the atom graph (a fused system
  can count as one large cycle), scored only for SMILES of at most 81 characters (GEGL's ZINC
  setting, ``--max_smiles_length 81``: longer ones are never scored, ``SMILES_LENGTH_CAP``).
- GuacaMol style (Brown et al., 2019): Tanimoto similarity of Morgan fingerprints to a target,
  score modifiers (clipped, min/max Gaussian) and a geometric mean of several scores.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .molecules import rdkit, to_mol


@lru_cache(maxsize=1)
def _sascorer():
    from rdkit.Chem import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # noqa: E402  (RDKit Contrib)

    return sascorer


def qed(mol) -> float:
    from rdkit.Chem import QED

    return float(QED.qed(mol))


def sa_score(mol) -> float:
    """Synthetic accessibility, 1 (easy) .. 10 (hard)."""
    return float(_sascorer().calculateScore(mol))


def logp(mol) -> float:
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


def largest_ring(mol) -> int:
    rings = mol.GetRingInfo().AtomRings()
    return max((len(r) for r in rings), default=0)


def penalized_logp(mol) -> float:
    """logP - SA - max(0, largest ring - 6) (GEGL, ``penalized_logp_score``)."""
    return logp(mol) - sa_score(mol) - max(0, largest_ring(mol) - 6)


# JT-VAE's ZINC-250k statistics of the three terms (logP, -SA, -cycle)
_NORM = {"logp": (2.4570953396190123, 1.434324401111988),
         "sa": (-3.0525811293166134, 0.8335207024513095),
         "cycle": (-0.0485696876403053, 0.2860212110245455)}


def penalized_logp_normalized(mol) -> float:
    terms = {"logp": logp(mol), "sa": -sa_score(mol), "cycle": -max(0, largest_ring(mol) - 6)}
    return sum((v - _NORM[k][0]) / _NORM[k][1] for k, v in terms.items())


# GEGL's ZINC statistics for Table 1(a) (util/chemistry/benchmarks.py)
_GEGL = {"logp": (2.4570965532649507, 1.4339810636722639),
         "sa": (3.0508333383104556, 0.8327034846660627),
         "cycle": (0.048152237188108474, 0.2860582871837183)}


def cycle_basis_largest(mol) -> int:
    """Length of the longest cycle in networkx's cycle basis of the heavy-atom graph (0 when
    acyclic): GEGL's ring measure, which differs from RDKit's smallest rings on fused systems."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(mol.GetNumAtoms()))
    g.add_edges_from((b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds())
    return max((len(c) for c in nx.cycle_basis(g)), default=0)


def penalized_logp_gegl(mol) -> float:
    """GEGL's penalized logP: z(logP) - z(SA) - z(max(0, cycle-basis ring - 6))."""
    z = {k: (v - _GEGL[k][0]) / _GEGL[k][1] for k, v in (
        ("logp", logp(mol)), ("sa", sa_score(mol)),
        ("cycle", max(0, cycle_basis_largest(mol) - 6)))}
    return z["logp"] - z["sa"] - z["cycle"]


def fingerprint(mol, kind: str = "ECFP4"):
    """GuacaMol's fingerprints, which TDC's and so PMO's oracles use: unfolded Morgan *count*
    vectors (``AllChem.GetMorganFingerprint(mol, r[, useFeatures=True])`` there), ECFP4/ECFP6
    (radius 2/3) and FCFP4 (feature invariants); Tanimoto on them is the count (multiset) form.
    Until 2026-12-01 these were 2048-bit bit vectors, whose similarities differ (osimertinib vs
    celecoxib by FCFP4: 0.106 with bits, 0.232 with GuacaMol's counts)."""
    from rdkit.Chem import rdFingerprintGenerator as G

    radius = {"ECFP4": 2, "ECFP6": 3, "FCFP4": 2}[kind]
    if kind.startswith("FCFP"):
        gen = G.GetMorganGenerator(radius=radius,
                                   atomInvariantsGenerator=G.GetMorganFeatureAtomInvGen())
    else:
        gen = G.GetMorganGenerator(radius=radius)
    return gen.GetSparseCountFingerprint(mol)


def tanimoto(mol, target, kind: str = "ECFP4") -> float:
    from rdkit import DataStructs

    return float(DataStructs.TanimotoSimilarity(fingerprint(mol, kind), fingerprint(target, kind)))


# --- GuacaMol score modifiers ---------------------------------------------------------------
def clipped(x: float, upper: float, lower: float = 0.0) -> float:
    """Linear from ``lower`` (0) to ``upper`` (1), clipped to [0, 1]."""
    return min(1.0, max(0.0, (x - lower) / (upper - lower)))


def min_gaussian(x: float, mu: float, sigma: float) -> float:
    """1 at or below ``mu``, a Gaussian decay above (prefer values <= mu)."""
    return 1.0 if x <= mu else math.exp(-0.5 * ((x - mu) / sigma) ** 2)


def max_gaussian(x: float, mu: float, sigma: float) -> float:
    """1 at or above ``mu``, a Gaussian decay below (prefer values >= mu)."""
    return 1.0 if x >= mu else math.exp(-0.5 * ((x - mu) / sigma) ** 2)


def geometric_mean(values: list[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


OSIMERTINIB = "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc1nccc(-c2cn(C)c3ccccc23)n1"
CELECOXIB = "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1"


def osimertinib_mpo(mol) -> float:
    """GuacaMol's osimertinib MPO: similar to osimertinib by FCFP4 (clipped at 0.8) but not too
    similar by ECFP6 (min-Gaussian at 0.85), TPSA near or above 100, logP near or below 1;
    geometric mean."""
    from rdkit.Chem import rdMolDescriptors

    target = _target(OSIMERTINIB)
    return geometric_mean([
        clipped(tanimoto(mol, target, "FCFP4"), upper=0.8),
        min_gaussian(tanimoto(mol, target, "ECFP6"), mu=0.85, sigma=0.1),
        max_gaussian(float(rdMolDescriptors.CalcTPSA(mol)), mu=100, sigma=10),
        min_gaussian(logp(mol), mu=1, sigma=1)])


def celecoxib_similarity(mol) -> float:
    """GuacaMol's celecoxib rediscovery: ECFP4 Tanimoto similarity to celecoxib."""
    return tanimoto(mol, _target(CELECOXIB), "ECFP4")


@lru_cache(maxsize=16)
def _target(smiles: str):
    return to_mol(smiles)


OBJECTIVES: dict[str, Callable] = {
    "qed": qed,
    "penalized_logp": penalized_logp,
    "penalized_logp_normalized": penalized_logp_normalized,
    "penalized_logp_gegl": penalized_logp_gegl,
    "osimertinib_mpo": osimertinib_mpo,
    "celecoxib_similarity": celecoxib_similarity,
}


# objectives scored only for SMILES up to this many characters (the oracle refuses longer ones
# without counting a call): GEGL's ZINC experiments cap SMILES at 81 characters
SMILES_LENGTH_CAP: dict[str, int] = {"penalized_logp_gegl": 81}


def get_objective(name: str) -> Callable:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


# --- structural alerts -------------------------------------------------------------------------
DEFAULT_ALERTS = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "chem" / \
    "alert_collection.csv"


class AlertFilter:
    """SMARTS structural alerts (``alert_collection.csv``: rule_set_name, description, smarts,
    max = how many matches are tolerated). ``alerts(mol)`` lists the rules a molecule breaks."""

    def __init__(self, path: str | Path, rule_sets: tuple[str, ...] | None = None):
        Chem = rdkit()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no structural-alert file (columns rule_set_name, "
                                    f"description, smarts, max)")
        self.rules = []
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if rule_sets and row["rule_set_name"] not in rule_sets:
                    continue
                patt = Chem.MolFromSmarts(row["smarts"])
                if patt is not None:
                    self.rules.append((row["rule_set_name"], row["description"], patt,
                                       int(float(row.get("max") or 0))))
        if not self.rules:
            raise ValueError(f"{path}: no usable SMARTS rules"
                             + (f" in the rule sets {rule_sets}" if rule_sets else ""))

    def alerts(self, mol) -> list[str]:
        return [f"{rs}: {desc}" for rs, desc, patt, mx in self.rules
                if len(mol.GetSubstructMatches(patt)) > mx]

    def passes(self, mol) -> bool:
        return not any(len(mol.GetSubstructMatches(p)) > mx for _, _, p, mx in self.rules)
