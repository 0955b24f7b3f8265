"""Ablation: the size of the data synthesis model.

`pipeline.synthesizer` is the base checkpoint both sft rounds fine-tune (the final model stays
`model.checkpoint`). The paths are where you keep the checkpoints (HF dirs or .gguf files): the
paper's synthesizer is DeepSeekMath-7B-RL; compare it with smaller bases of your choice.
"""

SWEEP = [
    {"pipeline.synthesizer": "checkpoints/deepseek-math-7b-rl"},
    {"pipeline.synthesizer": "checkpoints/deepseek-coder-1.3b-instruct"},
    {"pipeline.synthesizer": "checkpoints/SmolLM2-135M-Instruct"},
]
