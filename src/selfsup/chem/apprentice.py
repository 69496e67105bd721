"""The apprentice: a SMILES language model (character-level LSTM, as GEGL's and GuacaMol's
SMILES-LSTM) that generates molecules token by token and is trained by maximum likelihood, first
on a corpus (ZINC) and then, inside GEGL, on the best molecules found so far (imitation).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.schedules import warmup_cosine
from .molecules import canonical

# SMILES tokens (bracket atoms, two-letter halogens, ring-bond numbers %nn, single characters)
_TOKEN = re.compile(r"(\[[^\]]+]|Br|Cl|%\d{2}|[A-Za-z]|\d|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$)")
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def tokenize(smiles: str) -> list[str]:
    tokens = _TOKEN.findall(smiles)
    if "".join(tokens) != smiles:
        raise ValueError(f"cannot tokenize SMILES {smiles!r}")
    return tokens


class Vocab:
    def __init__(self, tokens: list[str]):
        self.itos = [PAD, BOS, EOS] + sorted(set(tokens) - {PAD, BOS, EOS})
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_smiles(cls, smiles: list[str]) -> "Vocab":
        toks: set[str] = set()
        for s in smiles:
            try:
                toks.update(tokenize(s))
            except ValueError:
                continue
        return cls(sorted(toks))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, smiles: str) -> list[int] | None:
        """[BOS, tokens..., EOS] ids, or None when a token is not in the vocabulary."""
        try:
            ids = [self.stoi[t] for t in tokenize(smiles)]
        except (KeyError, ValueError):
            return None
        return [self.stoi[BOS], *ids, self.stoi[EOS]]

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            t = self.itos[i]
            if t == EOS:
                break
            if t not in (PAD, BOS):
                out.append(t)
        return "".join(out)


@dataclass
class ApprenticeConfig:
    embed_dim: int = 128
    hidden_dim: int = 512      # GEGL: 3-layer LSTM, 1024 hidden; CPU presets use less
    layers: int = 3
    dropout: float = 0.2
    max_len: int = 100


class SmilesLSTM(nn.Module):
    def __init__(self, vocab: Vocab, cfg: ApprenticeConfig | None = None):
        super().__init__()
        cfg = cfg or ApprenticeConfig()
        self.vocab, self.cfg = vocab, cfg
        self.embed = nn.Embedding(len(vocab), cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.out = nn.Linear(cfg.hidden_dim, len(vocab))

    def forward(self, ids: torch.Tensor, state=None):
        h, state = self.lstm(self.embed(ids), state)
        return self.out(h), state

    def batch(self, smiles: list[str]) -> torch.Tensor | None:
        """Padded [B, T] ids of the encodable molecules (None if none)."""
        enc = [e for e in (self.vocab.encode(s) for s in smiles) if e is not None]
        enc = [e[:self.cfg.max_len + 2] for e in enc]
        if not enc:
            return None
        t = max(len(e) for e in enc)
        out = torch.full((len(enc), t), self.vocab.stoi[PAD], dtype=torch.long)
        for i, e in enumerate(enc):
            out[i, :len(e)] = torch.tensor(e)
        return out

    def nll(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean token negative log-likelihood (teacher forcing; padding ignored)."""
        logits, _ = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               ignore_index=self.vocab.stoi[PAD])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> list[str]:
        """``n`` strings sampled token by token (not necessarily valid molecules)."""
        was = self.training
        self.eval()
        x = torch.full((n, 1), self.vocab.stoi[BOS], dtype=torch.long)
        state, seqs = None, []
        done = torch.zeros(n, dtype=torch.bool)
        for _ in range(self.cfg.max_len + 1):
            logits, state = self(x, state)
            probs = F.softmax(logits[:, -1] / temperature, dim=-1)
            probs[:, self.vocab.stoi[PAD]] = 0
            probs[:, self.vocab.stoi[BOS]] = 0
            x = torch.multinomial(probs, 1, generator=generator)
            x[done] = self.vocab.stoi[PAD]
            seqs.append(x)
            done |= x[:, 0] == self.vocab.stoi[EOS]
            if done.all():
                break
        self.train(was)
        ids = torch.cat(seqs, 1).tolist()
        return [self.vocab.decode(row) for row in ids]

    def save(self, path: str | Path) -> None:
        from .. import rundir

        with rundir.atomic_path(path) as tmp:
            torch.save({"vocab": self.vocab.itos, "config": asdict(self.cfg),
                        "state": self.state_dict()}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "SmilesLSTM":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no apprentice checkpoint (train one with "
                                    f"`selfsup chem pretrain-apprentice`)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        vocab = Vocab([])
        vocab.itos = list(blob["vocab"])
        vocab.stoi = {t: i for i, t in enumerate(vocab.itos)}
        model = cls(vocab, ApprenticeConfig(**blob["config"]))
        model.load_state_dict(blob["state"])
        return model


def draw_batch(n: int, batch_size: int, generator: torch.Generator | None = None,
               by_length: list[int] | None = None) -> list[int]:
    """Indices of one training batch of a corpus of ``n``: uniform with replacement, or - with
    ``by_length`` (the corpus indices sorted by SMILES length) - a window of ``batch_size``
    neighbours in that order starting at a uniform position (length bucketing: a batch pads to
    its longest SMILES, so similar lengths waste less compute; 1.3-1.6x faster per step on ZINC
    here, BENCHMARKS 9.1.3)."""
    batch_size = min(batch_size, n)
    if by_length is None:
        return torch.randint(0, n, (batch_size,), generator=generator).tolist()
    start = int(torch.randint(0, n - batch_size + 1, (1,), generator=generator))
    return by_length[start:start + batch_size]


def length_order(smiles: list[str]) -> list[int]:
    """Corpus indices sorted by SMILES length (stable), for ``draw_batch(by_length=...)``."""
    return sorted(range(len(smiles)), key=lambda i: len(smiles[i]))


def mle_step(model: SmilesLSTM, opt: torch.optim.Optimizer, ids: torch.Tensor,
             clip: float = 1.0) -> float:
    """One maximum-likelihood step on the padded batch ``ids`` (gradient norm clipped at
    ``clip``, as GEGL's apprentice); the loss."""
    loss = model.nll(ids)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def train_mle(model: SmilesLSTM, smiles: list[str], steps: int, batch_size: int = 128,
              lr: float = 1e-3, generator: torch.Generator | None = None,
              optimizer: torch.optim.Optimizer | None = None, clip: float = 1.0,
              progress=None) -> list[float]:
    """``steps`` Adam steps of maximum likelihood on random batches of ``smiles``; the losses."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    n = len(smiles)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).tolist()
        ids = model.batch([smiles[i] for i in idx])
        if ids is None:
            continue
        losses.append(mle_step(model, opt, ids, clip))
        if progress is not None:
            progress(step, losses[-1])
    return losses


def apprentice_lr(step: int, steps: int, lr: float, schedule: str = "constant",
                  lr_min: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based) of ``steps``: constant, or a cosine from ``lr`` at
    step 0 down to ``lr_min`` at the last step."""
    if schedule == "constant" or steps <= 1 or lr <= 0:
        return lr
    return lr * warmup_cosine(step / (steps - 1), 0.0, lr_min / lr)


def pretrain_on_corpus(model: SmilesLSTM, corpus: list[str], ckpt: Path, settings: dict, *,
                       steps: int, checkpoint_every: int = 200) -> int:
    """Maximum likelihood on ``corpus`` up to ``steps`` Adam steps (GEGL's pretraining: Adam,
    clip 1.0, batch ``settings['batch_size']``; windows of similar-length SMILES when
    ``settings['bucket']``; the lr of ``settings``, with its schedule when one is given),
    checkpointed atomically to ``ckpt`` every ``checkpoint_every`` steps and resumed from it when
    it was made with the same ``settings`` (a ValueError otherwise). Returns the last step."""
    from tqdm import tqdm

    from .. import rundir

    gen = torch.Generator().manual_seed(settings["seed"])
    order = length_order(corpus) if settings["bucket"] else None
    lr, schedule = settings["lr"], settings.get("lr_schedule", "constant")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step = 0
    if ckpt.exists():
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        if blob["settings"] != settings:
            raise ValueError(f"{ckpt} was made with other settings ({blob['settings']}); "
                             f"delete it or use the same ones")
        model.load_state_dict(blob["state"])
        opt.load_state_dict(blob["opt"])
        gen.set_state(blob["gen"])
        step = int(blob["step"])
        print(f"resuming from step {step}", file=sys.stderr)
    bar = tqdm(total=steps, initial=step, desc="apprentice", unit="step", file=sys.stderr)
    model.train()
    t0, seen, skipped = time.time(), 0, 0
    while step < steps:
        ids = model.batch([corpus[i] for i in draw_batch(len(corpus), settings["batch_size"],
                                                           gen, order)])
        if ids is None:     # no SMILES of the batch fits the (--init) vocabulary
            skipped += 1
            if skipped > 100:
                raise ValueError(f"{settings['corpus']}: no batch is encodable with the "
                                 f"apprentice's vocabulary; use the corpus it was trained on")
            continue
        for group in opt.param_groups:
            group["lr"] = apprentice_lr(step, steps, lr, schedule, settings.get("lr_min", 0.0))
        loss = mle_step(model, opt, ids)
        step += 1
        seen += ids.shape[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", mol_s=f"{seen / (time.time() - t0):.0f}")
        if step % checkpoint_every == 0 or step == steps:
            with rundir.atomic_path(ckpt) as tmp:
                torch.save({"settings": settings, "state": model.state_dict(),
                            "opt": opt.state_dict(), "gen": gen.get_state(), "step": step}, tmp)
    bar.close()
    return step


def sample_valid(model: SmilesLSTM, n: int, generator=None) -> tuple[list[str], float]:
    """Sample ``n`` strings; (their canonical SMILES where valid, the fraction valid)."""
    raw = model.sample(n, generator)
    valid = [c for c in (canonical(s) for s in raw) if c]
    return valid, len(valid) / max(1, n)
