"""`bench.kind=influence`, the `logra` part: the same examples featurised with `select.gradients=logra`.

In the same run as the exact path (`bench/influence.py`), on the same adapters and Adam moments:
- `logra_examples_per_s`: the 4x pass (8 micro-batches of `bench.batch` rows) through `fill_store`
  with factored-preconditioned candidate features (the stage's own `LograModel`), after a 1x pass
  that compiles; `speedup_vs_exact` = that over the exact path's examples/s;
- `cost_vs_train_step`: the time of one feature micro-batch over the time of one plain
  forward + backward (gradients of the summed token loss with respect to the LoRA adapters, the
  warm-up's train step without the optimizer) of the same rows, both timed here;
- `logra_dim` (the features' width: `select.proj_dim` split over the matrices) and the peaks.
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np

from jz3_jax.bench.harness import peak_memory_bytes
from jz3_jax.checkpoint import load_model
from jz3_jax.influence.features import FeatureStore
from jz3_jax.influence.featurize import fill_store
from jz3_jax.influence.inputs import Encoded, batch_arrays
from jz3_jax.influence.logra_model import LograModel, local_training_mesh
from jz3_jax.model.lora import LoRAParam, add_lora
from jz3_jax.runtime.sharding import parse_rules, state_shardings
from jz3_jax.train.step import token_losses


def _fill(model: LograModel, select, encoded: Encoded, count: int, directory: str) -> float:
    store = FeatureStore(directory, count, model.dim, {"bench": count})
    return fill_store(model, store, encoded, np.arange(count), adam=True, select=select)["seconds"]


def _train_step_seconds(spec, model: LograModel, lora: dict, encoded: Encoded, rows: int, length: int,
                        repeats: int) -> float:
    """Seconds per plain forward + backward (LoRA gradients of the summed token loss, no taps) of
    `rows` rows, on the same mesh, weights and adapters as `model`."""
    from flax import nnx

    base, _ = load_model(spec.model, model.mesh, model.rules, spec.seed)
    add_lora(base, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"], spec.seed)
    graphdef, _, frozen = nnx.split(base, LoRAParam, ...)
    frozen = jax.device_put(frozen, state_shardings(frozen, model.rules, model.mesh))

    def grads(lora_state, frozen, batch):
        return jax.grad(lambda p: token_losses(graphdef, p, frozen, batch)[0])(lora_state)

    arrays = batch_arrays(encoded, np.arange(rows), length, model.pad_id)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    arrays.update(segment_ids=np.ones((rows, length), np.int32), positions=np.ascontiguousarray(positions))
    batch = {k: jax.device_put(v, model.batch_sharding) for k, v in arrays.items()}
    step = jax.jit(grads)
    with jax.set_mesh(model.mesh):
        jax.block_until_ready(step(model.lora, frozen, batch))
        start = time.perf_counter()
        for _ in range(repeats):
            out = step(model.lora, frozen, batch)
        jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def measure(spec, select_spec, lora: dict, adam: tuple, state: tuple, encoded: Encoded, count: int,
            exact_per_s: float, logger) -> dict:
    """The logra figures (see the module docstring) for `count` (1x) and `4 * count` (4x) examples."""
    b = spec.bench
    mesh = local_training_mesh(select_spec)
    base, _ = load_model(spec.model, mesh, parse_rules(spec.mesh.rules), spec.seed)
    model = LograModel(select_spec, lora, adam, model=base)
    model.set_arrays(*state)
    with tempfile.TemporaryDirectory() as tmp:
        first_s = _fill(model, spec.select, encoded, count, f"{tmp}/x1")
        peak_1x = peak_memory_bytes()
        four_s = _fill(model, spec.select, encoded, 4 * count, f"{tmp}/x4")
        peak_4x = peak_memory_bytes()
    per_s = 4 * count / four_s
    batches = 4 * count // b.batch
    train_s = _train_step_seconds(spec, model, lora, encoded, b.batch, b.seq_len, batches)
    feature_batch_s = four_s / batches
    logger.info("logra: %.1f s for %d examples (first pass with compile %.1f s), %.3f s per micro-batch vs "
                "%.3f s per forward+backward", four_s, 4 * count, first_s, feature_batch_s, train_s)
    return {"logra_examples_per_s": round(per_s, 4), "speedup_vs_exact": round(per_s / exact_per_s, 2),
            "cost_vs_train_step": round(feature_batch_s / train_s, 3),
            "logra_batch_seconds": round(feature_batch_s, 4), "train_step_seconds": round(train_s, 4),
            "logra_dim": model.dim, "logra_k": [model.k_in, model.k_out],
            "logra_peak_memory_1x": peak_1x, "logra_peak_memory_4x": peak_4x}
