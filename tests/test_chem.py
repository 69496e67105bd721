"""Molecules (issue 10): objectives against reference values, the counting oracle, graph
operators that only return valid canonical molecules, the apprentice, GA/GEGL budgets."""

import os
import random
from pathlib import Path

import pytest
import torch

from selfsup.chem.apprentice import (ApprenticeConfig, SmilesLSTM, Vocab, draw_batch,
                                     length_order, sample_valid,
                                     tokenize, train_mle)
from selfsup.chem.ga import crossover, graph_ga, mutate, mutation_reactions
from selfsup.chem.gegl import GEGLConfig, gegl
from selfsup.chem.molecules import canonical, read_smiles, to_mol
from selfsup.chem.objectives import (AlertFilter, clipped, geometric_mean, largest_ring, logp,
                                     max_gaussian, min_gaussian, osimertinib_mpo, penalized_logp,
                                     penalized_logp_normalized, qed, sa_score, tanimoto)
from selfsup.chem.oracle import BudgetExhausted, Oracle, top_k_curve

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny LSTMs gain nothing from threads; with 2 threads beside a busy process they stall."""
    torch.set_num_threads(1)


SHARED = Path(os.environ.get("SELFSUP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CHEM = SHARED / "datasets" / "chem"
needs_chem_data = pytest.mark.skipif(
    not (CHEM / "zinc250k.txt.gz").exists(),
    reason=f"chem data not found at {CHEM}: set SELFSUP_SHARED to the folder holding datasets/chem")
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
SMALL = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", ASPIRIN, "CCN(CC)CC", "c1ccc2ccccc2c1",
         "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1", "CCOC(=O)c1ccccc1N", "Cc1ccncc1"]


def test_canonical_and_invalid():
    assert canonical("OCC") == canonical("CCO") == "CCO"
    assert canonical("C1CC") is None and canonical("") is None and canonical("xyz") is None


def test_qed_logp_sa_reference_values():
    m = to_mol(ASPIRIN)
    # RDKit 2024.09 values (QED: Bickerton 2012 weights; Crippen logP; Ertl SA score)
    assert qed(m) == pytest.approx(0.5501, abs=1e-4)
    assert logp(m) == pytest.approx(1.3101, abs=1e-4)
    assert sa_score(m) == pytest.approx(1.5800, abs=1e-3)
    # paracetamol and ibuprofen
    assert qed(to_mol("CC(=O)Nc1ccc(O)cc1")) == pytest.approx(0.5950, abs=1e-3)
    assert qed(to_mol("CC(C)Cc1ccc(C(C)C(=O)O)cc1")) == pytest.approx(0.8216, abs=1e-3)


def test_penalized_logp_formula_and_ring_penalty():
    m = to_mol(ASPIRIN)
    assert penalized_logp(m) == pytest.approx(logp(m) - sa_score(m), abs=1e-9)  # 6-ring: none
    ring9 = to_mol("C1CCCCCCCC1")
    assert largest_ring(ring9) == 9
    assert penalized_logp(ring9) == pytest.approx(logp(ring9) - sa_score(ring9) - 3, abs=1e-9)
    # normalised variant: each term standardised by JT-VAE's ZINC statistics
    ref = ((logp(m) - 2.4570953396190123) / 1.434324401111988
           + (-sa_score(m) + 3.0525811293166134) / 0.8335207024513095
           + (0 + 0.0485696876403053) / 0.2860212110245455)
    assert penalized_logp_normalized(m) == pytest.approx(ref)


def test_guacamol_modifiers_and_mpo():
    assert clipped(0.4, upper=0.8) == 0.5 and clipped(1.0, upper=0.8) == 1.0
    assert min_gaussian(0.5, 1, 1) == 1.0 and min_gaussian(2, 1, 1) == pytest.approx(0.6065, abs=1e-4)
    assert max_gaussian(120, 100, 10) == 1.0 and max_gaussian(90, 100, 10) == pytest.approx(0.6065, abs=1e-4)
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5) and geometric_mean([0.0, 1.0]) == 0
    osi = to_mol("COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc1nccc(-c2cn(C)c3ccccc23)n1")
    assert tanimoto(osi, osi) == 1.0
    # the target itself is "too similar" (ECFP6 = 1 > 0.85): penalised, but far above aspirin
    assert 0.1 < osimertinib_mpo(osi) < 1.0
    assert osimertinib_mpo(osi) > osimertinib_mpo(to_mol(ASPIRIN))


def test_similarity_is_guacamols_count_tanimoto():
    """PMO's oracles (TDC, from GuacaMol) compare unfolded Morgan *count* fingerprints: Tanimoto
    = sum of min counts / (sum a + sum b - sum of min counts), over every environment. Checked
    against that formula computed by hand from the environments' counts, and against values
    GuacaMol's own code gives (osimertinib vs celecoxib: ECFP4 0.1513, FCFP4 0.2324; a
    2048-bit bit vector gives 0.078 / 0.106)."""
    from selfsup.chem.objectives import CELECOXIB, OSIMERTINIB, fingerprint

    osi, cel = to_mol(OSIMERTINIB), to_mol(CELECOXIB)
    for kind in ("ECFP4", "ECFP6", "FCFP4"):
        a = fingerprint(osi, kind).GetNonzeroElements()
        b = fingerprint(cel, kind).GetNonzeroElements()
        both = sum(min(a[k], b[k]) for k in set(a) & set(b))
        naive = both / (sum(a.values()) + sum(b.values()) - both)
        assert tanimoto(osi, cel, kind) == pytest.approx(naive, abs=1e-12)
    assert tanimoto(osi, cel, "ECFP4") == pytest.approx(0.1513, abs=1e-4)
    assert tanimoto(osi, cel, "FCFP4") == pytest.approx(0.2324, abs=1e-4)


@needs_chem_data
def test_structural_alerts():
    f = AlertFilter(CHEM / "alert_collection.csv", rule_sets=("Glaxo",))
    assert any("halide" in a.lower() for a in f.alerts(to_mol("CCCCBr")))   # reactive alkyl halide
    assert f.passes(to_mol("CC(C)Cc1ccc(C(C)C(=O)O)cc1"))
    with pytest.raises(FileNotFoundError, match="alert"):
        AlertFilter(CHEM / "missing.csv")


def test_oracle_counts_caches_and_enforces_its_budget():
    calls = []

    def objective(mol):
        calls.append(1)
        return float(mol.GetNumAtoms())

    o = Oracle(objective, budget=3)
    assert o.score("CCO") == 3.0 and o.score("OCC") == 3.0      # same molecule: cached
    assert o.score("not a smiles") is None                       # invalid: not counted
    assert o.calls == 1 and len(calls) == 1
    assert o.score_many(["CCC", "CCCC", "CCCCC", "CCO"]) == [3.0, 4.0, None, 3.0]
    assert o.calls == 3 and len(calls) == 3 and o.exhausted
    with pytest.raises(BudgetExhausted):
        o.score("CCCCCC")
    assert o.score("CCCC") == 4.0                               # cached answers still come
    m = o.metrics()
    assert m["calls"] == 3 and m["top1"] == 4.0 and m["top10_mean"] == pytest.approx(10 / 3)
    # AUC: mean over the budget of the running top-10 mean: (3 + 3 + 10/3) / 3
    assert m["auc_top10"] == pytest.approx((3 + 3 + 10 / 3) / 3)
    assert top_k_curve([1.0, 5.0, 2.0], k=2).tolist() == [1.0, 3.0, 3.5]


def test_mutation_and_crossover_return_valid_canonical_molecules():
    rng = random.Random(0)
    assert len(mutation_reactions()) > 20
    produced = 0
    for s in SMALL:
        for _ in range(15):
            for out in (mutate(s, rng), crossover(s, rng.choice(SMALL), rng)):
                if out is None:
                    continue       # a clear rejection, never an invalid molecule
                produced += 1
                assert to_mol(out) is not None and canonical(out) == out and "." not in out
    assert produced > 150
    assert mutate("not a smiles", rng) is None and crossover("C1CC", "CCO", rng) is None
    # size limit: a product above max_atoms is rejected
    big = "C" * 30
    assert all(mutate(big, rng, max_atoms=30) is None or
               to_mol(mutate(big, rng, max_atoms=30)).GetNumHeavyAtoms() <= 30 for _ in range(5))


@needs_chem_data
def test_graph_ga_improves_qed_within_its_budget():
    start = read_smiles(CHEM / "zinc250k.txt.gz", limit=100)
    o = Oracle(qed, budget=400)
    pop = graph_ga(o, start, population_size=20, offspring=40, seed=1)
    assert o.calls == 400 and o.exhausted
    first100 = max(s for _, s in o.history[:100])
    assert pop[0][1] == o.metrics()["top1"] >= first100
    assert all(canonical(s) == s for s, _ in pop)


def tiny_apprentice(smiles):
    torch.manual_seed(0)
    return SmilesLSTM(Vocab.from_smiles(smiles),
                      ApprenticeConfig(embed_dim=16, hidden_dim=32, layers=1, max_len=60))


@needs_chem_data
def test_apprentice_tokenizes_learns_and_samples():
    assert tokenize("C[C@@H](Cl)c1ccccc1Br") == ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "c",
                                                  "c", "c", "c", "c", "1", "Br"]
    data = read_smiles(CHEM / "zinc250k.txt.gz", limit=300)
    model = tiny_apprentice(data)
    ids = model.batch(data[:4])
    assert model.vocab.decode(ids[0].tolist()[1:]) == data[0]
    losses = train_mle(model, data, 40, 32, lr=3e-3, generator=torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0] - 0.5
    raw = model.sample(8, torch.Generator().manual_seed(0))
    assert len(raw) == 8 and all(isinstance(s, str) for s in raw)
    valid, frac = sample_valid(model, 16, torch.Generator().manual_seed(1))
    assert 0.0 <= frac <= 1.0 and all(canonical(v) == v for v in valid)


@needs_chem_data
@pytest.mark.parametrize("mode", ["gegl", "apprentice", "random"])
def test_gegl_and_baselines_stop_at_the_budget(mode, tmp_path):
    data = read_smiles(CHEM / "zinc250k.txt.gz", limit=300)
    model = tiny_apprentice(data)
    train_mle(model, data, 60, 32, lr=3e-3)
    path = tmp_path / "apprentice.pt"
    model.save(path)
    model = SmilesLSTM.load(path)
    o = Oracle(qed, budget=60)
    out = gegl(o, model, GEGLConfig(samples=64, offspring=32, queue_size=16, imitation_steps=1,
                                    batch_size=16, patience=3), mode=mode, seed=0)
    assert o.calls <= 60 and out["rounds"] >= 1
    assert out["stopped"] == ("budget" if o.exhausted else "patience")
    if mode == "gegl":   # the first variant's expert (ga.py's operators) fills it quickly
        o = Oracle(qed, budget=60)   # (GB-GA's size rule rejects most children of this
        gegl(o, SmilesLSTM.load(path),   # 3%-valid apprentice's tiny molecules)
             GEGLConfig(samples=64, offspring=32, queue_size=16, imitation_steps=1,
                        batch_size=16, patience=3, operators="first"), mode=mode, seed=0)
        assert o.exhausted
    assert [s for s, _ in out["queue"]] == [s for s, _ in sorted(out["queue"], key=lambda t: -t[1])]
    with pytest.raises(ValueError, match="mode"):
        gegl(o, model, mode="nope")


@needs_chem_data
def test_gegl_expert_draws_its_mating_pool_as_the_official_code(monkeypatch):
    """Official GEGL: N parents uniformly (with replacement) from Q_A, GB-GA's operators;
    ``parents="score"`` weights the draw by score."""
    import collections

    from selfsup.chem import gbga
    from selfsup.chem.gegl import expert_offspring

    # score-weighted: weights score - min, so the first gets 39 / (39 + 18) = 0.68 of the draws
    queue = {s: (40.0 if i == 0 else 1.0 if i == 1 else 2.0) for i, s in
             enumerate(read_smiles(CHEM / "zinc250k.txt.gz", limit=20))}
    first = next(iter(queue))
    for parents, lo, hi in (("uniform", 0.03, 0.075), ("score", 0.63, 0.73)):
        pools = []
        monkeypatch.setattr(gbga, "reproduce", lambda pool, rate, rng: pools.append(pool))
        out = expert_offspring(queue, GEGLConfig(offspring=2000, parents=parents),
                               random.Random(0))
        assert out == [] and len(pools) == 2000 and all(p is pools[0] for p in pools)
        counts = collections.Counter(canonical_of(m) for m in pools[0])
        assert len(pools[0]) == 2000 and lo < counts[canonical(first)] / 2000 < hi, parents
        monkeypatch.undo()
    children = expert_offspring(queue, GEGLConfig(offspring=30, mutation_rate=0.5),
                                random.Random(0))
    assert children and all(canonical(c) == c for c in children)
    assert not set(children) & {canonical(s) for s in queue}   # a child is never its parent
    with pytest.raises(ValueError, match="parents"):
        expert_offspring(queue, GEGLConfig(parents="best"), random.Random(0))


@needs_chem_data
def test_gegl_start_molecules_are_scored_first_and_queued():
    data = read_smiles(CHEM / "zinc250k.txt.gz", limit=300)
    model = tiny_apprentice(data)
    start = data[:10]
    o = Oracle(qed, budget=30)
    out = gegl(o, model, GEGLConfig(samples=8, offspring=8, queue_size=4, imitation_steps=1,
                                    batch_size=4, patience=2), mode="random", seed=0,
               start=start)
    assert [canonical(s) for s, _ in o.history[:10]] == [canonical(s) for s in start]
    best_start = max(qed(to_mol(s)) for s in start)
    assert out["queue"][0][1] >= best_start - 1e-9
    assert len(out["validity_per_round"]) == len(out["queue_means_per_round"]) == out["rounds"]
    assert 0 <= out["top10_from_expert"] <= 10


def canonical_of(mol):
    from selfsup.chem.molecules import mol_to_smiles
    return mol_to_smiles(mol)


def test_gegl_scaled_config_keeps_the_papers_proportions():
    # paper: N = 8,192 samples and offspring, K = 1,024, 8 imitation steps x 256 = 2K
    cfg = GEGLConfig.scaled(10_000, rounds=10)
    assert (cfg.samples, cfg.offspring, cfg.queue_size) == (500, 500, 62)
    assert cfg.samples // cfg.queue_size == 8 and cfg.imitation_steps == 8
    assert abs(cfg.imitation_steps * cfg.batch_size - 2 * cfg.queue_size) <= 8
    paper = GEGLConfig.scaled(2 * 8192 * 200, rounds=200)
    assert (paper.samples, paper.queue_size, paper.batch_size) == (8192, 1024, 256)
    assert GEGLConfig.scaled(10_000, parents="score").parents == "score"


def test_length_bucketed_batches_are_windows_of_similar_length():
    smiles = ["C" * (1 + (7 * i) % 40) for i in range(200)]
    order = length_order(smiles)
    assert [len(smiles[i]) for i in order] == sorted(len(s) for s in smiles)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        idx = draw_batch(len(smiles), 16, gen, order)
        lengths = [len(smiles[i]) for i in idx]
        assert len(idx) == 16 and lengths == sorted(lengths)
        pos = order.index(idx[0])
        assert idx == order[pos:pos + 16]          # a window of neighbours in length order
        seen.update(idx)
    assert len(seen) == 200                        # every molecule is reachable
    # the uniform draw is unchanged, and a batch never exceeds the corpus
    assert len(draw_batch(5, 16, torch.Generator().manual_seed(0))) == 5
    assert sorted(draw_batch(5, 16, gen, length_order(smiles[:5]))) == list(range(5))


def test_apprentice_lr_schedules():
    import math

    from selfsup.chem.apprentice import apprentice_lr

    assert [apprentice_lr(i, 5, 1e-3) for i in range(5)] == [1e-3] * 5
    cos = [apprentice_lr(i, 5, 1e-3, "cosine", 1e-5) for i in range(5)]
    assert math.isclose(cos[0], 1e-3) and math.isclose(cos[-1], 1e-5)
    assert math.isclose(cos[2], (1e-3 + 1e-5) / 2)               # halfway: the mean
    assert all(a > b for a, b in zip(cos, cos[1:]))


@needs_chem_data
def test_cli_pretrain_apprentice_resumes_and_design_writes_its_outputs(tmp_path, capsys):
    import json

    from selfsup.cli import main

    corpus = str(CHEM / "zinc250k.txt.gz")
    app = tmp_path / "app.pt"
    args = ["chem", "pretrain-apprentice", "--corpus", corpus, "--limit", "300", "--steps", "6",
            "--batch-size", "16", "--hidden", "32", "--layers", "1", "--checkpoint-every", "3",
            "-o", str(app), "--threads", "1", "--validity-samples", "20"]
    assert main(args) == 0
    info = json.loads(app.with_suffix(".json").read_text())
    assert info["steps"] == 6 and info["validity_samples"] == 20
    v = info["validity"] * 20                           # a share of the 20 samples
    assert abs(v - round(v)) < 1e-9 and 0 <= info["validity"] <= 1
    # a longer run with the same settings resumes from the checkpoint at step 6
    assert main([*args[:7], "8", *args[8:]]) == 0
    assert "resuming from step 6" in capsys.readouterr().err
    # a new run from those weights with a cosine lr: the settings name the start and schedule
    app2 = tmp_path / "new" / "folder" / "app2.pt"     # -o's folders are made at the start
    args2 = ["chem", "pretrain-apprentice", "--corpus", corpus, "--limit", "300", "--steps", "4",
             "--batch-size", "16", "--init", str(app), "--lr-schedule", "cosine",
             "--checkpoint-every", "2", "-o", str(app2), "--threads", "1",
             "--validity-samples", "8"]
    assert main(args2) == 0
    s2 = json.loads(app2.with_suffix(".json").read_text())["settings"]
    assert (s2["init"], s2["lr_schedule"], s2["hidden"], s2["layers"]) == \
        (str(app), "cosine", 32, 1)
    assert main([*args2[:7], "6", *args2[8:]]) == 2      # other steps = another schedule
    assert "other settings" in capsys.readouterr().err
    assert main([*args2[:11], str(tmp_path / "none.pt"), *args2[12:]]) == 2
    assert "none.pt" in capsys.readouterr().err
    out = tmp_path / "design"
    assert main(["chem", "design", "--method", "gegl", "--apprentice", str(app), "--budget", "40",
                 "--samples", "32", "--offspring", "32", "--queue", "16", "-o", str(out),
                 "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calls"] <= 40 and summary["method"] == "gegl"
    for f in ("molecules.csv", "history.csv", "best.png"):
        assert (out / f).exists(), f
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "call,smiles,score" and len(rows) == summary["calls"] + 1
    # an existing result is never overwritten silently; bad inputs are clear errors
    assert main(["chem", "design", "--method", "ga", "--start", corpus, "--budget", "5",
                 "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["chem", "design", "--method", "random", "--budget", "5",
                 "-o", str(tmp_path / "x")]) == 2
    assert "pretrain-apprentice" in capsys.readouterr().err
    assert main(["chem", "design", "--method", "ga", "--start", str(tmp_path / "none.txt"),
                 "--budget", "5", "-o", str(tmp_path / "y")]) == 2
    assert "none.txt" in capsys.readouterr().err


# --- retrosynthesis -----------------------------------------------------------------------------
from selfsup.chem.planning import (Route, as_examples, building_blocks_from,  # noqa: E402
                                   confident_reactions, forward_augment, outcome_row, plan,
                                   route_examples, success_rate, withheld_for)
from selfsup.chem.retro import (ForwardStep, SingleStep, TemplateLibrary,  # noqa: E402
                                apply_forward, apply_template, extract_template, fit_forward,
                                forward_accuracy, forward_template, read_reactions,
                                retro_star_scores, single_step_accuracy)


@pytest.fixture(scope="module")
def val_reactions():
    return read_reactions(CHEM / "uspto50k" / "raw_val.csv.gz")


@needs_chem_data
def test_template_extraction_then_application_recovers_the_reactants(val_reactions):
    # an amide formation from the data: recorded reactants are among the template's products
    r = val_reactions[0]
    assert r.reactants == "Nc1ccc(Oc2ccnc3[nH]ccc23)c(F)c1.O=C(OC(=O)C(F)(F)F)C(F)(F)F"
    tpl = extract_template(r.mapped)
    assert ">>" in tpl and r.reactants in apply_template(tpl, r.product)
    # over the first 60 reactions: extraction + application recovers the recorded reactant set,
    # and the template read forwards (the forward model's) makes the recorded product
    ok = ok_forward = total = 0
    for r in val_reactions[:60]:
        tpl = extract_template(r.mapped)
        if tpl:
            total += 1
            ok += r.reactants in apply_template(tpl, r.product)
            ok_forward += r.product in apply_forward(tpl, r.reactants)
    assert total >= 55 and ok / total >= 0.9 and ok_forward / total >= 0.9


def test_forward_template_reverses_the_retro_template():
    # by hand: the reactant patterns become one grouped component, the product's parentheses go
    assert forward_template("[C:1]-[OH:2]>>[C:1]-[Cl].[OH2:2]") == "([C:1]-[Cl].[OH2:2])>>[C:1]-[OH:2]"
    assert forward_template("([C:1]=[O:2])>>[C:1]-[O:2]") == "([C:1]-[O:2])>>[C:1]=[O:2]"
    # a hand-made retro template (alcohol <= alkyl chloride + water) read forwards on ethyl
    # chloride + water makes ethanol
    tpl = "[CH2;D2;+0:1]-[OH;D1;+0:2]>>Cl-[CH2;D2;+0:1].[OH2;D0;+0:2]"
    assert apply_forward(tpl, "CCCl.O") == ["CCO"]


def test_retro_star_scores_split_merge_and_renormalise():
    # hand-computed: t0 (p 0.5) makes a and b, t1 (0.3) makes a, t2 (0.2) makes nothing:
    # a = 0.25 + 0.3, b = 0.25, renormalised over 0.8
    made = {"t0": ["a", "b"], "t1": ["a"], "t2": []}
    out = retro_star_scores(torch.tensor([0.5, 0.3, 0.2]), ["t0", "t1", "t2"], made.get, topk=3)
    assert out["a"][0] == pytest.approx(0.55 / 0.8) and out["b"][0] == pytest.approx(0.25 / 0.8)
    assert out["a"][1] == ["t0", "t1"] and out["b"][1] == ["t0"]
    # topk=1 keeps only the most probable template's outcomes
    assert set(retro_star_scores(torch.tensor([0.5, 0.3, 0.2]), ["t0", "t1", "t2"], made.get,
                                 topk=1)) == {"a", "b"}
    assert retro_star_scores(torch.tensor([1.0]), ["t2"], made.get, topk=1) == {}


class TableForward:
    """Forward predictions from a table (already sorted, best first)."""

    def __init__(self, table):
        self.table = table

    def predict(self, reactants, topk=5):
        return self.table.get(reactants, [])[:topk]


class TableBackward:
    """The reference's top-1 template per product (``topk_scores(product, 1)``)."""

    def __init__(self, top1):
        self.top1 = top1

    def topk_scores(self, product, topk=5):
        assert topk == 1
        return {"x.y": (1.0, [self.top1[product]])} if product in self.top1 else {}


def test_forward_augmentation_is_the_official_filter():
    kept = [("A.B", "P", "t1"), ("C.D", "Q", "t2")]
    fwd = TableForward({"A.B": [("P", 0.85, "t1"), ("P2", 0.81, "t3"), ("P3", 0.5, "t4"),
                                ("P4", 0.9, "t5")],          # after a score below 0.8: never read
                        "C.D": [("Q2", 0.95, "t6")]})
    back = TableBackward({"P": "t1", "P2": "t3", "P3": "t4", "P4": "t5", "Q2": "t9"})
    out, counts = forward_augment(kept, fwd, back, threshold=0.8)
    # A.B: P (the recorded product, kept as the official list does) and P2 are confirmed; the
    # walk stops at P3 (0.5 < 0.8); C.D: Q2's top-1 backward template is t9, not t6: rejected
    assert out == [("A.B", "P", "t1"), ("A.B", "P2", "t3")]
    assert counts == {"forward_proposed": 3, "augmented": 2}
    # identities: an impossible threshold adds nothing; a reference confirming nothing adds nothing
    assert forward_augment(kept, fwd, back, threshold=1.01)[0] == []
    assert forward_augment(kept, fwd, TableBackward({}), threshold=0.0)[0] == []
    # as training examples, the repeated (P, t1) counts once
    lib = TemplateLibrary(["t1", "t2", "t3"])
    assert as_examples(kept + out, lib) == (["P", "Q", "P2"], [0, 1, 2])


class CountingModel:
    """Proposals from a table; counts single-step calls."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def propose(self, mol, k=10):
        self.calls += 1
        return self.table.get(mol, [])[:k]


def test_search_respects_its_budget_and_solves_only_to_building_blocks():
    # target T: route 1 (p=0.9) goes through X, which only leads to a non-building block Z;
    # route 2 (p=0.2) ends in building blocks A and B; X -> Y -> X would be a cycle
    table = {"CCCCO": [(("CCCC",), 0.9, "t1"), (("CC", "CCO"), 0.2, "t2")],
             "CCCC": [(("CCCCCl",), 0.9, "t3"), (("CCCCO",), 0.5, "cycle")],
             "CCCCCl": [(("CCCCBr",), 0.9, "t4")],
             "CCCCBr": [(("CCCCI",), 0.9, "t5")]}
    bbs = {"CC", "CCO"}
    model = CountingModel(table)
    route, stats = plan("OCCCC", model, bbs, expansions=10)
    assert route is not None and stats["solved"]
    assert route.steps == [("CCCCO", ("CC", "CCO"), 0.2, "t2")]
    assert set(route.leaves()) <= bbs
    assert stats["expansions"] == model.calls <= 10
    assert "[building block]" in route.tree(bbs)
    # with one expansion only the target is expanded: the 0.2 route still closes
    model = CountingModel(table)
    route, stats = plan("CCCCO", model, bbs, expansions=1)
    assert route is not None and model.calls == 1
    # without building blocks nothing is ever solved, and the budget is never exceeded
    model = CountingModel(table)
    route, stats = plan("CCCCO", model, set(), expansions=3)
    assert route is None and not stats["solved"] and model.calls == stats["expansions"] <= 3


def test_leak_free_evaluation_withholds_recorded_reactants_and_their_precursors():
    from selfsup.chem.retro import Reaction
    # data: CCO is made from C + CO (and CO from OC=O); the held-out target CCCCO was recorded
    # as CC + CCO; both CC and CCO are building blocks (reactants of other data reactions)
    data = [Reaction("1", "C.CO", "CCO", ""), Reaction("2", "OC=O", "CO", ""),
            Reaction("3", "CC.CCN", "CCCCN", ""), Reaction("4", "CCO.N", "CCON", "")]
    recorded = {"CCCCO": ["CC.CCO"], "CCCCN": ["CC.CCN"]}
    bbs = building_blocks_from(data, {"CCCCO", "CCCCN"})
    assert {"CC", "CCO", "C", "CO", "OC=O", "CCN"} <= bbs
    held = withheld_for(["CCCCO", "CCCCN"], recorded, data)
    # the recorded reactants, then transitively what the data makes them from
    assert held["CCCCO"] == {"CC", "CCO", "C", "CO", "OC=O"}
    assert held["CCCCN"] == {"CC", "CCN"}
    for t, keys in recorded.items():   # no target's recorded reactants are building blocks
        assert not any(set(k.split(".")) <= bbs - held[t] for k in keys)
    # the model proposes the recorded reaction (one step) or a route through CCO's precursors:
    # without withholding, the look-up solves it; with it, neither route closes
    table = {"CCCCO": [(("CC", "CCO"), 0.9, "t1")], "CCO": [(("C", "CO"), 0.9, "t2")]}
    rate, routes = success_rate(CountingModel(table), ["CCCCO"], bbs, expansions=5)
    assert rate == 1.0 and outcome_row(routes) == {"solved": "1", "eval_success_multistep": 0.0}
    rate, routes = success_rate(CountingModel(table), ["CCCCO"], bbs, expansions=5,
                                withheld=held)
    assert rate == 0.0 and outcome_row(routes)["solved"] == "0"
    # a two-step route to other building blocks still counts, and counts as multi-step
    table["CCO"].append((("CCN",), 0.5, "t3"))
    bbs2 = bbs | {"CCN"}
    held2 = withheld_for(["CCCCO"], {"CCCCO": ["CC.CCO"]}, data)
    held2 = {"CCCCO": held2["CCCCO"] - {"CC"}}          # CC allowed again for this case
    rate, routes = success_rate(CountingModel(table), ["CCCCO"], bbs2, expansions=5,
                                withheld=held2)
    assert rate == 1.0 and outcome_row(routes)["eval_success_multistep"] == 1.0


@needs_chem_data
def test_single_step_model_learns_templates_and_self_improvement_data(val_reactions, tmp_path):
    train = val_reactions[:300]
    lib, labels = TemplateLibrary.from_reactions(train)
    assert len(lib) > 50 and sum(x >= 0 for x in labels) >= 280
    model = SingleStep(lib, hidden=128)
    losses = model.fit([r.product for r in train], labels, epochs=40, batch_size=64, lr=3e-3)
    assert losses[-1] < losses[0] / 3
    acc = single_step_accuracy(model, train[:40], ks=(1, 10))
    assert acc["top10"] >= acc["top1"] >= 0.5          # it fits its training reactions
    model.save(tmp_path / "ss")
    again = SingleStep.load(tmp_path / "ss")
    assert again.propose(train[0].product, 3) == model.propose(train[0].product, 3)
    targets = [r.product for r in train[:10]]
    bbs = building_blocks_from(train, set(targets))
    assert not bbs & set(targets)
    routes = [plan(t, model, bbs, expansions=5)[0] for t in targets]
    solved = [r for r in routes if r is not None]
    assert solved and all(set(r.leaves()) <= bbs for r in solved)
    products, tpl_idx = route_examples(routes, lib)
    assert len(products) == len(tpl_idx) >= len(solved)
    assert all(lib.templates[i] for i in tpl_idx)
    assert isinstance(solved[0], Route) and solved[0].to_dict()["target"] == solved[0].target
    # Retro*'s scores over the top-5 templates: a distribution over the reactant sets proposed
    scores = model.topk_scores(train[0].product, topk=5)
    assert scores and sum(v for v, _ in scores.values()) == pytest.approx(1.0)
    assert all(t in lib.index for _, ts in scores.values() for t in ts)
    # Kim et al.'s filter keeps a route reaction only when the reference model backs it (its
    # template among the top 5, score >= threshold): threshold 0 keeps every top-5 reaction,
    # an impossible threshold keeps none, a template the reference never ranks is cut
    kept, counts = confident_reactions(routes, model, threshold=0.0)
    kept_p, kept_l = as_examples(kept, lib)
    steps = sum(len(r.steps) for r in solved)
    assert counts["kept"] + counts["cut"] == steps and counts["kept"] > 0
    assert set(kept_l) <= set(tpl_idx)
    none, none_counts = confident_reactions(routes, model, threshold=1.01)
    assert none == [] and none_counts["cut"] == steps
    r0 = next(r for r in solved if r.steps)
    fake = Route(r0.target, [(p, rs, pr, "not-a-template") for p, rs, pr, _ in r0.steps])
    assert confident_reactions([fake], model, threshold=0.0)[1]["kept"] == 0
    # the forward model (same library, reactants -> template) learns its training reactions
    fwd = ForwardStep(lib, hidden=128)
    losses = fwd.fit([r.reactants for r in train], labels, epochs=40, batch_size=64, lr=3e-3)
    assert losses[-1] < losses[0] / 3
    assert forward_accuracy(fwd, train[:40], ks=(1, 5))["forward_top1"] >= 0.5
    fwd.save(tmp_path / "fw")
    again = ForwardStep.load(tmp_path / "fw")
    assert isinstance(again, ForwardStep)
    assert again.predict(train[0].reactants) == fwd.predict(train[0].reactants)
    preds = fwd.predict(train[0].reactants)
    assert sum(s for _, s, _ in preds) == pytest.approx(1.0)
    assert [s for _, s, _ in preds] == sorted((s for _, s, _ in preds), reverse=True)
    assert isinstance(fit_forward(train[:20], lib, labels[:20], epochs=1), ForwardStep)


@needs_chem_data
def test_cli_retro_train_and_retro(tmp_path, capsys):
    import gzip

    from selfsup.cli import main

    lines = gzip.open(CHEM / "uspto50k" / "raw_val.csv.gz", "rt").read().splitlines()[:201]
    (tmp_path / "rx.csv").write_text("\n".join(lines) + "\n")
    held = [r.product for r in read_reactions(tmp_path / "rx.csv")[100:120]]
    mine = [r.product for r in read_reactions(tmp_path / "rx.csv")[:20]]
    (tmp_path / "eval.txt").write_text("\n".join(held))
    (tmp_path / "targets.txt").write_text("\n".join(mine))
    out = tmp_path / "retro"
    assert main(["chem", "retro-train", "--reactions", str(tmp_path / "rx.csv"), "--epochs", "20",
                 "--rounds", "1", "--targets", str(tmp_path / "targets.txt"), "--eval-targets",
                 str(tmp_path / "eval.txt"), "--expansions", "5", "--round-epochs", "2",
                 "-o", str(out)]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert [h["round"] for h in summary["history"]] == [0, 1]
    assert (out / "round1" / "single_step.safetensors").exists()
    # Kim et al.'s reaction augmentation is on by default: the forward model is written and
    # the round counts what it proposed and what the reference confirmed
    assert (out / "forward" / "single_step.safetensors").exists()
    row = summary["history"][1]
    assert {"reactions_forward_proposed", "reactions_augmented"} <= set(row)
    assert row["reactions_distinct_before_augment"] <= row["route_examples"]
    bbs = set((out / "building_blocks.txt").read_text().split())
    assert not bbs & {canonical(s) for s in held + mine}      # targets are never building blocks
    capsys.readouterr()
    # molecules the model was trained to make from building blocks: routes are found
    codes = [main(["chem", "retro", t, "-m", str(out), "-o", str(tmp_path / f"r{i}.png")])
             for i, t in enumerate(mine[:5])]
    assert 0 in codes and set(codes) <= {0, 1}
    i = codes.index(0)
    assert (tmp_path / f"r{i}.png").exists() and (tmp_path / f"r{i}.json").exists()
    assert "[building block]" in capsys.readouterr().out
    assert main(["chem", "retro", "C1CC", "-m", str(out)]) == 2
    assert main(["chem", "retro", "CCO", "-m", str(tmp_path / "nothing")]) == 2
