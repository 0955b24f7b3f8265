"""Generation for evaluation: greedy decoding through the engine, with the tool loop.

Every sample is a small state machine over the engine's continuous batching. In the tool setting a
generation call that ends at the stop string "```output" right after a ```python block has that
block run in the sandbox (on the pool's worker threads, so the engine keeps decoding the other
rows); its output is appended as "```output\\n...\\n```\\n" and the sample continues, up to
`max_tool_calls` runs. A generation that already holds a `\\boxed{}` answer is not executed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from typing import Callable, Iterable

from jz3_jax.decoding import Request, SamplingParams
from jz3_jax.eval.sandbox import SandboxResult
from jz3_jax.eval.sandbox_pool import SandboxPool

CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@dataclasses.dataclass
class Sample:
    """One problem being generated: `prompt_text` is what the model continues (chat-templated or
    not); `generation` grows with each call and each appended output block."""

    key: object
    prompt_text: str
    generation: str = ""
    tool_calls: list[dict] = dataclasses.field(default_factory=list)
    finish_reason: str = ""
    tokens: int = 0


def program_to_run(segment: str) -> str | None:
    """The last python block of a generation call that ended at "```output", or None when the
    call did not end in a code fence or already gives a boxed answer."""
    if not segment.rstrip().endswith("```") or "boxed" in segment:
        return None
    blocks = CODE_BLOCK.findall(segment)
    return blocks[-1] if blocks else None


def tool_output(result: SandboxResult, limit: int) -> str:
    """What the model sees of a run: stdout, or the error's last line; cut to `limit` characters."""
    if result.status == "timeout":
        text = "TimeoutError: the program ran out of time"
    elif result.status == "memory":
        text = "MemoryError: the program ran out of memory"
    elif result.status == "ok":
        text = result.stdout.strip()
    else:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        text = (result.stdout.strip() + "\n" + (lines[-1] if lines else f"exited with {result.status}")).strip()
    return text[:limit]


class EvalGenerator:
    """Runs samples to completion on `engine` with greedy settings and (tool setting) the sandbox."""

    def __init__(self, engine, tokenizer, *, setting: str, stop: Iterable[str], max_new_tokens: int,
                 max_tool_calls: int = 4, pool: SandboxPool | None = None, output_chars: int = 400,
                 add_bos: bool = False):
        self.engine, self.tokenizer = engine, tokenizer
        self.setting, self.stop = setting, tuple(stop)
        self.max_new_tokens, self.max_tool_calls = max_new_tokens, max_tool_calls
        self.pool, self.output_chars, self.add_bos = pool, output_chars, add_bos
        self._running: dict[concurrent.futures.Future, tuple[Sample, str]] = {}

    def _request(self, sample: Sample) -> Request | None:
        ids = self.tokenizer.encode(sample.prompt_text + sample.generation, add_bos=self.add_bos)
        room = self.engine.max_seq_len - len(ids)
        if room < 1:
            return None
        params = SamplingParams(temperature=0.0, max_new_tokens=min(self.max_new_tokens, room), seed=0,
                                stop=self.stop)
        return Request(ids, params, id=sample)

    def _submit(self, sample: Sample, done: Callable[[Sample], None]) -> None:
        request = self._request(sample)
        if request is None:
            sample.finish_reason = "length"
            done(sample)
        else:
            self.engine.submit(request)

    def _finished_call(self, sample: Sample, text: str, reason: str, tokens: int, done) -> None:
        sample.generation += text
        sample.tokens += tokens
        code = program_to_run(text) if self.setting == "tool" and reason == "stop" else None
        if code is None or len(sample.tool_calls) >= self.max_tool_calls or self.pool is None:
            sample.finish_reason = reason
            done(sample)
            return
        self._running[self.pool.submit(code)] = (sample, code)

    def run(self, samples: Iterable[Sample], done: Callable[[Sample], None],
            should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Generate every sample; `done(sample)` as each finishes. Returns False if `should_stop`
        ended the run early (unfinished samples are dropped)."""
        queue = list(samples)[::-1]
        while queue or self.engine.pending or self._running:
            while queue and self.engine.pending < 2 * self.engine.max_batch:
                self._submit(queue.pop(), done)
            if self.engine.pending:
                for event in self.engine.step():
                    g = event.finished
                    if g is not None:
                        self._finished_call(event.request.id, g.text or "", g.finish_reason, len(g.token_ids), done)
            elif self._running:
                concurrent.futures.wait(list(self._running), timeout=0.5,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
            for future in [f for f in self._running if f.done()]:
                sample, code = self._running.pop(future)
                result = future.result()
                output = tool_output(result, self.output_chars)
                sample.tool_calls.append({"code": code, "status": result.status, "output": output,
                                          "seconds": result.seconds})
                sample.generation += f"```output\n{output}\n```\n"
                self._submit(sample, done)
            if should_stop():
                for future in self._running:
                    future.cancel()
                return False
        return True
