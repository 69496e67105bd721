"""The one module that owns the folders a run writes (runs, fits, exports, predictions, chem).

- **create**: a marker file (``.selfsup-run``) is the first thing written in a new folder; only a
  folder that carries it is ever replaced (``--overwrite``) or cleaned. A non-empty folder without
  it is never touched.
- **lock**: one process per folder (``fcntl.flock`` on ``.selfsup-lock``, released by the kernel
  when the process dies, so a killed run never leaves a stale lock).
- **write**: a hidden temporary file in the same folder, flushed to disk, renamed over the old
  one: a kill at any moment leaves the old file or the new one, never a torn one. A name that is a
  symbolic link is replaced by the new file, never written through; temporary files are opened
  with ``O_EXCL | O_NOFOLLOW``. Append-only logs are opened with ``O_NOFOLLOW`` too.
- **read**: a missing, empty or damaged file is one line naming the file and what to do; a torn
  last line of an append-only log (a kill or a full disk mid-write) is dropped.
- **resume**: temporary files left by a killed write are removed (under the lock nobody else can
  be writing them).

Torch-free: ``fit``'s preflight imports it before torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

MARKER = ".selfsup-run"
LOCK = ".selfsup-lock"
_TMP = re.compile(r"\..+\.tmp-\d+(-\d+)?")
_held: dict[str, int] = {}          # folder -> fd of the lock this process holds


class RunFileError(RuntimeError):
    """A problem with a file or folder selfsup writes, in one line naming it and what to do."""


# ------------------------------------------------------------------ folders

def is_run(folder: str | Path) -> bool:
    """True when ``folder`` was made by selfsup (it carries the marker file)."""
    m = Path(folder) / MARKER
    return m.is_file() and not m.is_symlink()


def create(folder: str | Path, kind: str) -> Path:
    """Make ``folder`` (and its parents) a selfsup folder of ``kind``: the marker is written
    first. An existing non-empty folder without the marker is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFileError(f"{folder} is a file, not a folder; choose another output folder")
    # a folder holding only the lock and a killed marker write is as good as empty
    ours = {LOCK} | {p.name for p in folder.glob(f".{MARKER}.tmp-*")} if folder.is_dir() else {}
    if folder.is_dir() and not is_run(folder) and any(
            p.name not in ours for p in folder.iterdir()):
        raise RunFileError(f"{folder} is not empty and was not made by selfsup; choose another "
                           f"output folder (nothing in it was changed)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFileError(f"cannot create {folder}: {e.strerror or e}; choose another output "
                           f"folder") from None
    if not is_run(folder):
        from . import __version__

        for p in folder.glob(f".{MARKER}.tmp-*"):
            p.unlink()

        write_json(folder / MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "selfsup_version": __version__, "pid": os.getpid()})
    return folder


def subdir(folder: str | Path, name: str) -> Path:
    """``folder/name`` as a real sub-folder (created if missing); a symbolic link there is
    refused, so nothing is ever written outside ``folder`` through it."""
    p = Path(folder) / name
    if p.is_symlink():
        raise RunFileError(f"{p} is a symbolic link; selfsup writes only inside its own folders: "
                           f"remove the link and re-run")
    p.mkdir(parents=True, exist_ok=True)
    return p


def remove(folder: str | Path, keep: tuple[str, ...] = (LOCK,)) -> None:
    """Delete a selfsup folder's contents (``--overwrite``). Only a folder carrying the marker;
    the lock file (held by the caller) stays. Links are removed, never followed."""
    folder = Path(folder)
    if not is_run(folder):
        raise RunFileError(f"{folder} was not made by selfsup (no {MARKER} marker); --overwrite "
                           f"replaces only selfsup's own folders: choose another output folder")
    for p in folder.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def clean_temporaries(folder: str | Path, recurse: tuple[str, ...] = ("checkpoints",)) -> list[str]:
    """Remove the temporary files of killed writes (call under the lock). Returns their names."""
    folder, gone = Path(folder), []
    for d in (folder, *(folder / r for r in recurse)):
        if not d.is_dir() or d.is_symlink():
            continue
        for p in d.iterdir():
            if _TMP.fullmatch(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                gone.append(str(p.relative_to(folder)))
    return gone


def is_temporary(name: str) -> bool:
    return bool(_TMP.fullmatch(name))


# ------------------------------------------------------------------ lock

def lock(folder: str | Path) -> None:
    """Hold ``folder``'s lock until ``unlock`` or the end of the process. A second process on
    the same folder gets a clear error at once (no waiting, no second writer)."""
    import fcntl

    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        return
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise RunFileError(f"cannot lock {folder} ({path.name}: {e.strerror or e}); remove "
                           f"{path} if it is a link, or choose another output folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFileError(f"{folder} is in use by another selfsup process (pid {other}); wait "
                           f"for it to finish, or choose another output folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = fd


def unlock(folder: str | Path) -> None:
    fd = _held.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)           # closing the descriptor releases the flock


@contextlib.contextmanager
def locked(folder: str | Path):
    """``with locked(folder):`` hold the lock for the block (re-entrant within one process)."""
    key = str(Path(folder).resolve())
    mine = key not in _held
    lock(folder)
    try:
        yield
    finally:
        if mine:
            unlock(folder)


# ------------------------------------------------------------------ writing

def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fresh(tmp: Path) -> None:
    """Clear a leftover temporary file (or a link planted under its name)."""
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    elif tmp.is_dir():
        shutil.rmtree(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """``with atomic_path(p) as tmp: library.save(..., tmp)``: the file appears at ``p`` only
    when the block ends without error (flushed to disk, renamed over ``p``; a link at ``p`` is
    replaced, not followed). On error the temporary file is removed and ``p`` is unchanged."""
    path = Path(path)
    if path.parent.is_symlink():
        raise RunFileError(f"{path.parent} is a symbolic link; selfsup writes only inside its own "
                           f"folders: remove the link and re-run")
    tmp = _tmp_name(path)
    _fresh(tmp)
    try:
        yield tmp
        if tmp.is_dir():      # a library that writes a folder: rename the folder
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        else:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            _fresh(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8", "surrogateescape"))


def write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def open_append(path: str | Path):
    """A text file opened for appending, never through a link (an append-only log)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise RunFileError(f"{path}: cannot open for appending ({e.strerror or e}); if it is a "
                           f"symbolic link, remove it and re-run") from None
    return os.fdopen(fd, "a")


# ------------------------------------------------------------------ reading

def read_text(path: str | Path, what: str = "", fix: str = "") -> str:
    path = Path(path)
    try:
        st = os.lstat(path)     # a link is not followed: selfsup reads only its own files
        if stat.S_ISLNK(st.st_mode):
            raise RunFileError(f"{path} is a symbolic link; selfsup reads and writes only its own "
                               f"files: remove the link and re-run")
        if not stat.S_ISREG(st.st_mode):
            raise RunFileError(f"{path} is not a regular file; {fix or 'remove it and re-run'}")
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise RunFileError(f"{path}: missing{' (' + what + ')' if what else ''}; "
                           f"{fix or 're-create it by re-running the command'}") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot read ({e.strerror or e}); "
                           f"{fix or 're-run the command'}") from None


def read_json(path: str | Path, what: str = "", fix: str = ""):
    """The JSON in ``path``, or one clear line when it is missing, empty or damaged."""
    text = read_text(path, what, fix)
    try:
        if not text.strip():
            raise ValueError("empty file")
        return json.loads(text)
    except ValueError as e:
        raise RunFileError(f"{path} is damaged ({str(e).splitlines()[0][:80]}; a run killed "
                           f"while writing it?); {fix or 'delete it, or re-run with --overwrite'}"
                           ) from None


def read_jsonl(path: str | Path) -> tuple[list[dict], int]:
    """The rows of an append-only JSON-lines log and how many lines were dropped: a torn last
    line (killed or out of disk mid-write) and any line that is not a JSON object."""
    path = Path(path)
    if not path.exists():
        return [], 0
    rows, dropped = [], 0
    for line in read_text(path).splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            dropped += 1
    return rows, dropped


def warn(msg: str) -> None:
    print(f"selfsup: {msg}", file=sys.stderr)
