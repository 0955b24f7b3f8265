"""The tool loop over a scripted engine: code runs in the sandbox, its output is appended, rounds are capped."""

from __future__ import annotations

from jz3_jax.decoding.engine import Event, Generation
from jz3_jax.eval.sandbox import SandboxResult
from jz3_jax.eval.sandbox_pool import SandboxPool
from jz3_jax.eval.tool_loop import EvalGenerator, Sample, program_to_run, tool_output


class ByteTokenizer:
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return list(text.encode())


class ScriptedEngine:
    """Answers each request with `script(context_text)`, one request per step, like a real engine would."""

    max_batch, max_seq_len = 4, 100000

    def __init__(self, script):
        self.script, self.waiting, self.contexts = script, [], []

    @property
    def pending(self) -> int:
        return len(self.waiting)

    def submit(self, request) -> None:
        self.waiting.append(request)

    def step(self) -> list[Event]:
        request = self.waiting.pop(0)
        context = bytes(request.prompt_ids).decode()
        self.contexts.append(context)
        text, reason = self.script(context)
        return [Event(request, [1], text, Generation(request.id, list(request.prompt_ids), [1] * len(text), text,
                                                     reason, 0))]


def test_program_to_run_needs_a_closing_fence_and_no_boxed_answer():
    assert program_to_run("Let me compute.\n```python\nprint(1 + 1)\n```\n") == "print(1 + 1)\n"
    assert program_to_run("```python\nprint(1)\n```\nSo \\boxed{1}") is None
    assert program_to_run("no code here") is None


def test_tool_output_shows_stdout_or_the_last_error_line():
    assert tool_output(SandboxResult("ok", "42\n", "", 0.1), 400) == "42"
    err = SandboxResult("error", "", "Traceback...\n  File x\nNameError: name 'y' is not defined\n", 0.1)
    assert tool_output(err, 400) == "NameError: name 'y' is not defined"
    assert tool_output(SandboxResult("timeout", "", "", 5.0), 400).startswith("TimeoutError")
    assert tool_output(SandboxResult("ok", "x" * 1000, "", 0.1), 400) == "x" * 400


def test_code_runs_and_its_output_is_appended_then_generation_continues():
    def script(context):
        if "```output" not in context:
            return "I will compute.\n```python\nprint(sum(range(1, 11)))\n```\n", "stop"
        return "The program printed 55, so the answer is \\boxed{55}.", "stop"

    engine, finished = ScriptedEngine(script), []
    with SandboxPool(workers=2) as pool:
        generator = EvalGenerator(engine, ByteTokenizer(), setting="tool", stop=("```output", "\n\n---"),
                                  max_new_tokens=64, max_tool_calls=4, pool=pool)
        assert generator.run([Sample("k", "## Question\nq\n\n## Code Solution\n")], finished.append)
    (sample,) = finished
    assert sample.generation == ("I will compute.\n```python\nprint(sum(range(1, 11)))\n```\n```output\n55\n```\n"
                                 "The program printed 55, so the answer is \\boxed{55}.")
    assert [c["status"] for c in sample.tool_calls] == ["ok"] and sample.tool_calls[0]["output"] == "55"
    assert engine.contexts[1].endswith("```output\n55\n```\n")  # the second call continues after the output


def test_tool_rounds_stop_at_max_tool_calls():
    engine, finished = ScriptedEngine(lambda context: ("```python\nprint('again')\n```\n", "stop")), []
    with SandboxPool(workers=2) as pool:
        generator = EvalGenerator(engine, ByteTokenizer(), setting="tool", stop=("```output",), max_new_tokens=64,
                                  max_tool_calls=2, pool=pool)
        generator.run([Sample("a", "p"), Sample("b", "p")], finished.append)
    assert len(finished) == 2
    assert all(len(s.tool_calls) == 2 and s.generation.count("```output\nagain\n```") == 2 for s in finished)
    assert len(engine.contexts) == 6  # 3 calls per sample: two runs, then one that is not executed


def test_cot_setting_never_executes_code():
    engine, finished = ScriptedEngine(lambda context: ("```python\nprint(1)\n```\n", "stop")), []
    EvalGenerator(engine, ByteTokenizer(), setting="cot", stop=("\n\n---",), max_new_tokens=64).run(
        [Sample("a", "p")], finished.append)
    assert finished[0].tool_calls == [] and len(engine.contexts) == 1
