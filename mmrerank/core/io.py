"""File helpers: atomic writes (files and folders, umask applied, fsynced), the cache root and cache keys.

Pickles from outside are read by `mmrerank.core.pickles`."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (`/proc/self/status`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # os.umask can only be read by setting it; the old value is back one call later
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk, so a rename that publishes it never outlives its content in a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_space(path: Path) -> OSError:
    """For a full disk (ENOSPC), an error naming `path` and the free space left there (the bare `No space
    left on device` names nothing)."""
    return OSError(errno.ENOSPC, f"No space left on device while writing {path} ({free_bytes(path) / 1e6:.1f} MB "
                   "free there); free some space or point $MMRERANK_CACHE / the output at another disk")


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse, before the work that would fill it, to write `needed` bytes of `what` at `path` when the disk holds
    fewer (with a 10 % margin): a full disk found after a training loses the training."""
    free = free_bytes(path)
    if free < 1.1 * needed:
        raise OSError(errno.ENOSPC, f"not enough space for {what} at {path}: about {needed / 1e6:.1f} MB needed, "
                      f"{free / 1e6:.1f} MB free; free some space or point $MMRERANK_CACHE / the output elsewhere")


def _owner_tag() -> str:
    """`<host>-<pid>`: put in temporary names so a later run can tell a dead writer's leftovers from a live one's."""
    return f"{socket.gethostname().replace('.', '_').replace('-', '_')}-{os.getpid()}"


STALE_AGE_S = 24 * 3600  # a leftover of another host (whose pid cannot be checked) older than this is swept


def _owner_dead(name: str) -> bool:
    """Is the writer named in a temporary name (`.<final>.<host>-<pid>.<random>`) gone? Only decidable on this
    host; a name without a tag (older versions) counts as not known dead."""
    match = re.search(r"\.([^.]+)-(\d+)\.[^.]*$", name.removesuffix(".tmp"))
    if match is None or match.group(1) != _owner_tag().rsplit("-", 1)[0]:
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_leftovers(final: str | Path, max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the temporary files and folders a killed writer left beside `final` (`.<name>.*`): those whose
    writer (on this host) is dead, and any older than `max_age_s` (`_swap_folder`'s backups excepted). Returns
    what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed, now = [], time.time()
    # only names this module makes (`tempfile`'s 8 random characters, with or without the owner's tag): a user's
    # own `.model.bak` is never touched; `_swap_folder`'s `.old` backups neither (after a crash mid-swap, the only
    # old copy)
    ours = re.compile(rf"\.{re.escape(final.name)}\.([A-Za-z0-9_]+-\d+\.)?[a-z0-9_]{{8}}(\.tmp)?")
    for path in final.parent.glob(f".{final.name}.*"):
        if not ours.fullmatch(path.name):
            continue
        try:
            old = now - path.lstat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if old or _owner_dead(path.name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def folder_lock(final: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `final` (a file under `<parent>/.locks/`) for the block: one process builds a
    cache entry, a second waits (saying whom for) and then finds it built. Freed when the holder exits or is
    killed (`flock`)."""
    final = Path(final)
    locks = final.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{final.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"waiting for {holder}, which is building {what or final}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it vanishes.

    Readers therefore see either the old file or the complete new one, never a half-written file. The new file
    gets the mode a plain `open` would give it (0o666 less the umask; `mkstemp` alone makes it 0o600), and it is
    fsynced before the rename and its folder after, so after a crash `path` holds the old or the whole new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise _no_space(path) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, itself included."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(root)


def _swap_folder(new: Path, final: Path) -> None:
    """Move folder `new` to `final` (same parent), replacing the folder there as a whole; renames only.

    Replacing takes two renames, old -> a hidden backup beside `final`, then new -> `final`; the backup is
    deleted last. A crash between the two leaves no folder at `final` and the old one whole in
    `.<name>.*.old/folder`, never a mix of both. Meant for one writer at a time.

    Raises:
        NotADirectoryError: `final` exists and is not a folder.
    """
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder; refusing to replace it with one")
    try:
        os.rename(new, final)  # nothing at `final` yet (or an empty folder, which POSIX rename replaces)
        return
    except OSError:
        if not final.is_dir():
            raise
    backup = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
    os.rename(final, backup / "folder")
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(backup / "folder", final)  # put the old folder back
        backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside `path` to write into; on success it takes `path`'s place, on error it vanishes.

    A folder already at `path` is replaced as a whole (nothing of it survives, see `_swap_folder` for the two
    renames and the brief moment when neither folder is at `path`), so readers never load a mix of the old and the
    new contents, and an exception while writing leaves the old folder untouched. The folder gets the mode a plain
    `mkdir` would give it (umask applied), and all of it is fsynced before the swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    with _scratch_folder(path, suffix=".tmp") as tmp:
        yield tmp
        _fsync_tree(tmp)
        _swap_folder(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def _scratch_folder(path: Path, suffix: str = "") -> Iterator[Path]:
    """A new empty folder beside `path`, named for `sweep_leftovers` (owner tag), with `mkdir`'s mode; removed if
    the block fails, and a full disk (ENOSPC) then named with `path`."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=suffix))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0o700
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise _no_space(path) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What a hub repository id can be (huggingface_hub's rule): one `name` or `owner/name` of letters, digits, `-_.`
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml", ".yml", ".parquet", ".jsonl",
                  ".pkl", ".tar", ".zip", ".gz", ".txt", ".tsv", ".csv", ".trec"}


def looks_local(name: str | Path) -> bool:
    """Is `name` a local path rather than a hub id? Decided as transformers' `from_pretrained` does, made explicit:
    an existing file or folder is local; so is anything a hub id cannot be: a name starting with `/`, `./`, `../`
    or `~`, holding more than one `/` or a backslash, or ending in a file extension (`.ckpt`, `.safetensors`,
    `.json`, ...). Everything else (`org/name`, `name`) is a hub id."""
    text = str(name)
    if Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~", ".\\")):
        return True
    return not _HUB_ID.match(text) or Path(text).suffix.lower() in _FILE_SUFFIXES


def require_path(value: str | Path, key: str, what: str = "file or folder", fix: str = "") -> Path:
    """`value` as a `Path`, or `FileNotFoundError` naming the argument `key`, the path and `fix`, before any work
    (a mistyped path must never be created, trained into or recorded as the user's model)."""
    path = Path(value).expanduser()
    if not path.exists():
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        near = f" ({parent} exists, {path.absolute().relative_to(parent)} does not)" if parent else ""
        raise FileNotFoundError(f"{key}: no {what} at {value}{near}" + (f"; {fix}" if fix else ""))
    return path


def cache_root() -> Path:
    """Where generated data is cached: `$MMRERANK_CACHE`, or `~/.cache/mmrerank`."""
    return Path(os.environ.get("MMRERANK_CACHE", Path.home() / ".cache" / "mmrerank"))


def key_digest(key: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able cache key (dict order does not matter), for cache file names."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


def generate_folder_once(final: Path, marker: str, generate: Callable[[Path], None]) -> Path:
    """Return `final`, first filling it with `generate(tmp_folder)` unless `final / marker` exists.

    The folder is generated beside its final place (with `mkdir`'s mode, fsynced) and renamed into it in one
    step, so a reader never sees a half-written folder; if another process finished the same folder first, its
    (identical) copy is kept. A folder at `final` without `marker` (left half-written by other code) is replaced.
    """
    final = Path(final)
    sweep_leftovers(final)  # a killed generator's temporary folder, whether or not the folder is whole by now
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(final):  # one process generates; a second waits here, then finds the marker
        if (final / marker).exists():
            return final
        with _scratch_folder(final) as tmp:
            generate(tmp)
            _fsync_tree(tmp)
            try:
                tmp.rename(final)
            except OSError:
                if (final / marker).exists():  # another process finished it meanwhile
                    shutil.rmtree(tmp)
                else:  # a half-written folder is in the way
                    _swap_folder(tmp, final)
    _fsync_dir(final.parent)
    return final


CHECKSUMS = "checksums.json"


def folder_checksums(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under `folder` (by path relative to it), the record `CHECKSUMS` itself excluded."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path, record: str | Path | None = None) -> None:
    """Record `folder_checksums(folder)` in `record` (default `folder/checksums.json`), for `damaged_files`."""
    atomic_write_json(record or Path(folder) / CHECKSUMS, {"sha256": folder_checksums(folder)})


def damaged_files(folder: str | Path, record: str | Path | None = None) -> list[str] | None:
    """The files of `folder` that are missing or differ from their recorded checksums (truncated, a flipped bit,
    edited), `[]` when all match, None when there is no record to check against."""
    record = Path(record or Path(folder) / CHECKSUMS)
    if not record.is_file():
        return None
    try:
        expected = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        return [record.name]
    folder = Path(folder)
    return [name for name, digest in expected.items()
            if not (folder / name).is_file() or _sha256(folder / name) != digest]
