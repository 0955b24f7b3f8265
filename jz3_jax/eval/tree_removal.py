"""Deleting a directory tree of any depth, safely, for the sandbox's host-side clean-up.

`shutil.rmtree` recurses (RecursionError on a 3,000-deep tree a program can build) and a program
may leave directories unreadable or swap in symlinks; this walks iteratively and never follows one.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from typing import Iterator


def remove_tree(path: str | os.PathLike) -> None:
    """Delete `path` and everything under it at any depth, without recursion or following symlinks:
    each directory's entries are moved up into `path` until it is flat (shutil.rmtree raises
    RecursionError on a 3,000-deep tree)."""
    path = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
    except FileNotFoundError:
        return
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    names = itertools.count()
    try:
        while entries := os.listdir(top):
            for name in entries:
                _remove_entry(top, name, names)
    finally:
        os.close(top)
    os.rmdir(path)


def _remove_entry(top: int, name: str, names: Iterator[int]) -> None:
    """Remove `name` in directory `top`, or move its children up into `top` and remove it."""
    if not _is_dir(top, name):
        os.unlink(name, dir_fd=top)
        return
    try:
        os.rmdir(name, dir_fd=top)
        return
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
    _make_ours(top, name)
    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    try:
        for child in os.listdir(inner):
            if _is_dir(inner, child):
                _make_ours(inner, child)  # moving a directory rewrites its "..": it must be writable
            os.rename(child, _free_name(top, names), src_dir_fd=inner, dst_dir_fd=top)
    finally:
        os.close(inner)
    os.rmdir(name, dir_fd=top)


def _free_name(top: int, names: Iterator[int]) -> str:
    """A name not yet taken in directory `top`."""
    for n in names:
        try:
            os.stat(f".jz3_rm_{n}", dir_fd=top, follow_symlinks=False)
        except FileNotFoundError:
            return f".jz3_rm_{n}"
    raise AssertionError("unreachable: `names` is endless")


def _is_dir(parent: int, name: str) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)


def _make_ours(parent: int, name: str) -> None:
    """Mode 0700 for directory `name` (the program may have made it unreadable), set through its
    own handle: a chmod by path could follow a symlink another process swapped in."""
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        os.chmod(f"/proc/self/fd/{handle}", 0o700)
    finally:
        os.close(handle)
