"""The `eval` and `grade` stages: math benchmarks, answer grading, and a sandbox for model-written code."""
