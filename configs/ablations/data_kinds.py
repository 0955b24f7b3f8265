"""Ablation: natural-language CoT data only, tool-use (Python) data only, or both.

The kinds of prompt both the teacher (`distill.kinds`) and the synthesizer (`synthesize.kinds`) get.
"""

SWEEP = [
    {"distill.kinds": ["cot"], "synthesize.kinds": ["cot"]},
    {"distill.kinds": ["tool"], "synthesize.kinds": ["tool"]},
    {"distill.kinds": ["cot", "tool"], "synthesize.kinds": ["cot", "tool"]},
]
