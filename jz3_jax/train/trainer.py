"""The trainer loop shared by `sft` and `pretrain`.

Rerunning the same command resumes from the latest checkpoint (model or LoRA adapters,
optimizer, data-iterator state, step). SIGTERM (a preempted TPU VM) saves a checkpoint at the
current step and exits with code 143; rerun to continue.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from jz3_jax.checkpoint import load_model, load_stage_tokenizer
from jz3_jax.config import Config, ConfigError
from jz3_jax.model.lora import add_lora, merge_lora
from jz3_jax.runtime.mesh import mesh_and_rules
from jz3_jax.stages import StageContext
from jz3_jax.train.metrics import MetricsWriter, peak_flops_per_device
from jz3_jax.train.program import build_program, split_model
from jz3_jax.train.step import BATCH_KEYS, flops_per_token

PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
    """Raised after the SIGTERM checkpoint is written."""

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class _TermFlag:
    """Remembers a SIGTERM so that the loop can checkpoint at a step boundary."""

    def __init__(self):
        self.raised = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.raised
        return bool(multihost_utils.process_allgather(np.asarray(self.raised)).any())

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _data(cfg: Config, tokenizer, ctx: StageContext, rows_per_process: int):
    """(train data, eval data or None) for this process."""
    from jz3_jax.data import TrainData, read_records

    d = cfg.data
    if not d.train_path:
        raise ConfigError("training needs data.train_path")
    read = dict(fmt=d.format, input_field=d.input_field, output_field=d.output_field, bad_records=d.bad_records)
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


def total_steps(cfg: Config, train_data, process_count: int) -> int:
    if cfg.train.steps > 0:
        return cfg.train.steps
    rows = train_data.rows_per_epoch() * process_count
    return max(1, math.ceil(cfg.train.epochs * rows / cfg.train.global_batch_size))


def _check_batch(cfg: Config, process_count: int) -> int:
    t = cfg.train
    if t.global_batch_size % (process_count * t.grad_accum):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} must divide by processes ({process_count}) "
                          f"x train.grad_accum ({t.grad_accum})")
    return t.global_batch_size // process_count


class Trainer:
    """Holds the sharded model state and runs steps; `run()` is the whole stage."""

    def __init__(self, cfg: Config, ctx: StageContext):
        self.cfg, self.ctx = cfg, ctx
        self.mesh, self.rules = mesh_and_rules(cfg)
        rows_per_process = _check_batch(cfg, ctx.process_count)
        self.tokenizer = load_stage_tokenizer(cfg.model, ctx.logger)
        if self.tokenizer is None:
            raise ConfigError("training needs a tokenizer: set model.tokenizer (or a checkpoint that has one)")
        # Data first: a bad or empty dataset fails before anything is compiled.
        self.train_data, self.eval_data = _data(cfg, self.tokenizer, ctx, rows_per_process)
        self.total_steps = total_steps(cfg, self.train_data, ctx.process_count)
        with jax.set_mesh(self.mesh):
            model, self.model_cfg = load_model(cfg.model, self.mesh, self.rules, cfg.seed)
            if self.model_cfg.vocab_size < self.tokenizer.vocab_size:
                raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} ids but the model only "
                                  f"{self.model_cfg.vocab_size} embeddings")
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

    def _manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.cfg.train.keep_checkpoints,
                                               enable_async_checkpointing=True)
        return ocp.CheckpointManager((self.ctx.stage_dir / "checkpoints").absolute(), options=options)

    def save(self, manager: ocp.CheckpointManager, step: int) -> None:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(self.state),
                                                   data=ocp.args.JsonSave(self.train_data.get_state())))

    def restore_latest(self, manager: ocp.CheckpointManager) -> int:
        step = manager.latest_step()
        if step is None:
            return 0
        abstract = self.program.abstract_state(self.state["params"])
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 data=ocp.args.JsonRestore()))
        self.state = restored["state"]
        self.train_data.set_state(restored["data"])
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
        manager = self._manager()
        start = self.restore_latest(manager)
        writer = MetricsWriter(ctx.stage_dir, start, enabled=ctx.process_index == 0)
        term = _TermFlag()
        peak = peak_flops_per_device(cfg.train.peak_tflops)
        flops_token = flops_per_token(self.model_cfg, cfg.data.max_length)
        ctx.logger.info("training %d steps (from %d), global batch %d x %d tokens, %s", self.total_steps, start,
                        cfg.train.global_batch_size, cfg.data.max_length, "LoRA" if self.lora else "full")
        bar = tqdm(total=self.total_steps, initial=start, disable=ctx.process_index != 0, unit="step",
                   dynamic_ncols=True)
        data_iter = iter(self.train_data)
        window_start, window_tokens = time.perf_counter(), 0  # throughput over the steps since the last log
        try:
            for step in range(start, self.total_steps):
                if term.any_process():
                    if manager.latest_step() != step:
                        self.save(manager, step)
                    manager.wait_until_finished()
                    ctx.logger.info("SIGTERM: checkpoint saved at step %d; rerun the same command to resume", step)
                    raise Preempted(step)
                local = next(data_iter)
                window_tokens += int(np.count_nonzero(local["segment_ids"])) * ctx.process_count
                self.state, metrics = self.program.train_step(self.state, self.frozen, self.global_batch(local, True))
                done = step + 1
                if done % cfg.train.log_every == 0 or done == self.total_steps:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    seconds = time.perf_counter() - window_start
                    values["tokens_per_s"] = window_tokens / seconds
                    values["mfu"] = (flops_token * window_tokens / seconds / (peak * jax.device_count())
                                     if peak else None)
                    if cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == self.total_steps):
                        values["eval_loss"] = self.evaluate()
                    values.update({k: float(v) for k, v in self.train_data.stats().items()})
                    writer.write(done, values)
                    window_start, window_tokens = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                bar.update(1)
                if done % cfg.train.checkpoint_every == 0 or done == self.total_steps:
                    self.save(manager, done)
            manager.wait_until_finished()
        finally:
            bar.close()
            writer.close()
            term.restore()
            manager.close()
        if cfg.train.export_hf:
            self.export(ctx.stage_dir / "hf")

    def export(self, dst: Path) -> None:
        """Write the trained model (LoRA merged into the base) as a HF directory, once."""
        from jz3_jax.checkpoint.hf_export import export_hf

        if dst.exists():
            self.ctx.logger.info("export %s already exists; left as is", dst)
            return
        model = nnx.merge(self.graphdef, self.state["params"], self.frozen)
        if self.lora:
            merge_lora(model)
        export_hf(model, dst, self.tokenizer)
        self.ctx.logger.info("exported the trained model to %s", dst)


def run(cfg: Config, ctx: StageContext) -> None:
    """The `sft` and `pretrain` stages (the difference is in their configs)."""
    Trainer(cfg, ctx).run()
