"""The sharded train program: optimizer, state shardings and the jitted steps for one mesh.

Built from a concrete model (the trainer) or an abstract one (the `compile` stage, which lowers
and compiles the same step for a TPU topology it does not hold).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jz3_jax.model.lora import LoRAParam
from jz3_jax.runtime.sharding import Rules, logical_to_spec, state_shardings
from jz3_jax.train.optimizer import make_optimizer
from jz3_jax.train.step import BATCH_KEYS, make_steps

if TYPE_CHECKING:
    from jz3_jax.train.spec import TrainSpec


@dataclasses.dataclass
class TrainProgram:
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Any
    state_shardings: dict
    frozen_shardings: Any
    train_step: Any  # jitted (state, frozen, batch[accum, rows, length]) -> (state, metrics)
    eval_step: Any  # jitted (params, frozen, batch[rows, length]) -> sums
    mesh: Mesh
    rules: Rules

    def batch_sharding(self, ndim: int) -> NamedSharding:
        names = (None,) * (ndim - 2) + ("batch", "length")
        return NamedSharding(self.mesh, logical_to_spec(names, self.rules, self.mesh))

    def lower_train_step(self, state, frozen, batch):
        """The train step lowered under this program's mesh (the program the trainer runs).

        Tracing under `jax.set_mesh` is what makes the model's `constrain` calls real sharding
        constraints; outside a mesh they are no-ops."""
        with jax.set_mesh(self.mesh):
            return self.train_step.lower(state, frozen, batch)

    def init_state(self, params) -> dict:
        """The train state {params, opt_state, step}, created in its shardings."""
        init = jax.jit(lambda p: {"params": p, "opt_state": self.tx.init(p), "step": jnp.zeros((), jnp.int32)},
                       out_shardings=self.state_shardings)
        return init(params)

    def abstract_state(self, params) -> dict:
        """ShapeDtypeStructs (with shardings) of the train state, without allocating it."""
        shapes = jax.eval_shape(
            lambda p: {"params": p, "opt_state": self.tx.init(p), "step": jnp.zeros((), jnp.int32)}, params)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.state_shardings)


def split_model(model, lora: bool):
    """(graphdef, trainable params, frozen rest): only LoRA adapters train when LoRA is on."""
    return nnx.split(model, LoRAParam if lora else nnx.Param, ...)


def build_program(spec: TrainSpec, graphdef, params, frozen, mesh: Mesh, rules: Rules, total_steps: int,
                  lora: bool) -> TrainProgram:
    """Optimizer, shardings and jitted steps for `params` (concrete or abstract) on `mesh`, with the
    optimizer, train, lora sections and seed of `spec`."""
    tx, schedule = make_optimizer(spec.optimizer, total_steps)
    steps = make_steps(graphdef, tx, schedule, spec.seed, lora and spec.lora.dropout > 0, spec.train.loss_chunk)
    param_shardings = state_shardings(params, rules, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_abstract = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_abstract, param_shardings,
                                          transform_non_params=lambda _: replicated)
    shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated}
    frozen_shardings = state_shardings(frozen, rules, mesh)
    program = TrainProgram(graphdef, tx, schedule, shardings, frozen_shardings, None, None, mesh, rules)
    train_batch = {k: program.batch_sharding(3) for k in BATCH_KEYS}
    eval_batch = {k: program.batch_sharding(2) for k in BATCH_KEYS}
    program.train_step = jax.jit(steps.train, in_shardings=(shardings, frozen_shardings, train_batch),
                                 out_shardings=(shardings, None), donate_argnums=(0,))
    program.eval_step = jax.jit(steps.eval, in_shardings=(param_shardings, frozen_shardings, eval_batch))
    return program
