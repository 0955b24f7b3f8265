"""Synthesis-side stages: turning synthesizer completions into training records (parse, dedup, decontaminate)."""
