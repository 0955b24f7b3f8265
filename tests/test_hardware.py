"""The hardware catalogue: device kinds to chips, peak FLOPs for MFU, HBM for the compile stage."""

from __future__ import annotations

import pytest

from jz3_jax.runtime.hardware import CHIPS, chip_of, peak_flops
from jz3_jax.train import compile_analysis
from jz3_jax.train.metrics import peak_flops_per_device
from jz3_jax.train.tpu_topology import parse_topology


@pytest.mark.parametrize("kind, chip", [
    ("TPU v4", "v4"), ("TPU v5 lite", "v5e"), ("TPU v5e", "v5e"), ("TPU v5", "v5p"), ("TPU v5p", "v5p"),
    ("TPU v6 lite", "v6e"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-40GB", "A100"),
])
def test_device_kinds_jax_reports_name_their_chip(kind, chip):
    assert chip_of(kind).name == chip


def test_unknown_devices_have_no_peak_unless_overridden():
    assert chip_of("cpu") is None and peak_flops("cpu") is None
    assert peak_flops("cpu", 2.5) == 2.5e12 and peak_flops("TPU v5 lite", 100.0) == 100e12
    assert peak_flops_per_device() is None  # the CPU running the tests


def test_one_table_feeds_mfu_and_the_compile_stage():
    assert peak_flops("TPU v5 lite") == 197e12 and peak_flops("TPU v5p") == 459e12
    assert compile_analysis.peak_flops_of("TPU v6 lite") == peak_flops("TPU v6 lite") == 918e12
    for name, topology in [("v4", "v4-8"), ("v5e", "v5litepod-4"), ("v5p", "v5p-8"), ("v6e", "v6e-4")]:
        spec = parse_topology(topology)
        assert spec.generation == name and spec.hbm_bytes == CHIPS[name].hbm_bytes
