"""Atomic checkpoints (write to a temporary file, fsync, rename) and RNG state capture."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# a checkpoint file is torch.save's bytes followed by this trailer and their SHA-256, so a torn
# or flipped file is recognised before torch reads it
TRAILER = b"\nselfsup-sha256:"


def atomic_save(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` with a checksum; the previous checkpoint is kept as
    ``prev.pt`` beside it, so a damaged ``last.pt`` can fall back to it."""
    import hashlib
    import io

    from ..rundir import atomic_path

    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.write(TRAILER + hashlib.sha256(payload).hexdigest().encode())
        if path.is_file() and not path.is_symlink():
            os.replace(path, path.with_name("prev.pt"))   # the one before, kept until the next


class DamagedCheckpointError(RuntimeError):
    pass


class UnsafeCheckpointError(RuntimeError):
    pass


def read_verified(path: Path) -> bytes:
    """The torch payload of a checkpoint file after checking its checksum."""
    import hashlib

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DamagedCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    cut = data.rfind(TRAILER)
    if cut < 0:
        if data[:2] == b"PK" and len(data) > 22:  # an older checkpoint without a checksum
            return data
        raise DamagedCheckpointError(f"{path} is damaged ({len(data)} bytes, no checksum: "
                                     f"a truncated or foreign file)")
    payload, digest = data[:cut], data[cut + len(TRAILER):]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise DamagedCheckpointError(f"{path} is damaged (checksum mismatch: the file changed "
                                     f"after it was written)")
    return payload


def load_checkpoint(path: Path) -> dict:
    """Load a training checkpoint after verifying its checksum, with ``weights_only=True``:
    tensors, numbers, strings and containers only. A file holding anything else (a pickle that
    would import or call code) is refused, never executed."""
    import io
    import pickle

    payload = read_verified(path)
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it contains objects other than tensors and plain data "
            f"(a pickle that could run code). Only load checkpoints you trust, or re-create it. "
            f"Detail: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise DamagedCheckpointError(f"{path} is damaged ({str(e).splitlines()[0][:100]})"
                                     ) from None


def load_resumable(ckpt_dir: Path) -> tuple[dict | None, str | None]:
    """The checkpoint a resume starts from: ``last.pt``, or ``prev.pt`` when ``last.pt`` is
    missing (a kill between the two renames) or damaged. Returns (checkpoint or None, a note
    for the user or None). Both damaged: DamagedCheckpointError naming what to do."""
    last, prev = Path(ckpt_dir) / "last.pt", Path(ckpt_dir) / "prev.pt"
    errors = []
    for p in (last, prev):
        if not p.exists():
            continue
        try:
            ck = load_checkpoint(p)
        except DamagedCheckpointError as e:
            errors.append(str(e))
            continue
        note = None
        if p is prev:
            note = (f"{'; '.join(errors) or f'{last} is missing'}: resuming from the checkpoint "
                    f"before it ({prev.name}, step {ck.get('step')})")
        return ck, note
    if errors:
        raise DamagedCheckpointError(f"{errors[0]}; no earlier checkpoint to fall back on: "
                                     f"delete {Path(ckpt_dir)} to start this run from step 0, "
                                     f"or pass --overwrite")
    return None, None
