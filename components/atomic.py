"""Atomic, durable writes of files and folders: the one module every writer of an output uses.

A stage killed half-way leaves the last good output, never a torn one (DESIGN.md), and what a
user or a web server reads gets the permissions any other program of theirs would give it.

Files (:func:`atomic_write`, :func:`write_text_atomic`, :func:`write_json_atomic`)
    The bytes go to ``.<name>.<random>.tmp`` beside the target (same folder, so the rename never
    crosses file systems), which is flushed to disk (fsync), renamed onto the target, and then the
    folder is fsynced so that the rename itself survives a power cut.

Folders (:func:`atomic_folder`; :func:`begin_folder` + :func:`commit_folder` when several
processes fill one folder)
    The new version is built in ``<final>.building`` beside the target, fsynced, and swapped in by
    two renames: final -> ``<final>.old``, then staging -> final; ``.old`` is deleted only after
    that. So the old version stays complete until the new one is in place. A process killed
    between the two renames leaves ``<final>.old`` complete and no final: the next swap, and
    :func:`recover_folder` (which readers call), rename it back.

Modes
    Files come out ``0o666`` and folders ``0o777`` less the user's umask, as ``open()`` and
    ``mkdir`` make them. ``tempfile.mkstemp`` would give 0600 and ``mkdtemp`` 0700 (the rename
    keeps them), so the temporary file is created with ``os.open(..., 0o666)`` and the staging
    folder with ``os.mkdir``: the kernel applies the umask (and a folder's default ACL) itself.
    The mode it gave is read back from the new file and restored after the caller's writer ran,
    in case a library deleted and recreated the file. Before a folder is swapped in, every file
    and folder in it gets those modes too (a probe file shows them): safetensors, for one,
    writes 0600. The umask is never read with ``os.umask()``: that call sets the mask of the
    whole process, and for that moment every file another thread creates (Prefect, MLflow and
    torch run threads here) would get mode 0666.

Concurrency
    Swaps and recoveries take an exclusive ``flock`` on the parent folder, so a reader's
    :func:`recover_folder` never runs between a writer's two renames. Two writers of the same
    folder at once are not supported (they would share ``<final>.building``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: swaps run without the parent-folder lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "STAGING_SUFFIX", "OLD_SUFFIX", "DELETING_SUFFIX", "TMP_SUFFIX",
    "atomic_write", "write_text_atomic", "write_json_atomic", "rename_atomic",
    "atomic_folder", "begin_folder", "commit_folder", "recover_folder", "remove_folder", "staging_path",
]

TMP_SUFFIX = ".tmp"  # a file being written (ingest's cleanup and tests look for ".*.tmp")
STAGING_SUFFIX = ".building"  # a folder being built
OLD_SUFFIX = ".old"  # the previous version of a folder, kept complete until the new one is in
DELETING_SUFFIX = ".deleting"  # a folder being removed: out of sight before the first file goes


# ---------------------------------------------------------------------------------------------
# Durability


def _fsync(path: str | Path, *, directory: bool = False) -> None:
    """Flush ``path`` to disk (a file's data, or a folder's entries after a rename)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some file systems cannot fsync a folder; the rename is still atomic, only not yet durable.
        if not directory or err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EPERM):
            raise
    finally:
        os.close(fd)


def _umask_modes(folder: Path) -> tuple[int, int]:
    """(file mode, folder mode) that the kernel gives new entries of ``folder`` (umask, default ACL)."""
    probe = folder / f".mode-probe-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        file_mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)
    os.mkdir(probe, 0o777)
    try:
        folder_mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
    return file_mode, folder_mode


def _settle_tree(folder: Path) -> None:
    """Before ``folder`` is renamed into sight: the umask's modes on everything, everything on disk.

    Not every library honours the umask (safetensors writes 0600 through a temporary file of its
    own), so each file gets 0o666 less the umask (0o777 less it when it had an x bit) and each
    folder 0o777 less it.
    """
    file_mode, folder_mode = _umask_modes(folder)
    for dirpath, _dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            current = stat.S_IMODE(os.stat(path).st_mode)
            wanted = folder_mode if current & 0o111 else file_mode
            if current != wanted:
                os.chmod(path, wanted)
            _fsync(path)
        if stat.S_IMODE(os.stat(dirpath).st_mode) != folder_mode:
            os.chmod(dirpath, folder_mode)
        _fsync(dirpath, directory=True)


# ---------------------------------------------------------------------------------------------
# Files


def _create_temporary(path: Path, suffix: str) -> tuple[Path, int]:
    """A new empty file beside ``path`` and the mode the kernel gave it (0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name} (100 names taken); "
                          f"remove the stale .{path.name}.*{suffix} files there")


def atomic_write(path: str | Path, write: Callable[[Path], object], *, suffix: str = TMP_SUFFIX,
                 keep_mode: bool = False) -> Path:
    """Call ``write(tmp)``, then put ``tmp`` in place of ``path`` atomically and durably.

    Args:
        path (str | Path): the file to write or replace; its folder is created when missing.
        write (Callable[[Path], object]): writes the content to the path it is given (an empty
            file that already exists; the writer may truncate, replace or delete and recreate it).
        suffix (str, default ".tmp"): how the temporary file's name ends, for libraries that pick
            a format from the extension (e.g. ".tmp.gpkg").
        keep_mode (bool, default False): give the new file the permission bits of the file it
            replaces (when there is one) instead of 0o666 less the umask.

    Returns:
        Path: ``path``. When ``write`` raises, ``path`` is untouched and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temporary(path, suffix)
    try:
        write(tmp)
        if keep_mode and path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
        try:
            current = stat.S_IMODE(tmp.stat().st_mode)
        except FileNotFoundError:
            raise FileNotFoundError(f"writing {path}: the writer removed {tmp} and wrote nothing there; it must "
                                    "write to the path it is given") from None
        if current != mode:
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)
    return path


def write_text_atomic(path: str | Path, text: str, *, encoding: str | None = None, keep_mode: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); ``encoding`` as ``Path.write_text``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding), keep_mode=keep_mode)


def write_json_atomic(path: str | Path, data: object) -> Path:
    """Pretty, key-sorted JSON (stable bytes for DVC metrics); dates and paths as strings."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def rename_atomic(source: str | Path, target: str | Path) -> Path:
    """Rename a finished file or folder onto ``target`` (same file system) and make the rename durable."""
    source, target = Path(source), Path(target)
    os.replace(source, target)
    _fsync(target.parent, directory=True)
    if source.parent != target.parent:
        _fsync(source.parent, directory=True)
    return target


# ---------------------------------------------------------------------------------------------
# Folders


def staging_path(final: str | Path) -> Path:
    """Where :func:`begin_folder` builds the next version of ``final``: ``<final>.building``."""
    final = Path(final)
    return final.with_name(final.name + STAGING_SUFFIX)


def _old_path(final: Path) -> Path:
    return final.with_name(final.name + OLD_SUFFIX)


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """An exclusive lock on ``parent`` (released when the descriptor closes)."""
    fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without flock (some NFS mounts): swaps still work, unguarded against readers
        yield
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _recover(final: Path) -> None:
    """Under the parent lock: put ``<final>.old`` back when a killed swap left no ``final``."""
    old = _old_path(final)
    if final.exists() or final.is_symlink() or not old.exists():
        return
    try:
        os.rename(old, final)
    except OSError as err:
        raise OSError(f"{final} is missing and {old} holds its last complete version, but it cannot be renamed "
                      f"back ({err}); rename it by hand: mv '{old}' '{final}'") from err
    _fsync(final.parent, directory=True)


def recover_folder(final: str | Path) -> Path | None:
    """Finish what a swap killed between its two renames left: ``<final>.old`` back to ``final``.

    Readers of a folder that :func:`atomic_folder` writes call this before reading it. It
    changes nothing when there is nothing to recover (then it only looks, so it works on a
    read-only copy too).

    Args:
        final (str | Path): the folder, e.g. models/pipeline.

    Returns:
        Path | None: ``final`` when it exists afterwards, else None.
    """
    final = Path(final)
    if not final.exists() and _old_path(final).exists():
        with _parent_lock(final.parent):
            _recover(final)
    return final if final.exists() else None


def begin_folder(final: str | Path) -> Path:
    """Recover ``final`` if needed, clear leftovers of killed runs and return a new, empty staging folder.

    Args:
        final (str | Path): the folder the staging folder will replace (need not exist).

    Returns:
        Path: ``<final>.building`` (mode 0o777 less the umask); fill it, then :func:`commit_folder`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(final)
    with _parent_lock(final.parent):
        _recover(final)
        # After _recover, a .old beside an existing final is the garbage of a finished swap.
        for leftover in (staging, _old_path(final), final.with_name(final.name + DELETING_SUFFIX)):
            _remove_tree(leftover)
        os.mkdir(staging)
    return staging


def _set_aside(final: Path) -> None:
    """First rename of a swap: the current version to ``<final>.old`` (still complete)."""
    os.rename(final, _old_path(final))


def _move_in(staging: Path, final: Path) -> None:
    """Second rename of a swap: the new version into sight."""
    os.rename(staging, final)


def commit_folder(staging: str | Path, final: str | Path) -> Path:
    """Swap a filled staging folder in place of ``final``; the old version is removed only after.

    Args:
        staging (str | Path): the folder :func:`begin_folder` returned, now complete.
        final (str | Path): the folder to (re)place.

    Returns:
        Path: ``final``. If the second rename fails, the old version is put back and the error raised.
    """
    staging, final = Path(staging), Path(final)
    if not staging.is_dir():
        raise FileNotFoundError(f"{staging}: no staging folder to swap in for {final}; "
                                "create it with components.atomic.begin_folder and fill it first")
    _settle_tree(staging)
    old = _old_path(final)
    with _parent_lock(final.parent):
        _recover(final)
        if final.exists():
            _remove_tree(old)
            _set_aside(final)
        try:
            _move_in(staging, final)
        except BaseException:
            if not final.exists() and old.exists():
                os.rename(old, final)
            raise
        _fsync(final.parent, directory=True)
    # Outside the lock: a large old version takes a while to delete, and nothing needs it now.
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Build the next version of folder ``final`` in a staging folder, then swap it in.

    Usage::

        with atomic_folder("data/samples") as staging:
            write_everything_into(staging)

    Args:
        final (str | Path): the folder to (re)place, e.g. models/pipeline.

    Yields:
        Path: the empty staging folder ``<final>.building``. On success it becomes ``final``
        (the old version stays complete until then); on an exception it is removed and
        ``final`` is untouched.
    """
    final = Path(final)
    staging = begin_folder(final)
    try:
        yield staging
        commit_folder(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_folder(path: str | Path) -> None:
    """Delete a folder so that it is never seen half-deleted: rename it out of sight, then delete.

    A run killed while deleting leaves ``<path>.deleting``, which :func:`begin_folder` of the
    same path (or the caller's own cleanup) removes later.
    """
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(path.name + DELETING_SUFFIX)
    _remove_tree(doomed)
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
