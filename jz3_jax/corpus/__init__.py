"""The `corpus` stage: collect math texts and cut them into snippets."""
