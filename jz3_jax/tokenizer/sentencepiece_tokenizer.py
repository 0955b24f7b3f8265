"""`Tokenizer` backed by a SentencePiece model file (`tokenizer.model`, `tokenizer.model.v1`, ...)."""

from __future__ import annotations

import re

import sentencepiece

from .base import Tokenizer
from .errors import TokenizerError
from .hf_files import set_bos_eos_post_processor, write_hf_files
from .spm_bpe import build_sentencepiece_bpe

_BPE_MODEL_TYPE = 2  # TrainerSpec.ModelType.BPE


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; control/unknown piece strings in the text (e.g. "</s>") become their ids."""

    def __init__(self, path: str, chat_template: str | None = None) -> None:
        self._path = path
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as error:
            raise TokenizerError(f"cannot read SentencePiece model {path}: {error}") from error
        sp = self._sp
        size = sp.get_piece_size()
        reserved = [i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
        self._reserved_ids = {sp.id_to_piece(i): i for i in reserved}
        texts = sorted((piece for piece in self._reserved_ids if piece), key=len, reverse=True)
        self._reserved_pattern = re.compile("|".join(map(re.escape, texts))) if texts else None
        special_tokens = {
            "bos_token": _piece_or_none(sp, sp.bos_id()),
            "eos_token": _piece_or_none(sp, sp.eos_id()),
            "unk_token": _piece_or_none(sp, sp.unk_id()),
            "pad_token": _piece_or_none(sp, sp.pad_id()),
        }
        super().__init__(
            source=path,
            vocab_size=size,
            special_tokens=special_tokens,
            special_ids=set(reserved),
            chat_template=chat_template,
            adds_bos=True,  # the Llama/Mistral convention for SentencePiece models
        )

    def token_to_id(self, token: str) -> int | None:
        """The id of piece `token`, or None if the model has no such piece."""
        index = self._sp.piece_to_id(token)
        return index if self._sp.id_to_piece(index) == token else None

    def _encode_plain(self, text: str) -> list[int]:
        if self._reserved_pattern is None:
            return self._sp.encode(text)
        ids: list[int] = []
        start = 0
        # Each stretch between special pieces is encoded on its own (with its own dummy prefix), as llama.cpp does.
        for match in self._reserved_pattern.finditer(text):
            if match.start() > start:
                ids += self._sp.encode(text[start : match.start()])
            ids.append(self._reserved_ids[match.group()])
            start = match.end()
        if start < len(text):
            ids += self._sp.encode(text[start:])
        return ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        if self._reserved_pattern is None or not any(self._reserved_pattern.search(text) for text in texts):
            return self._sp.encode(texts)  # one call, so SentencePiece can use its threads
        return [self._encode_plain(text) for text in texts]

    def _decode_plain(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in self.special_ids])
        # SentencePiece drops control pieces when decoding, so spell them out between decoded stretches.
        parts: list[str] = []
        run: list[int] = []
        for index in ids:
            if index in self.special_ids:
                parts += [self._sp.decode(run), self._sp.id_to_piece(index)]
                run = []
            else:
                run.append(index)
        parts.append(self._sp.decode(run))
        return "".join(parts)

    def save(self, directory: str) -> None:
        """Write the model as HF files: a BPE tokenizer.json equivalent to this SentencePiece model."""
        backend = _to_tokenizers_bpe(self._path)
        add_bos = self.adds_bos
        set_bos_eos_post_processor(backend, self.special_tokens, add_bos=add_bos, add_eos=False)
        write_hf_files(
            directory,
            backend,
            special_tokens=self.special_tokens,
            chat_template=self.chat_template,
            extra_config={"add_bos_token": add_bos, "add_eos_token": False},
        )


def _piece_or_none(sp: sentencepiece.SentencePieceProcessor, index: int) -> str | None:
    return sp.id_to_piece(index) if 0 <= index < sp.get_piece_size() else None


def _to_tokenizers_bpe(path: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as handle:
        proto.ParseFromString(handle.read())
    normalizer = proto.normalizer_spec
    if proto.trainer_spec.model_type != _BPE_MODEL_TYPE:
        raise TokenizerError(f"{path}: only SentencePiece BPE models can be exported as HF files")
    if normalizer.name not in ("", "identity") or normalizer.remove_extra_whitespaces:
        raise TokenizerError(f"{path}: SentencePiece normalization {normalizer.name!r} cannot be exported as HF files")
    pieces = proto.pieces
    return build_sentencepiece_bpe(
        [piece.piece for piece in pieces],
        [piece.score for piece in pieces],
        [piece.type for piece in pieces],
        add_space_prefix=normalizer.add_dummy_prefix,
    )
