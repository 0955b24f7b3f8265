"""Ablation: the size of the KD set (teacher calls).

`distill.num_snippets` snippets go to the teacher in the first round and `select.top_k` selected
ones in the boost round (the paper: 5.3k + 4k = 9.3k calls). Scale both down for a CPU demo run.
"""

SWEEP = [
    {"distill.num_snippets": initial, "select.top_k": boost}
    for initial, boost in ((1000, 1000), (2650, 2000), (5300, 4000))
]
