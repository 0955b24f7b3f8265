"""Shared run directories: on a pod every host writes into one run directory, so a multi-process
stage starts by checking that all processes really see one storage (`check_shared`)."""

from __future__ import annotations

import uuid

import jax
from etils import epath

from jz3_jax.errors import UserError
from jz3_jax.runtime import peers

TOKEN_NAME = ".shared-storage-check"


class RunDirError(UserError):
    """The run directory cannot serve this job (e.g. not shared between the hosts of a pod)."""


def check_shared(directory: epath.Path, run_dir: str) -> None:
    """All processes must see the same `directory`: process 0 writes a token there, every process
    reads it back. Otherwise every process raises RunDirError (the check is agreed)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    token_file = directory / TOKEN_NAME
    error = None
    if jax.process_index() == 0:
        token = uuid.uuid4().hex
        try:
            directory.mkdir(parents=True, exist_ok=True)
            token_file.write_text(token)
            client.key_value_set("jz3/run_dir_token", token)
        except OSError as e:
            error = RunDirError(f"cannot write to run_dir {run_dir!r} ({e})")
    peers.agree("run_dir written", error)
    token = client.blocking_key_value_get("jz3/run_dir_token", 60_000)
    try:
        seen = token_file.read_text().strip() if token_file.exists() else None
    except OSError:
        seen = None
    error = None
    if seen != token:
        error = RunDirError(
            f"run_dir {run_dir!r} is not shared: process {jax.process_index()} does not see the file process 0 "
            f"wrote to {directory}. On a pod, run_dir must be storage every host sees (a GCS bucket such as "
            "gs://bucket/runs/x, or a Filestore/NFS mount at the same path on every host)")
    peers.agree("run_dir shared", error)
    if jax.process_index() == 0:  # every process has read it
        token_file.unlink()
