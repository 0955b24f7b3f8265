"""Ablation: no boost round vs random vs influence (LESS) selection of the boost round's snippets.

    python -m jz3_jax.launch pipeline --config configs/demo.py --sweep-file configs/ablations/selection.py --dry-run

- `pipeline.boost=false`: no selection and no second round; the initial synthesizer writes the corpus;
- `select.method=random`: the boost round asks the teacher about as many snippets (`select.top_k`),
  drawn at random;
- `select.method=influence`: the recipe (gradient influence against `select.targets`).
"""

SWEEP = [
    {"pipeline.boost": False},
    {"select.method": "random"},
    {"select.method": "influence"},
]
