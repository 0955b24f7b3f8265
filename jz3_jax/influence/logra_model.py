"""The `logra` feature job's model: the reference model sharded like training, with taps, one jitted step.

The mesh is the training mesh (`spec.mesh`: its axis sizes and rules table) over this process's
own devices, so parameters are FSDP/tensor-sharded exactly as in training and a reference model
larger than one chip fits; the batch is split over the data axes. Each process runs its own mesh
on its own share of the examples (no collectives between processes), as the exact path does.
`LograModel` has the interface `featurize.fill_store` drives (`devices` = rows per micro-batch
come in multiples of it, `pad_id`, `features`, `load_epoch`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import numpy as np
from jax.sharding import NamedSharding

from jz3_jax.checkpoint import load_model
from jz3_jax.influence.featurize import Pending, lora_paths, read_epoch, tree_from_arrays
from jz3_jax.influence.logra import feature_fn, split_taps, tap_dims
from jz3_jax.model.layer_stack import is_stacked
from jz3_jax.model.logra import add_logra, count_matrices
from jz3_jax.model.lora import add_lora
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import logical_to_spec, parse_rules, state_shardings

if TYPE_CHECKING:
    from jz3_jax.influence.spec import SelectSpec


def candidate_precondition(select) -> str:
    """The preconditioning of candidate features (`select.precondition`, `auto` resolved)."""
    if select.precondition != "auto":
        return select.precondition
    return "exact" if select.gradients == "exact" else "factored"


def attach(model, spec: SelectSpec, lora: dict) -> tuple[int, int]:
    """Attach the warm-up's LoRA layout and the taps to `model` (in place); returns (k_in, k_out)."""
    s = spec.select
    add_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"], spec.seed)
    matrices = count_matrices(model, lora["targets"], s.params)
    k_in, k_out = tap_dims(s.proj_dim, matrices, s.logra_in, s.logra_out)
    add_logra(model, lora["targets"], s.params, k_in, k_out, s.proj_seed)
    return k_in, k_out


def step_fn(model, spec: SelectSpec, lora: dict, adam: tuple[float, float, float] | None, candidates: bool):
    """(graphdef, tap state, lora state, frozen state, pure feature step) of a model with taps attached."""
    s = spec.select
    graphdef, taps_state, lora_state, frozen = split_taps(model)
    precondition = ("none" if s.precondition == "none" else "factored") if candidates else "none"
    fn = feature_fn(graphdef, lora["targets"], s.params, stacked=is_stacked(model), precondition=precondition,
                    adam=adam if precondition == "factored" else None, loss_chunk=spec.train.loss_chunk,
                    rules=model.rules)
    return graphdef, taps_state, lora_state, frozen, fn


class LograModel:
    """The reference model (base + LoRA + taps) sharded over this process's devices, and its feature steps."""

    def __init__(self, spec: SelectSpec, lora: dict, adam: tuple[float, float, float] | None = None, model=None):
        """`model`: a base model already loaded on `local_training_mesh(spec)` (else loaded from `spec.model`)."""
        self.mesh = local_training_mesh(spec)
        self.rules = parse_rules(spec.mesh.rules)
        if model is None:
            model, _ = load_model(spec.model, self.mesh, self.rules, spec.seed)
        self.model_cfg = model.cfg
        self.k_in, self.k_out = attach(model, spec, lora)
        steps = {c: step_fn(model, spec, lora, adam, c) for c in (True, False)}
        _, taps_state, lora_state, frozen, _ = steps[True]
        self.dim = sum(math.prod(z.shape[:-3]) for z in jax.tree.leaves(taps_state[0])) * self.k_in * self.k_out
        put = lambda state: jax.device_put(state, state_shardings(state, self.rules, self.mesh))
        self.taps, self.lora, self.frozen = put(taps_state), put(lora_state), put(frozen)
        self._lora_shardings = state_shardings(lora_state, self.rules, self.mesh)
        self.moments = None
        self._steps = {c: jax.jit(v[4]) for c, v in steps.items()}
        batch_axes = logical_to_spec(("batch", "length"), self.rules, self.mesh)
        self.batch_sharding = NamedSharding(self.mesh, batch_axes)
        first = batch_axes[0] if len(batch_axes) else None
        axes = () if first is None else (first,) if isinstance(first, str) else tuple(first)
        self.devices = math.prod(self.mesh.shape[a] for a in axes)  # rows come in multiples of this
        self.pad_id = self.model_cfg.pad_token_id if self.model_cfg.pad_token_id is not None else 0

    def paths(self) -> list[str]:
        return lora_paths(self.lora)

    def set_arrays(self, params: list[np.ndarray], mu: list[np.ndarray] | None = None,
                   nu: list[np.ndarray] | None = None) -> None:
        """Replace the adapters (and Adam moments) with host arrays in the LoRA tree's leaf order."""
        put = lambda arrays: tree_from_arrays(self.lora, arrays, self._lora_shardings)
        self.lora = put(params)
        self.moments = (put(mu), put(nu)) if mu is not None else None

    def load_epoch(self, path: str, expected_paths: list[str]) -> None:
        """Adapters and Adam moments of one warm-up epoch (`epoch_E.npz`)."""
        self.set_arrays(*read_epoch(path, expected_paths, self.paths()))

    def features(self, arrays: dict, adam: bool) -> Pending:
        """[rows, dim] features of one micro-batch of host arrays (`adam`: candidate features),
        dispatched and not waited for; rows are padded with all-masked rows to a multiple of `devices`."""
        rows = len(arrays["tokens"])
        if rows % self.devices:
            extra = self.devices - rows % self.devices
            arrays = {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in arrays.items()}
        batch = {k: jax.device_put(v, self.batch_sharding) for k, v in arrays.items()}
        with jax.set_mesh(self.mesh):
            out = self._steps[adam](self.taps, self.lora, self.frozen, self.moments, batch)
        return Pending([out], rows)


def local_training_mesh(spec: SelectSpec):
    """The training mesh's axes (`spec.mesh`) over this process's devices."""
    return build_mesh(spec.mesh, jax.local_devices())
