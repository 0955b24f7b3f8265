"""Warm-up of the reference model: LoRA training on a random fraction of the candidates (LESS).

Runs the project's `Trainer` on its own `TrainSpec` (built from the `select` section) writing into `RUN_DIR/select/warmup/` (resumable like
any training run), one orbax checkpoint per epoch (LoRA adapters + AdamW state + data state). After
training, each epoch's adapters and Adam moments are gathered to the host and written as
`epoch_E.npz`, and `done.json` lists the epochs with their mean learning rates (the checkpoint
weights of the scores). A rerun that finds `done.json` skips the warm-up entirely, so features
and scores can be recomputed with another number of processes.

An "epoch" is `ceil(warm-up records / warmup_batch_size)` steps; when the records do not fill the
last batch, it takes the first records of the next epoch's order (the trainer streams epochs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING

import jax
import numpy as np

from jz3_jax.influence.inputs import Item
from jz3_jax.runtime import peers
from jz3_jax.runtime.paths import atomic_write
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.influence.spec import SelectSpec
    from jz3_jax.train.spec import TrainSpec

LESS_LORA = {"rank": 128, "alpha": 512.0, "dropout": 0.1, "targets": ["q", "k", "v", "o"]}


def lora_settings(spec: SelectSpec) -> dict:
    """`lora.*`, or LESS's defaults when `lora.rank` is 0."""
    if spec.lora.rank > 0:
        return {"rank": spec.lora.rank, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                "targets": list(spec.lora.targets)}
    return dict(LESS_LORA)


def warmup_indices(count: int, fraction: float, seed: int) -> np.ndarray:
    """A random `fraction` of `count` candidates (at least one), sorted."""
    n = min(count, max(1, math.ceil(fraction * count)))
    return np.sort(np.random.default_rng(seed).permutation(count)[:n])


def warmup_spec(spec: SelectSpec, train_path: str, num_records: int, process_count: int) -> tuple[TrainSpec, int]:
    """(the trainer's spec for the warm-up, steps per epoch): LoRA on the warm-up records with
    `select.warmup_*` settings; the model, mesh, Adam moments' betas and the train section's
    numerics (`train.loss_chunk`, `train.peak_tflops`) come from the select stage's own sections."""
    from jz3_jax.data.config import DataConfig
    from jz3_jax.train.config import LoraConfig
    from jz3_jax.train.spec import TrainSpec

    s = spec.select
    batch = max(process_count, s.warmup_batch_size // process_count * process_count)
    per_epoch = math.ceil(num_records / batch)
    data = DataConfig(train_path=train_path, format="jsonl", input_field="input", output_field="output",
                      max_length=s.max_length, pack=False, train_on_input=False, bad_records="error", shuffle=True,
                      num_workers=0)
    optimizer = dataclasses.replace(spec.optimizer, lr=s.warmup_lr, schedule="linear", warmup_fraction=0.03,
                                    min_lr_fraction=0.0, weight_decay=0.0)
    train = dataclasses.replace(spec.train, global_batch_size=batch, grad_accum=1, steps=per_epoch * s.warmup_epochs,
                                epochs=s.warmup_epochs, checkpoint_every=per_epoch, keep_checkpoints=s.warmup_epochs,
                                eval_every=0, export_hf=False, log_every=min(10, per_epoch),
                                sync_every=min(10, per_epoch))
    lora = LoraConfig(**lora_settings(spec))
    return TrainSpec(spec.seed, spec.model, spec.mesh, data, train, optimizer, lora), per_epoch


def epoch_mean_lrs(sub: TrainSpec, per_epoch: int, epochs: int) -> list[float]:
    """Each epoch's mean learning rate under the warm-up schedule."""
    from jz3_jax.train.schedules import make_schedule

    total = sub.train.steps
    schedule = make_schedule(sub.optimizer, total)
    lrs = np.asarray([float(schedule(step)) for step in range(total)])
    return [float(lrs[e * per_epoch:(e + 1) * per_epoch].mean()) for e in range(epochs)]


def adam_state(opt_state):
    """The `ScaleByAdamState` (count, mu, nu) inside an optax state."""
    import optax

    states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState)]
    if len(states) != 1:
        raise ValueError(f"expected one Adam state in the optimizer state, found {len(states)}")
    return states[0]


def _to_host(tree) -> list[np.ndarray]:
    from jax.experimental import multihost_utils

    leaves = jax.tree.leaves(tree)
    if jax.process_count() == 1:
        return [np.asarray(x) for x in leaves]
    return [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in leaves]


def tree_paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def run_warmup(spec: SelectSpec, ctx: StageContext, candidates: list[Item]) -> dict:
    """Warm up (or find the finished warm-up) and return the contents of `warmup/done.json`."""
    from jz3_jax.train.checkpoints import checkpoint_manager, restore_checkpoint
    from jz3_jax.train.trainer import Trainer

    directory = ctx.stage_dir / "warmup"
    done_path = directory / "done.json"
    if done_path.exists():
        ctx.logger.info("warm-up already done (%s)", done_path)
        return json.loads(done_path.read_text())
    chosen = warmup_indices(len(candidates), spec.select.warmup_fraction, spec.seed)
    train_path = directory / "train.jsonl"
    if ctx.process_index == 0:
        with atomic_write(train_path) as f:
            for i in chosen.tolist():
                f.write(json.dumps({"input": candidates[i].input, "output": candidates[i].output}) + "\n")
    peers.agree("select warm-up data", None)
    sub, per_epoch = warmup_spec(spec, str(train_path), len(chosen), ctx.process_count)
    epochs_total = spec.select.warmup_epochs
    ctx.logger.info("warm-up: %d of %d candidates, %d epochs of %d steps, LoRA %s", len(chosen), len(candidates),
                    epochs_total, per_epoch, lora_settings(spec))
    trainer = Trainer(sub, dataclasses.replace(ctx, stage_dir=directory))
    trainer.run()
    lrs = epoch_mean_lrs(sub, per_epoch, epochs_total)
    manager = checkpoint_manager(directory / "checkpoints", sub.train.keep_checkpoints)
    abstract = trainer.program.abstract_state(trainer.state["params"])
    paths = tree_paths(trainer.state["params"])
    epochs = []
    try:
        for e in range(epochs_total):
            step = (e + 1) * per_epoch
            state, _ = restore_checkpoint(manager, step, abstract)
            adam = adam_state(state["opt_state"])
            params, mu, nu = _to_host(state["params"]), _to_host(adam.mu), _to_host(adam.nu)
            name = f"epoch_{e + 1}.npz"
            if ctx.process_index == 0:
                arrays = {f"p{i}": x for i, x in enumerate(params)}
                arrays.update({f"m{i}": x for i, x in enumerate(mu)})
                arrays.update({f"v{i}": x for i, x in enumerate(nu)})
                tmp = directory / f".{name}.tmp.npz"
                np.savez(str(tmp), **arrays)
                tmp.replace(directory / name)
            epochs.append({"epoch": e + 1, "step": step, "mean_lr": lrs[e], "file": name})
    finally:
        manager.close()
    o = sub.optimizer
    done = {"epochs": epochs, "paths": paths, "lora": lora_settings(spec), "adam": [o.b1, o.b2, o.eps],
            "warmup_records": len(chosen), "steps_per_epoch": per_epoch}
    if ctx.process_index == 0:
        with atomic_write(done_path) as f:
            json.dump(done, f, indent=1)
    peers.agree("select warm-up done", None)
    return done
