"""The `distill` stage: a teacher writes problems and solutions for snippets (cached, budgeted)."""
