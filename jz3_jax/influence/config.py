"""The `select` section (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SelectConfig:
    """`select` stage: LESS-style gradient-influence scores of candidates against targets.

    LoRA comes from `lora.*`; `lora.rank=0` means LESS's defaults (r=128, alpha=512, dropout 0.1 on
    q/k/v/o). The warm-up optimizer is AdamW with `optimizer.b1/b2/eps`, lr `warmup_lr`, a linear
    schedule with 3% warm-up decaying to 0, no weight decay.
    """

    method: str = "influence"  # influence (LESS) | random (the ablation baseline: as many candidates, drawn with `seed`)
    candidates: str = ""  # jsonl of `id` + `text` or `input`/`output`; "" = RUN_DIR/corpus/snippets.jsonl
    targets: str = ""  # jsonl of `task`, `input`, `output`
    top_k: int = 0  # keep the k best candidates; 0 = use top_fraction
    top_fraction: float = 0.05
    proj_dim: int = 8192  # dimensions of the projected features (a multiple of 32)
    projection: str = "rademacher"  # rademacher | sparse (count-sketch)
    proj_seed: int = 0  # the projection's random signs depend on this seed only
    aggregate: str = "mean_max"  # mean_max (mean within a task, max over tasks) | mean (mean over tasks)
    warmup_fraction: float = 0.05  # random fraction of the candidates the reference model is warmed up on
    warmup_epochs: int = 4  # one checkpoint (and one feature set) per epoch
    warmup_lr: float = 2e-5
    warmup_batch_size: int = 32  # global rows per warm-up step
    max_length: int = 512  # tokens per example (longer ones are truncated)
    bucket: int = 64  # sequence lengths are padded up to a multiple of this
    token_budget: int = 4096  # tokens per feature micro-batch (rows = budget // bucket length)
    grad_chunk: int = 4  # rows per vmap of grad inside a micro-batch (>= 2); features are bitwise
    # the same for any token_budget and device count at a fixed grad_chunk
    gradients: str = "exact"  # exact (vmap of grad per example, then `projection`) | logra (taps: every example's
    # Kronecker-projected gradient from one backward pass; README "select")
    params: str = "lora"  # logra's projected matrices: lora (LoRA A and B) | linear (the `lora.targets` base weights)
    precondition: str = "auto"  # candidates: none | factored (Adafactor-style, logra) | exact (LESS, exact only);
    # auto = exact for gradients=exact, factored for logra. Targets always use plain gradients.
    logra_in: int = 0  # logra: input-side projection dim per matrix; 0 = from proj_dim (below)
    logra_out: int = 0  # logra: output-side dim; 0 = proj_dim split evenly over the matrices, near square
