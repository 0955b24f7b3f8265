"""Which JAX backends a launch uses when the user has not said (`JAX_PLATFORMS`).

With `libtpu` installed (the `compile` stage needs it), JAX tries the TPU backend first on every
machine and, where there is no TPU, prints a screen of initialisation errors before falling back.
The launcher therefore looks for accelerator device files itself: no TPU there means the TPU
backend is left out. `compile` is unaffected: it describes TPU topologies through libtpu directly.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import MutableMapping

# Device files: TPU VMs expose /dev/accel* (v2-v5p) or /dev/vfio/<n> (v5e, v6e); NVIDIA and AMD GPUs.
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
CUDA_DEVICE_GLOBS = ("/dev/nvidia[0-9]*",)
ROCM_DEVICE_GLOBS = ("/dev/kfd",)


def _present(patterns: tuple[str, ...]) -> bool:
    return any(glob.glob(pattern) for pattern in patterns)


def default_platforms() -> str | None:
    """The JAX_PLATFORMS value for this machine: None (JAX's own choice) where a TPU is present,
    else the GPU backend that has devices (with the CPU) or the CPU alone."""
    if _present(TPU_DEVICE_GLOBS):
        return None
    if _present(CUDA_DEVICE_GLOBS):
        return "cuda,cpu"
    if _present(ROCM_DEVICE_GLOBS):
        return "rocm,cpu"
    return "cpu"


def choose_platforms(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set JAX_PLATFORMS in `environ` to `default_platforms()` unless the user set it; the value set."""
    if "JAX_PLATFORMS" in environ:
        return None
    platforms = default_platforms()
    if platforms is None:
        return None
    environ["JAX_PLATFORMS"] = platforms
    if environ is os.environ and "jax" in sys.modules:  # imported already: the flag was read at import
        sys.modules["jax"].config.update("jax_platforms", platforms)
    return platforms
