"""The prompt library shared by distill and synthesize: education-stage and tool prompts for math snippets."""
