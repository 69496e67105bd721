"""Graph genetic algorithm (in the manner of Jensen's GB-GA, Chem. Sci. 2019, which GEGL uses as
its expert): mutations are RDKit reaction SMARTS on kekulised molecules, crossover joins a
fragment of each parent cut at an acyclic single bond. Every operator returns a sanitised
canonical SMILES or None (a clear rejection: the product did not sanitise, was too large, or no
site matched); it never returns an invalid molecule.

The GA itself (``graph_ga``): a population of the best molecules scored so far; each generation
draws parents with probability proportional to their (shifted) score, makes offspring by
crossover and mutation, scores them with the oracle and keeps the best ``population_size``.
"""

from __future__ import annotations

import random
from functools import lru_cache

from .molecules import mol_to_smiles, rdkit, to_mol
from .oracle import BudgetExhausted, Oracle

# (name, reaction SMARTS); X is replaced by each element of the operator's list
_MUTATIONS = [
    ("insert_atom", "[*:1]~[*:2]>>[*:1]X[*:2]", ["C", "N", "O"]),
    ("bond_to_single", "[*:1]!-[*:2]>>[*:1]-[*:2]", [""]),
    ("bond_up_double", "[*;!H0:1]-[*;!H0:2]>>[*:1]=[*:2]", [""]),
    ("bond_up_triple", "[*;!H0;!H1:1]=[*;!H0;!H1:2]>>[*:1]#[*:2]", [""]),
    ("delete_ring_bond", "[*:1]@[*:2]>>([*:1].[*:2])", [""]),
    ("add_ring_5", "[*;!r;!H0:1]~[*;!r:2]~[*;!r:3]~[*;!r:4]~[*;!r;!H0:5]>>"
                   "[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]1", [""]),
    ("add_ring_6", "[*;!r;!H0:1]~[*;!r:2]~[*;!r:3]~[*;!r:4]~[*;!r:5]~[*;!r;!H0:6]>>"
                   "[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]~[*:6]1", [""]),
    ("delete_terminal_atom", "[*:1]~[D1:2]>>[*:1]", [""]),
    ("delete_chain_atom", "[*:1]~[D2:2]~[*:3]>>[*:1]-[*:3]", [""]),
    ("change_atom", "[X:1]>>[Y:1]", [("#6", "#7"), ("#7", "#6"), ("#6", "#8"), ("#8", "#6"),
                                     ("#7", "#8"), ("#6", "#16"), ("#6", "#9"), ("#6", "#17")]),
    ("append_single", "[*;!H0:1]>>[*:1]-X", ["C", "N", "O", "F", "Cl", "Br"]),
    ("append_double", "[*;!H0;!H1:1]>>[*:1]=X", ["C", "N", "O"]),
]


@lru_cache(maxsize=1)
def mutation_reactions():
    """[(name, reaction)] for every operator and element choice."""
    from rdkit.Chem import AllChem

    out = []
    for name, smarts, choices in _MUTATIONS:
        for c in choices:
            if isinstance(c, tuple):
                s = smarts.replace("[X:1]", f"[{c[0]}:1]").replace("[Y:1]", f"[{c[1]}:1]")
            else:
                s = smarts.replace("X", c)
            out.append((name, AllChem.ReactionFromSmarts(s)))
    return out


def _kekulized(smiles: str):
    Chem = rdkit()
    mol = to_mol(smiles)
    if mol is None:
        return None
    mol = Chem.Mol(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return mol


def _ok(smiles: str | None, max_atoms: int) -> str | None:
    if smiles is None:
        return None
    mol = to_mol(smiles)
    if mol is None or mol.GetNumHeavyAtoms() > max_atoms or mol.GetNumHeavyAtoms() == 0:
        return None
    if "." in smiles:      # a fragment fell off: not one molecule
        return None
    return smiles


def mutate(smiles: str, rng: random.Random, max_atoms: int = 50, tries: int = 10) -> str | None:
    """One random graph mutation of ``smiles``; a valid canonical SMILES or None."""
    mol = _kekulized(smiles)
    if mol is None:
        return None
    reactions = mutation_reactions()
    for _ in range(tries):
        _, rxn = rng.choice(reactions)
        products = rxn.RunReactants((mol,))
        if not products:
            continue
        out = _ok(mol_to_smiles(rng.choice(products)[0]), max_atoms)
        if out is not None:
            return out
    return None


@lru_cache(maxsize=1)
def _join():
    from rdkit.Chem import AllChem

    return AllChem.ReactionFromSmarts("[*:1]-[1#0].[1#0]-[*:2]>>[*:1]-[*:2]")


def _fragments(mol, rng: random.Random):
    """Cut one random acyclic single bond between heavy atoms: the two fragments, each with a
    dummy atom (isotope 1) where the bond was, or None."""
    Chem = rdkit()
    bonds = [b.GetIdx() for b in mol.GetBonds()
             if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()]
    if not bonds:
        return None
    cut = Chem.FragmentOnBonds(mol, [rng.choice(bonds)], addDummies=True, dummyLabels=[(1, 1)])
    frags = Chem.GetMolFrags(cut, asMols=True, sanitizeFrags=False)
    return frags if len(frags) == 2 else None


def crossover(a: str, b: str, rng: random.Random, max_atoms: int = 50, tries: int = 10
              ) -> str | None:
    """A fragment of ``a`` joined to a fragment of ``b`` (each cut at an acyclic single bond);
    a valid canonical SMILES or None."""
    ma, mb = _kekulized(a), _kekulized(b)
    if ma is None or mb is None:
        return None
    for _ in range(tries):
        fa, fb = _fragments(ma, rng), _fragments(mb, rng)
        if fa is None or fb is None:
            return None
        products = _join().RunReactants((rng.choice(fa), rng.choice(fb)))
        if not products:
            continue
        out = _ok(mol_to_smiles(products[0][0]), max_atoms)
        if out is not None:
            return out
    return None


def reproduce(parents: list[str], weights: list[float], n: int, rng: random.Random,
              mutation_rate: float = 0.067, max_atoms: int = 50) -> list[str]:
    """``n`` offspring (fewer if operators keep failing): crossover of two parents drawn by
    weight, then a mutation with probability ``mutation_rate`` (GB-GA's default)."""
    out: list[str] = []
    for _ in range(n * 5):
        if len(out) >= n:
            break
        pa, pb = rng.choices(parents, weights=weights, k=2)
        child = crossover(pa, pb, rng, max_atoms)
        if child is not None and rng.random() < mutation_rate:
            child = mutate(child, rng, max_atoms) or child
        if child is not None:
            out.append(child)
    return out


def selection_weights(scores: list[float]) -> list[float]:
    """Probability of being a parent, proportional to the score shifted to be positive."""
    lo = min(scores)
    return [s - lo + 1e-6 for s in scores]


def graph_ga(oracle: Oracle, start: list[str], population_size: int = 100, offspring: int = 200,
             mutation_rate: float = 0.067, seed: int = 0, patience: int = 5,
             on_generation=None) -> list[tuple[str, float]]:
    """GA alone (the baseline of GEGL's Table 1): start from the best ``population_size`` of
    ``start`` (scored by the oracle), run until the oracle's budget is spent or ``patience``
    generations add nothing new. Returns the final population [(smiles, score)]."""
    rng = random.Random(seed)
    pop: dict[str, float] = {}
    try:
        for s in start:
            v = oracle.score(s)
            if v is not None:
                pop[oracle_key(s)] = v
    except BudgetExhausted:
        pass
    stale = 0
    while not oracle.exhausted and stale < patience and pop:
        best = sorted(pop.items(), key=lambda t: -t[1])[:population_size]
        parents, scores = [s for s, _ in best], [v for _, v in best]
        before = oracle.calls
        for child in reproduce(parents, selection_weights(scores), offspring, rng, mutation_rate):
            try:
                v = oracle.score(child)
            except BudgetExhausted:
                break
            if v is not None:
                pop[child] = v
        pop = dict(sorted(pop.items(), key=lambda t: -t[1])[:population_size])
        stale = stale + 1 if oracle.calls == before else 0
        if on_generation is not None:
            on_generation(oracle)
    return sorted(pop.items(), key=lambda t: -t[1])


def oracle_key(smiles: str) -> str:
    mol = to_mol(smiles)
    return mol_to_smiles(mol) if mol is not None else smiles
