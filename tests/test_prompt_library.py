"""The prompt library: every level and kind renders any snippet verbatim; the level plan and its keys."""

from __future__ import annotations

import collections

import pytest

from jz3_jax.distill.config import DistillConfig
from jz3_jax.prompts.library import KINDS, LEVELS, PROBLEM_HEADER, render
from jz3_jax.prompts.plan import PromptPlan, PromptPlanError
from jz3_jax.synth.config import SynthesizeConfig
from jz3_jax.synth.parse import Parsed, parse_completion

NASTY = ("Let {x} be {} and {0} with {name!r} %s %(k)d $\\frac{a}{b}$, \\section{Intro} \\\\ \\n "
         "∫₀¹ e^{-x²} dx ≈ 0.7468 — naïve café, 数学, emoji 🧮, a trailing backslash \\")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", LEVELS)
def test_every_level_renders_the_snippet_verbatim(level, kind):
    prompt = render(NASTY, level, kind)
    assert NASTY in prompt and prompt.count(NASTY) == 1
    assert prompt.endswith(f"\n\n{PROBLEM_HEADER}\n")
    assert ("## Code Solution" if kind == "tool" else "## Solution") in prompt and "\\boxed{" in prompt
    if kind == "tool":
        assert "```python" in prompt
    assert render(NASTY, level, kind) == prompt  # deterministic


def test_levels_differ_and_the_answer_format_is_the_one_filter_parses():
    prompts = {render("x + y = 2", level) for level in LEVELS}
    assert len(prompts) == len(LEVELS) == 8
    answer = "A new problem.\n\n## Solution\nSo $\\boxed{2}$."  # what the teacher writes after the header
    parsed = parse_completion(answer, "cot")
    assert parsed == Parsed("A new problem.", "So $\\boxed{2}$.")
    with pytest.raises(ValueError, match="unknown education level"):
        render("x", "kindergarten")
    with pytest.raises(ValueError, match="unknown prompt kind"):
        render("x", "aime", "essay")


def test_config_defaults_name_all_eight_levels():
    assert DistillConfig().levels == list(LEVELS) and SynthesizeConfig().levels == list(LEVELS)
    assert len(LEVELS) == 8 and LEVELS[0] == "grade_school" and LEVELS[-1] == "aime"


def test_random_policy_draws_one_level_per_snippet_stably_and_spread():
    plan = PromptPlan.build("distill", LEVELS, ["cot"], "random", seed=3)
    picks = [plan.choices(f"s{i}", "web") for i in range(800)]
    assert all(len(p) == 1 for p in picks)
    assert picks == [plan.choices(f"s{i}", "web") for i in range(800)]  # the same in every run
    counts = collections.Counter(level for ((level, _),) in picks)
    assert set(counts) == set(LEVELS) and min(counts.values()) > 60  # 100 expected per level
    other = PromptPlan.build("distill", LEVELS, ["cot"], "random", seed=4)
    assert [other.choices(f"s{i}", "web") for i in range(800)] != picks


def test_all_fixed_kinds_and_per_source_overrides():
    plan = PromptPlan.build("distill", ["amc8", "aime"], ["cot", "tool"], "all", 0,
                            source_levels=["mmiqc=college"], source_kinds=["mmiqc=tool"])
    assert plan.choices("a", "web") == [("amc8", "cot"), ("amc8", "tool"), ("aime", "cot"), ("aime", "tool")]
    assert plan.choices("a", "mmiqc") == [("college", "tool")]
    fixed = PromptPlan.build("synthesize", ["high_school", "aime"], ["cot"], "fixed", 0)
    assert fixed.choices("a", "web") == [("high_school", "cot")]
    (prompt,) = fixed.prompts("s1", "web", NASTY)
    assert prompt.id == "s1:high_school:cot" and NASTY in prompt.prompt


@pytest.mark.parametrize("kwargs, message", [
    ({"levels": ["kindergarten"]}, "distill.levels: unknown 'kindergarten'"),
    ({"kinds": ["essay"]}, "distill.kinds: unknown 'essay'"),
    ({"policy": "mix"}, "distill.level_policy must be one of"),
    ({"levels": ["aime", "aime"]}, "lists a value twice"),
    ({"source_levels": ["web"]}, "expected SOURCE=item+item"),
    ({"source_kinds": ["web=cot+poem"]}, "distill.source_kinds (web): unknown 'poem'"),
])
def test_bad_settings_name_the_key(kwargs, message):
    settings = {"levels": LEVELS, "kinds": ["cot"], "policy": "random", "source_levels": (), "source_kinds": ()}
    settings.update(kwargs)
    with pytest.raises(PromptPlanError) as info:
        PromptPlan.build("distill", settings["levels"], settings["kinds"], settings["policy"], 0,
                         settings["source_levels"], settings["source_kinds"])
    assert message in str(info.value)


def test_snippet_records_from_corpus_or_select(tmp_path):
    from jz3_jax.prompts.snippets import SnippetError, content_id, read_snippets

    path = tmp_path / "selected.jsonl"
    path.write_text('{"id": 7, "source": "web", "text": "a"}\n\n{"text": "b", "score": 0.5}\n{"id": 7, "text": "c"}\n')
    assert [(s.id, s.source, s.text) for s in read_snippets(path)] == [("7", "web", "a"), (content_id("b"), "", "b")]
    for line, message in [('{"id": 1}', ":1: field 'text'"), ('{"id": true, "text": "x"}', ":1: field 'id'"),
                          ("[1]", ":1: expected a JSON object"), ("{", ":1: not valid JSON")]:
        path.write_text(line + "\n")
        with pytest.raises(SnippetError, match="selected.jsonl") as info:
            read_snippets(path)
        assert message in str(info.value)
    with pytest.raises(SnippetError, match="synthesize.snippets"):
        read_snippets(tmp_path / "nope.jsonl", key="synthesize.snippets")
