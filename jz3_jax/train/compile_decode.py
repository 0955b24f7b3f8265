"""`compile.program=decode`: ahead-of-time compile of the decoding engine's decode step for a TPU host.

The engine runs one replica per host over that host's chips (`engine.mesh`, tensor-parallel by
default), holding the weights and a KV cache. This compiles the same `decoding.steps.decode`
dispatch the engine runs (`engine.steps_per_dispatch` tokens) on the first host of
`compile.topology` (use a single-host slice: v5p-8, v5e-8, v6e-8) and reports per chip: weights,
KV cache, the compiler's total, and whether it fits in HBM. Nothing is allocated and no weights
are read.

First the configured engine: `engine.max_batch` rows x `compile.max_tokens` positions
(0 = `engine.max_seq_len`), contiguous. Given a length distribution (`compile.mean_tokens` > 0) and
the paged engine (`engine.paged`, the default), it then sizes both caches to the chip for requests of `compile.mean_tokens` on average (at most
`max_tokens`): each layout is compiled at two small sizes, which give what its program needs per
cache byte on top of a fixed part (`decode_rows.cache_budget`), so the cache that fits in
`1 - HBM_RESERVE` of the chip's HBM follows; the rows that cache holds contiguous (every row
`max_tokens` positions) and paged (rows of the mean length in pages, `decode_rows.decode_rows`) are
reported, and both programs are compiled at those sizes to check that they fit. The paged one runs
the Pallas paged-attention kernel where the model allows it (`model.paged_kernels.choose_paged_impl`;
the report lists the Pallas kernels in the compiled program).

    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/sft_synthesizer_deepseekmath7b.py \
        compile.program=decode compile.topology=v5p-8 compile.mean_tokens=1200 compile.max_tokens=4096
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from jz3_jax.errors import ConfigError
from jz3_jax.train.compile_analysis import fmt_gib, kernels_in, memory_of, out_of_memory, param_report
from jz3_jax.train.decode_programs import DecodeSetup, compile_contiguous, compile_paged
from jz3_jax.train.decode_rows import cache_budget, decode_rows, round_rows
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
                   "decode_attention": setup.layout, "paged": e.paged,
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
    if not report["engine"]["paged"] or not cfg.compile.mean_tokens:
        return report  # no length distribution given: the configured program only

    # Size each cache to the chip: a second compile of each layout at another size gives what the
    # program needs per cache byte besides the fixed part (`decode_rows.cache_budget`).
    limit = int(hbm * (1 - HBM_RESERVE))
    page_size = e.page_size or default_page_size("tpu")
    impl = choose_paged_impl("tpu", setup.model_cfg, page_size)
    bpt = cache_bytes // (e.max_batch * max_tokens)
    shards = setup.row_shards
    mean_pages = decode_rows(1, bpt, max_tokens, mean_tokens, page_size).pages_per_row
    width = -(-max_tokens // page_size)

    def total(report: dict) -> tuple[int, int]:
        return report["kv_cache_bytes"], report["memory_per_device"]["total_bytes"]

    def contiguous_at(rows: int) -> dict:
        t = time.perf_counter()
        compiled, cache = compile_contiguous(setup, rows, max_tokens)
        return _program_report(compiled, cache, weight_bytes, hbm, rows, time.perf_counter() - t, positions=max_tokens)

    def paged_at(rows: int, pages: int) -> dict:
        t = time.perf_counter()
        compiled, cache = compile_paged(setup, rows, pages, page_size, width, impl)
        out = _program_report(compiled, cache, weight_bytes, hbm, rows, time.perf_counter() - t, pool_pages=pages,
                              page_size=page_size, pages_per_row=width, attention=impl)
        out["kernel_in_program"] = "tpu_custom_call" in compiled.as_text()
        return out

    def checked(fn, *args) -> dict:
        """The program at its sized shape; one the compiler refuses for lack of HBM does not fit."""
        try:
            return fn(*args)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is a result, the rest re-raised
            if not out_of_memory(error):
                raise
            return {"rows": args[0], "fits": False, "error": str(error).splitlines()[0][:300], "kernels": [],
                    "kernel_in_program": False, "compile_seconds": None}

    small = max(shards, e.max_batch // 2 // shards * shards)
    contiguous_budget, c_fixed, c_per_byte = cache_budget(total(contiguous_at(small)), total(configured), limit)
    paged_small = paged_at(small, small * mean_pages + 1)
    paged_large = paged_at(e.max_batch, e.max_batch * mean_pages + 1)
    paged_budget, p_fixed, p_per_byte = cache_budget(total(paged_small), total(paged_large), limit)
    rows = decode_rows(contiguous_budget, bpt, max_tokens, mean_tokens, page_size, paged_budget)
    contiguous_rows, paged_rows = round_rows(rows.contiguous_rows, shards), round_rows(rows.paged_rows, shards)
    log(f"compile: {fmt_gib(limit)} per chip ({100 * (1 - HBM_RESERVE):.0f}% of HBM): contiguous cache "
        f"{fmt_gib(contiguous_budget)} ({c_per_byte:.2f} bytes per cache byte) = {contiguous_rows} rows of "
        f"{max_tokens} positions; paged pool {fmt_gib(paged_budget)} ({p_per_byte:.2f} per byte) = "
        f"{rows.pool_pages} pages of {page_size} = {paged_rows} rows of {mean_tokens} tokens on average; "
        f"paged attention: {impl}")
    contiguous = checked(contiguous_at, contiguous_rows)
    paged = checked(paged_at, paged_rows, rows.pool_pages)
    for name, program in (("contiguous", contiguous), ("paged", paged)):
        program.setdefault("positions", max_tokens)
        if name == "paged":
            program.update(pool_pages=rows.pool_pages, page_size=page_size, pages_per_row=width, attention=impl)
    report["sized"] = {"limit_bytes": limit, "hbm_reserve": HBM_RESERVE, "bytes_per_token": bpt,
                       "pages_per_mean_row": mean_pages,
                       "contiguous_budget_bytes": contiguous_budget, "paged_budget_bytes": paged_budget,
                       "fit": {"contiguous": {"fixed_bytes": int(c_fixed), "per_cache_byte": round(c_per_byte, 4)},
                               "paged": {"fixed_bytes": int(p_fixed), "per_cache_byte": round(p_per_byte, 4)}},
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
        fit = sized["fit"]
        lines.append(f"  sized to {fmt_gib(sized['limit_bytes'])} per chip ({100 * sized['hbm_reserve']:.0f}% of HBM "
                     f"kept free) for requests of {r['mean_tokens']} tokens on average, at most {r['max_tokens']}; "
                     f"{sized['bytes_per_token']} cache bytes per token; the programs need "
                     f"{fit['contiguous']['per_cache_byte']} (contiguous) and {fit['paged']['per_cache_byte']} (paged) "
                     f"bytes per cache byte")
        for name in ("contiguous", "paged"):
            p = sized[name]
            shape = (f"{p['rows']} rows x {p['positions']} positions" if name == "contiguous" else
                     f"{p['rows']} rows over {p['pool_pages']} pages of {p['page_size']} tokens "
                     f"({p['attention']} attention)")
            if "error" in p:
                lines.append(f"  {name}: {shape}: DOES NOT FIT ({p['error']})")
                continue
            pm = p["memory_per_device"]
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
