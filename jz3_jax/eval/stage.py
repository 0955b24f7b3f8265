"""The `eval` stage (generate, run tools, grade) and the `grade` stage (regrade stored generations).

`eval` writes, under `RUN_DIR/eval/`: `samples/part-*.jsonl` (finished, ungraded samples, written
whole: the unit of resumption), and once every process is done, from process 0: `samples.jsonl`
(all samples in dataset and problem order, graded then, so the decoding loop never waits on a
grader and a rerun always grades with the current code), `metrics.json` and `table.md`. Each sample: dataset, id, prompt,
generation, tool_calls, pred, gold, choices (multiple choice), correct, correct_math_verify, reason,
finish_reason, tokens. Process i of n takes problems i, i + n, ... of the combined list.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from jz3_jax.eval.datasets import Problem, get_spec, load_problems
from jz3_jax.errors import EvalError
from jz3_jax.records.jsonl import read_lines
from jz3_jax.eval.grader.policies import check_policy
from jz3_jax.eval.grading import POLICIES, GradeItem, grade_all
from jz3_jax.eval.prompts import SETTINGS, build_prompt, stop_strings
from jz3_jax.eval.records import ShardWriter, read_shards, sample_key
from jz3_jax.eval.report import metrics, table_markdown
from jz3_jax.runtime import artifacts
from jz3_jax.runtime.paths import as_path, atomic_write

if TYPE_CHECKING:
    from jz3_jax.eval.config import EvalConfig
    from jz3_jax.eval.spec import EvalSpec, GradeSpec
    from jz3_jax.stages import StageContext


def _problems(ec: EvalConfig) -> list[Problem]:
    _check_policy(ec.grade_policy, "eval.grade_policy")
    if ec.setting not in SETTINGS:
        raise EvalError(f"eval.setting must be one of {', '.join(SETTINGS)}, got {ec.setting!r}")
    if not ec.datasets:
        raise EvalError("eval.datasets is empty: name at least one dataset (e.g. eval.datasets=jz3_mini)")
    names = list(dict.fromkeys(ec.datasets))  # a name given twice is evaluated once
    for name in names:
        get_spec(name)  # every name checked before any file is read
    problems: list[Problem] = []
    for name in names:
        problems += load_problems(name, ec.data_dir, ec.limit)
    return problems


def _record(problem: Problem, prompt: str, sample) -> dict:
    """A finished, not yet graded sample (grading happens once, when process 0 merges the shards)."""
    record = {"dataset": problem.dataset, "id": problem.id, "prompt": prompt, "generation": sample.generation,
              "tool_calls": sample.tool_calls, "gold": problem.gold, "finish_reason": sample.finish_reason,
              "tokens": sample.tokens}
    if problem.choices:
        record["choices"] = list(problem.choices)
    return record


def _graded(records: list[dict], policy: str, timeout_s: float, workers: int) -> list[dict]:
    """`records` with both graders' verdicts (graded on a pool of worker processes)."""
    items = [GradeItem(r["generation"], str(r["gold"]), tuple(r["choices"]) if r.get("choices") else None)
             for r in records]
    grades = grade_all(items, policy=policy, timeout_s=timeout_s, workers=workers, desc=f"grade ({policy})")
    return [{**r, "pred": g.pred, "correct": g.correct, "correct_math_verify": g.correct_math_verify,
             "reason": g.reason} for r, g in zip(records, grades)]


def _check_policy(policy: str, key: str) -> str:
    """`policy`, or an EvalError naming the config key and the choices."""
    try:
        return check_policy(policy)
    except ValueError:
        raise EvalError(f"{key} must be one of {', '.join(POLICIES)}, got {policy!r}") from None


def _write_outputs(stage_dir, samples: list[dict], extra: dict, setting: str | None, model: str | None) -> dict:
    """samples.jsonl, disagreements.jsonl (items where the two graders differ), metrics.json and,
    for `eval`, table.md."""
    result = {**metrics(samples), **extra}
    with atomic_write(artifacts.output(stage_dir, "eval.samples")) as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    with atomic_write(stage_dir / "disagreements.jsonl") as f:
        for s in samples:
            if bool(s["correct"]) != bool(s["correct_math_verify"]):
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    with atomic_write(artifacts.output(stage_dir, "eval.metrics")) as f:
        f.write(json.dumps(result, indent=1) + "\n")
    if setting is not None:
        with atomic_write(stage_dir / "table.md") as f:
            f.write(table_markdown(result, setting, model or "", result["policy"]))
    return result


def run_eval(spec: EvalSpec, ctx: StageContext) -> dict:
    """Generate, execute (tool setting) and grade this process's share of the problems not yet done;
    process 0 then writes samples.jsonl, metrics.json and table.md."""
    from jz3_jax.runtime import peers
    from jz3_jax.runtime.preemption import Preempted, TermFlag

    ec = spec.eval
    problems = _problems(ec)
    samples_dir = ctx.stage_dir / "samples"
    done = {sample_key(r) for r in read_shards(samples_dir)}
    mine = [p for i, p in enumerate(problems)
            if i % ctx.process_count == ctx.process_index and (p.dataset, p.id) not in done]
    ctx.logger.info("eval (%s): %d problems in %s, %d done, %d for process %d", ec.setting, len(problems),
                    ",".join(ec.datasets), len(done), len(mine), ctx.process_index)
    start, preempted = time.perf_counter(), False
    if mine:
        preempted = _generate(spec, ctx, mine, samples_dir, TermFlag())
    error = Preempted() if preempted else None
    peers.agree("eval samples written", error)  # every process's shards are complete past this point
    if ctx.process_index != 0:
        return {"generated": len(mine)}
    order = {(p.dataset, p.id): i for i, p in enumerate(problems)}
    samples = sorted((r for r in read_shards(samples_dir) if sample_key(r) in order), key=lambda r: order[sample_key(r)])
    missing = len(problems) - len(samples)
    if missing:
        raise EvalError(f"{missing} samples are missing after generation; rerun the same command")
    samples = _graded(samples, ec.grade_policy, ec.grade_timeout_s, ec.grade_workers)  # always the current graders
    model = spec.model.checkpoint or f"{spec.model.family}-random"
    result = _write_outputs(ctx.stage_dir, samples, {"policy": ec.grade_policy, "setting": ec.setting, "model": model,
                                                     "tool_calls": sum(len(s["tool_calls"]) for s in samples),
                                                     "seconds": round(time.perf_counter() - start, 2)},
                            ec.setting, model)
    ctx.logger.info("eval: accuracy %.4f (%s policy; math-verify %.4f, agreement %.4f) over %d samples",
                    result["accuracy"], ec.grade_policy, result["accuracy_math_verify"], result["agreement"],
                    result["n"])
    return result


def _generate(spec: EvalSpec, ctx: StageContext, problems: list[Problem], samples_dir, term) -> bool:
    """Run the engine over `problems`, writing shards; True if SIGTERM stopped it."""
    from jz3_jax.decoding.factory import load_engine
    from jz3_jax.eval.sandbox_pool import SandboxPool
    from jz3_jax.eval.tool_loop import EvalGenerator, Sample

    ec = spec.eval
    loaded = load_engine(spec, ctx.logger)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise EvalError("eval needs a tokenizer: set model.tokenizer or use a checkpoint that has one")
    use_chat = ec.chat_template and tokenizer.chat_template is not None
    if ec.chat_template and not use_chat:
        ctx.logger.info("eval.chat_template is on but the tokenizer has no chat template: plain prompts")
    by_key: dict = {}
    samples = []
    for p in problems:
        shots = get_spec(p.dataset).shots if ec.shots < 0 else ec.shots
        prompt = build_prompt(p, ec.setting, shots)
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}]) if use_chat else prompt
        by_key[(p.dataset, p.id)] = (p, prompt)
        samples.append(Sample((p.dataset, p.id), text))
    writer = ShardWriter(samples_dir, ctx.process_index, ec.shard_size, key="eval.shard_size")
    finished = [0]

    def done(sample) -> None:
        problem, prompt = by_key[sample.key]
        writer.add(_record(problem, prompt, sample))
        finished[0] += 1
        if finished[0] % 10 == 0:
            ctx.logger.info("eval: %d/%d samples done", finished[0], len(problems))

    pool = SandboxPool(ec.sandbox_workers, timeout_s=ec.tool_timeout_s, memory_mb=ec.tool_memory_mb,
                       isolation=ec.isolation, allow_unsandboxed=ec.allow_unsandboxed
                       ) if ec.setting == "tool" else None
    generator = EvalGenerator(loaded.engine, tokenizer, setting=ec.setting, stop=stop_strings(ec.setting),
                              max_new_tokens=ec.max_new_tokens, max_tool_calls=ec.max_tool_calls, pool=pool,
                              output_chars=ec.tool_output_chars, add_bos=tokenizer.adds_bos and not use_chat)
    try:
        completed = generator.run(samples, done, should_stop=lambda: term.raised)
    finally:
        writer.flush()
        term.restore()
        if pool is not None:
            pool.close()
    if not completed:
        ctx.logger.info("SIGTERM: %d samples written; rerun the same command to resume", finished[0])
    return not completed


REQUIRED = ("dataset", "generation", "gold")


def _generation_problem(record: dict) -> str | None:
    """Why `record` is not a generation record (None when it is one)."""
    for field in REQUIRED:
        if field not in record:
            return f"missing field {field!r} (required: {', '.join(REQUIRED)})"
    if record["dataset"] in ("aqua", "sat_math", "mmlu_stem") and not record.get("choices"):
        return f"missing field 'choices' (dataset {record['dataset']} is multiple choice)"
    return None


def read_generations(path: str) -> list[dict]:
    """The records of a generations file, checked: each line names what is missing where."""
    source = as_path(path)
    if not source.is_file():
        raise EvalError(f"grade.input {path!r} does not exist (a jsonl file with {', '.join(REQUIRED)} per line)")
    records = [line.record for line in read_lines(source, error=EvalError, validate=_generation_problem)]
    if not records:
        raise EvalError(f"grade.input {path!r} holds no records")
    return records


def run_grade(spec: GradeSpec, ctx: StageContext) -> dict | None:
    """Regrade `grade.input` with both graders; process 0 writes grade/samples.jsonl and metrics.json."""
    if not spec.grade.input:
        raise EvalError("grade needs grade.input: a jsonl file with dataset, generation, gold (and choices) per line")
    gc = spec.grade
    _check_policy(gc.policy, "grade.policy")
    records = read_generations(gc.input)
    if ctx.process_index != 0:
        return None
    out = _graded(records, gc.policy, gc.timeout_s, gc.workers)
    result = _write_outputs(ctx.stage_dir, out, {"policy": gc.policy}, None, None)
    ctx.logger.info("grade: accuracy %.4f (%s policy; math-verify %.4f, agreement %.4f) over %d records",
                    result["accuracy"], gc.policy, result["accuracy_math_verify"], result["agreement"], result["n"])
    return result
