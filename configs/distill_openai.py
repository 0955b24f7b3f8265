"""The paper's teacher settings for `corpus` + `distill` against the OpenAI API (or any compatible one).

gpt-4o, temperature 0.6, up to 2,500 new tokens, 150 requests per minute, one random education
stage per snippet (the release's "mix" mode), natural-language answers (add tool answers with
`distill.kinds=cot,tool`: two calls per snippet). The key is read
from $OPENAI_API_KEY. Set a budget before pointing it at a paid API, e.g.
`distill.max_calls=5300 distill.max_tokens=20000000`; prices give report.json a cost estimate.

    python -m jz3_jax.launch corpus  --config configs/distill_openai.py --run-dir runs/kd corpus.sources=texts/
    python -m jz3_jax.launch distill --config configs/distill_openai.py --run-dir runs/kd distill.max_calls=100
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/distill"
    cfg.corpus.max_chars = 1000
    t = cfg.teacher
    t.base_url = "https://api.openai.com/v1"
    t.model = "gpt-4o"
    t.temperature = 0.6
    t.max_tokens = 2500
    t.price_input_per_1m = 2.5  # USD per million tokens at the time of writing; check your provider's prices
    t.price_output_per_1m = 10.0
    d = cfg.distill
    d.level_policy = "random"
    d.kinds = ["cot"]
    d.concurrency = 8
    d.requests_per_minute = 150
    return cfg
