"""Writing a run's small files so that a kill at any moment leaves the old file or the new one,
never a torn one: write a hidden temporary file beside it, flush it to disk, rename it over."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))
