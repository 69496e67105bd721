"""Retrosynthesis: templates, a single-step model, route search, and self-improvement (Kim et al.,
"Self-Improved Retrosynthetic Planning", ICML 2021).

- Templates: rdchiral extracts a retro template (product pattern >> reactant patterns) from each
  atom-mapped reaction; applying it to a product with rdchiral gives candidate reactant sets.
- Single-step model: an MLP on the product's Morgan fingerprint (radius 2, 2,048 bits) ranks the
  template library (softmax); its proposals are the reactant sets of its top templates.
- Search: best-first over partial AND-OR solution trees (Retro*-0: the cost of a partial route is
  the sum of -log p of its reactions, no learned value): pop the cheapest partial route, expand
  its first unsolved molecule with the single-step model (one *expansion*: counted against the
  budget, cached per molecule), push one child per proposal. A route is solved only when every
  leaf is a building block.
- Self-improvement (Kim et al., Alg. 1): search a set of training targets, turn the reactions of
  the successful routes into training examples (product -> template), add them to the data,
  retrain the single-step model, search again; success on held-out targets at the same budget
  measures the effect.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .molecules import canonical, rdkit, to_mol


def strip_maps(smiles: str) -> str | None:
    """Canonical SMILES without atom-map numbers (None if invalid)."""
    mol = to_mol(smiles)
    if mol is None:
        return None
    for a in mol.GetAtoms():
        a.SetAtomMapNum(0)
    return rdkit().MolToSmiles(mol)


def reactant_key(reactants) -> str:
    """A canonical, order-free key of a reactant set: the canonical SMILES of each molecule,
    sorted, joined with '.'."""
    if isinstance(reactants, str):
        reactants = reactants.split(".")
    return ".".join(sorted(c for c in (canonical(r) for r in reactants) if c))


@dataclass
class Reaction:
    id: str
    reactants: str      # unmapped canonical key (reactant_key)
    product: str        # unmapped canonical SMILES
    mapped: str         # the atom-mapped reaction SMILES
    cls: str = ""


def read_reactions(path: str | Path) -> list[Reaction]:
    """USPTO-50k style CSV (``id,class,reactants>reagents>production``), ``.gz`` too."""
    import csv
    import gzip

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no reaction file (columns id, class, "
                                f"reactants>reagents>production)")
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or len(header) < 3:
            raise ValueError(f"{path}: expected a header id,class,reactants>reagents>production")
        for row in rows:
            if len(row) < 3 or row[2].count(">") != 2:
                continue
            reac, _, prod = row[2].split(">")
            r, p = reactant_key([strip_maps(x) or "" for x in reac.split(".")]), strip_maps(prod)
            if r and p:
                out.append(Reaction(row[0], r, p, row[2], row[1]))
    return out


def extract_template(mapped: str) -> str | None:
    """The retro template (product >> reactants, rdchiral SMARTS) of an atom-mapped reaction."""
    from rdchiral.template_extractor import extract_from_reaction

    reac, _, prod = mapped.split(">")
    try:
        out = extract_from_reaction({"reactants": reac, "products": prod, "_id": "0"})
    except Exception:
        return None
    t = out.get("reaction_smarts") if isinstance(out, dict) else None
    return t or None


def apply_template(template: str, product: str) -> list[str]:
    """Reactant-set keys that ``template`` makes from ``product`` (rdchiral), deduplicated."""
    from rdchiral.main import rdchiralRunText

    try:
        outs = rdchiralRunText(template, product)
    except Exception:
        return []
    keys = []
    for o in outs:
        k = reactant_key(o)
        if k and k not in keys and len(k.split(".")) == len(o.split(".")):
            keys.append(k)
    return keys


class TemplateLibrary:
    def __init__(self, templates: list[str]):
        self.templates = list(templates)
        self.index = {t: i for i, t in enumerate(self.templates)}

    def __len__(self) -> int:
        return len(self.templates)

    @classmethod
    def from_reactions(cls, reactions: list[Reaction], min_count: int = 1
                       ) -> tuple["TemplateLibrary", list[int]]:
        """The library of templates seen ``min_count`` times, and each reaction's template index
        (-1 when its template could not be extracted or is too rare)."""
        tpls = [extract_template(r.mapped) for r in reactions]
        counts: dict[str, int] = {}
        for t in tpls:
            if t:
                counts[t] = counts.get(t, 0) + 1
        lib = cls(sorted(t for t, c in counts.items() if c >= min_count))
        return lib, [lib.index.get(t, -1) if t else -1 for t in tpls]


def fingerprints(smiles: list[str], bits: int = 2048) -> np.ndarray:
    from rdkit.Chem import rdFingerprintGenerator as G

    gen = G.GetMorganGenerator(radius=2, fpSize=bits)
    out = np.zeros((len(smiles), bits), np.float32)
    for i, s in enumerate(smiles):
        m = to_mol(s)
        if m is not None:
            out[i] = gen.GetFingerprintAsNumPy(m)
    return out


class SingleStep(nn.Module):
    """Product fingerprint -> template probabilities (MLP, as Segler & Waller's and Retro*'s)."""

    def __init__(self, library: TemplateLibrary, hidden: int = 512, bits: int = 2048,
                 dropout: float = 0.3):
        super().__init__()
        self.library, self.bits = library, bits
        self.net = nn.Sequential(nn.Linear(bits, hidden), nn.ELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, len(library)))

    def forward(self, fp: torch.Tensor) -> torch.Tensor:
        return self.net(fp)

    def fit(self, products: list[str], labels: list[int], epochs: int = 30, batch_size: int = 128,
            lr: float = 1e-3, seed: int = 0) -> list[float]:
        keep = [i for i, y in enumerate(labels) if y >= 0]
        x = torch.from_numpy(fingerprints([products[i] for i in keep], self.bits))
        y = torch.tensor([labels[i] for i in keep])
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        losses = []
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            total = 0.0
            for s in range(0, len(y), batch_size):
                idx = perm[s:s + batch_size]
                loss = F.cross_entropy(self(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / max(1, len(y)))
        self.eval()
        return losses

    @torch.no_grad()
    def propose(self, product: str, k: int = 10, max_templates: int = 50
                ) -> list[tuple[tuple[str, ...], float, str]]:
        """Up to ``k`` reactant sets for ``product``, best first: (reactants, probability of the
        template that made them, template). Templates are tried in order of probability until
        ``k`` sets are found or ``max_templates`` were tried."""
        self.eval()
        p = F.softmax(self(torch.from_numpy(fingerprints([product], self.bits))), 1)[0]
        order = torch.argsort(p, descending=True)[:max_templates].tolist()
        out, seen = [], set()
        for t in order:
            for key in apply_template(self.library.templates[t], product):
                if key not in seen:
                    seen.add(key)
                    out.append((tuple(key.split(".")), float(p[t]), self.library.templates[t]))
            if len(out) >= k:
                break
        return out[:k]

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "templates.json").write_text(json.dumps(
            {"templates": self.library.templates, "bits": self.bits,
             "hidden": self.net[0].out_features}))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(folder / "single_step.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> "SingleStep":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "templates.json").exists():
            raise FileNotFoundError(f"{folder}: no single-step model (templates.json); train one "
                                    f"with `selfsup chem retro-train`")
        meta = json.loads((folder / "templates.json").read_text())
        model = cls(TemplateLibrary(meta["templates"]), meta["hidden"], meta["bits"])
        model.load_state_dict(load_file(str(folder / "single_step.safetensors")))
        return model.eval()


def single_step_accuracy(model: SingleStep, reactions: list[Reaction], ks=(1, 10)) -> dict:
    """top-k accuracy: the recorded reactant set is among the model's k best proposals."""
    hits = {k: 0 for k in ks}
    for r in reactions:
        keys = [".".join(sorted(x)) for x, _, _ in model.propose(r.product, max(ks))]
        for k in ks:
            hits[k] += r.reactants in keys[:k]
    return {f"top{k}": hits[k] / max(1, len(reactions)) for k in ks}


@dataclass
class Route:
    target: str
    steps: list[tuple[str, tuple[str, ...], float, str]] = field(default_factory=list)
    # (product, reactants, probability, template), in expansion order

    @property
    def cost(self) -> float:
        return sum(-math.log(max(p, 1e-12)) for _, _, p, _ in self.steps)

    def leaves(self) -> list[str]:
        made = {p for p, _, _, _ in self.steps}
        return [r for _, rs, _, _ in self.steps for r in rs if r not in made]

    def tree(self, building_blocks: set[str] | None = None) -> str:
        """The route as indented text, target first."""
        by_product = {p: (rs, pr) for p, rs, pr, _ in self.steps}
        lines: list[str] = []

        def walk(mol: str, depth: int) -> None:
            tag = ""
            if mol in by_product:
                tag = f"  <= p={by_product[mol][1]:.3f}"
            elif building_blocks is not None:
                tag = "  [building block]" if mol in building_blocks else "  [UNSOLVED]"
            lines.append("  " * depth + mol + tag)
            if mol in by_product:
                for r in by_product[mol][0]:
                    walk(r, depth + 1)

        walk(self.target, 0)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "cost": self.cost,
                "steps": [{"product": p, "reactants": list(rs), "probability": pr,
                           "template": t} for p, rs, pr, t in self.steps]}


def plan(target: str, model, building_blocks: set[str], expansions: int = 50,
         max_depth: int = 6, k: int = 10, max_states: int = 20000,
         cache: dict | None = None) -> tuple[Route | None, dict]:
    """Best-first search for a route from ``target`` down to ``building_blocks``, using at most
    ``expansions`` single-step calls. Returns (the cheapest solved route or None, stats).
    ``cache`` (molecule -> proposals) may be shared between targets; cached molecules cost no
    expansion."""
    tgt = canonical(target)
    if tgt is None:
        raise ValueError(f"target {target!r} is not a valid molecule")
    cache = {} if cache is None else cache
    used, popped, tie = 0, 0, 0
    # state: (cost, tie, frontier [(molecule, depth, ancestors)], steps)
    heap = [(0.0, 0, ((tgt, 0, frozenset()),), ())]
    if tgt in building_blocks:
        return Route(tgt), {"expansions": 0, "states": 0, "solved": True}
    while heap and popped < max_states:
        cost, _, frontier, steps = heapq.heappop(heap)
        popped += 1
        if not frontier:
            return Route(tgt, list(steps)), {"expansions": used, "states": popped,
                                             "solved": True}
        (mol, depth, anc), rest = frontier[0], frontier[1:]
        if depth >= max_depth:
            continue
        if mol not in cache:
            if used >= expansions:
                continue
            cache[mol] = model.propose(mol, k)
            used += 1
        for reactants, p, tpl in cache[mol]:
            if any(r == mol or r in anc for r in reactants):
                continue   # a cycle: a reactant is the molecule itself or one of its ancestors
            new = tuple((r, depth + 1, anc | {mol}) for r in reactants
                        if r not in building_blocks)
            tie += 1
            heapq.heappush(heap, (cost - math.log(max(p, 1e-12)), tie, new + rest,
                                  steps + ((mol, reactants, p, tpl),)))
    return None, {"expansions": used, "states": popped, "solved": False}


def success_rate(model, targets: list[str], building_blocks: set[str], expansions: int = 50,
                 **kw) -> tuple[float, list[Route | None]]:
    routes = [plan(t, model, building_blocks, expansions, **kw)[0] for t in targets]
    return sum(r is not None for r in routes) / max(1, len(targets)), routes


def route_examples(routes: list[Route | None], library: TemplateLibrary
                   ) -> tuple[list[str], list[int]]:
    """Training examples (product, template index) from every reaction of the solved routes,
    deduplicated (the self-improvement data)."""
    seen, products, labels = set(), [], []
    for r in routes:
        if r is None:
            continue
        for prod, _, _, tpl in r.steps:
            key = (prod, tpl)
            if key not in seen and tpl in library.index:
                seen.add(key)
                products.append(prod)
                labels.append(library.index[tpl])
    return products, labels


def building_blocks_from(reactions: list[Reaction], exclude: set[str]) -> set[str]:
    """The reactant side of the available reactions, minus ``exclude`` (the targets): the
    building-block set, which never contains a target."""
    blocks = {m for r in reactions for m in r.reactants.split(".")}
    return blocks - exclude


def draw_route(route: Route, path: str | Path) -> None:
    """One row per reaction (reactants >> product), stacked, as a PNG."""
    from PIL import Image
    from rdkit.Chem import AllChem, Draw

    imgs = []
    for prod, rs, p, _ in route.steps:
        rxn = AllChem.ReactionFromSmarts(".".join(rs) + ">>" + prod, useSmiles=True)
        imgs.append(Draw.ReactionToImage(rxn, subImgSize=(220, 180)))
    if not imgs:
        imgs = [Draw.MolToImage(to_mol(route.target), size=(220, 180))]
    w, h = max(i.width for i in imgs), sum(i.height for i in imgs)
    canvas = Image.new("RGB", (w, h), "white")
    y = 0
    for i in imgs:
        canvas.paste(i, (0, y))
        y += i.height
    canvas.save(str(path))


def self_improve(model: SingleStep, products: list[str], labels: list[int], targets: list[str],
                 eval_targets: list[str], building_blocks: set[str], rounds: int = 3,
                 expansions: int = 50, epochs: int = 10, seed: int = 0, on_round=None,
                 save_dir: str | Path | None = None) -> list[dict]:
    """Kim et al. (2021), Alg. 1: each round searches ``targets``, adds the reactions of the
    solved routes to the training data (deduplicated, kept across rounds), fine-tunes the
    single-step model for ``epochs`` epochs on original + route data, and measures the success
    rate on ``eval_targets`` (never searched for training) at the same expansion budget.
    Returns one row per round (round 0 = before self-improvement)."""
    rate, _ = success_rate(model, eval_targets, building_blocks, expansions)
    history = [{"round": 0, "eval_success": rate, "route_examples": 0}]
    if on_round is not None:
        on_round(history[-1])
    extra_p: list[str] = []
    extra_l: list[int] = []
    seen: set[tuple[str, int]] = set()
    for r in range(1, rounds + 1):
        found, routes = success_rate(model, targets, building_blocks, expansions)
        new_p, new_l = route_examples(routes, model.library)
        for p, lab in zip(new_p, new_l):
            if (p, lab) not in seen:
                seen.add((p, lab))
                extra_p.append(p)
                extra_l.append(lab)
        model.fit(products + extra_p, labels + extra_l, epochs=epochs, seed=seed + r)
        rate, _ = success_rate(model, eval_targets, building_blocks, expansions)
        history.append({"round": r, "train_targets_solved": found, "route_examples": len(extra_p),
                        "eval_success": rate})
        if save_dir is not None:
            model.save(Path(save_dir) / f"round{r}")
        if on_round is not None:
            on_round(history[-1])
    return history
