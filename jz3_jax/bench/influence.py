"""`bench.kind=influence`: examples/s of per-example LoRA gradient features (Adam transform + projection).

The model (`model.*`) gets LoRA adapters (`lora.*`, or LESS's r=128 / alpha=512 on q/k/v/o when
`lora.rank=0`) with random nonzero values and random Adam moments; `bench.batch` random sequences of
`bench.seq_len` tokens (every target in the loss) are featurised by the `select` stage's own code
(`FeatureModel` + `fill_store`: vmap of grad, Adam direction, projection to `select.proj_dim`),
through a feature store in a temporary directory. The figure is examples/s over the 4x pass of
8 micro-batches of `bench.batch` examples (after a 1x pass of 2 micro-batches that compiles);
`peak_memory_1x` / `peak_memory_4x` are the peak memory after the 1x and the 4x pass (device peak
where the backend reports it, else the process's peak RSS).

On CPU two PyTorch references run on the same weights and examples in the same process:
- `ratio` (LESS's way): one example at a time: forward, backward, Adam transform, and a TRAK-style
  dense projection that regenerates its random +-1 matrix for every example, block by block of
  `_LESS_COLUMNS` output columns, one `random_(0, 2)` per entry;
- `ratio_batched` (written well): per-example gradients of the whole batch (`torch.func.vmap` of
  `grad`), one sign block shared by the batch, 32 signs unpacked from each random word.
Their projections cost the same for every block, so each reference times its forward/backward/Adam
in full and the projection on the first `reference_blocks` blocks (at least 2 s), scaling that part
to all blocks; the report says which fraction was timed.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import TYPE_CHECKING

import jax
import numpy as np

from jz3_jax.bench.harness import peak_memory_bytes, report
from jz3_jax.checkpoint import load_model
from jz3_jax.influence.features import FeatureStore
from jz3_jax.influence.featurize import FeatureModel, fill_store, local_mesh
from jz3_jax.influence.inputs import Encoded
from jz3_jax.influence.spec import SelectSpec
from jz3_jax.influence.warmup import lora_settings
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.stages import StageContext

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec

_LESS_COLUMNS = 8  # output columns per regenerated block in the LESS-style reference
_BATCHED_ROWS = 1024  # parameter rows per shared sign block in the batched reference
_MIN_PROJECTION_S = 2.0


def _examples(count: int, length: int, vocab: int, seed: int) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (count, length + 1), dtype=np.int32)
    return Encoded([r[:-1] for r in ids], [r[1:] for r in ids], [np.ones(length, np.float32)] * count, 0)


def _random_state(model: FeatureModel, seed: int):
    """Random nonzero adapters and Adam moments (numpy, in the LoRA tree's leaf order)."""
    rng = np.random.default_rng(seed)
    shapes = [x.shape for x in jax.tree.leaves(model.lora)]
    params = [rng.normal(0, 0.02, s).astype(np.float32) for s in shapes]
    mu = [rng.normal(0, 1e-4, s).astype(np.float32) for s in shapes]
    nu = [(rng.normal(0, 1e-4, s) ** 2).astype(np.float32) for s in shapes]
    return params, mu, nu


def _run_ours(spec: BenchSpec, model: FeatureModel, encoded: Encoded, count: int, directory: str) -> float:
    store = FeatureStore(directory, count, spec.select.proj_dim, {"bench": count})
    stats = fill_store(model, store, encoded, np.arange(count), adam=True, select=spec.select)
    return stats["seconds"]


# --- PyTorch references ------------------------------------------------------------------------


def _timed_projection(block_fn, num_blocks: int) -> tuple[float, int]:
    """(seconds for all blocks, blocks timed): time blocks until _MIN_PROJECTION_S, scale linearly."""
    start, done = time.perf_counter(), 0
    while done < num_blocks and (done < 2 or time.perf_counter() - start < _MIN_PROJECTION_S):
        block_fn(done)
        done += 1
    return (time.perf_counter() - start) * num_blocks / done, done


def _less_reference(reference, adapters, mu, nu, encoded: Encoded, k: int, adam, logger) -> tuple[float, dict]:
    """Seconds per example, LESS's way (measured on one example)."""
    import torch

    b1, b2, eps = adam
    tokens = torch.from_numpy(np.stack(encoded.tokens[:1]).astype(np.int64))
    targets = torch.from_numpy(np.stack(encoded.targets[:1]).astype(np.int64))
    flat_mu, flat_nu = torch.cat([m.flatten() for m in mu]), torch.cat([v.flatten() for v in nu])
    total = flat_mu.numel()
    warm = torch.nn.functional.cross_entropy(reference(tokens).logits.flatten(0, 1), targets.flatten())
    warm.backward()  # an untimed first backward (allocations, thread pool)
    for p in adapters:
        p.grad = None
    start = time.perf_counter()
    logits = reference(tokens).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in adapters])
    for p in adapters:
        p.grad = None
    direction = (b1 * flat_mu + (1 - b1) * g) / torch.sqrt(b2 * flat_nu + (1 - b2) * g * g + eps)
    grad_s = time.perf_counter() - start
    out = torch.zeros(k)

    def block(j):
        generator = torch.Generator().manual_seed(1000 + j)
        matrix = torch.empty(total, _LESS_COLUMNS).random_(0, 2, generator=generator).mul_(2).sub_(1)
        out[j * _LESS_COLUMNS:(j + 1) * _LESS_COLUMNS] = direction @ matrix / math.sqrt(k)

    projection_s, timed = _timed_projection(block, k // _LESS_COLUMNS)
    logger.info("LESS-style reference: %.2f s backward + Adam, %.1f s projection (%d of %d blocks timed)",
                grad_s, projection_s, timed, k // _LESS_COLUMNS)
    return grad_s + projection_s, {"blocks_timed": timed, "blocks": k // _LESS_COLUMNS}


def _batched_reference(reference, adapters, mu, nu, encoded: Encoded, k: int, adam, logger) -> tuple[float, dict]:
    """Seconds per example, batched (measured on the whole batch)."""
    import torch
    from torch.func import functional_call, grad, vmap

    b1, b2, eps = adam
    batch = len(encoded)
    tokens = torch.from_numpy(np.stack(encoded.tokens).astype(np.int64))
    targets = torch.from_numpy(np.stack(encoded.targets).astype(np.int64))
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}

    def loss_fn(p, t, y):
        logits = functional_call(reference, p, (t[None],)).logits
        return torch.nn.functional.cross_entropy(logits[0], y)

    start = time.perf_counter()
    try:
        grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, tokens, targets)
        g = torch.cat([grads[n].reshape(batch, -1) for n in names], dim=1)
        mode = "vmap"
    except Exception as e:  # noqa: BLE001 - a model torch.func cannot vmap: one backward per example
        logger.info("torch.func.vmap failed (%s); per-example backward in a loop", e)
        start, rows, mode = time.perf_counter(), [], "loop"
        for i in range(batch):
            loss = torch.nn.functional.cross_entropy(reference(tokens[i:i + 1]).logits[0], targets[i])
            loss.backward()
            rows.append(torch.cat([p.grad.flatten() for p in adapters]))
            for p in adapters:
                p.grad = None
        g = torch.stack(rows)
    flat_mu = torch.cat([m.flatten() for m in mu])
    flat_nu = torch.cat([v.flatten() for v in nu])
    direction = (b1 * flat_mu + (1 - b1) * g) / torch.sqrt(b2 * flat_nu + (1 - b2) * g * g + eps)
    grad_s = time.perf_counter() - start
    total = direction.shape[1]
    out = torch.zeros(batch, k)
    shifts = torch.arange(32, dtype=torch.int64)

    def block(j):
        rows = direction[:, j * _BATCHED_ROWS:(j + 1) * _BATCHED_ROWS]
        generator = torch.Generator().manual_seed(1000 + j)
        words = torch.randint(0, 2**32, (rows.shape[1], k // 32), dtype=torch.int64, generator=generator)
        signs = ((words.unsqueeze(-1) >> shifts) & 1).reshape(rows.shape[1], k).to(torch.float32).mul_(-2).add_(1)
        out.add_(rows @ signs)

    projection_s, timed = _timed_projection(block, math.ceil(total / _BATCHED_ROWS))
    logger.info("batched reference: %.2f s per-example grads + Adam, %.1f s projection (%d of %d blocks timed)",
                grad_s, projection_s, timed, math.ceil(total / _BATCHED_ROWS))
    return (grad_s + projection_s) / batch, {"blocks_timed": timed, "blocks": math.ceil(total / _BATCHED_ROWS),
                                             "grads": mode}


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    b, s = spec.bench, spec.select
    select_spec = SelectSpec(spec.seed, spec.model, spec.mesh, spec.optimizer, spec.train, spec.lora, spec.select)
    lora = lora_settings(select_spec)
    mesh = local_mesh()
    base, resolved = load_model(spec.model, mesh, parse_rules(spec.mesh.rules), spec.seed)
    want_reference = b.reference and jax.default_backend() == "cpu"
    # The token budget makes one micro-batch of exactly bench.batch rows (rounded to the devices).
    spec.select.token_budget = b.batch * b.seq_len
    spec.select.bucket, spec.select.max_length = b.seq_len, b.seq_len
    tmp_hf = None
    if want_reference:  # exported before LoRA is attached: transformers gets the base weights
        from jz3_jax.checkpoint.hf_export import export_hf

        tmp_hf = tempfile.TemporaryDirectory()
        export_hf(base, f"{tmp_hf.name}/hf")
    model = FeatureModel(select_spec, lora, (spec.optimizer.b1, spec.optimizer.b2, spec.optimizer.eps), model=base)
    params, mu, nu = _random_state(model, spec.seed)
    model.set_arrays(params, mu, nu)
    # 1x = two micro-batches, so both passes have one micro-batch in flight while the previous one is
    # written (the steady state of the feature loop); 4x = eight.
    count = 2 * b.batch
    encoded = _examples(4 * count, b.seq_len, resolved.vocab_size, spec.seed)
    num_params = sum(x.size for x in params)
    ctx.logger.info("influence bench: %d LoRA parameters (%s), projection %s to %d, %d x %d tokens per micro-batch",
                    num_params, lora, s.projection, s.proj_dim, b.batch, b.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        first_s = _run_ours(spec, model, encoded, count, f"{tmp}/x1")
        peak_1x = peak_memory_bytes()
        four_s = _run_ours(spec, model, encoded, 4 * count, f"{tmp}/x4")
        peak_4x = peak_memory_bytes()
    ours = 4 * count / four_s
    ctx.logger.info("ours: %.1f s for %d examples (first pass with compile %.1f s for %d)", four_s, 4 * count,
                    first_s, count)
    extra = {}
    ratio_batched = None
    reference = None
    if want_reference:
        import torch

        ref, adapters, order = _torch_from_dir(f"{tmp_hf.name}/hf", lora, params, model.paths())
        tmp_hf.cleanup()
        by_path = dict(zip(model.paths(), zip(mu, nu)))
        torch_mu = [torch.from_numpy(by_path[p][0]) for p in order]
        torch_nu = [torch.from_numpy(by_path[p][1]) for p in order]
        adam = (spec.optimizer.b1, spec.optimizer.b2, spec.optimizer.eps)
        sub = Encoded(encoded.tokens[:b.batch], encoded.targets[:b.batch], encoded.loss_mask[:b.batch], 0)
        less_s, less_info = _less_reference(ref, adapters, torch_mu, torch_nu, sub, s.proj_dim, adam, ctx.logger)
        batched_s, batched_info = _batched_reference(ref, adapters, torch_mu, torch_nu, sub, s.proj_dim, adam,
                                                     ctx.logger)
        reference = 1.0 / less_s
        ratio_batched = round(ours * batched_s, 3)
        extra = {"reference_batched": round(1.0 / batched_s, 5), "ratio_batched": ratio_batched,
                 "reference_projection_timed": {"less": less_info, "batched": batched_info},
                 "torch_threads": torch.get_num_threads()}
    from jz3_jax.bench.influence_logra import measure

    extra.update(measure(spec, select_spec, lora, (spec.optimizer.b1, spec.optimizer.b2, spec.optimizer.eps),
                             (params, mu, nu), encoded, count, ours, ctx.logger))
    return report("influence", "examples/s", ours, reference, **extra, batch=b.batch, examples_1x=count, seq_len=b.seq_len,
                  lora=lora, lora_params=num_params, proj_dim=s.proj_dim, projection=s.projection,
                  peak_memory_1x=peak_1x, peak_memory_4x=peak_4x,
                  peak_memory_growth=round(peak_4x / peak_1x - 1, 4) if peak_1x and peak_4x else None,
                  ours_seconds_4x=round(four_s, 3), dtype=resolved.dtype)


def _torch_from_dir(directory: str, lora: dict, params, paths):
    """`_torch_model` from an already exported HF directory."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return _attach_torch_lora(reference, lora, params, paths)


def _attach_torch_lora(reference, lora: dict, params, paths):
    import torch

    for p in reference.parameters():
        p.requires_grad_(False)
    scale = lora["alpha"] / lora["rank"]
    names = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
             "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
             "down": ("mlp", "down_proj")}
    by_path = dict(zip(paths, params))
    adapters, order = [], []

    class LoRALinear(torch.nn.Module):
        def __init__(self, base, a, b):
            super().__init__()
            self.base, self.a, self.b = base, torch.nn.Parameter(a), torch.nn.Parameter(b)

        def forward(self, x):
            return self.base(x) + (x @ self.a @ self.b) * scale

    for li, layer in enumerate(reference.model.layers):
        for target in lora["targets"]:
            owner, attr = names[target]
            group = "attn" if owner == "self_attn" else "mlp"
            a = by_path[f"['layers'][{li}]['{group}']['{target}_lora']['a'].value"]
            b = by_path[f"['layers'][{li}]['{group}']['{target}_lora']['b'].value"]
            wrapped = LoRALinear(getattr(getattr(layer, owner), attr),
                                 torch.from_numpy(a.reshape(-1, a.shape[-1]).copy()),
                                 torch.from_numpy(b.reshape(b.shape[0], -1).copy()))
            setattr(getattr(layer, owner), attr, wrapped)
            adapters += [wrapped.a, wrapped.b]
            order += [f"['layers'][{li}]['{group}']['{target}_lora']['{x}'].value" for x in "ab"]
    return reference, adapters, order
