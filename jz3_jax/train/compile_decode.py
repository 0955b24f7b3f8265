"""`compile.program=decode`: ahead-of-time compile of the decoding engine's decode step for a TPU host.

The engine runs one replica per host over that host's chips (`engine.mesh`, tensor-parallel by
default), holding the weights and a KV cache. This compiles the same `decoding.steps.decode`
dispatch the engine runs (`engine.steps_per_dispatch` tokens) on the first host of
`compile.topology` (use a single-host slice: v5p-8, v5e-8, v6e-8) and reports per chip: weights,
KV cache, the compiler's total, and whether it fits in HBM. Nothing is allocated and no weights
are read.

First the configured engine: `engine.max_batch` rows x `compile.max_tokens` positions
(0 = `engine.max_seq_len`), contiguous. With the paged engine (`engine.paged`, the default) it then
sizes the cache to the chip: the HBM left after the weights and the first program's other buffers
is the KV budget, and for requests of `compile.mean_tokens` on average (at most `max_tokens`) it
reports the rows that budget holds contiguous and paged (`decode_rows.py`), and compiles both
programs at those sizes: the contiguous one at its rows x max_tokens, the paged one at its rows
over a pool of the same bytes, with the Pallas paged-attention kernel where the model allows it
(`model.paged_kernels.choose_paged_impl`; the report lists the kernels in the compiled program).

    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/sft_synthesizer_deepseekmath7b.py \
        compile.program=decode compile.topology=v5p-8 compile.mean_tokens=1200 compile.max_tokens=4096
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from jz3_jax.errors import ConfigError
from jz3_jax.train.compile_analysis import fmt_gib, kernels_in, memory_of, param_report
from jz3_jax.train.decode_programs import DecodeSetup, compile_contiguous, compile_paged
from jz3_jax.train.decode_rows import decode_rows, round_rows
from jz3_jax.train.tpu_topology import parse_topology, tpu_devices

if TYPE_CHECKING:
    from jz3_jax.train.spec import CompileSpec

HBM_RESERVE = 0.05  # of each chip's HBM kept free when sizing the cache (runtime, fragmentation, larger logits)


def host_devices(devices: list) -> list:
    """The devices of the slice's first host (the engine's replica spans one host)."""
    first = min(d.process_index for d in devices)
    return [d for d in devices if d.process_index == first]


def token_limits(cfg: CompileSpec) -> tuple[int, int]:
    """(max_tokens, mean_tokens) per request: `compile.max_tokens` (0 = engine.max_seq_len) and
    `compile.mean_tokens` (0 = max_tokens); ConfigError unless 0 < mean <= max."""
    c = cfg.compile
    max_tokens = c.max_tokens or cfg.engine.max_seq_len
    mean_tokens = c.mean_tokens or max_tokens
    if max_tokens < 2 or not 0 < mean_tokens <= max_tokens:
        raise ConfigError(f"compile.mean_tokens ({c.mean_tokens}) must be in (0, compile.max_tokens] and "
                          f"compile.max_tokens ({c.max_tokens}, 0 = engine.max_seq_len) at least 2")
    return max_tokens, mean_tokens


def _program_report(compiled, cache_bytes: int, weight_bytes: int, hbm: int, rows: int, seconds: float,
                    **extra) -> dict:
    memory = memory_of(compiled, hbm)
    return {"rows": rows, **extra, "kv_cache_bytes": cache_bytes, "weight_bytes": weight_bytes,
            "memory_per_device": memory, "fits": memory["total_bytes"] <= hbm, "kernels": kernels_in(compiled),
            "compile_seconds": round(seconds, 2)}


def compile_decode_step(cfg: CompileSpec, log=print) -> dict:
    """Lower and compile the engine's decode dispatch for one host of `cfg.compile.topology`; the report."""
    import jax

    from jz3_jax.decoding.factory import engine_devices
    from jz3_jax.model.paged_kernels import choose_paged_impl, default_page_size

    e = cfg.engine
    if e.max_batch < 1 or e.max_seq_len < 2 or e.steps_per_dispatch < 1:
        raise ConfigError("compile.program=decode needs engine.max_batch >= 1, engine.max_seq_len >= 2 and "
                          "engine.steps_per_dispatch >= 1")
    max_tokens, mean_tokens = token_limits(cfg)
    spec = parse_topology(cfg.compile.topology)
    devices = engine_devices(e.mesh, host_devices(tpu_devices(spec, 1)))
    setup = DecodeSetup.build(cfg, devices)
    hbm = spec.hbm_bytes
    _, undivided, weight_bytes = param_report(setup.shardings, setup.abstract, setup.rules, setup.mesh)
    log(f"compile: decode on {len(devices)} chip(s) of one {spec.name} host ({devices[0].device_kind}), engine mesh "
        f"{dict(setup.mesh.shape)}, {e.steps_per_dispatch} token(s) per dispatch; configured cache {e.max_batch} "
        f"rows x {max_tokens} positions")

    t0 = time.perf_counter()
    compiled, cache_bytes = compile_contiguous(setup, e.max_batch, max_tokens)
    configured = _program_report(compiled, cache_bytes, weight_bytes, hbm, e.max_batch, time.perf_counter() - t0,
                                 positions=max_tokens)
    report = {
        "program": "decode",
        "topology": {"name": spec.name, "generation": spec.generation, "chips": spec.chips,
                     "devices": len(devices), "device_kind": devices[0].device_kind,
                     "topology_name": spec.topology_name, "hbm_bytes_per_device": hbm},
        "mesh": {a: int(setup.mesh.shape[a]) for a in setup.mesh.axis_names},
        "engine": {"max_batch": e.max_batch, "max_seq_len": e.max_seq_len, "steps_per_dispatch": e.steps_per_dispatch,
                   "decode_attention": setup.layout, "paged": bool(getattr(e, "paged", True)),
                   **{k: v for k, v in setup.options.items() if k != "eos_ids"}},
        "model": {"family": setup.model_cfg.family, "num_layers": setup.model_cfg.num_layers,
                  "num_kv_heads": setup.model_cfg.num_kv_heads,
                  "params": sum(math.prod(x.shape) for x in jax.tree.leaves(setup.params)),
                  "param_dtype": setup.model_cfg.param_dtype, "dtype": setup.model_cfg.dtype,
                  "scan_layers": setup.model_cfg.scan_layers},
        "memory_per_device": {**configured["memory_per_device"], "weight_bytes": weight_bytes,
                              "kv_cache_bytes": cache_bytes, "weights_plus_cache_bytes": weight_bytes + cache_bytes},
        "fits": configured["fits"],
        "replicated_not_divisible": undivided,
        "seconds": {"compile": configured["compile_seconds"]},
        "requests": {"max_tokens": max_tokens, "mean_tokens": mean_tokens},
    }
    if not report["engine"]["paged"]:
        return report

    # Size the cache to the chip: what the configured program needs besides weights and cache
    # (the rows' state, logits, temporaries) stays, the rest less a reserve is the KV budget.
    workspace = configured["memory_per_device"]["total_bytes"] - weight_bytes - cache_bytes
    budget = int(hbm * (1 - HBM_RESERVE)) - weight_bytes - workspace
    page_size = getattr(e, "page_size", 0) or default_page_size("tpu")
    rows = decode_rows(budget, cache_bytes // (e.max_batch * max_tokens), max_tokens, mean_tokens, page_size)
    shards = setup.row_shards
    contiguous_rows, paged_rows = round_rows(rows.contiguous_rows, shards), round_rows(rows.paged_rows, shards)
    impl = choose_paged_impl("tpu", setup.model_cfg, page_size)
    log(f"compile: KV budget {fmt_gib(budget)} per chip: {contiguous_rows} contiguous rows of {max_tokens} positions, "
        f"{paged_rows} paged rows of {mean_tokens} tokens on average ({rows.pool_pages} pages of {page_size}); "
        f"paged attention: {impl}")

    t1 = time.perf_counter()
    compiled, cache = compile_contiguous(setup, contiguous_rows, max_tokens)
    contiguous = _program_report(compiled, cache, weight_bytes, hbm, contiguous_rows, time.perf_counter() - t1,
                                 positions=max_tokens)
    t2 = time.perf_counter()
    compiled, cache = compile_paged(setup, paged_rows, rows.pool_pages, page_size, rows.page_table_width, impl)
    paged = _program_report(compiled, cache, weight_bytes, hbm, paged_rows, time.perf_counter() - t2,
                            pool_pages=rows.pool_pages, page_size=page_size, pages_per_row=rows.page_table_width,
                            attention=impl)
    paged["kernel_in_program"] = "tpu_custom_call" in compiled.as_text()
    report["sized"] = {"kv_budget_bytes": budget, "workspace_bytes": workspace, "hbm_reserve": HBM_RESERVE,
                       "bytes_per_token": rows.bytes_per_token, "pages_per_mean_row": rows.pages_per_row,
                       "contiguous": contiguous, "paged": paged,
                       "rows_ratio": round(paged_rows / contiguous_rows, 3) if contiguous_rows else None}
    report["fits"] = report["fits"] and contiguous["fits"] and paged["fits"]
    report["seconds"].update(contiguous=contiguous["compile_seconds"], paged=paged["compile_seconds"])
    return report


def decode_summary(report: dict) -> str:
    """The decode report as the few lines the stage prints."""
    m, t, e = report["memory_per_device"], report["topology"], report["engine"]
    lines = [
        f"compile: decode step of {report['model']['params'] / 1e9:.3f}B params on {t['devices']} chip(s) of "
        f"{t['name']} (mesh {report['mesh']}), {e['max_batch']} rows x {report['requests']['max_tokens']} positions",
        f"  per chip: weights {fmt_gib(m['weight_bytes'])} ({report['model']['param_dtype']}), KV cache "
        f"{fmt_gib(m['kv_cache_bytes'])} ({report['model']['dtype']}), together {fmt_gib(m['weights_plus_cache_bytes'])}",
        f"  compiler: arguments {fmt_gib(m['argument_bytes'])}, temporaries {fmt_gib(m['temp_bytes'])}, total "
        f"{fmt_gib(m['total_bytes'])} of {fmt_gib(m['hbm_bytes'])} HBM ({100 * m['fraction_of_hbm']:.1f}%): "
        f"{'fits' if m['total_bytes'] <= m['hbm_bytes'] else 'DOES NOT FIT'}",
    ]
    sized = report.get("sized")
    if sized:
        r = report["requests"]
        lines.append(f"  sized to the chip for requests of {r['mean_tokens']} tokens on average, at most "
                     f"{r['max_tokens']}: KV budget {fmt_gib(sized['kv_budget_bytes'])} per chip "
                     f"({100 * sized['hbm_reserve']:.0f}% of HBM kept free, workspace "
                     f"{fmt_gib(sized['workspace_bytes'])}), {sized['bytes_per_token']} bytes per token")
        for name in ("contiguous", "paged"):
            p = sized[name]
            pm = p["memory_per_device"]
            shape = (f"{p['rows']} rows x {p['positions']} positions" if name == "contiguous" else
                     f"{p['rows']} rows over {p['pool_pages']} pages of {p['page_size']} tokens "
                     f"({p['attention']} attention)")
            lines.append(f"  {name}: {shape}, KV cache {fmt_gib(p['kv_cache_bytes'])}, compiler total "
                         f"{fmt_gib(pm['total_bytes'])} ({100 * pm['fraction_of_hbm']:.1f}%): "
                         f"{'fits' if p['fits'] else 'DOES NOT FIT'}")
        paged = sized["paged"]
        lines.append(f"  rows that fit: paged {paged['rows']} vs contiguous {sized['contiguous']['rows']} = "
                     f"{sized['rows_ratio']}x; Pallas kernels in the paged decode step: "
                     f"{', '.join(paged['kernels']) or 'none'}")
    seconds = ", ".join(f"{k} {v} s" for k, v in report["seconds"].items())
    lines.append(f"  compiled in: {seconds}")
    if report["replicated_not_divisible"]:
        lines.append(f"  replicated (not divisible): {'; '.join(report['replicated_not_divisible'])}")
    return "\n".join(lines)
