"""Writing results: one rule for every file and folder the tool writes.

An existing output is refused unless ``force``; it is written into a temporary sibling and renamed into place
(a folder is swapped in one step), so a crash, a full disk or a signal leaves the old result or none, never a
half-written one; and an output that is (or holds) an input of the same command is refused.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Union

from ovrange.errors import OutputError
from ovrange.runtime import last_line

Inputs = Iterable[Union[str, os.PathLike, None]]


def check_not_input(output: str | os.PathLike, inputs: Inputs) -> None:
    """OutputError when ``output`` is an input of the same command, resolves to one (a symlink, a hard link: the
    same inode) or is a folder that holds one (replacing it would delete the input)."""
    output = Path(output)
    real = os.path.realpath(output)
    try:
        identity = _identity(output)
    except OSError:
        identity = None
    for item in inputs:
        if item is None:
            continue
        source = os.path.realpath(item)
        same = source == real or source.startswith(real.rstrip(os.sep) + os.sep)
        if not same and identity is not None:
            try:
                same = _identity(Path(item)) == identity
            except OSError:
                same = False
        if same:
            raise OutputError(f"output {output} is (or holds) the input {item} of this command: choose another "
                              "output path")


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def prepare_output_dir(out_dir: str | os.PathLike, force: bool, inputs: Inputs = ()) -> Path:
    """Check, before any long work, that ``out_dir`` may be written: it must not exist unless ``force``, must not
    be or hold an input, and the nearest existing folder above it must be writable. Creates nothing (a failed run
    leaves no empty folder)."""
    out_dir = Path(out_dir)
    if _exists(out_dir) and not force:
        raise OutputError(f"output already exists: {out_dir} (use --force to overwrite)")
    if _exists(out_dir) and not out_dir.is_dir():
        raise OutputError(f"output path exists and is not a directory: {out_dir}")
    check_not_input(out_dir, inputs)
    _check_creatable(out_dir.parent)
    return out_dir


def check_output_file(path: str | os.PathLike, *, force: bool = False, inputs: Inputs = ()) -> Path:
    """Check, before any long work, that the file ``path`` may be written: it must not exist unless ``force``,
    must not be a folder nor an input, and its folder must be creatable."""
    path = Path(path)
    if _exists(path) and (path.is_dir() and not path.is_symlink()):
        raise OutputError(f"output file is a directory: {path}")
    if _exists(path) and not force:
        raise OutputError(f"output already exists: {path} (use --force to overwrite)")
    check_not_input(path, inputs)
    _check_creatable(path.parent)
    return path


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)  # a dangling symlink exists too: replacing it is overwriting
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # ENAMETOOLONG, EACCES on a parent: Path.exists() only hides ENOENT & co.
        raise OutputError(f"cannot use output path {path}: {exc.strerror}") from exc


def _check_creatable(folder: Path) -> None:
    """The nearest existing ancestor of ``folder`` must be a writable directory."""
    existing = folder
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {folder}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output directory is not writable: {existing}")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created (deepest last), to undo on failure."""
    missing = [p for p in (folder, *folder.parents) if not _exists(p)][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {folder}: {exc.strerror}") from exc
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (someone else wrote there) or gone


def write_dir_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None], force: bool = False,
                         inputs: Inputs = ()) -> Path:
    """Call ``write(tmp_dir)`` to fill a temporary folder, then move it to ``out_dir`` in one rename.

    On any exception (or signal) the temporary folder, and any parent folder created for it, is removed and an
    existing ``out_dir`` is left untouched. Without ``force`` the existence check and the move are one step: a
    rename fails on an existing non-empty folder, so of two concurrent runs only one succeeds. With ``force`` the
    new folder and the old swap places in one step (:func:`replace_dir`): a reader always sees a complete one.
    Temporaries left by killed runs (their process is gone) are cleaned up first.
    """
    out_dir = Path(out_dir)
    if out_dir.parent.is_dir():
        clean_stale(out_dir)
    out_dir = prepare_output_dir(out_dir, force, inputs)
    created = _make_parents(out_dir.parent)
    tmp = None
    try:
        tmp = make_temp_dir(out_dir)
        try:
            write(tmp)
        except (OSError, RuntimeError) as exc:  # disk full, quota, ...: ov.save_model raises RuntimeError
            raise OutputError(f"cannot write {out_dir}: {last_line(exc)}") from exc
        replace_dir(tmp, out_dir, force)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return out_dir


def make_temp_dir(out_dir: Path) -> Path:
    """An empty ``.<name>.<pid>.*.tmp`` folder beside ``out_dir`` (the pattern :func:`clean_stale` knows)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
    except OSError as exc:
        raise OutputError(f"cannot write {out_dir}: {exc.strerror}") from exc
    return tmp


def replace_dir(tmp: Path, out_dir: Path, force: bool) -> None:
    """Move the complete folder ``tmp`` to ``out_dir``. An existing ``out_dir`` is refused unless ``force``; with
    ``force`` the two swap in one step (Linux ``renameat2(RENAME_EXCHANGE)``) and the old one, now at ``tmp``, is
    deleted. Two runs replacing one folder at once both succeed; the later swap wins."""
    for _ in range(16):
        try:
            os.rename(tmp, out_dir)  # POSIX: fails with ENOTEMPTY/EEXIST when out_dir is a non-empty folder
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputError(f"cannot write {out_dir}: {exc.strerror}") from exc
            if not force:
                raise OutputError(f"output already exists: {out_dir} (written by another run meanwhile; use "
                                  "--force to overwrite)") from exc
        try:
            swapped = _exchange(tmp, out_dir)
        except FileNotFoundError:
            continue  # another run moved out_dir away meanwhile: try the plain rename again
        except OSError as exc:
            raise OutputError(f"cannot write {out_dir}: {exc.strerror}") from exc
        if swapped:
            shutil.rmtree(tmp, ignore_errors=True)  # the old result
            return
        if _swap_by_two_renames(tmp, out_dir):
            return
    raise OutputError(f"cannot write {out_dir}: other runs keep replacing it")


def _swap_by_two_renames(tmp: Path, out_dir: Path) -> bool:
    """Where no atomic exchange exists: move the old aside, the new in (a killed run's old folder is restored by
    :func:`clean_stale`). False when another run got in between (the caller tries again)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
    try:
        os.rename(out_dir, old)
    except FileNotFoundError:
        old.rmdir()
        return False
    try:
        os.rename(tmp, out_dir)
    except OSError:
        shutil.rmtree(old, ignore_errors=True)
        return False
    shutil.rmtree(old, ignore_errors=True)
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux >= 3.15, glibc >= 2.28); False where the system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temporaries of ``out_dir`` left by killed runs (``.<name>.<pid>.*.tmp``, ``.<name>.old-<pid>-*``).

    A killed run's previous result (``.old-<pid>``) is moved back when ``out_dir`` is missing, never deleted.
    Returns the paths removed or restored.
    """
    done = []
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*"):
        match = re.fullmatch(rf"\.{re.escape(out_dir.name)}\.(?:(\d+)\..*\.tmp|old-(\d+)(?:-.*)?)", path.name)
        if not match or _alive(int(match[1] or match[2])):
            continue
        if match[2] and not out_dir.exists():
            os.rename(path, out_dir)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(path)
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


Content = Union[str, bytes, Callable[[BinaryIO], None]]


def write_file_atomically(path: str | os.PathLike, content: Content, *, force: bool = False,
                          inputs: Inputs = ()) -> Path:
    """Write one file: ``content`` (text, bytes, or a function writing to a binary handle) goes to a temporary
    sibling, which then takes the place of ``path``. An existing ``path`` is refused unless ``force`` (checked
    again at the last step: a file another run wrote meanwhile is not overwritten), and an input of the command
    (``inputs``) never is. A failure leaves the old file, or none, and no temporary (nor a folder made for it)."""
    path = check_output_file(path, force=force, inputs=inputs)
    created = _make_parents(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o666 & ~_umask())
        _put_file(Path(tmp), path, force)
    except OSError as exc:
        _discard(tmp, created)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(tmp, created)
        raise
    return path


def _put_file(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails on an existing path: the check and the write are one step
    except FileExistsError:
        raise OutputError(f"output already exists: {path} (written by another run meanwhile; use --force to "
                          "overwrite)") from None
    except OSError:  # a filesystem without hard links
        if _exists(path):
            raise OutputError(f"output already exists: {path} (use --force to overwrite)") from None
        os.rename(tmp, path)
        return
    tmp.unlink()


def _discard(tmp: str | None, created: list[Path]) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
    _remove_empty(created)
