"""Decode once into a memory-mapped uint8 cache, reused across runs.

The cache key hashes the source's fingerprint (paths, sizes, modification times; or the archive's
size and time), the resolution and the decoder version, so a changed source gets a new cache.
Building streams: images are decoded in chunks and appended to a file, so memory stays bounded.
The cache is written to a temporary folder and renamed into place (atomic).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .decode import DECODER_VERSION, UnreadableImage, decode_image
from .sources import DataError, Source

CHUNK = 256


def default_cache_dir() -> Path:
    env = os.environ.get("SELFSUP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup"


def cache_key(source: Source, size: int) -> str:
    h = hashlib.sha256(f"{source.fingerprint()}|{size}|v{DECODER_VERSION}".encode())
    return h.hexdigest()[:24]


def _decode(args):
    item, payload, size = args
    if isinstance(payload, Exception):
        return item, None, f"cannot read file: {payload}"
    try:
        return item, decode_image(payload, size), None
    except UnreadableImage as e:
        return item, None, str(e)


def build_or_load(source: Source, size: int, cache_dir: Path | None = None, threads: int = 2,
                  progress: bool = True) -> tuple[np.ndarray, dict]:
    """Return (images memmap [N,size,size,3] uint8, meta). meta: names, labels (class names or
    None), skipped [{name, reason}], source."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(source, size)
    final = cache_dir / key
    if not (final / "meta.json").is_file():
        _build(source, size, cache_dir, final, threads, progress)
    meta = json.loads((final / "meta.json").read_text())
    n = meta["count"]
    images = np.memmap(final / "images.u8", dtype=np.uint8, mode="r", shape=(n, size, size, 3)) \
        if n else np.zeros((0, size, size, 3), np.uint8)
    return images, meta


def _build(source: Source, size: int, cache_dir: Path, final: Path, threads: int, progress: bool):
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    names, labels, skipped = [], [], []
    bar = tqdm(desc=f"decoding {source.description}", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with open(tmp / "images.u8", "wb") as out, ThreadPoolExecutor(max(1, threads)) as pool:
            stream = iter(source.iter_bytes())
            while True:
                chunk = list(itertools.islice(stream, CHUNK))
                if not chunk:
                    break
                for item, arr, err in pool.map(_decode, [(it, b, size) for it, b in chunk]):
                    if err is not None:
                        skipped.append({"name": item.name, "reason": err})
                    else:
                        out.write(arr.tobytes())
                        names.append(item.name)
                        labels.append(item.label)
                bar.update(len(chunk))
        bar.close()
        if getattr(source, "items", None) is not None:  # archives learn their layout labels late
            by_name = {it.name: it.label for it in source.items}
            labels = [by_name.get(n, lab) for n, lab in zip(names, labels)]
        meta = {"count": len(names), "size": size, "names": names, "labels": labels,
                "skipped": skipped, "source": source.description}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same cache first
            if not (final / "meta.json").is_file():
                raise
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if not names:
        raise DataError(f"{source.description}: none of the {len(skipped)} image files could be "
                        f"decoded (first: {skipped[0]['name']}: {skipped[0]['reason']})")
