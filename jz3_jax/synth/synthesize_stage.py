"""`synthesize` stage: the synthesizer writes a completion for every prompt, resumably.

Reads `synthesize.prompts` (see `prompts.py`) or, when that is empty, renders prompts from
snippet records (`synthesize.snippets`, default `RUN_DIR/corpus/snippets.jsonl`) with the prompt
library and the `synthesize.levels` / `level_policy` / `kinds` keys, exactly as distill does
(`synth/prompts.py`). It generates with the decoding engine (continuous batching; `sampling.*`
settings, `engine.*` sizes, `model.checkpoint`) and writes completion shards to
`RUN_DIR/synthesize/completions/` (see `records/shards.py`: written whole or not at all, so reruns resume; the record format is the `filter` stage's
input contract in `completions.py`). One record per prompt:

    id, prompt, completion, kind, [level,] finish_reason ("stop" | "length"), prompt_tokens,
    completion_tokens, sampling (temperature, top_p, top_k, max_new_tokens, seed), model, meta

Each prompt's seed is derived from `sampling.seed` and its id, so its completion does not depend
on the batch it ran in, the number of processes, or how often the run was interrupted.
With several processes, process i takes the prompts at positions i, i + n, i + 2n, ... of the
file and runs its own engine on its local devices. Each process streams the file once to find its
share (no prompt rendered, no text kept) and renders its prompts one at a time as the engine takes
them (`prompts.PromptSource`), so memory does not hold the prompts' texts. Killed at any moment and
rerun, the output holds every prompt exactly once (finished shards are kept; their ids are
skipped). SIGTERM writes the completions finished so far, then exits 143.

At the end each process writes its report (`report.json`, process i > 0 `report-pNNNNN.json`):
prompts, completions and tokens of this run, throughput, and the engine's counters
(`Engine.stats`: rows running, pages in use, prefix-cache hit tokens vs prefill tokens,
preemptions); the progress bar shows the same counters as they go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from jz3_jax.decoding import Request, RequestError
from jz3_jax.decoding.factory import load_engine, sampling_from_config, warm_up
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import as_path
from jz3_jax.runtime.preemption import Preempted, TermFlag
from jz3_jax.errors import SynthesizeError
from jz3_jax.synth.prompts import PromptRecord, PromptSource, done_digests
from jz3_jax.records.shards import ShardWriter
from jz3_jax.synth.spec import SynthesizeSpec

if TYPE_CHECKING:
    from jz3_jax.stages import StageContext

def prompt_seed(base_seed: int, prompt_id) -> int:
    """A 63-bit seed for one prompt from the run's seed and the prompt's id (1 and "1" differ)."""
    digest = hashlib.sha256(f"{base_seed}\0{prompt_id!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompt_source(spec: SynthesizeSpec, run_dir) -> PromptSource:
    """`synthesize.prompts`, or when it is empty the prompts rendered from `synthesize.snippets`
    (default the corpus stage's snippets) by the prompt library, as distill renders them."""
    sc = spec.synthesize
    if sc.prompts:
        return PromptSource.from_prompts(sc.prompts)
    path = sc.snippets or artifacts.locate_str(run_dir, "corpus.snippets")
    if not sc.snippets and not as_path(path).exists():
        raise SynthesizeError("synthesize needs synthesize.prompts (a jsonl file of {id, prompt} records) or "
                              f"snippet records: synthesize.snippets, or {path} from the corpus stage")
    return PromptSource.from_snippets(path, sc, spec.seed)


def _prompt_ids(tokenizer, record: PromptRecord, use_chat: bool) -> list[int]:
    if use_chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": record.prompt}])
        return tokenizer.encode(text)
    return tokenizer.encode(record.prompt, add_bos=tokenizer.adds_bos)


def run(spec: SynthesizeSpec, ctx: StageContext) -> dict:
    """Generate completions for this process's remaining prompts; returns counts and throughput."""
    sc = spec.synthesize
    source = prompt_source(spec, ctx.run_dir)
    out_dir = artifacts.output(ctx.stage_dir, "synthesize.completions").parent
    mine = source.share(done_digests(out_dir), ctx.process_index, ctx.process_count)
    ctx.logger.info("synthesize: %d prompts, %d already done, %d for process %d", mine.total, mine.already_done,
                    len(mine), ctx.process_index)
    base = sampling_from_config(spec.sampling)  # validates the sampling section
    if not mine:
        return {"prompts": mine.total, "generated": 0}
    loaded = load_engine(spec, ctx.logger)
    engine, tokenizer = loaded.engine, loaded.tokenizer
    if tokenizer is None:
        raise SynthesizeError("synthesize needs a tokenizer: set model.tokenizer or use a checkpoint that has one")
    try:
        engine.check_sampling(base)
    except RequestError as error:
        raise SynthesizeError(f"the sampling section: {error}") from None
    warm_up(engine, ctx.logger)  # every prefill bucket and the decode step, before the first prompt
    use_chat = sc.chat_template and tokenizer.chat_template is not None
    model_name = spec.model.checkpoint or "random-init"
    writer = ShardWriter(out_dir, ctx.process_index, sc.shard_size, key="synthesize.shard_size")
    metrics_name = "metrics.jsonl" if ctx.process_index == 0 else f"metrics-p{ctx.process_index:05d}.jsonl"
    metrics_path = ctx.stage_dir / metrics_name

    def request_for(record: PromptRecord) -> Request:
        ids = _prompt_ids(tokenizer, record, use_chat)
        room = engine.max_seq_len - len(ids)
        if room < 1:
            raise SynthesizeError(f"prompt {record.id!r} has {len(ids)} tokens; engine.max_seq_len is "
                                  f"{engine.max_seq_len}: raise it or shorten the prompt")
        params = dataclasses.replace(base, seed=prompt_seed(base.seed, record.id),
                                     max_new_tokens=min(base.max_new_tokens, room))
        return Request(ids, params, id=record)

    def record_of(request: Request, result) -> dict:
        source: PromptRecord = request.id
        p = request.params
        sampling = {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
                    "max_new_tokens": p.max_new_tokens, "seed": p.seed}
        level = (source.meta or {}).get("level")
        return {"id": source.id, "prompt": source.prompt, "completion": result.text, "kind": source.kind,
                **({"level": level} if level is not None else {}),
                "finish_reason": result.finish_reason, "prompt_tokens": len(result.prompt_ids),
                "completion_tokens": len(result.token_ids), "sampling": sampling, "model": model_name,
                "meta": {**(source.meta or {}), "synthesizer": model_name, "sampling": sampling}}

    queue = iter(mine)  # rendered one at a time, as the engine takes them
    upcoming = next(queue, None)
    term = TermFlag()  # each process stops on its own signal: no collectives between engine replicas
    start, tokens, finished = time.perf_counter(), 0, 0
    bar = tqdm(total=len(mine), desc="synthesize", unit="prompt", disable=ctx.process_index != 0)
    try:
        while upcoming is not None or engine.pending:
            while upcoming is not None and engine.pending < 2 * engine.max_batch:  # rows busy, the queue short
                engine.submit(request_for(upcoming))
                upcoming = next(queue, None)
            for event in engine.step():
                tokens += len(event.new_token_ids)
                if event.finished is None:
                    continue
                writer.add(record_of(event.request, event.finished))
                finished += 1
                bar.update(1)
                if not writer.buffer:  # a shard was just written
                    _write_metrics(metrics_path, finished, tokens, start)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.1f}", **_engine_postfix(engine.stats()),
                            refresh=False)
            if term.raised:
                writer.flush()
                ctx.logger.info("SIGTERM: %d completions written; rerun the same command to resume", finished)
                raise Preempted()
        writer.flush()
    finally:
        bar.close()
        term.restore()
    elapsed = time.perf_counter() - start
    _write_metrics(metrics_path, finished, tokens, start)
    stats = engine.stats()
    ctx.logger.info("synthesize: %d completions, %d tokens in %.1fs (%.1f tokens/s); engine %s", finished, tokens,
                    elapsed, tokens / elapsed, stats)
    report = {"prompts": mine.total, "generated": finished, "tokens": tokens, "elapsed_s": round(elapsed, 3),
              "tokens_per_s": tokens / elapsed, "process": ctx.process_index, "engine": stats}
    name = "report.json" if ctx.process_index == 0 else f"report-p{ctx.process_index:05d}.json"
    path = artifacts.output(ctx.stage_dir, "synthesize.report").parent / name
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _engine_postfix(stats: dict) -> dict[str, str]:
    """The progress bar's engine counters: rows running (mean), pages in use, prefix-cache hit share, preemptions."""
    out = {"rows": f"{stats['rows_running_mean']:.1f}"}
    if "pages_total" in stats:
        total = stats["prefill_tokens_total"]
        out.update(pages=f"{stats['pages_in_use']}/{stats['pages_total']}",
                   hit=f"{stats['prefix_hit_tokens'] / total if total else 0:.0%}", preempt=str(stats["preemptions"]))
    return out


def _write_metrics(path: Path, finished: int, tokens: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    with path.open("a") as f:
        f.write(json.dumps({"prompts_done": finished, "tokens": tokens, "elapsed_s": round(elapsed, 3),
                            "tokens_per_s": round(tokens / max(elapsed, 1e-9), 3)}) + "\n")
