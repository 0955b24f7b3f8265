"""The feature job: the warmed-up model on this process's local devices fills feature stores.

The base model is loaded (or initialised) on a mesh over the local devices only, replicated, with
LoRA adapters attached; each warm-up epoch's adapters and Adam moments are loaded from its
`epoch_E.npz`. Micro-batches are split over the local devices along the batch. The loop never
waits on the device before dispatching the next micro-batch: the result of micro-batch i is fetched
and written while micro-batch i + 1 runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jz3_jax.checkpoint import load_model
from jz3_jax.influence.features import FeatureStore
from jz3_jax.influence.gradients import feature_fn
from jz3_jax.influence.inputs import Encoded, batch_arrays, plan_batches
from jz3_jax.model.lora import LoRAParam, add_lora
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

if TYPE_CHECKING:
    from jz3_jax.influence.config import SelectConfig
    from jz3_jax.influence.spec import SelectSpec


def local_mesh():
    """A mesh over this process's devices, all on the (data) batch axes: parameters replicated."""
    return build_mesh(MeshConfig(data=-1, fsdp=1, tensor=1), jax.local_devices())


class FeatureModel:
    """The reference model (base + LoRA) on each of this process's devices, and its jitted feature steps.

    Every device runs the same single-device program on its own rows of a micro-batch, dispatched
    one device after the other without waiting (no collectives). Under `shard_map` or `pmap`
    XLA compiles the backward pass differently from a single-device program and the rounding
    changes; this way a row's features are bitwise the same on any number of devices. The price
    is one compile per device (done on first use, in parallel threads)."""

    def __init__(self, spec: SelectSpec, lora: dict, adam: tuple[float, float, float] | None = None, model=None):
        """`model`: a base model already loaded with `local_mesh()` (else loaded from `spec.model`)."""
        s = spec.select
        self.mesh = local_mesh()
        if model is None:
            model, _ = load_model(spec.model, self.mesh, parse_rules(spec.mesh.rules), spec.seed)
        self.model_cfg = model.cfg
        add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"], spec.seed)
        self.graphdef, lora_state, self.frozen = nnx.split(model, LoRAParam, ...)
        self.local_devices = list(self.mesh.devices.flat)
        self.devices = len(self.local_devices)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._frozen_on = _per_device(self.frozen, self.local_devices)
        self.lora = jax.device_put(lora_state, self.replicated)
        self.moments = (self.lora, self.lora)
        self._refresh()
        # Rows per device come in multiples of `chunk` (at least 2: XLA:CPU multiplies a one-row
        # matrix on a matrix-vector path that rounds differently), so a row's features do not
        # depend on the micro-batch size either.
        self.chunk = max(2, s.grad_chunk)
        common = dict(k=s.proj_dim, seed=s.proj_seed, projection=s.projection, chunk=self.chunk)
        self._steps = {True: jax.jit(feature_fn(self.graphdef, adam=adam, **common)) if adam else None,
                       False: jax.jit(feature_fn(self.graphdef, adam=None, **common))}
        self._compiled: dict = {}
        self.pad_id = self.model_cfg.pad_token_id if self.model_cfg.pad_token_id is not None else 0

    def paths(self) -> list[str]:
        return lora_paths(self.lora)

    def set_arrays(self, params: list[np.ndarray], mu: list[np.ndarray] | None = None,
                   nu: list[np.ndarray] | None = None) -> None:
        """Replace the adapters (and Adam moments) with host arrays in the LoRA tree's leaf order."""
        put = lambda arrays: tree_from_arrays(self.lora, arrays, self.replicated)
        self.lora = put(params)
        self.moments = (put(mu), put(nu)) if mu is not None else (self.lora, self.lora)
        self._refresh()

    def _refresh(self) -> None:
        self._lora_on = _per_device(self.lora, self.local_devices)
        self._moments_on = [tuple(pair) for pair in zip(*(_per_device(m, self.local_devices) for m in self.moments))]

    def load_epoch(self, path: str, expected_paths: list[str]) -> None:
        """Adapters and Adam moments of one warm-up epoch (`epoch_E.npz`)."""
        self.set_arrays(*read_epoch(path, expected_paths, self.paths()))

    def _executables(self, adam: bool, shards: list[dict]) -> list:
        """The step compiled once per device for these shapes (compiles run in parallel threads)."""
        key = (adam, shards[0]["tokens"].shape)
        if key not in self._compiled:
            def compile_on(i):
                return self._steps[adam].lower(self._lora_on[i], self._frozen_on[i], self._moments_on[i],
                                               shards[i]).compile()

            with ThreadPoolExecutor(self.devices) as pool:
                self._compiled[key] = list(pool.map(compile_on, range(self.devices)))
        return self._compiled[key]

    def features(self, arrays: dict, adam: bool) -> list[jax.Array]:
        """Per-device [rows / devices, k] features of one micro-batch of host arrays (dispatched, not
        waited for; `fetch` brings them to the host in row order).

        The batch is padded with all-masked rows to a multiple of `chunk` rows per device."""
        rows = len(arrays["tokens"])
        unit = self.chunk * self.devices
        if rows % unit:
            extra = unit - rows % unit
            arrays = {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in arrays.items()}
        per = len(arrays["tokens"]) // self.devices
        shards = [{k: jax.device_put(v[i * per:(i + 1) * per], d) for k, v in arrays.items()}
                  for i, d in enumerate(self.local_devices)]
        steps = self._executables(adam, shards)
        outs = [steps[i](self._lora_on[i], self._frozen_on[i], self._moments_on[i], shards[i])
                for i in range(self.devices)]
        return Pending(outs, rows)


def tree_from_arrays(like, arrays: list[np.ndarray], sharding):
    """A tree shaped like `like` holding host `arrays` (in its leaf order), placed with `sharding`
    (one sharding or a matching tree of them)."""
    return jax.device_put(jax.tree.unflatten(jax.tree.structure(like), [np.asarray(a) for a in arrays]), sharding)


def lora_paths(lora) -> list[str]:
    """The LoRA tree's leaf paths, in leaf order (how warm-up files name their arrays)."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(lora)[0]]


def read_epoch(path: str, expected_paths: list[str], paths: list[str]) -> tuple[list, list, list]:
    """(adapters, first moments, second moments) of one warm-up epoch file, in leaf order; the
    model's LoRA leaf `paths` must be the warm-up's `expected_paths`."""
    if paths != expected_paths:
        raise ValueError("the warm-up adapters do not match this model's LoRA layout")
    n = len(expected_paths)
    with np.load(path) as z:
        return [z[f"p{i}"] for i in range(n)], [z[f"m{i}"] for i in range(n)], [z[f"v{i}"] for i in range(n)]


class Pending(list):
    """Per-device feature arrays of one micro-batch and its number of real rows."""

    def __init__(self, outs: list[jax.Array], rows: int):
        super().__init__(outs)
        self.rows = rows


def fetch(out: Pending) -> np.ndarray:
    """[rows, k] host features of a micro-batch returned by `FeatureModel.features`."""
    return np.concatenate([np.asarray(x) for x in out])[:out.rows]


def _per_device(tree, devices: list) -> list:
    """Single-device views of a replicated tree, one per device (no copies)."""
    def on(device):
        return jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), tree)

    return [on(d) for d in devices]


def fill_store(model: FeatureModel, store: FeatureStore, encoded: Encoded, share: np.ndarray, *, adam: bool,
               select: SelectConfig, logger=None) -> dict:
    """Compute and store the features of the rows of `share` not yet done; returns counters."""
    s = select
    todo = share[~store.done()[share]] if len(share) else share
    plan = plan_batches(encoded, todo, bucket=s.bucket, max_length=s.max_length, token_budget=s.token_budget,
                        multiple=model.devices)
    start = time.perf_counter()
    pending = None
    for length, chunk in plan:
        out = model.features(batch_arrays(encoded, chunk, length, model.pad_id), adam)
        if pending is not None:
            _write(store, *pending)
        pending = (chunk, out)
    if pending is not None:
        _write(store, *pending)
    seconds = time.perf_counter() - start
    stats = {"computed": int(len(todo)), "skipped_done": int(len(share) - len(todo)), "batches": len(plan),
             "seconds": round(seconds, 3), "examples_per_s": round(len(todo) / seconds, 3) if todo.size else None}
    if logger is not None:
        logger.info("features %s: %s", store.dir, stats)
    return stats


def _write(store: FeatureStore, chunk: np.ndarray, out: Pending) -> None:
    rows = fetch(out)
    valid = chunk >= 0
    store.write(chunk[valid], rows[valid])
