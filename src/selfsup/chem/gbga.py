"""The graph GA as molecular-optimisation benchmarks run it: Jensen's GB-GA (Chem. Sci. 2019) with
the settings of PMO's ``graph_ga`` (Gao et al., NeurIPS 2022; wenhao-gao/mol_opt
``main/graph_ga``), the standard baseline a new method must beat at equal oracle calls.

Algorithm, per generation:
    mating pool = population_size molecules drawn with replacement, P(m) = score(m) / sum(scores)
    offspring_size times: two parents drawn uniformly from the pool -> crossover (ring or chain,
        50/50, up to 10 tries; the child must differ from both parents) -> with probability
        mutation_rate a mutation (7 operator families with PMO's weights, 10 tries; a mutation
        that keeps failing drops the child)
    population <- the best population_size of population + offspring (duplicates merged)
    stop when the budget is spent or the population is unchanged for ``patience`` generations
The start is population_size molecules drawn from a library (ZINC) with replacement, as PMO's
exploration run. Every product must pass the size rule (more than 5 and fewer than N(39.15, 3.5)
heavy atoms, drawn anew for each check: Jensen's ZINC statistics) and the ring rule (no ring
larger than 6, no ring allene, no double bond inside a 3- or 4-ring).
PMO's defaults (``hparams_default.yaml``): population 120, offspring 70, mutation rate 0.067,
patience 5. Scores must be non-negative for proportional selection (PMO's objectives lie in
[0, 1]); when a population has negative scores (penalized logP) they are shifted by the minimum,
a choice PMO does not have to make.
"""

from __future__ import annotations

import random
from functools import lru_cache

from .molecules import mol_to_smiles, rdkit, to_mol
from .ga import oracle_key
from .oracle import BudgetExhausted, Oracle

AVERAGE_SIZE, SIZE_STDEV = 39.15, 3.50   # heavy atoms of ZINC molecules (Jensen's GB-GA)


@lru_cache(maxsize=None)
def _smarts(s: str):
    return rdkit().MolFromSmarts(s)


@lru_cache(maxsize=None)
def _reaction(s: str):
    from rdkit.Chem import AllChem

    return AllChem.ReactionFromSmarts(s)


def ring_ok(mol) -> bool:
    """No ring larger than 6 atoms, no allene in a ring, no double bond inside a 3- or 4-ring."""
    if not mol.HasSubstructMatch(_smarts("[R]")):
        return True
    largest = max(len(r) for r in mol.GetRingInfo().AtomRings())
    return (largest <= 6 and not mol.HasSubstructMatch(_smarts("[R]=[R]=[R]"))
            and not mol.HasSubstructMatch(_smarts("[r3,r4]=[r3,r4]")))


def size_ok(mol, rng: random.Random, cap: bool = True) -> bool:
    """The product sanitises and has more than 5 and fewer than N(39.15, 3.5) heavy atoms
    (``cap=False``: no upper limit, for a GA matched to an oracle that sets its own)."""
    try:
        rdkit().SanitizeMol(mol)
    except Exception:
        return False
    n = mol.GetNumAtoms()
    return 5 < n and (not cap or n < rng.gauss(AVERAGE_SIZE, SIZE_STDEV))


def _fragments(mol, bonds: list[int], labels):
    Chem = rdkit()
    cut = Chem.FragmentOnBonds(mol, bonds, addDummies=True, dummyLabels=labels)
    try:
        return Chem.GetMolFrags(cut, asMols=True, sanitizeFrags=True)
    except Exception:
        return None


def cut_chain(mol, rng: random.Random):
    """Cut one random acyclic single bond: the fragments (dummy atoms where it was), or None."""
    matches = mol.GetSubstructMatches(_smarts("[*]-;!@[*]"))
    if not matches:
        return None
    a, b = rng.choice(matches)
    return _fragments(mol, [mol.GetBondBetweenAtoms(a, b).GetIdx()], [(1, 1)])


def cut_ring(mol, rng: random.Random):
    """Cut a ring at two bonds (two adjacent-but-one bonds of a 4-atom ring path, or the two ring
    bonds of a branching ring atom), 10 tries: two fragments, or None."""
    for _ in range(10):
        if rng.random() < 0.5:
            matches = mol.GetSubstructMatches(_smarts("[R]@[R]@[R]@[R]"))
            if not matches:
                return None
            m = rng.choice(matches)
            pairs = ((m[0], m[1]), (m[2], m[3]))
        else:
            matches = mol.GetSubstructMatches(_smarts("[R]@[R;!D2]@[R]"))
            if not matches:
                return None
            m = rng.choice(matches)
            pairs = ((m[0], m[1]), (m[1], m[2]))
        bonds = [mol.GetBondBetweenAtoms(x, y).GetIdx() for x, y in pairs]
        frags = _fragments(mol, bonds, [(1, 1), (1, 1)])
        if frags is not None and len(frags) == 2:
            return frags
    return None


def crossover_chain(a, b, rng: random.Random, cap: bool = True):
    for _ in range(10):
        fa, fb = cut_chain(a, rng), cut_chain(b, rng)
        if fa is None or fb is None:
            return None
        join = _reaction("[*:1]-[1*].[1*]-[*:2]>>[*:1]-[*:2]")
        children = [p[0][0] for x in fa for y in fb if (p := join.RunReactants((x, y)))]
        children = [c for c in children if size_ok(c, rng, cap)]
        if children:
            return rng.choice(children)
    return None


def crossover_ring(a, b, rng: random.Random, cap: bool = True):
    ring = _smarts("[R]")
    if not a.HasSubstructMatch(ring) and not b.HasSubstructMatch(ring):
        return None
    for _ in range(10):
        fa, fb = cut_ring(a, rng), cut_ring(b, rng)
        if fa is None or fb is None:
            return None
        # join the fragments at one cut, then close the other with a single or a double bond;
        # the first join is a double bond: the official code lists a single- and a double-bond
        # join but its loop keeps only the last list of products
        first = _reaction("[*:1]~[1*].[1*]~[*:2]>>[*:1]=[*:2]")
        joined = [p[0][0] for x in fa for y in fb if (p := first.RunReactants((x, y)))]
        closed = []
        for rs in ("([*:1]~[1*].[1*]~[*:2])>>[*:1]-[*:2]", "([*:1]~[1*].[1*]~[*:2])>>[*:1]=[*:2]"):
            for m in joined:
                if size_ok(m, rng, cap):
                    closed += [p[0] for p in _reaction(rs).RunReactants((m,))]
        closed = [m for m in closed if size_ok(m, rng, cap) and ring_ok(m)]
        if closed:
            return rng.choice(closed)
    return None


def crossover(a, b, rng: random.Random, cap: bool = True):
    """A child of molecules a and b (ring or chain crossover, 50/50, 10 tries) whose SMILES is
    neither parent's; None when no try gives one."""
    Chem = rdkit()
    parents = {Chem.MolToSmiles(a), Chem.MolToSmiles(b)}
    a, b = Chem.Mol(a), Chem.Mol(b)
    for m in (a, b):
        try:
            Chem.Kekulize(m, clearAromaticFlags=True)
        except Exception:
            pass
    for _ in range(10):
        op = crossover_chain if rng.random() <= 0.5 else crossover_ring
        child = op(a, b, rng, cap)
        if child is not None:
            smi = mol_to_smiles(child)
            if smi is not None and smi not in parents:
                return child
    return None


def _pick(rng: random.Random, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


def _bond_atom(rng: random.Random, table) -> tuple[str, str]:
    """(bond order, element) from PMO's append/insert tables: single/double/triple 60/35/5%."""
    order = _pick(rng, ["single", "double", "triple"], [0.60, 0.35, 0.05])
    return order, rng.choice(table[order])


def _mutation_smarts(mol, rng: random.Random) -> str:
    """One reaction SMARTS, chosen as PMO's ``mutate``: insert atom 15%, change bond order,
    delete ring bond, add ring, delete atom, change atom 14% each, append atom 15%."""
    family = _pick(rng, range(7), [0.15, 0.14, 0.14, 0.14, 0.14, 0.14, 0.15])
    if family == 0:
        order, x = _bond_atom(rng, {"single": ["C", "N", "O", "S"], "double": ["C", "N"],
                                    "triple": ["C"]})
        return {"single": f"[*:1]~[*:2]>>[*:1]{x}[*:2]",
                "double": f"[*;!H0:1]~[*:2]>>[*:1]={x}-[*:2]",
                "triple": f"[*;!R;!H1;!H0:1]~[*:2]>>[*:1]#{x}-[*:2]"}[order]
    if family == 1:
        return _pick(rng, ["[*:1]!-[*:2]>>[*:1]-[*:2]", "[*;!H0:1]-[*;!H0:2]>>[*:1]=[*:2]",
                           "[*:1]#[*:2]>>[*:1]=[*:2]", "[*;!R;!H1;!H0:1]~[*:2]>>[*:1]#[*:2]"],
                     [0.45, 0.45, 0.05, 0.05])
    if family == 2:
        return "[*:1]@[*:2]>>([*:1].[*:2])"
    if family == 3:
        return _pick(rng, [
            "[*;!r;!H0:1]~[*;!r:2]~[*;!r;!H0:3]>>[*:1]1~[*:2]~[*:3]1",
            "[*;!r;!H0:1]~[*!r:2]~[*!r:3]~[*;!r;!H0:4]>>[*:1]1~[*:2]~[*:3]~[*:4]1",
            "[*;!r;!H0:1]~[*!r:2]~[*:3]~[*:4]~[*;!r;!H0:5]>>[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]1",
            "[*;!r;!H0:1]~[*!r:2]~[*:3]~[*:4]~[*!r:5]~[*;!r;!H0:6]>>"
            "[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]~[*:6]1"], [0.05, 0.05, 0.45, 0.45])
    if family == 4:
        return _pick(rng, [
            "[*:1]~[D1:2]>>[*:1]", "[*:1]~[D2:2]~[*:3]>>[*:1]-[*:3]",
            "[*:1]~[D3:2](~[*;!H0:3])~[*:4]>>[*:1]-[*:3]-[*:4]",
            "[*:1]~[D4:2](~[*;!H0:3])(~[*;!H0:4])~[*:5]>>[*:1]-[*:3]-[*:4]-[*:5]",
            "[*:1]~[D4:2](~[*;!H0;!H1:3])(~[*:4])~[*:5]>>[*:1]-[*:3](-[*:4])-[*:5]"],
            [0.25, 0.25, 0.25, 0.1875, 0.0625])
    if family == 5:
        elements = ["#6", "#7", "#8", "#9", "#16", "#17", "#35"]
        w = [0.15, 0.15, 0.14, 0.14, 0.14, 0.14, 0.14]
        present = [e for e in elements if mol.HasSubstructMatch(_smarts(f"[{e}]"))]
        x = _pick(rng, present, [w[elements.index(e)] for e in present])
        y = _pick(rng, [e for e in elements if e != x], [wi for e, wi in zip(elements, w) if e != x])
        return f"[{x}:1]>>[{y}:1]"
    order, x = _bond_atom(rng, {"single": ["C", "N", "O", "F", "S", "Cl", "Br"],
                                "double": ["C", "N", "O"], "triple": ["C", "N"]})
    return {"single": f"[*;!H0:1]>>[*:1]-{x}", "double": f"[*;!H0;!H1:1]>>[*:1]={x}",
            "triple": f"[*;H3:1]>>[*:1]#{x}"}[order]


def mutate(mol, rng: random.Random, cap: bool = True):
    """One random mutation (10 tries): a product that passes the size and ring rules, or None."""
    Chem = rdkit()
    mol = Chem.Mol(mol)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:
        return None
    for _ in range(10):
        products = _reaction(_mutation_smarts(mol, rng)).RunReactants((mol,))
        ok = [p[0] for p in products if size_ok(p[0], rng, cap) and ring_ok(p[0])]
        if ok:
            return rng.choice(ok)
    return None


def selection_weights(scores: list[float]) -> list[float]:
    """P(parent) proportional to the score (PMO); shifted by the minimum when one is negative."""
    lo = min(scores)
    w = [s - lo if lo < 0 else s for s in scores]
    return w if sum(w) > 0 else [1.0] * len(w)


def reproduce(pool: list, mutation_rate: float, rng: random.Random, cap: bool = True):
    child = crossover(rng.choice(pool), rng.choice(pool), rng, cap)
    if child is not None and rng.random() < mutation_rate:
        child = mutate(child, rng, cap)
    return child


def gb_ga(oracle: Oracle, library: list[str], population_size: int = 120, offspring: int = 70,
          mutation_rate: float = 0.067, seed: int = 0, patience: int = 5,
          on_generation=None, size_cap: bool = True) -> list[tuple[str, float]]:
    """Run until the oracle's budget is spent or ``patience`` generations change nothing;
    returns the final population [(canonical SMILES, score)], best first. ``size_cap=False``
    drops the upper atom limit of the size rule (a variant, not PMO's: for comparisons with a
    method whose only limit is the oracle's, e.g. GEGL's 81-character penalized logP)."""
    rng = random.Random(seed)
    pop: dict[str, float] = {}
    try:
        for s in rng.choices(library, k=population_size):
            v = oracle.score(s)
            if v is not None:
                pop[oracle_key(s)] = v
    except BudgetExhausted:
        pass
    stale = 0
    while not oracle.exhausted and stale < patience and pop:
        smiles, scores = list(pop), list(pop.values())
        pool = [to_mol(s) for s in rng.choices(smiles, weights=selection_weights(scores),
                                               k=population_size)]
        children = [reproduce(pool, mutation_rate, rng, size_cap) for _ in range(offspring)]
        before = sorted(pop.values())
        for child in children:
            smi = mol_to_smiles(child)
            if smi is None or smi in pop:
                continue
            try:
                v = oracle.score(smi)
            except BudgetExhausted:
                break
            if v is not None:
                pop[smi] = v
        pop = dict(sorted(pop.items(), key=lambda t: -t[1])[:population_size])
        stale = stale + 1 if sorted(pop.values()) == before else 0
        if on_generation is not None:
            on_generation(oracle)
    return sorted(pop.items(), key=lambda t: -t[1])
