"""The trainer loop shared by `sft` and `pretrain`.

Rerunning the same command resumes from the latest checkpoint (model or LoRA adapters,
optimizer, every process's data-iterator state, step). SIGTERM (a preempted TPU VM) saves a
checkpoint at an agreed step and exits with code 143 in every process; rerun to continue.

The loop never waits on the device per step: metrics stay on the device until a logging step
(`train.log_every`), when every step's values since the last one are fetched and written, and the
processes agree on SIGTERM every `train.sync_every` steps. Steps are traced and run under the mesh
(`jax.set_mesh`), so the model's activation sharding constraints are part of the program.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import TYPE_CHECKING

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from jz3_jax.checkpoint import prepare_model
from jz3_jax.errors import ConfigError
from jz3_jax.model.lora import add_lora, merge_lora
from jz3_jax.runtime import peers
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.mesh import mesh_and_rules
from jz3_jax.runtime.paths import is_local, local_mirror
from jz3_jax.runtime.preemption import Preempted, TermFlag
from jz3_jax.stages import StageContext
from jz3_jax.train.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jz3_jax.train.metrics import MetricsWriter, peak_flops_per_device
from jz3_jax.train.program import build_program, split_model
from jz3_jax.train.step import BATCH_KEYS, flops_per_token

if TYPE_CHECKING:
    from jz3_jax.train.spec import TrainSpec


def _index(cfg: TrainSpec, tokenizer, ctx: StageContext):
    """The data's `TokenIndex`, with this process's share of its missing parts built (process i of n
    builds parts i, i + n, ...; a malformed record raises here, naming file and line, unless
    `data.bad_records=skip`). Every part is there once all processes are past this."""
    from jz3_jax.data import TokenIndex, list_files

    d = cfg.data
    if not d.train_path:
        raise ConfigError("training needs data.train_path")
    directory = d.index_dir or ctx.stage_dir / "data_index"
    index = TokenIndex(directory, tokenizer, (d.input_field, d.output_field), logger=ctx.logger)
    for path, split in ((d.train_path, d.train_split), (d.eval_path, d.eval_split)):
        if path:
            index.build_share(list_files(path, d.format, d.bad_records), split=split, bad_records=d.bad_records,
                              part=ctx.process_index, parts=ctx.process_count)
    return index


def _data(cfg: TrainSpec, tokenizer, ctx: StageContext, rows_per_process: int, index=None):
    """(train data, eval data or None) for this process; records are read through `index` when given."""
    from jz3_jax.data import TrainData, read_records

    d = cfg.data
    if not d.train_path:
        raise ConfigError("training needs data.train_path")
    read = dict(fmt=d.format, input_field=d.input_field, output_field=d.output_field, bad_records=d.bad_records,
                index=index)
    train_source = read_records(d.train_path, split=d.train_split, **read)
    eval_source = read_records(d.eval_path, split=d.eval_split, **read) if d.eval_path else None
    if eval_source is None and d.eval_rows > 0:
        from jz3_jax.data import hold_out

        train_source, eval_source = hold_out(train_source, d.eval_rows)
    common = dict(max_length=d.max_length, pack=d.pack, train_on_input=d.train_on_input, seed=cfg.seed,
                  process_index=ctx.process_index, process_count=ctx.process_count, num_workers=d.num_workers)
    train = TrainData(train_source, tokenizer, rows_per_batch=rows_per_process, shuffle=d.shuffle,
                      num_epochs=None, **common)
    evaluation = None
    if eval_source is not None:
        # Repeating (num_epochs=None): every process then yields exactly `eval_batches` batches, so
        # multi-host evaluation cannot hang on a process that ran out early; each iter() restarts.
        evaluation = TrainData(eval_source, tokenizer, rows_per_batch=rows_per_process, shuffle=False,
                               num_epochs=None, **common)
    return train, evaluation


def _open_data(cfg: TrainSpec, tokenizer, ctx: StageContext, rows_per_process: int, index):
    """(train data, eval data or None, global rows per epoch or 0 with `train.steps` set), after every
    process built its share of `index`: records and their token counts come from the index, so no
    record is tokenized here. The processes agree on the outcome (e.g. too few records for one)."""
    error = train = evaluation = None
    try:
        train, evaluation = _data(cfg, tokenizer, ctx, rows_per_process, index)
        if cfg.train.steps == 0:
            train.rows_per_epoch()
    except Exception as e:  # noqa: BLE001 - re-raised by agree, in this process and as PeerFailed elsewhere
        error = e
    peers.agree("training data", error)
    rows = global_rows_per_epoch(train, ctx.process_count) if cfg.train.steps == 0 else 0
    ctx.logger.info("data: %d training records (%d skipped as malformed)%s", len(train.source), train.source.skipped,
                    f", {rows} rows per epoch" if rows else "")
    return train, evaluation, rows


def global_rows_per_epoch(train_data, process_count: int) -> int:
    """Rows one epoch yields over all processes: each process packs its own share, so the shares'
    row counts differ; their sum (one collective) is the same number in every process."""
    local = np.asarray(train_data.rows_per_epoch(), np.int64)
    if process_count == 1:
        return int(local)
    return int(multihost_utils.process_allgather(local).sum())


def total_steps(cfg: TrainSpec, rows_per_epoch: int) -> int:
    """`train.steps`, else enough steps for `train.epochs` passes over `rows_per_epoch` global rows."""
    if cfg.train.steps > 0:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * rows_per_epoch / cfg.train.global_batch_size))


def _check_batch(cfg: TrainSpec, process_count: int) -> int:
    t = cfg.train
    if t.global_batch_size % (process_count * t.grad_accum):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} must divide by processes ({process_count}) "
                          f"x train.grad_accum ({t.grad_accum})")
    for key in ("log_every", "sync_every", "checkpoint_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    return t.global_batch_size // process_count


class Trainer:
    """Holds the sharded model state and runs steps; `run()` is the whole stage."""

    def __init__(self, cfg: TrainSpec, ctx: StageContext):
        self.cfg, self.ctx = cfg, ctx
        # What can fail in one process alone (config, tokenizer, this process's data) runs before any
        # collective, and the processes agree on the outcome: all go on, or all stop with the error.
        error, prepared = None, None
        try:
            self.mesh, self.rules = mesh_and_rules(cfg.mesh)
            rows_per_process = _check_batch(cfg, ctx.process_count)
            prepared = prepare_model(cfg.model, ctx.logger, needed_by="training")
            self.tokenizer = prepared.tokenizer
            index = _index(cfg, self.tokenizer, ctx)  # this process's share of a missing index (bad records fail here)
        except Exception as e:  # noqa: BLE001 - re-raised by agree, in this process and as PeerFailed elsewhere
            error = e
        peers.agree("training setup", error)
        self.train_data, self.eval_data, self.rows_per_epoch = _open_data(cfg, self.tokenizer, ctx, rows_per_process,
                                                                          index)
        self.total_steps = total_steps(cfg, self.rows_per_epoch)
        with jax.set_mesh(self.mesh):
            model, self.model_cfg = prepared.load(self.mesh, self.rules, cfg.seed), prepared.config
            self.lora = cfg.lora.rank > 0
            if self.lora:
                add_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.seed)
        self.graphdef, params, frozen = split_model(model, self.lora)
        self.program = build_program(cfg, self.graphdef, params, frozen, self.mesh, self.rules, self.total_steps,
                                     self.lora)
        self.frozen = jax.device_put(frozen, self.program.frozen_shardings)
        self.state = self.program.init_state(params)

    def global_batch(self, local: dict, accumulate: bool) -> dict:
        """Per-process rows -> global arrays ([accum, rows, length] for training)."""
        out = {}
        for key in BATCH_KEYS:
            array = np.asarray(local[key])
            if accumulate:
                array = array.reshape(self.cfg.train.grad_accum, -1, array.shape[-1])
            sharding = self.program.batch_sharding(array.ndim)
            out[key] = jax.make_array_from_process_local_data(sharding, array)
        return out

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self, manager, step: int) -> None:
        save_checkpoint(manager, step, self.state, self.train_data.get_state())

    def restore_latest(self, manager) -> int:
        step = manager.latest_step()
        if step is None:
            return 0
        abstract = self.program.abstract_state(self.state["params"])
        self.state, data_state = restore_checkpoint(manager, step, abstract)
        self.train_data.set_state(data_state)
        self.ctx.logger.info("resumed from checkpoint at step %d", step)
        return step

    # --- loop ----------------------------------------------------------------------------------

    def evaluate(self) -> float | None:
        if self.eval_data is None:
            return None
        loss_sum, count = 0.0, 0.0
        for i, local in enumerate(self.eval_data):
            if i >= self.cfg.train.eval_batches:
                break
            out = self.program.eval_step(self.state["params"], self.frozen, self.global_batch(local, accumulate=False))
            loss_sum += float(out["loss_sum"])
            count += float(out["target_tokens"])
        return loss_sum / max(count, 1.0)

    def run(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        manager = checkpoint_manager(ctx.stage_dir / "checkpoints", cfg.train.keep_checkpoints)
        start = self.restore_latest(manager)
        log = _MetricsLog(self, MetricsWriter(ctx.stage_dir, start, enabled=ctx.process_index == 0))
        ctx.logger.info("training %d steps (from %d), global batch %d x %d tokens, %s", self.total_steps, start,
                        cfg.train.global_batch_size, cfg.data.max_length, "LoRA" if self.lora else "full")
        bar = tqdm(total=self.total_steps, initial=start, disable=ctx.process_index != 0, unit="step",
                   dynamic_ncols=True)
        data_iter = iter(self.train_data)
        try:
            with jax.set_mesh(self.mesh), TermFlag(cfg.train.sync_every) as term:
                for step in range(start, self.total_steps):
                    if term.should_stop(step):
                        log.flush()
                        if manager.latest_step() != step:
                            self.save(manager, step)
                        manager.wait_until_finished()
                        ctx.logger.info("SIGTERM: checkpoint saved at step %d; rerun the same command to resume",
                                        step)
                        raise Preempted(step)
                    local = next(data_iter)
                    self.state, metrics = self.program.train_step(self.state, self.frozen,
                                                                  self.global_batch(local, True))
                    done = step + 1
                    last = done == self.total_steps
                    log.add(done, metrics)
                    if cfg.train.eval_every and (done % cfg.train.eval_every == 0 or last):
                        log.add_eval(done, self.evaluate())
                    if done % cfg.train.log_every == 0 or last:
                        values = log.flush()
                        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", refresh=False)
                    bar.update(1)
                    if done % cfg.train.checkpoint_every == 0 or last:
                        log.flush()  # a resumed run must find every step up to its checkpoint logged
                        self.save(manager, done)
            manager.wait_until_finished()
        finally:
            bar.close()
            log.close()
            manager.close()
        if cfg.train.export_hf:
            self.export(_export_dir(ctx))

    def export(self, dst: epath.Path) -> None:
        """Write the trained model (LoRA merged into the base) as a HF directory, once.

        A remote run dir (gs://) gets the directory written locally first, then uploaded file by file.
        """
        from jz3_jax.checkpoint.hf_export import export_hf

        if dst.exists():
            self.ctx.logger.info("export %s already exists; left as is", dst)
            return
        model = nnx.merge(self.graphdef, self.state["params"], self.frozen)
        if self.lora:
            merge_lora(model)
        local = local_mirror(dst)
        export_hf(model, local, self.tokenizer)
        if not is_local(dst) and self.ctx.process_index == 0:
            _upload(local, dst)
            shutil.rmtree(local, ignore_errors=True)
        self.ctx.logger.info("exported the trained model to %s", dst)


class _MetricsLog:
    """Per-step metrics kept on the device until a logging step, then fetched and written together.

    Every step gets its own line in metrics.jsonl (loss, grad_norm, lr, tokens); the line of the
    logging step also carries throughput, MFU, the data counters and the global epoch.
    """

    def __init__(self, trainer: Trainer, writer: MetricsWriter):
        self.trainer, self.writer = trainer, writer
        self.pending: list[tuple[int, dict]] = []
        self.evals: dict[int, float | None] = {}
        self.window_start = time.perf_counter()
        self.peak = peak_flops_per_device(trainer.cfg.train.peak_tflops)
        self.flops_per_token = flops_per_token(trainer.model_cfg, trainer.cfg.data.max_length)
        self.last: dict = {}

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def add_eval(self, step: int, loss: float | None) -> None:
        self.evals[step] = loss

    def flush(self) -> dict:
        """Write the pending steps; the values of the last one (or of the previous flush if none)."""
        if not self.pending:
            return self.last
        fetched = jax.device_get([metrics for _, metrics in self.pending])
        seconds = time.perf_counter() - self.window_start
        tokens = sum(float(m["tokens"]) for m in fetched)
        cfg = self.trainer.cfg
        for i, ((step, _), metrics) in enumerate(zip(self.pending, fetched)):
            values = {k: float(v) for k, v in metrics.items()}
            if step in self.evals:
                values["eval_loss"] = self.evals.pop(step)
            if i == len(fetched) - 1:
                values["tokens_per_s"] = tokens / seconds
                values["mfu"] = (self.flops_per_token * tokens / seconds / (self.peak * jax.device_count())
                                 if self.peak else None)
                values.update({k: float(v) for k, v in self.trainer.train_data.stats().items() if k != "epoch"})
                rows = self.trainer.rows_per_epoch
                values["epoch"] = step * cfg.train.global_batch_size / rows if rows else None
            self.writer.write(step, values)
            self.last = values
        self.pending = []
        self.window_start = time.perf_counter()
        return self.last

    def close(self) -> None:
        self.writer.close()


def _export_dir(ctx: StageContext) -> epath.Path:
    """Where the trained model is exported: the running stage's `hf` artifact (`sft.hf`, `pretrain.hf`)."""
    name = f"{ctx.name}.hf"
    return artifacts.output(ctx.stage_dir, name if name in artifacts.ARTIFACTS else "sft.hf")


def _upload(local: epath.Path, dst: epath.Path) -> None:
    """Copy the files of the local directory `local` to `dst` (an object store path)."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(local)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


def run(spec: TrainSpec, ctx: StageContext) -> None:
    """The `sft` and `pretrain` stages (the difference is in their configs and what they produce)."""
    Trainer(spec, ctx).run()
