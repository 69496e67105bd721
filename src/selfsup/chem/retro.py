"""Retrosynthesis: templates, a single-step model, route search, and self-improvement (Kim et al.,
"Self-Improved Retrosynthetic Planning", ICML 2021).

- Templates: rdchiral extracts a retro template (product pattern >> reactant patterns) from each
  atom-mapped reaction; applying it to a product with rdchiral gives candidate reactant sets.
- Single-step model: an MLP on the product's Morgan fingerprint (radius 2, 2,048 bits) ranks the
  template library (softmax); its proposals are the reactant sets of its top templates.
- Forward model (Kim et al.'s reaction augmentation): the same MLP on the reactant set's
  fingerprint ranks the same library, each template read forwards (reactants >> product).
Route search and self-improvement live in ``planning.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def forward_template(template: str) -> str:
    """A retro template (product >> reactants) read forwards: the reactant patterns grouped as
    one component (rdchiral runs a template on one molecule object, here the reactant set)
    >> the product pattern, as the official ``MLPModel.run(..., backward=False)``."""
    prod, agents, reac = template.split(">")
    if prod.startswith("(") and prod.endswith(")"):
        prod = prod[1:-1]
    return f"({reac})>{agents}>{prod}"


def apply_forward(template: str, reactants: str) -> list[str]:
    """Canonical products (single molecules) that retro ``template`` read forwards makes from
    the reactant set ``reactants`` ('.'-joined), deduplicated."""
    from rdchiral.main import rdchiralRunText

    try:
        outs = rdchiralRunText(forward_template(template), reactants)
    except Exception:
        return []
    keys = []
    for o in outs:
        k = canonical(o) if "." not in o else None
        if k and k not in keys:
            keys.append(k)
    return keys


def retro_star_scores(probs: torch.Tensor, templates: list[str], apply, topk: int
                      ) -> dict[str, tuple[float, list[str]]]:
    """Retro*'s scoring (``MLPModel.run``): the ``topk`` most probable templates are applied
    (``apply(template) -> outcomes``); each template's probability is split evenly over the
    outcomes it makes, outcomes made by several templates add up, and the scores are
    renormalised over everything proposed. Returns {outcome: (score, the templates that made
    it, most probable first)}."""
    out: dict[str, list] = {}
    for t in torch.argsort(probs, descending=True)[:topk].tolist():
        keys = apply(templates[t])
        for key in keys:
            entry = out.setdefault(key, [0.0, []])
            entry[0] += float(probs[t]) / len(keys)
            entry[1].append(templates[t])
    total = sum(v[0] for v in out.values())
    return {k: (v[0] / total, v[1]) for k, v in out.items()} if total > 0 else {}


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
    def probabilities(self, smiles: str) -> torch.Tensor:
        """The template distribution for one input molecule (or '.'-joined set)."""
        self.eval()
        return F.softmax(self(torch.from_numpy(fingerprints([smiles], self.bits))), 1)[0]

    @torch.no_grad()
    def propose(self, product: str, k: int = 10, max_templates: int = 50
                ) -> list[tuple[tuple[str, ...], float, str]]:
        """Up to ``k`` reactant sets for ``product``, best first: (reactants, probability of the
        template that made them, template). Templates are tried in order of probability until
        ``k`` sets are found or ``max_templates`` were tried."""
        p = self.probabilities(product)
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

    @torch.no_grad()
    def topk_scores(self, product: str, topk: int = 5) -> dict[str, tuple[float, list[str]]]:
        """Retro*'s scores of the reactant sets proposed for ``product`` by its ``topk`` most
        probable templates (``retro_star_scores``): {reactant key: (score, templates)}."""
        p = self.probabilities(product)
        return retro_star_scores(p, self.library.templates,
                                 lambda t: apply_template(t, product), topk)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from .. import rundir

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rundir.write_json(folder / "templates.json",
                          {"templates": self.library.templates, "bits": self.bits,
                           "hidden": self.net[0].out_features}, indent=None)
        with rundir.atomic_path(folder / "single_step.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))

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


class ForwardStep(SingleStep):
    """Kim et al.'s forward reaction model: the reactant set's fingerprint (the '.'-joined
    SMILES as one molecule object, as the official ``preprocess``) -> probabilities over the
    same retro template library, each template applied forwards (``apply_forward``). Trained
    with ``fit(reactant_keys, template_labels)``."""

    @torch.no_grad()
    def predict(self, reactants: str, topk: int = 5) -> list[tuple[str, float, str]]:
        """The products of the ``topk`` most probable templates with Retro*'s scores, best
        first: (product, score, the most probable template that made it)."""
        p = self.probabilities(reactants)
        scores = retro_star_scores(p, self.library.templates,
                                   lambda t: apply_forward(t, reactants), topk)
        best = sorted(scores.items(), key=lambda kv: -kv[1][0])
        return [(prod, s, tpls[0]) for prod, (s, tpls) in best]


def fit_forward(reactions: list[Reaction], library: TemplateLibrary, labels: list[int],
                epochs: int = 30, seed: int = 0) -> ForwardStep:
    """A forward model trained on the same reactions and template labels as the backward one
    (Kim et al. train theirs on Retro*'s reaction data): reactant set -> template."""
    model = ForwardStep(library)
    model.fit([r.reactants for r in reactions], labels, epochs=epochs, seed=seed)
    return model


def forward_accuracy(model: ForwardStep, reactions: list[Reaction], ks=(1, 5)) -> dict:
    """top-k accuracy of a forward model: the recorded product among its k best predictions."""
    hits = {k: 0 for k in ks}
    for r in reactions:
        preds = [p for p, _, _ in model.predict(r.reactants, max(ks))]
        for k in ks:
            hits[k] += r.product in preds[:k]
    return {f"forward_top{k}": hits[k] / max(1, len(reactions)) for k in ks}


def single_step_accuracy(model: SingleStep, reactions: list[Reaction], ks=(1, 10)) -> dict:
    """top-k accuracy: the recorded reactant set is among the model's k best proposals."""
    hits = {k: 0 for k in ks}
    for r in reactions:
        keys = [".".join(sorted(x)) for x, _, _ in model.propose(r.product, max(ks))]
        for k in ks:
            hits[k] += r.reactants in keys[:k]
    return {f"top{k}": hits[k] / max(1, len(reactions)) for k in ks}
