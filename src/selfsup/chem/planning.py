"""Route search and self-improvement for retrosynthesis (Kim et al., ICML 2021), on top of the
single-step model of ``retro.py``.

- Search: best-first over partial AND-OR solution trees (Retro*-0: the cost of a partial route is
  the sum of -log p of its reactions, no learned value): pop the cheapest partial route, expand
  its first unsolved molecule with the single-step model (one *expansion*: counted against the
  budget, cached per molecule), push one child per proposal. A route is solved only when every
  leaf is a building block.
- Self-improvement (Kim et al., Alg. 1): search a set of training targets, turn the reactions of
  the successful routes that the reference model backs confidently into training examples
  (product -> template), fine-tune the reference model on them, search again; success on
  held-out targets at the same budget measures the effect.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path

from .molecules import canonical, to_mol
from .retro import ForwardStep, Reaction, SingleStep, TemplateLibrary


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
                 withheld: dict[str, frozenset] | None = None,
                 **kw) -> tuple[float, list[Route | None]]:
    """The share of ``targets`` solved, and each one's route (None: not solved). ``withheld``
    (target -> molecules) removes molecules from the building blocks for that target's search
    only (``withheld_for``: its recorded reactants and their precursors)."""
    withheld = withheld or {}
    routes = [plan(t, model, building_blocks - withheld[t] if t in withheld else building_blocks,
                   expansions, **kw)[0] for t in targets]
    return sum(r is not None for r in routes) / max(1, len(targets)), routes


def withheld_for(targets: list[str], recorded: dict[str, list[str]],
                 reactions: list[Reaction]) -> dict[str, frozenset]:
    """For each held-out target, the molecules its search must not find among the building
    blocks: the reactants of each of its recorded reactions (``recorded``: product -> reactant
    keys) and, transitively, the reactants of every reaction in ``reactions`` (the data the
    planner was built from) that makes one of them - their precursors in the data. Without
    this a target whose recorded reactants are building blocks is solved by looking its
    reaction up, and one whose reactants the data makes from building blocks by a two-step
    look-up of the recorded chain."""
    makers: dict[str, list[str]] = {}
    for r in reactions:
        makers.setdefault(r.product, []).extend(r.reactants.split("."))
    out = {}
    for t in targets:
        todo = [m for key in recorded.get(t, ()) for m in key.split(".")]
        seen: set[str] = set()
        while todo:
            m = todo.pop()
            if m not in seen and m != t:
                seen.add(m)
                todo.extend(makers.get(m, ()))
        out[t] = frozenset(seen)
    return out


def outcome_row(routes: list[Route | None]) -> dict:
    """Per-target outcomes of one evaluation, for paired tests between evaluations on the same
    targets: ``solved`` as a string of 0/1 in target order, and the share solved by a route of
    two or more reactions (multi-step planning, not a single reaction to building blocks)."""
    n = max(1, len(routes))
    return {"solved": "".join("1" if r is not None else "0" for r in routes),
            "eval_success_multistep": sum(r is not None and len(r.steps) >= 2
                                          for r in routes) / n}


def route_examples(routes: list[Route | None], library: TemplateLibrary
                   ) -> tuple[list[str], list[int]]:
    """Training examples (product, template index) from every reaction of the solved routes,
    deduplicated (the self-improvement data of ``recipe="union"``)."""
    return as_examples([(".".join(sorted(rs)), prod, tpl) for r in routes if r is not None
                        for prod, rs, _, tpl in r.steps], library)


def confident_reactions(routes: list[Route | None], reference: SingleStep, topk: int = 5,
                        threshold: float = 0.8) -> tuple[list[tuple[str, str, str]], dict]:
    """Kim et al.'s filter of route reactions (official ``get_gold_rxns`` with ``--cut_off``):
    keep a reaction only when the *reference* single-step model (the one before any
    self-improvement) proposes its reactant set from the route's template among its ``topk``
    templates with a Retro*-normalised score of at least ``threshold`` (0.8). Returns the kept
    reactions as (reactant key, product, template), in route order with repeats, and the
    counts kept and cut."""
    kept, cut = [], 0
    for r in routes:
        if r is None:
            continue
        for prod, reactants, _, tpl in r.steps:
            key = ".".join(sorted(reactants))
            score, tpls = reference.topk_scores(prod, topk).get(key, (0.0, []))
            if tpl not in tpls or score < threshold or tpl not in reference.library.index:
                cut += 1
                continue
            kept.append((key, prod, tpl))
    return kept, {"kept": len(kept), "cut": cut}


def as_examples(reactions: list[tuple[str, str, str]], library: TemplateLibrary
                ) -> tuple[list[str], list[int]]:
    """(reactants, product, template) reactions -> deduplicated (products, template labels)."""
    seen, products, labels = set(), [], []
    for _, prod, tpl in reactions:
        if (prod, tpl) not in seen and tpl in library.index:
            seen.add((prod, tpl))
            products.append(prod)
            labels.append(library.index[tpl])
    return products, labels


def forward_augment(reactions: list[tuple[str, str, str]], forward: ForwardStep,
                    reference: SingleStep, topk: int = 5, threshold: float = 0.8
                    ) -> tuple[list[tuple[str, str, str]], dict]:
    """Kim et al.'s reaction augmentation (official ``aug_gold_rxn`` with
    ``--fw_backward_validate``): for each kept route reaction, the forward model predicts
    products from its reactants (its ``topk`` templates, Retro*-normalised scores); in order of
    score, stopping at the first below ``threshold``, a prediction becomes a new reaction
    (reactants >> predicted product, the forward template) when the reference backward model's
    top-1 template for the predicted product is that template. Returns the new reactions
    (the recorded product itself may come back: the official list keeps it, ``as_examples``
    then counts it once) and counts: ``forward_proposed`` (above the threshold),
    ``augmented`` (validated)."""
    out, proposed = [], 0
    for reactants, _, _ in reactions:
        for pred, score, tpl in forward.predict(reactants, topk):
            if score < threshold:
                break
            proposed += 1
            backward = reference.topk_scores(pred, 1)     # its top-1 template, if it applies
            if any(tpl in tpls for _, tpls in backward.values()):
                out.append((reactants, pred, tpl))
    return out, {"forward_proposed": proposed, "augmented": len(out)}


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
                 save_dir: str | Path | None = None, recipe: str = "kim",
                 lr: float = 1e-4, eval_withheld: dict[str, frozenset] | None = None,
                 forward: ForwardStep | None = None) -> list[dict]:
    """Kim et al. (2021), Alg. 1: each round searches ``targets`` with the current model, turns
    the solved routes' reactions into training examples (deduplicated, kept across rounds) and
    updates the single-step model; the success rate on ``eval_targets`` (never searched for
    training) at the same expansion budget measures the effect. Returns one row per round
    (round 0 = before self-improvement).

    ``recipe="kim"`` (the paper's, official ``get_gold_rxns`` + fine-tuning): only reactions the
    reference model (the model as given) backs with top-5 and score >= 0.8 are kept
    (``confident_reactions``), with ``forward`` (a ``ForwardStep``) each kept reaction's
    reactants also give the forward model's validated products (``forward_augment``, the
    paper's reaction augmentation), and each round fine-tunes a copy of the *reference* model
    on the kept (and augmented) route data alone, ``epochs`` epochs at ``lr`` (paper: 20 epochs
    at 1e-4). ``recipe="union"``:
    every route reaction is added to the original data and the current model keeps training on
    the union at the default lr (this project's first version). ``eval_withheld`` is passed
    to the held-out searches only (``withheld_for``); each row carries the per-target outcomes
    (``outcome_row``)."""
    import copy

    if recipe not in ("kim", "union"):
        raise ValueError(f"recipe must be kim or union, got {recipe!r}")
    reference = copy.deepcopy(model).eval()
    rate, eval_routes = success_rate(model, eval_targets, building_blocks, expansions,
                                     withheld=eval_withheld)
    history = [{"round": 0, "eval_success": rate, "route_examples": 0,
                **outcome_row(eval_routes)}]
    if on_round is not None:
        on_round(history[-1])
    extra_p: list[str] = []
    extra_l: list[int] = []
    seen: set[tuple[str, int]] = set()
    for r in range(1, rounds + 1):
        found, routes = success_rate(model, targets, building_blocks, expansions)
        if recipe == "kim":
            kept, counts = confident_reactions(routes, reference)
            if forward is not None:
                extra, aug_counts = forward_augment(kept, forward, reference)
                aug_counts["distinct_before_augment"] = len(as_examples(kept, reference.library)[0])
                kept, counts = kept + extra, {**counts, **aug_counts}
            new_p, new_l = as_examples(kept, reference.library)
        else:
            (new_p, new_l), counts = route_examples(routes, model.library), {}
        for p, lab in zip(new_p, new_l):
            if (p, lab) not in seen:
                seen.add((p, lab))
                extra_p.append(p)
                extra_l.append(lab)
        if recipe == "kim":
            model.load_state_dict(reference.state_dict())
            if extra_p:
                model.fit(extra_p, extra_l, epochs=epochs, lr=lr, seed=seed + r)
        else:
            model.fit(products + extra_p, labels + extra_l, epochs=epochs, seed=seed + r)
        rate, eval_routes = success_rate(model, eval_targets, building_blocks, expansions,
                                         withheld=eval_withheld)
        history.append({"round": r, "train_targets_solved": found, "route_examples": len(extra_p),
                        "eval_success": rate, **outcome_row(eval_routes),
                        **{f"reactions_{k}": v for k, v in counts.items()}})
        if save_dir is not None:
            model.save(Path(save_dir) / f"round{r}")
        if on_round is not None:
            on_round(history[-1])
    return history
