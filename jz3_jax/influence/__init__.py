"""The `select` stage: gradient-influence (LESS) selection of candidate snippets."""
