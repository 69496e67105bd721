"""Molecule I/O and canonicalisation with RDKit (``pip install selfsup[chem]``)."""

from __future__ import annotations

import gzip
from pathlib import Path


def rdkit():
    """The RDKit Chem module, with RDKit's own logging silenced; a clear error without it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:  # pragma: no cover - the test extra installs it
        raise ImportError("selfsup.chem needs RDKit: pip install 'selfsup[chem]'") from e
    RDLogger.DisableLog("rdApp.*")
    return Chem


def to_mol(smiles: str):
    """An RDKit molecule, or None when ``smiles`` does not parse or sanitise."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    return rdkit().MolFromSmiles(smiles.strip())


def canonical(smiles: str) -> str | None:
    """RDKit's canonical isomeric SMILES, or None for an invalid molecule."""
    mol = to_mol(smiles)
    return None if mol is None else rdkit().MolToSmiles(mol)


def mol_to_smiles(mol) -> str | None:
    """Canonical SMILES of an RDKit molecule after sanitisation, None when it does not sanitise
    (the check every graph operator's product goes through)."""
    Chem = rdkit()
    if mol is None:
        return None
    try:
        mol = Chem.Mol(mol)
        Chem.SanitizeMol(mol)
        smi = Chem.MolToSmiles(mol)
    except Exception:
        return None
    return smi if smi and Chem.MolFromSmiles(smi) is not None else None


def read_smiles(path: str | Path, limit: int | None = None, column: int = 0) -> list[str]:
    """SMILES from a text file (``.gz`` too), one molecule per line; the first whitespace- or
    comma-separated field (``column``). Empty lines and a ``smiles`` header are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such SMILES file")
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.replace(",", " ").split()
            if len(fields) <= column or fields[column].lower() == "smiles":
                continue
            out.append(fields[column])
            if limit and len(out) >= limit:
                break
    return out
