"""`bench.kind=forward`: tokens/s of a jitted forward (logits) on random tokens.

On CPU the transformers/PyTorch forward of the same weights on the same tokens is timed in the
same run (the weights are exported to a temporary HF directory and loaded by transformers).
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jz3_jax.bench.harness import median, report, time_call
from jz3_jax.checkpoint import load_model
from jz3_jax.runtime.mesh import mesh_and_rules
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec


def _reference_tokens_per_s(model, tokens: np.ndarray, spec: BenchSpec, logger) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from jz3_jax.checkpoint.hf_export import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, f"{tmp}/hf")
        reference = AutoModelForCausalLM.from_pretrained(f"{tmp}/hf", dtype=getattr(torch, model.cfg.dtype)).eval()
    inputs = torch.from_numpy(tokens.astype(np.int64))

    def step():
        with torch.no_grad():
            reference(inputs).logits.float().sum().item()

    times = time_call(step, spec.bench.warmup, spec.bench.repeats)
    logger.info("reference (transformers %d threads): median %.4f s", torch.get_num_threads(), median(times))
    return tokens.size / median(times)


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    mesh, rules = mesh_and_rules(spec.mesh)
    with jax.set_mesh(mesh):
        model, resolved = load_model(spec.model, mesh, rules, spec.seed)
    rng = np.random.default_rng(spec.seed)
    tokens = rng.integers(0, resolved.vocab_size, (spec.bench.batch, spec.bench.seq_len), dtype=np.int32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens):
        logits, _ = nnx.merge(graphdef, state)(tokens)
        return logits

    device_tokens = jnp.asarray(tokens)
    times = time_call(lambda: forward(state, device_tokens).block_until_ready(), spec.bench.warmup, spec.bench.repeats)
    ours = tokens.size / median(times)
    ctx.logger.info("ours: median %.4f s over %d repeats", median(times), len(times))
    reference = None
    if spec.bench.reference and jax.default_backend() == "cpu":
        reference = _reference_tokens_per_s(model, tokens, spec, ctx.logger)
    return report("forward", "tokens/s", ours, reference, batch=spec.bench.batch, seq_len=spec.bench.seq_len,
                  model_params=sum(x.size for x in jax.tree.leaves(state)), dtype=resolved.dtype)
