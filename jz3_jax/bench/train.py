"""`bench.kind=train`: tokens/s and MFU of the sharded train step (full fine-tuning, AdamW).

On CPU a plain PyTorch training step (transformers model, the same weights and batch, AdamW,
gradient clipping) is timed in the same run as the reference.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import jax
import numpy as np

from jz3_jax.bench.harness import median, report, time_call
from jz3_jax.checkpoint import load_model
from jz3_jax.runtime.mesh import mesh_and_rules
from jz3_jax.stages import StageContext
from jz3_jax.train.metrics import peak_flops_per_device
from jz3_jax.train.program import build_program, split_model
from jz3_jax.train.step import flops_per_token

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec


def synthetic_batch(rows: int, length: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens, one sequence per row, every target counted."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, length + 1), dtype=np.int32)
    return {"tokens": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": np.ones((rows, length), np.float32),
            "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()}


def _reference_seconds(model, batch: dict, spec: BenchSpec, logger) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from jz3_jax.checkpoint.hf_export import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, f"{tmp}/hf")
        reference = AutoModelForCausalLM.from_pretrained(f"{tmp}/hf", dtype=torch.float32).train()
    o = spec.optimizer
    optimizer = torch.optim.AdamW(reference.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                                  weight_decay=o.weight_decay)
    tokens = torch.from_numpy(batch["tokens"]).long()
    targets = torch.from_numpy(batch["targets"]).long()

    def step():
        logits = reference(tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times = time_call(step, spec.bench.warmup, spec.bench.repeats)
    logger.info("reference (PyTorch AdamW, %d threads): median %.4f s", torch.get_num_threads(), median(times))
    return median(times)


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    mesh, rules = mesh_and_rules(spec.mesh)
    with jax.set_mesh(mesh):
        model, resolved = load_model(spec.model, mesh, rules, spec.seed)
        graphdef, params, frozen = split_model(model, lora=False)
        program = build_program(spec, graphdef, params, frozen, mesh, rules, total_steps=10_000, lora=False)
        batch = synthetic_batch(spec.bench.batch, spec.bench.seq_len, resolved.vocab_size, spec.seed)
        if spec.bench.reference and jax.default_backend() == "cpu":
            reference_s = _reference_seconds(model, batch, spec, ctx.logger)  # before `params` is donated
        else:
            reference_s = None
        state = program.init_state(params)
        device_batch = {k: jax.device_put(v[None], program.batch_sharding(3)) for k, v in batch.items()}
        holder = {"state": state}

        def step():
            holder["state"], metrics = program.train_step(holder["state"], frozen, device_batch)
            jax.block_until_ready(metrics["loss"])

        times = time_call(step, spec.bench.warmup, spec.bench.repeats)
    tokens = spec.bench.batch * spec.bench.seq_len
    ours = tokens / median(times)
    ctx.logger.info("ours: median %.4f s per step over %d repeats", median(times), len(times))
    peak = peak_flops_per_device(spec.train.peak_tflops)
    mfu = flops_per_token(resolved, spec.bench.seq_len) * ours / (peak * jax.device_count()) if peak else None
    return report("train", "tokens/s", ours, tokens / reference_s if reference_s else None, mfu=mfu,
                  batch=spec.bench.batch, seq_len=spec.bench.seq_len, dtype=resolved.dtype)
