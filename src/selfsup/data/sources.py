"""Where images come from: a folder, a tar/tar.gz archive, or a CSV of ``path,label``.

Labels: in a folder (or archive), if no image sits directly at the root, the first-level
sub-folders are the classes (images may be nested deeper inside them); otherwise everything is
unlabeled. In a CSV the ``label`` column gives the class; an empty label means unlabeled.
Sources only read: the user's files are never modified.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .decode import is_image_name


class DataError(ValueError):
    """A problem with the user's data, with a message naming the file and what to do."""


@dataclass
class Item:
    name: str            # path relative to the source root (or as written in the CSV)
    label: str | None    # class name, or None when unlabeled


def _hash(parts: list[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _stat_parts(items: list[Item], path_of) -> list[str]:
    """name|size|mtime|ctime|inode of every listed file: any edit, addition or removal changes
    the hash."""
    parts = []
    for it in items:
        try:
            st = os.stat(path_of(it.name))
            # ctime and inode too: an edit that restores the size and modification time still
            # changes the status-change time, which a user cannot set back
            parts.append(f"{it.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}")
        except OSError:
            parts.append(f"{it.name}|missing")
    return parts


MAX_IMAGE_BYTES = 256 << 20   # one image file; larger files are skipped (reported)


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most MAX_IMAGE_BYTES. Devices, pipes and sockets (even
    behind a link) raise OSError instead of hanging or filling memory; the caller reports it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a pipe would block an ordinary open
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file (a device, pipe or socket): skipped")
        if st.st_size > MAX_IMAGE_BYTES:
            raise OSError(f"{st.st_size / 2**20:.0f} MB: larger than the "
                          f"{MAX_IMAGE_BYTES >> 20} MB limit for one image")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_IMAGE_BYTES + 1)
    finally:
        os.close(fd)


def _labels_from_layout(rel_paths: list[str]) -> list[str | None]:
    if not rel_paths or any("/" not in p for p in rel_paths):
        return [None] * len(rel_paths)
    return [p.split("/", 1)[0] for p in rel_paths]


class Source(abc.ABC):
    description: str

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes whenever the images (or their list) change."""

    @abc.abstractmethod
    def iter_bytes(self) -> Iterator[tuple[Item, bytes | Exception]]:
        """(item, file bytes or the error reading it), in a fixed order."""


class FolderSource(Source):
    def __init__(self, root: Path, split: str | None = None):
        base = root / split if split else root
        if not base.is_dir():
            raise DataError(f"{base}: folder not found (data.path / data.split)")
        self.base = base
        self.description = f"folder {base}"
        rel = []
        seen_dirs = set()
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:  # defensive: never loop
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in sorted(filenames):
                if is_image_name(f) and not f.startswith("."):
                    rel.append(os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/"))
        if not rel:
            raise DataError(f"{base}: no image files found (looked for .jpg .png .bmp .webp .tiff .gif)")
        self.items = [Item(p, lab) for p, lab in zip(rel, _labels_from_layout(rel))]

    def fingerprint(self) -> str:
        return _hash([str(self.base.resolve()), *_stat_parts(self.items, lambda n: self.base / n)])

    def iter_bytes(self):
        for it in self.items:
            try:
                yield it, read_regular(self.base / it.name)
            except OSError as e:
                yield it, e


class TarSource(Source):
    """Reads a .tar / .tar.gz / .tgz directly, streaming members in archive order."""

    def __init__(self, path: Path, split: str | None = None):
        if not path.is_file():
            raise DataError(f"{path}: archive not found (data.path)")
        self.path, self.split = path, split.strip("/") if split else None
        self.description = f"archive {path}" + (f" [{self.split}]" if self.split else "")
        self.items: list[Item] | None = None  # known after one pass

    def fingerprint(self) -> str:
        st = os.stat(self.path)
        return _hash([str(self.path.resolve()), str(st.st_size), str(st.st_mtime_ns), self.split or ""])

    def _rel(self, member_name: str) -> str | None:
        name = member_name.lstrip("./")
        if self.split:
            prefix = self.split + "/"
            if not name.startswith(prefix):
                return None
            name = name[len(prefix):]
        return name if is_image_name(name) and not os.path.basename(name).startswith(".") else None

    def iter_bytes(self):
        found = []
        try:
            with tarfile.open(self.path, "r:*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    rel = self._rel(m.name)
                    if rel is None:
                        continue
                    found.append(rel)
                    f = tf.extractfile(m)
                    if m.size > MAX_IMAGE_BYTES:
                        yield Item(rel, None), OSError(
                            f"{m.size / 2**20:.0f} MB: larger than the {MAX_IMAGE_BYTES >> 20} MB "
                            f"limit for one image")
                        continue
                    yield Item(rel, None), (f.read() if f is not None else b"")
        except tarfile.TarError as e:
            raise DataError(f"{self.path}: cannot read archive ({e})") from None
        if not found:
            where = f" under '{self.split}/'" if self.split else ""
            raise DataError(f"{self.path}: no image files{where} in the archive (data.split?)")
        self.items = [Item(p, lab) for p, lab in zip(found, _labels_from_layout(found))]


class CsvSource(Source):
    """A CSV with a header row containing ``path`` and optionally ``label``; relative paths are
    resolved against the CSV's folder."""

    def __init__(self, path: Path):
        self.path = path
        self.description = f"csv {path}"
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "path" not in reader.fieldnames:
                    raise DataError(f"{path}: the first row must be a header with a 'path' column "
                                    f"(and optionally 'label'); found {reader.fieldnames}")
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from None
        if not rows:
            raise DataError(f"{path}: no rows after the header")
        self.items, seen = [], {}
        for i, row in enumerate(rows, start=2):
            p = (row.get("path") or "").strip()
            if not p:
                raise DataError(f"{path}, row {i}: empty 'path'")
            if p in seen:
                raise DataError(f"{path}, row {i}: '{p}' is listed twice (first at row {seen[p]})")
            seen[p] = i
            # confined to the CSV's folder (lexically: "..", absolute paths and drive letters
            # are refused; a link inside the folder is read like a folder's own links)
            if Path(p).is_absolute() or os.path.normpath(p).startswith(".."):
                raise DataError(f"{path}, row {i}: '{p}' is outside the CSV's folder; list images "
                                f"by paths relative to the folder that holds the CSV")
            label = (row.get("label") or "").strip() or None
            self.items.append(Item(p, label))
        self.root = path.parent

    def _file(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def fingerprint(self) -> str:
        return _hash([str(self.path.resolve()), hashlib.sha256(self.path.read_bytes()).hexdigest(),
                      *_stat_parts(self.items, self._file)])

    def iter_bytes(self):
        for it in self.items:
            try:
                yield it, read_regular(self._file(it.name))
            except OSError as e:
                yield it, e


def open_source(path: str | os.PathLike, split: str | None = None) -> Source:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (data.path)")
    if p.is_dir():
        return FolderSource(p, split)
    low = p.name.lower()
    if low.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return TarSource(p, split)
    if low.endswith(".csv"):
        if split:
            raise DataError(f"{p}: data.split does not apply to a CSV; make one CSV per split")
        return CsvSource(p)
    raise DataError(f"{p}: expected a folder, a .tar/.tar.gz archive or a .csv of path,label")
