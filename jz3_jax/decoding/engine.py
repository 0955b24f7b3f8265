"""The decoding engine: continuous batching of many requests over one fixed-shape decode state.

The host keeps a queue of waiting requests and a table of rows (slots). Each `step()`:
1. fills free rows with waiting requests (one jitted prefill per prompt-length bucket),
2. runs one jitted decode dispatch of up to `steps_per_dispatch` tokens for all rows,
3. hands the new tokens to each request: text deltas, EOS / stop-string / length endings.

A finished request frees its row at once, so the next waiting request takes it at the next step:
a bulk job never waits for the longest sequence of a batch. Stop strings are checked on the host
(they are text, not tokens); tokens sampled after a stop inside the same dispatch are dropped.

Under `jax.set_mesh` the rows are split over the data axes and the cache's kv heads over the
tensor axis (the `mesh.rules` table), like the model's parameters.

Prefill shapes come from a fixed, small set of buckets: widths `prompt_bucket * 2**i` up to
`max_seq_len` (the last one `max_seq_len` itself), and per width two row counts: 1 (a lone
prompt, no padding rows) and `max_seq_len // width` capped at `max_batch` (several prompts, so a
prefill never computes more than `max_seq_len` tokens; larger groups take several prefills).
That is at most two programs per width; `warm_up()` compiles all of them and the decode
dispatch, so no request compiles anything afterwards.

Paged (the default, `paged=True`): the cache is a pool of `num_pages` pages of `page_size` tokens
shared by all rows (`jz3_jax.model.paged_attention`); `max_batch` only caps the rows running at
once. Admission against the pool, growth before each dispatch, preemption of the most recently
admitted row when the pool runs dry (its request requeued and resumed where it stopped) and prefix
sharing are `paged_rows.py`'s; a decode dispatch computes only the running rows, padded to a row
bucket (`buckets.dispatch_slots`).
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jz3_jax.decoding import paged_steps, steps as device
from jz3_jax.decoding.attention import resolve_layout, resolve_paged_kernel
from jz3_jax.decoding.batches import RowPrefill, paged_prefill_batch, prefill_batch, score_inputs
from jz3_jax.decoding.buckets import (dispatch_slots, doubling_buckets, group_rows, prefill_shapes, row_buckets,
                                     row_shards, smallest_at_least)
from jz3_jax.decoding.compiles import count_compiles
from jz3_jax.decoding.counters import DispatchCounters
from jz3_jax.decoding.detokenize import IncrementalText
from jz3_jax.decoding.live import Live
from jz3_jax.decoding.logprobs import fetch_logprobs, row_logprobs, score_prompt
from jz3_jax.decoding.paged_rows import PagedRows, context_width, paged_prefill_shapes
from jz3_jax.decoding.paging import default_pages
from jz3_jax.decoding.requests import (Event, Generation, Request, RequestError, TokenLogprob, check_logprobs,
                                      check_top_k)
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.model.decoder import Decoder

DECODE_MIN_ROWS = 4  # the smallest paged decode bucket (fewer rows cost about as much: the weights are read anyway)


def _current_mesh() -> jax.sharding.Mesh | None:
    """The concrete mesh set with `jax.set_mesh`, if any."""
    mesh = jax.sharding.get_mesh() if hasattr(jax.sharding, "get_mesh") else None
    return None if mesh is None or getattr(mesh, "empty", True) else mesh


class Engine:
    """Continuous-batching generation with a model loaded on the current mesh.

    Args:
        model: the decoder (parameters already placed on the mesh).
        max_batch: rows decoded together (at most; the contiguous cache holds this many sequences).
        max_seq_len: cache positions per row: prompt plus new tokens must fit.
        eos_ids: token ids that end a sequence (empty: run to max_new_tokens).
        tokenizer: needed for text output, streaming deltas and stop strings.
        steps_per_dispatch: tokens decoded on device per host round trip.
        prompt_bucket: the smallest prefill width; prompts are padded up to the next of
            `prompt_bucket * 2**i` (or `max_seq_len`).
        mesh: the mesh the model lives on; every dispatch runs under it (any thread may call
            `step`), so the rows and cache follow the model's rules table. Default: the mesh set
            with `jax.set_mesh` when the engine is built, if any.
        max_top_k: the largest top_k a request may ask for (below the vocabulary size; a top_k of
            at least the vocabulary is no filter); filters take their candidates from
            `jax.lax.top_k` of this many logits instead of sorting the vocabulary.
        max_logprobs: the most top log-probabilities a request may ask for (`SamplingParams.logprobs`;
            0: none). Every program that returns them is compiled with this N, and runs only in
            the steps where some row asked.
        decode_attention: the decode step's attention layout, "auto" (= "grouped"),
            "block_diagonal" or "grouped" (see `jz3_jax.decoding.attention`); contiguous cache only.
        paged: a paged KV cache (see the module docstring); False: a contiguous cache of
            `max_batch` x `max_seq_len`.
        page_size, num_pages: the pool's page size and pages (the scratch page included; 0: the
            bytes of the contiguous cache, `paging.default_pages`).
        prefix_cache: share full prompt pages between requests with the same prefix.
        paged_kernel: the paged decode attention, "auto", "gather" or "pallas" (`resolve_paged_kernel`).
    """

    def __init__(self, model: Decoder, *, max_batch: int, max_seq_len: int, eos_ids: Iterable[int] = (),
                 tokenizer=None, steps_per_dispatch: int = 8, prompt_bucket: int = 16,
                 mesh: jax.sharding.Mesh | None = None, max_top_k: int = 64, decode_attention: str = "auto",
                 max_logprobs: int = 20, paged: bool = True, page_size: int = 64, num_pages: int = 0,
                 prefix_cache: bool = True, paged_kernel: str = "auto"):
        if max_batch < 1 or max_seq_len < 2 or steps_per_dispatch < 1 or prompt_bucket < 1 or max_top_k < 1:
            raise ValueError("max_batch >= 1, max_seq_len >= 2, steps_per_dispatch >= 1, prompt_bucket >= 1 and "
                             "max_top_k >= 1 are required")
        self.decode_layout = resolve_layout(decode_attention)
        # Prefill runs the model as given; the decode dispatch runs it with this engine's layout
        # (the same arrays: `with_decode_attention` copies no parameter).
        self.graphdef, self.params = nnx.split(model)
        self.paged = paged
        self.paged_kernel = resolve_paged_kernel(paged_kernel, model.cfg, page_size) if paged else None
        self.decode_graphdef = nnx.graphdef(model.with_decode_attention(self.decode_layout, self.paged_kernel))
        self.rules = model.rules
        self.pad_id = model.cfg.pad_token_id
        self.vocab_size = model.cfg.vocab_size
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.eos_ids = tuple(sorted({int(i) for i in eos_ids}))
        self.tokenizer = tokenizer
        self.steps_per_dispatch = steps_per_dispatch
        self.prompt_bucket = prompt_bucket
        self.mesh = mesh if mesh is not None else _current_mesh()
        self.max_top_k = min(max_top_k, self.vocab_size)
        self.max_logprobs = max(0, min(max_logprobs, self.vocab_size))
        self.prefill_widths = doubling_buckets(prompt_bucket, max_seq_len)
        self.page_size = page_size
        self.num_pages = num_pages or default_pages(max_batch, max_seq_len, page_size)
        self.prefix_cache = prefix_cache
        # Paged: a decode dispatch computes the running rows padded to one of these counts
        # (multiples of the mesh's row shards), not every slot.
        self.decode_buckets = row_buckets(max_batch, row_shards(self.mesh, self.rules), min(DECODE_MIN_ROWS, max_batch))
        self._paging: PagedRows | None = None
        self._rows: list[Live | None] = []
        self._waiting: collections.deque[Live] = collections.deque()
        self.reset()
        self.generated_tokens = 0  # tokens sampled since construction (for throughput figures)
        self._dispatches = DispatchCounters()

    # --- submitting -----------------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        """Raise RequestError if `request` cannot run on this engine."""
        n = len(request.prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty")
        total = n + request.params.max_new_tokens
        if total > self.max_seq_len:
            raise RequestError(
                f"prompt ({n} tokens) + max_new_tokens ({request.params.max_new_tokens}) = {total} exceeds "
                f"the engine's context of {self.max_seq_len} tokens")
        if self._paging is not None:
            self._paging.check(total - 1)
        if request.params.stop and self.tokenizer is None:
            raise RequestError("stop strings need an engine with a tokenizer")
        self.check_sampling(request.params)
        self.check_logprobs(request.params.logprobs)

    def check_logprobs(self, n: int | None) -> None:
        """Raise RequestError if this engine cannot return `n` top log-probabilities (None: none asked)."""
        check_logprobs(n, self.max_logprobs)

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise RequestError if this engine cannot sample with `params` (a top_k above `max_top_k`)."""
        check_top_k(params.top_k, self.max_top_k, self.vocab_size)

    def submit(self, request: Request) -> None:
        """Queue a request (validated first); it starts at the next `step()` with a free row."""
        self.validate(request)
        seed = request.params.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        detok = IncrementalText(self.tokenizer) if self.tokenizer is not None else None
        self._waiting.append(Live(request, seed, detok=detok))

    def cancel(self, request: Request) -> bool:
        """Drop `request` whether waiting or running (its row is free for the next step); no event
        follows. False if the engine does not hold it (already finished or never submitted)."""
        for row, live in enumerate(self._rows):
            if live is not None and live.request is request:
                self._free(row)
                return True
        for live in self._waiting:
            if live.request is request:
                self._waiting.remove(live)
                return True
        return False

    def reset(self) -> None:
        """Drop every waiting and running request and rebuild the device state: after a failed
        step the donated state's buffers may be gone."""
        self._rows = [None] * self.max_batch
        self._waiting.clear()
        with self._on_mesh():
            if self.paged:
                self._paging = PagedRows(self.max_batch, self.max_seq_len, self.page_size, self.num_pages,
                                         self.prefix_cache)
                self._state = paged_steps.init_state(self.graphdef, self.params, self.max_batch, self.num_pages,
                                                     self.page_size, self._paging.pages_per_row)
            else:
                self._state = device.init_state(self.graphdef, self.params, self.max_batch, self.max_seq_len)

    def prefill_shapes(self) -> list[tuple[int, ...]]:
        """Every (rows, width) a prefill can have (paged: (rows, width, context pages)): the programs
        `warm_up` compiles."""
        if self.paged:
            return paged_prefill_shapes(self.prompt_bucket, self.max_seq_len, self.max_batch, self.page_size,
                                        self.prefix_cache)
        return prefill_shapes(self.prompt_bucket, self.max_seq_len, self.max_batch)

    def stats(self) -> dict[str, float | int]:
        """Counters since construction: rows per decode dispatch (`DispatchCounters`), tokens
        generated, requests waiting, and for a paged engine the pool's and prefix cache's
        (`PagedRows.stats`)."""
        out = dict(**self._dispatches.stats(), generated_tokens=self.generated_tokens, waiting=len(self._waiting))
        if self._paging is not None:
            out.update(self._paging.stats())
        return out

    def warm_up(self, logprobs: bool = False) -> int:
        """Compile every prefill bucket, the first-token sampler and the decode dispatch (nothing
        runs; the state is untouched); returns how many programs were compiled (0 if all were already).
        `logprobs` (with `max_logprobs` > 0) also compiles their log-probability variants and `score`
        for every prefill width."""
        with count_compiles() as log, self._on_mesh():
            for rows, width, *context in self.prefill_shapes():
                self._prefill_fn().lower(self.graphdef, self.params, self._state,
                                         self._prefill_batch(rows, width, (context or [width])[0], [])).compile()
            none = jnp.asarray(np.zeros(self.max_batch, bool))
            for n in [0] + ([self.max_logprobs] if logprobs and self.max_logprobs else []):
                device.sample_first.lower(self._state, none, self.eos_ids, self.max_top_k, self.rules, n).compile()
                for rows in self.decode_buckets if self.paged else (self.max_batch,):
                    fn, args = self._decode_call(list(range(rows)), none[:rows], n)
                    fn.lower(*args).compile()
            if logprobs and self.max_logprobs:
                for width in self.prefill_widths:
                    device.score_prompt.lower(self.graphdef, self.params, *score_inputs([0], width, 0.0, self.pad_id),
                                              self.max_logprobs).compile()
        return log.count

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        return len(self._waiting) + sum(r is not None for r in self._rows)

    # --- running ----------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Admit waiting requests into free rows and decode one dispatch; the events of this step."""
        events: list[Event] = []
        with self._on_mesh():
            self._admit(events)
            if self._paging is not None:
                for row in self._paging.make_room(self._rows, self.steps_per_dispatch):
                    self._waiting.appendleft(self._rows[row])  # back to the front; resumes where it stopped
                    self._rows[row] = None
            running = [row for row, live in enumerate(self._rows) if live is not None]
            if not running:
                return events
            self._dispatches.add(len(running), full=bool(self._waiting))
            want = self._logprobs_wanted(self._rows)
            # Contiguous: every slot (a row's cache cannot move); paged: the running rows, padded to a bucket.
            rows = dispatch_slots(running, self.decode_buckets, self.max_batch) if self.paged else range(self.max_batch)
            fn, args = self._decode_call(rows, jnp.asarray(np.asarray([self._rows[row] is not None for row in rows])),
                                         want)
            result = fn(*args)
            self._state, out, extra = result[0], np.asarray(result[1]), fetch_logprobs(result[2:])
        for j, row in enumerate(rows):  # output j is slot rows[j]'s
            live = self._rows[row]
            if live is not None:
                tokens = [int(t) for t in out[j] if t >= 0]  # a row's tokens come first, then -1s
                wanted = live.request.params.logprobs
                self._advance(row, tokens, events, row_logprobs(wanted, extra, j, len(tokens)))
        return events

    def score(self, prompt_ids: Sequence[int], top_n: int, temperature: float = 0.0) -> list[TokenLogprob]:
        """The log-probability of every prompt token after the first given the ones before it (as
        `sampling.token_logprobs` computes them at `temperature`) and the `top_n` most likely tokens
        there: len(prompt_ids) - 1 entries. One forward pass over the prompt, outside the decode state."""
        n = len(prompt_ids)
        if not 0 < n <= self.max_seq_len:
            raise RequestError(f"a prompt to score needs 1 to {self.max_seq_len} tokens, got {n}")
        self.check_logprobs(top_n)
        with self._on_mesh():
            return score_prompt(self.graphdef, self.params, prompt_ids, smallest_at_least(self.prefill_widths, n),
                                temperature, self.pad_id, self.max_logprobs, top_n)

    def _decode_call(self, rows: Sequence[int], keep: jax.Array, logprobs: int) -> tuple[Callable, tuple]:
        """The decode program of a dispatch over the slots `rows` and its arguments (warm-up
        lowers the very same call: the jit cache tells positional from default arguments)."""
        common = (self.steps_per_dispatch, self.eos_ids, self.max_top_k, logprobs)
        if not self.paged:
            return device.decode, (self.decode_graphdef, self.params, self._state, keep, *common)
        return paged_steps.decode_rows, (self.decode_graphdef, self.params, self._state,
                                         jnp.asarray(np.asarray(rows, np.int32)),
                                         jnp.asarray(self._paging.table[list(rows)]), keep, *common)

    def _logprobs_wanted(self, lives) -> int:
        """The static `logprobs` of this dispatch: `max_logprobs` when some row asks, else 0 (the plain program)."""
        asks = any(live is not None and live.request.params.logprobs is not None for live in lives)
        return self.max_logprobs if asks else 0

    def generate(self, requests: Iterable[Request], progress: Callable[[Generation], None] | None = None
                 ) -> list[Generation]:
        """Run `requests` to completion; results in the order given. `progress` sees each result."""
        requests = list(requests)
        for request in requests:
            self.submit(request)
        done: dict[int, Generation] = {}
        while self.pending:
            for event in self.step():
                if event.finished is not None:
                    done[id(event.request)] = event.finished
                    if progress is not None:
                        progress(event.finished)
        return [done[id(r)] for r in requests]

    # --- internals ----------------------------------------------------------------------------------

    def _on_mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _prefill_fn(self):
        return paged_steps.prefill if self.paged else device.prefill

    def _admit(self, events: list[Event]) -> None:
        """Prefill waiting requests into free rows (first come, first served; paged: while the pool
        has their pages) and sample the first token of each new one (not of a resumed one)."""
        free = [i for i, r in enumerate(self._rows) if r is None]
        admitted: list[RowPrefill] = []
        reserve, rounds = 0, {}
        if self._paging is not None:
            reserve = self._paging.growth(self._rows, self.steps_per_dispatch)
            self._paging.begin_wave()
        while free and self._waiting:
            live = self._waiting[0]
            item = RowPrefill(free[0], live, live.cached_tokens)  # resumed: all but the pending token
            if self._paging is not None:
                upto = live.tokens_after(self.steps_per_dispatch)
                admitted_at = self._paging.admit(item.row, item.tokens, upto, reserve)
                if admitted_at is None:
                    break
                item.start, rounds[item.row] = admitted_at
                reserve += self._paging.short(item.row, upto)
            admitted.append(item)
            self._rows[free.pop(0)] = self._waiting.popleft()
        by_shape: dict[tuple[int, int, int], list[RowPrefill]] = collections.defaultdict(list)
        for item in admitted:  # (contiguous: start 0, context = width)
            shape = context_width(self.prefill_widths, item.start, len(item.tokens))
            by_shape[(rounds.get(item.row, 0), *shape)].append(item)
        for (_, width, context), group in sorted(by_shape.items()):
            step = group_rows(context, self.max_seq_len, self.max_batch)
            for start in range(0, len(group), step):
                self._prefill(width, context, group[start: start + step])
        new = [item for item in admitted if not item.live.tokens]
        if new:
            fresh = np.zeros(self.max_batch, bool)
            fresh[[item.row for item in new]] = True
            want = self._logprobs_wanted([item.live for item in new])
            result = device.sample_first(self._state, jnp.asarray(fresh), self.eos_ids, self.max_top_k, self.rules,
                                         want)
            self._state, first, extra = result[0], np.asarray(result[1]), fetch_logprobs(result[2:])
            for item in new:
                wanted = item.live.request.params.logprobs
                self._advance(item.row, [int(first[item.row])], events, row_logprobs(wanted, extra, item.row, 1))

    def _free(self, row: int) -> None:
        self._rows[row] = None
        if self._paging is not None:
            self._paging.free(row)

    def _prefill_batch(self, rows: int, width: int, pages: int, group: list[RowPrefill]):
        """The prefill of `group` as a batch of `rows` x `width` (paged: over `pages` page-table columns)."""
        if self.paged:
            return paged_prefill_batch(rows, width, group, self._paging.table[:, :pages], self.pad_id,
                                       self.max_batch, self.vocab_size)
        return prefill_batch(rows, width, group, self.pad_id, self.max_batch, self.vocab_size)

    def _prefill(self, width: int, context: int, group: list[RowPrefill]) -> None:
        rows = 1 if len(group) == 1 else group_rows(context, self.max_seq_len, self.max_batch)
        batch = self._prefill_batch(rows, width, -(-context // self.page_size), group)
        self._state = self._prefill_fn()(self.graphdef, self.params, self._state, batch)

    def _advance(self, row: int, new_tokens: list[int], events: list[Event],
                 logprobs: list[TokenLogprob] | None = None) -> None:
        """Hand a row's new tokens (and their log-probabilities, when asked) to its request; finish
        and free the row when it is done."""
        live = self._rows[row]
        kept, delta, logprobs = live.add(new_tokens, self.eos_ids, logprobs)
        self.generated_tokens += len(kept)
        finished = None
        if live.finish_reason is not None:
            finished = live.generation()
            self._free(row)
        event = Event(live.request, kept, delta, finished, logprobs)
        if live.request.on_event is not None:
            live.request.on_event(event)
        events.append(event)
