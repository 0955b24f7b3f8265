"""The prompt library shared by distill and synthesize: education-stage and tool prompts for math snippets.

`library.render(snippet, level, kind)` writes one prompt; `plan.PromptPlan` decides which
(level, kind) prompts each snippet gets. This is core code: it imports no stage package.
"""
