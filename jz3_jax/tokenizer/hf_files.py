"""Read and write the files of a Hugging Face tokenizer directory (besides tokenizer.json itself)."""

from __future__ import annotations

import json
import os
from typing import Any

from tokenizers import Tokenizer, processors

from .base import NAMED_SPECIAL_TOKENS
from .errors import TokenizerError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_JSON_FILE = "chat_template.json"


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in `path`, or {} when the file does not exist."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise TokenizerError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} does not hold a JSON object")
    return data


def read_special_tokens(directory: str, config: dict[str, Any]) -> dict[str, str | None]:
    """bos/eos/unk/pad token strings from tokenizer_config.json, falling back to special_tokens_map.json."""
    fallback = read_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE))
    return {name: _token_text(config.get(name, fallback.get(name))) for name in NAMED_SPECIAL_TOKENS}


def read_chat_template(directory: str, config: dict[str, Any]) -> str | None:
    """The chat template from chat_template.jinja, chat_template.json or tokenizer_config.json, in that order."""
    jinja_path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as handle:
            return handle.read()
    template = read_json(os.path.join(directory, CHAT_TEMPLATE_JSON_FILE)).get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) and template else None


def write_hf_files(
    directory: str,
    backend: Tokenizer,
    *,
    special_tokens: dict[str, str | None],
    chat_template: str | None,
    extra_config: dict[str, Any],
) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for `AutoTokenizer.from_pretrained`."""
    os.makedirs(directory, exist_ok=True)
    backend.save(os.path.join(directory, TOKENIZER_FILE))
    named = {name: token for name, token in special_tokens.items() if token is not None}
    # The generic class loads tokenizer.json as is; a model-specific class would rebuild the pipeline itself.
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        **extra_config,
        **named,
    }
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(os.path.join(directory, CONFIG_FILE), config)
    _write_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE), named)


def set_bos_eos_post_processor(
    backend: Tokenizer, special_tokens: dict[str, str | None], *, add_bos: bool, add_eos: bool
) -> None:
    """Make `backend` add BOS/EOS by default, for consumers of the exported tokenizer.json.

    Our own `Tokenizer.encode` never runs the post-processor; BOS/EOS come only from its flags.
    """
    bos = special_tokens.get("bos_token") if add_bos else None
    eos = special_tokens.get("eos_token") if add_eos else None
    if bos is None and eos is None:
        return

    def sequence(segment: int, text: str) -> list[str]:
        return [*([f"{bos}:{segment}"] if bos else []), f"{text}:{segment}", *([f"{eos}:{segment}"] if eos else [])]

    single = " ".join(sequence(0, "$A"))
    pair = " ".join([*sequence(0, "$A"), *sequence(1, "$B")])
    specials = [(token, backend.token_to_id(token)) for token in dict.fromkeys(t for t in (bos, eos) if t)]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _token_text(value: Any) -> str | None:
    # transformers writes special tokens either as strings or as serialized AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
