"""The Pallas TPU paged-attention kernel behind `paged_kernels.pallas_paged_decode_attention`: run in
Pallas' TPU interpret mode on CPU against a plain gather-and-softmax reference (grouped heads, rows of
length 0, partial last pages, pages shared between rows, several compute blocks, sharded over a mesh);
lowered and compiled for a v5p host, where the program holds the kernel's `tpu_custom_call`; and the
choice of implementation per backend and model."""

from __future__ import annotations

import dataclasses
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import last_json_line, run_in_subprocess
from jz3_jax.model import paged_kernels as pk
from jz3_jax.model.config import ModelConfig

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

DEEPSEEK_7B = ModelConfig(hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128, dtype="bfloat16")


def _case(rows=4, heads=4, kv_heads=2, head_dim=128, num_pages=11, page_size=16, pages_per_row=4, seed=0,
          dtype=jnp.float32):
    """Random q and pages (K/V exactly representable in bfloat16, as the kernel multiplies in
    bfloat16), a page table that shares page 3 between rows 0 and 1 and points unused entries at
    scratch page 0, and lengths covering empty, partial and full rows."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(rows, heads, head_dim)) * head_dim**-0.5, dtype)
    k = jnp.asarray(rng.normal(size=(kv_heads, num_pages, page_size, head_dim)), jnp.bfloat16).astype(dtype)
    v = jnp.asarray(rng.normal(size=(kv_heads, num_pages, page_size, head_dim)), jnp.bfloat16).astype(dtype)
    table = np.zeros((rows, pages_per_row), np.int32)
    table[0, :2] = [3, 5]
    table[1, :4] = [3, 7, 1, 9]
    table[3, :3] = [10, 2, 4]
    lengths = np.array([page_size + 3, pages_per_row * page_size, 0, 2 * page_size + 1][:rows], np.int32)
    return q, k, v, jnp.asarray(lengths), jnp.asarray(table)


@pytest.mark.parametrize("block", [1, 2, 4])
def test_kernel_matches_reference_in_interpret_mode(block):
    q, k, v, lengths, table = _case()
    out = pk.pallas_paged_decode_attention(q, k, v, lengths, table, pages_per_compute_block=block, interpret=True)
    want = pk.reference_paged_decode_attention(q, k, v, lengths, table)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5, rtol=2e-5)
    assert not np.asarray(out[2]).any()  # a row of length 0 (inactive) gives zeros


def test_kernel_ignores_what_lies_past_each_row():
    """Cache content past a row's length (the rest of its last page, the scratch page) changes nothing."""
    q, k, v, lengths, table = _case(seed=1)
    out = pk.pallas_paged_decode_attention(q, k, v, lengths, table, interpret=True)
    noise = jnp.asarray(np.random.default_rng(7).normal(size=k.shape), k.dtype)
    used = np.zeros(k.shape[:3], bool)  # [kv_heads, pages, page_size]: positions some row attends
    for row, length in enumerate(np.asarray(lengths)):
        for pos in range(length):
            used[:, int(table[row, pos // k.shape[2]]), pos % k.shape[2]] = True
    k2 = jnp.where(jnp.asarray(used)[..., None], k, noise)
    v2 = jnp.where(jnp.asarray(used)[..., None], v, noise)
    again = pk.pallas_paged_decode_attention(q, k2, v2, lengths, table, interpret=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))


def test_large_page_tables_go_in_chunks_of_rows(monkeypatch):
    """A page table over the kernel's SMEM budget is split into calls of fewer rows (3 + 1 padded)."""
    q, k, v, lengths, table = _case(seed=3)
    whole = pk.pallas_paged_decode_attention(q, k, v, lengths, table, interpret=True)
    monkeypatch.setattr(pk, "SMEM_TABLE_BYTES", 3 * 4 * table.shape[1])
    chunked = pk.pallas_paged_decode_attention(q, k, v, lengths, table, interpret=True)
    np.testing.assert_array_equal(np.asarray(chunked), np.asarray(whole))


def test_kernel_bfloat16_cache():
    q, k, v, lengths, table = _case(heads=8, kv_heads=1, dtype=jnp.bfloat16, seed=2)
    out = pk.pallas_paged_decode_attention(q, k, v, lengths, table, interpret=True)
    want = pk.reference_paged_decode_attention(q, k, v, lengths, table)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=2e-2, rtol=2e-2)


def test_sharded_over_a_mesh_matches_unsharded():
    """kv heads over a 2-device `tensor` axis and rows over a 2-device `data` axis: the kernel runs
    per shard in shard_map and gives the unsharded result."""
    out = run_in_subprocess("""
        import json, jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        import test_paged_kernels as t
        from jz3_jax.model import paged_kernels as pk
        q, k, v, lengths, table = t._case(heads=4, kv_heads=2)
        want = pk.pallas_paged_decode_attention(q, k, v, lengths, table, interpret=True)
        mesh = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
        rules = (("batch", ("data",)), ("heads", ("tensor",)), ("kv_heads", ("tensor",)))
        put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
        with jax.set_mesh(mesh):
            fn = jax.jit(lambda *a: pk.pallas_paged_decode_attention(*a, rules=rules, interpret=True))
            got = fn(put(q, "data", "tensor"), put(k, "tensor"), put(v, "tensor"), put(lengths, "data"),
                     put(table, "data"))
            text = fn.lower(put(q, "data", "tensor"), put(k, "tensor"), put(v, "tensor"), put(lengths, "data"),
                            put(table, "data")).as_text()
        print(json.dumps({"diff": float(np.abs(np.asarray(got) - np.asarray(want)).max()),
                          "shard_map": "shard_map" in text or "manual" in text}))
    """, devices=4, env={"PYTHONPATH": "tests"})
    result = last_json_line(out)
    assert result["diff"] == 0.0 and result["shard_map"]


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: no TPU compiler")
def test_kernel_compiles_for_a_v5p_host_into_a_tpu_custom_call():
    """DeepSeekMath-7B's decode attention (32 kv heads over the 4 chips of a v5p-8, bfloat16 pages of
    128 tokens) lowers and compiles for TPU: the program calls the Mosaic kernel per chip in
    shard_map and gathers nothing (XLA cannot partition a Mosaic kernel by itself)."""
    out = run_in_subprocess("""
        import json, jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jz3_jax.model import paged_kernels as pk
        from jz3_jax.train.tpu_topology import parse_topology, tpu_devices
        mesh = jax.sharding.Mesh(tpu_devices(parse_topology("v5p-8")), ("tensor",))
        sds = lambda shape, dtype, *spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(*spec)))
        rows, pages = 16, 16 * 32 + 1
        args = (sds((rows, 32, 128), jnp.bfloat16, None, "tensor"), sds((32, pages, 128, 128), jnp.bfloat16, "tensor"),
                sds((32, pages, 128, 128), jnp.bfloat16, "tensor"), sds((rows,), jnp.int32),
                sds((rows, 32), jnp.int32))
        with jax.set_mesh(mesh):
            # no rules given: the default ones (heads and kv heads over `tensor`), as the decoder calls it
            compiled = jax.jit(pk.pallas_paged_decode_attention).lower(*args).compile()
        text = compiled.as_text()
        print(json.dumps({"kernel": "tpu_custom_call" in text, "gathers": text.count("all-gather")}))
    """)
    result = last_json_line(out)
    assert result == {"kernel": True, "gathers": 0}


def test_choose_paged_impl_by_backend_and_model():
    assert pk.choose_paged_impl("tpu", DEEPSEEK_7B, 128) == "pallas"
    assert pk.choose_paged_impl("tpu", DEEPSEEK_7B, 64) == "pallas"
    for backend in ("cpu", "gpu", "cuda"):
        assert pk.choose_paged_impl(backend, DEEPSEEK_7B, 128) == "gather"
    mistral = dataclasses.replace(DEEPSEEK_7B, num_kv_heads=8, sliding_window=4096)
    assert pk.choose_paged_impl("tpu", mistral, 128) == "gather"  # the kernel has no window
    assert pk.choose_paged_impl("tpu", dataclasses.replace(mistral, sliding_window=0), 128) == "pallas"
    smol = ModelConfig(hidden_size=576, num_heads=9, num_kv_heads=3, dtype="bfloat16")  # head_dim 64
    assert "head_dim 64" in pk.kernel_supports(smol, 128)
    assert pk.choose_paged_impl("tpu", smol, 128) == "gather"
    assert "page_size 8" in pk.kernel_supports(DEEPSEEK_7B, 8)  # bfloat16 tiles are 16 rows
    assert pk.kernel_supports(dataclasses.replace(DEEPSEEK_7B, dtype="float32"), 8) == ""
    assert pk.default_page_size("tpu") % 16 == 0 and pk.default_page_size("cpu") == 64


@pytest.mark.parametrize("pages_per_row,page_size,want", [(32, 128, 4), (64, 64, 8), (7, 64, 7), (6, 128, 3),
                                                           (5, 256, 1), (1, 16, 1)])
def test_compute_block_pages_divides_the_row(pages_per_row, page_size, want):
    block = pk.compute_block_pages(pages_per_row, page_size)
    assert block == want and pages_per_row % block == 0


def test_reference_attends_exactly_the_row():
    """The reference itself against softmax(q k^T) v over each row's tokens, listed by hand."""
    q, k, v, _, _ = _case(heads=2, kv_heads=1, page_size=8)
    q = q[:2]
    table = jnp.asarray([[3, 5], [4, 0]], jnp.int32)
    lengths = jnp.asarray([11, 8], jnp.int32)
    out = np.asarray(pk.reference_paged_decode_attention(q, k, v, lengths, table))
    kk, vv, qq = np.asarray(k[0], np.float64), np.asarray(v[0], np.float64), np.asarray(q, np.float64)
    rows = [np.concatenate([kk[3], kk[5][:3]]), kk[4]], [np.concatenate([vv[3], vv[5][:3]]), vv[4]]
    for r in range(2):
        for h in range(2):
            s = rows[0][r] @ qq[r, h]
            p = np.exp(s - s.max())
            np.testing.assert_allclose(out[r, h], (p / p.sum()) @ rows[1][r], rtol=1e-5, atol=1e-6)
