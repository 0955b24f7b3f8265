"""`bench.kind=decode`: output tokens/s of greedy generation with the decoding engine.

`bench.batch` random prompts of `bench.prompt_len` tokens each generate exactly `bench.new_tokens`
tokens (no EOS), timed end to end (prefill + decode) through `Engine.generate` after a warm-up
that compiles every shape, with the engine's KV cache as the `engine` section configures it (paged
by default, `engine.paged`). On CPU, transformers `generate` (greedy, KV cache on) runs on the same
prompts in the same process as the reference. The model decodes on the engine mesh (`engine.mesh`
over this host's devices), the mesh `serve` and `synthesize` use.

Decoding one token at batch 1 is bound by memory bandwidth: every weight is read once per step.
The benchmark measures this machine's bandwidth with a large array copy, counted like STREAM copy
(bytes read + bytes written per second), and reports `bandwidth_fraction` = (parameter bytes /
seconds per decode token) / that bandwidth, i.e. the weight bytes read per second while decoding
as a fraction of the copy bandwidth. Seconds per decode token exclude prefill: they are the
difference between a run of `new_tokens` tokens and a run of 1 token (prefill and first token
only), divided by `new_tokens - 1`. The fraction is meaningful at batch 1; at larger batches the
step also reads the KV cache and does more arithmetic per weight byte.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import jax
import numpy as np

from jz3_jax.bench.harness import median, peak_memory_bytes, report, time_call
from jz3_jax.checkpoint import load_model
from jz3_jax.decoding.engine import Engine, Request
from jz3_jax.decoding.factory import engine_mesh
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec

COPY_BYTES = 512 * 1024 * 1024  # each of source and destination


def paged_options(engine_cfg) -> dict:
    """The `engine` section's paged-cache settings as `Engine` keywords."""
    names = ("paged", "page_size", "num_pages", "prefix_cache", "paged_kernel")
    return {name: getattr(engine_cfg, name) for name in names}


def device_bandwidth_gbs(device=None, repeats: int = 5, nbytes: int = COPY_BYTES) -> float:
    """Memory bandwidth of `device` (default: the first) in GB/s: the best of `repeats` jitted
    device-side passes over a `nbytes` float32 array into a new one (bytes read + bytes written)."""
    device = device or jax.devices()[0]
    src = jax.device_put(np.ones(nbytes // 4, np.float32), device)
    step = jax.jit(lambda x: x + 1.0)  # reads and writes every element once (a bare copy may be elided)
    best = min(time_call(lambda: step(src).block_until_ready(), warmup=1, repeats=1)[0] for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def memory_bandwidth_gbs(repeats: int = 5, nbytes: int = COPY_BYTES) -> float:
    """The memory bandwidth of the device the benchmark runs on, in GB/s (1e9 bytes/s): on an
    accelerator its HBM (`device_bandwidth_gbs`), on CPU the host's: the best of `repeats` copies
    of a `nbytes` float32 array (numpy, one thread), counting bytes read + bytes written (STREAM copy)."""
    if jax.default_backend() != "cpu":
        return device_bandwidth_gbs(repeats=repeats, nbytes=nbytes)
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)  # touched once here so page faults stay out of the timings
    best = float("inf")
    for _ in range(repeats):
        best = min(best, time_call(lambda: np.copyto(dst, src), warmup=0, repeats=1)[0])
    return 2 * src.nbytes / best / 1e9


def _reference_seconds(model, prompts: np.ndarray, new_tokens: int, spec: BenchSpec, logger) -> float:
    """Median seconds of transformers `generate` (greedy, KV cache) for `new_tokens` tokens per prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from jz3_jax.checkpoint.hf_export import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, f"{tmp}/hf")
        reference = AutoModelForCausalLM.from_pretrained(f"{tmp}/hf", dtype=getattr(torch, model.cfg.dtype)).eval()
    inputs = torch.from_numpy(prompts.astype(np.int64))
    pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0

    def step():
        with torch.no_grad():
            out = reference.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                                     pad_token_id=pad)
        assert out.shape == (prompts.shape[0], prompts.shape[1] + new_tokens), out.shape

    times = time_call(step, spec.bench.warmup, spec.bench.repeats)
    logger.info("reference (transformers generate, %d threads): median %.4f s", torch.get_num_threads(),
                median(times))
    return median(times)


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    b = spec.bench
    if b.new_tokens < 2 or b.prompt_len < 1 or b.batch < 1:
        raise ValueError("bench.kind=decode needs bench.new_tokens >= 2, bench.prompt_len >= 1, bench.batch >= 1")
    mesh, rules = engine_mesh(spec.engine)  # the mesh serve and synthesize decode on (`engine.mesh`)
    with jax.set_mesh(mesh):
        model, resolved = load_model(spec.model, mesh, rules, spec.seed)
    prompts = np.random.default_rng(spec.seed).integers(0, resolved.vocab_size, (b.batch, b.prompt_len),
                                                       dtype=np.int32)
    # Every prompt has the same length: one prefill shape without padding (the prompt bucket only
    # bounds the number of compiled shapes), and a cache of exactly prompt + new tokens.
    engine = Engine(model, max_batch=b.batch, max_seq_len=b.prompt_len + b.new_tokens, eos_ids=(),
                    steps_per_dispatch=spec.engine.steps_per_dispatch, prompt_bucket=b.prompt_len, mesh=mesh,
                    max_top_k=spec.engine.max_top_k, decode_attention=spec.engine.decode_attention,
                    **paged_options(spec.engine))

    def generate(new_tokens: int):
        params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
        results = engine.generate([Request(p.tolist(), params) for p in prompts])
        assert all(len(r.token_ids) == new_tokens for r in results)

    times = time_call(lambda: generate(b.new_tokens), b.warmup, b.repeats)
    prefill_times = time_call(lambda: generate(1), b.warmup, b.repeats)
    seconds = median(times)
    per_token = max(seconds - median(prefill_times), 0.0) / (b.new_tokens - 1)
    ours = b.batch * b.new_tokens / seconds
    ctx.logger.info("ours: median %.4f s per generate (%.4f s prefill + first token), %.2f ms per decode step",
                    seconds, median(prefill_times), per_token * 1e3)

    peak = peak_memory_bytes()  # before the bandwidth arrays and the reference model
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(engine.params))
    bandwidth = memory_bandwidth_gbs()
    fraction = weight_bytes / per_token / (bandwidth * 1e9) if per_token > 0 else None
    ctx.logger.info("memory bandwidth (copy, read + write): %.1f GB/s; weights read while decoding: %.1f GB/s",
                    bandwidth, weight_bytes / per_token / 1e9 if per_token > 0 else float("nan"))

    reference = None
    if b.reference and jax.default_backend() == "cpu":
        reference = b.batch * b.new_tokens / _reference_seconds(model, prompts, b.new_tokens, spec, ctx.logger)
    return report("decode", "tokens/s", ours, reference, batch=b.batch, prompt_len=b.prompt_len,
                  new_tokens=b.new_tokens, steps_per_dispatch=engine.steps_per_dispatch, mesh=dict(mesh.shape),
                  decode_attention=engine.decode_layout, paged=engine.paged, paged_kernel=engine.paged_kernel,
                  page_size=engine.page_size if engine.paged else None,
                  seconds_per_decode_token=per_token, weight_bytes=weight_bytes,
                  memory_bandwidth_gbs=round(bandwidth, 2),
                  bandwidth_convention="STREAM copy: (bytes read + bytes written) / s of a 512 MiB float32 copy"
                                       + ("" if jax.default_backend() == "cpu" else " on the device"),
                  bandwidth_fraction=None if fraction is None else round(fraction, 3), dtype=resolved.dtype,
                  peak_memory_bytes=peak)
