"""Training checkpoints: the sharded train state plus every process's own data-iterator state.

One orbax step directory holds `state/` (params, optimizer, step; written by all processes, each
its shards) and `data/process_{i}-of-{n}.json` (each process's iterator position). orbax's
`JsonSave` writes from the primary process only, so every process would restore process 0's
position; `ProcessJsonHandler` writes one file per process instead (as grain's own handler does
for grain iterators, which our `TrainData` is not).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jz3_jax.errors import UserError
from jz3_jax.runtime.paths import absolute


class CheckpointMismatch(UserError):
    """A checkpoint this run cannot resume (written by a run with another number of processes)."""


def _process_file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class ProcessJsonHandler(ocp.CheckpointHandler):
    """Saves and restores one JSON document per process (`ProcessJsonSave` / `ProcessJsonRestore`)."""

    def save(self, directory: epath.Path, args: "ProcessJsonSave") -> None:
        _process_file(epath.Path(directory)).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: "ProcessJsonRestore | None" = None) -> Any:
        directory = epath.Path(directory)
        path = _process_file(directory)
        if not path.exists():
            written = sorted(p.name for p in directory.glob("process_*.json"))
            raise CheckpointMismatch(f"checkpoint {directory.parent} has no data state for this process ({path.name}); "
                                     f"it holds {written}: resume with the number of processes that wrote it")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass


def checkpoint_manager(directory: epath.Path, keep: int) -> ocp.CheckpointManager:
    """An async orbax manager over `directory` (local or gs://) keeping the last `keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
    return ocp.CheckpointManager(absolute(directory), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict) -> None:
    """Start saving `state` (asynchronously) and this process's `data_state` as step `step`."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ProcessJsonSave(data_state)))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, abstract_state: dict) -> tuple[dict, dict]:
    """(train state in the shardings of `abstract_state`, this process's data state) of `step`."""
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             data=ProcessJsonRestore()))
    return restored["state"], restored["data"]
