"""TFDS builders (array_record, no TensorFlow) for the evaluation sets.

`build(name, data_dir, manual_dir)` prepares `jz3_eval_<name>` with one `test` split of
`{id, question, gold, choices}` records. With the original test file under `manual_dir` (the same
layout as `eval.data_dir`) it reads that; otherwise it downloads the public file (the commit the
original evaluation used) through TFDS's download manager, which needs a network. Read the result
with `tfds.builder_from_directory(dir).as_data_source("test")`: text comes back as bytes.
"""

from __future__ import annotations

from pathlib import Path

from jz3_jax.eval.datasets import DATASETS, get_spec, problems_from_file
from jz3_jax.errors import EvalError

_JZ3 = "https://raw.githubusercontent.com/RUCAIBox/JiuZhang3.0/aae2f9119f57ccaa71c2780c6d63de93a5ee7cba/eval/data/"
URLS = {
    "gsm8k": _JZ3 + "gsm8k/test.jsonl", "math_oai": _JZ3 + "math-oai/test.jsonl", "math": _JZ3 + "math-oai/test.jsonl",
    "svamp": _JZ3 + "svamp/test.jsonl", "asdiv": _JZ3 + "asdiv/test.jsonl", "mawps": _JZ3 + "mawps/test.jsonl",
    "carp_en": _JZ3 + "carp_en/test.jsonl", "aqua": _JZ3 + "aqua/test.jsonl", "sat_math": _JZ3 + "sat_math/test.jsonl",
    "mmlu_stem": _JZ3 + "mmlu_stem/test.jsonl", "gsm_hard": _JZ3 + "gsm-hard/test.jsonl",
    "minerva_math": _JZ3 + "minerva_math/test.jsonl",
    "tabmwp": "https://raw.githubusercontent.com/lupantech/PromptPG/7cf61b1bec/data/tabmwp/problems_test1k.json",
}


def _unreachable(url: str, timeout_s: float = 5.0) -> str:
    """Why `url`'s host cannot be reached now ("" when it can)."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout_s).close()
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return ""


def builder_class(name: str):
    """A TFDS GeneratorBasedBuilder class for evaluation set `name`."""
    import tensorflow_datasets as tfds

    spec = get_spec(name)
    if name not in URLS:
        raise ValueError(f"no TFDS builder for {name!r}; builders: {', '.join(URLS)}")

    class EvalSetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = None  # no checksums file: TFDS's lookup of one needs importlib_resources
        MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put the original test file at MANUAL_DIR/{spec.files[-1]} "
                                        "(e.g. --manual_dir ../shared/data/eval), or build with a network.")

        def _info(self):
            features = tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "question": tfds.features.Text(), "gold": tfds.features.Text(),
                "choices": tfds.features.Sequence(tfds.features.Text())})
            return tfds.core.DatasetInfo(builder=self, features=features, homepage=URLS[name], disable_shuffling=True,
                                         description=f"{name} test set ({', '.join(spec.fields)})")

        def _split_generators(self, dl_manager):
            path = None
            manual = getattr(dl_manager, "_manual_dir", None)
            for candidate in spec.files:
                if manual is not None and (Path(manual) / candidate).is_file():
                    path = Path(manual) / candidate
                    break
            if path is None:
                reason = _unreachable(URLS[name])  # fail at once offline (TFDS would retry for minutes)
                if reason:
                    raise EvalError(f"cannot download {URLS[name]} ({reason}); " + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
                path = Path(dl_manager.download(URLS[name]))
                if name == "tabmwp" and path.suffix != ".json":
                    path = path.rename(path.with_suffix(".json"))
            return {"test": self._generate_examples(path)}

        def _generate_examples(self, path):
            for i, p in enumerate(problems_from_file(name, path)):
                yield i, {"id": p.id, "question": p.question, "gold": p.gold, "choices": list(p.choices or [])}

    EvalSetBuilder.__name__ = f"jz3_eval_{name}"
    EvalSetBuilder.name = f"jz3_eval_{name}"
    return EvalSetBuilder


def build(name: str, data_dir: str, manual_dir: str | None = None) -> Path:
    """Prepare the builder of `name` under `data_dir` (array_record); returns its directory."""
    import tensorflow_datasets as tfds

    builder = builder_class(name)(data_dir=data_dir, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return Path(builder.data_dir)


def builders() -> list[str]:
    return [n for n in DATASETS if n in URLS]
