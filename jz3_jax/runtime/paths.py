"""Paths of run directories: local paths or URLs (`gs://bucket/dir`), through `etils.epath`.

All run-directory paths go through epath, so `run_dir=gs://bucket/x` stays a URL through stage
directories, checkpoints, shards and reports (a `pathlib.Path` would fold `gs://` to `gs:/`).
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath Path (a URL such as gs://bucket/x keeps its scheme)."""
    return epath.Path(path)


def is_local(path: str | os.PathLike) -> bool:
    """Whether `path` is on this machine's file system (not a gs:// or other URL)."""
    return "://" not in os.fspath(path)


def stage_dir(run_dir: str | os.PathLike, stage: str) -> epath.Path:
    """`run_dir/stage` (outputs of one stage)."""
    return as_path(run_dir) / stage


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Open a temp file beside `path` for text writing; on success rename it to `path`.

    Readers see the old file (or none) or the new one whole, never a part. On an exception the
    temp file is removed and `path` keeps its old content. Local files are fsynced before the
    rename; on object stores (gs://) the object appears whole when its upload completes.
    """
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            yield f
            f.flush()
            if is_local(path):
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def absolute(path: epath.Path) -> epath.Path:
    """An absolute form of `path` (URLs are absolute already; `Path.absolute` would mangle them)."""
    return path.absolute() if is_local(path) else path


def local_mirror(path: epath.Path) -> epath.Path:
    """Where to keep files that need a local file system (log files, TensorBoard events) when `path`
    is a URL: the same bucket path under the system's temp directory; `path` itself when local."""
    if is_local(path):
        return path
    import tempfile

    scheme, _, rest = os.fspath(path).partition("://")
    return epath.Path(tempfile.gettempdir()) / "jz3_jax" / scheme / rest
