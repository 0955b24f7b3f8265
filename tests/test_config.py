"""Config schema, `key.path=value` overrides and Python/JSON config files (all in-process, no JAX)."""

from __future__ import annotations

import json
import math

import pytest

from jz3_jax.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flat_keys,
    load_config,
    parse_override,
    save_config,
)
from jz3_jax.config.schema import DEFAULT_RULES


def _set(*overrides: str) -> Config:
    return apply_overrides(Config(), list(overrides))


# --- overrides: parsing to the declared type -------------------------------------------------


@pytest.mark.parametrize(
    "override, key, expected, tp",
    [
        ("model.num_layers=3", "model.num_layers", 3, int),
        ("model.num_layers=-1", "model.num_layers", -1, int),
        ("train.steps=1e3", "train.steps", 1000, int),
        ("train.steps=2.0", "train.steps", 2, int),
        ("optimizer.lr=3e-4", "optimizer.lr", 3e-4, float),
        ("optimizer.lr=1", "optimizer.lr", 1.0, float),
        ("optimizer.lr=0.5", "optimizer.lr", 0.5, float),
        ("model.qkv_bias=true", "model.qkv_bias", True, bool),
        ("model.qkv_bias=True", "model.qkv_bias", True, bool),
        ("model.qkv_bias=1", "model.qkv_bias", True, bool),
        ("model.tie_embeddings=yes", "model.tie_embeddings", True, bool),
        ("bench.reference=false", "bench.reference", False, bool),
        ("bench.reference=0", "bench.reference", False, bool),
        ("bench.reference=off", "bench.reference", False, bool),
        ("optimizer.schedule=wsd", "optimizer.schedule", "wsd", str),
        ("run_dir=runs/x=y", "run_dir", "runs/x=y", str),  # only the first "=" splits
        ("data.train_path=", "data.train_path", "", str),
        ("mesh.rules=a,b,c", "mesh.rules", ["a", "b", "c"], list),
        ("mesh.rules=batch=data+fsdp, embed=", "mesh.rules", ["batch=data+fsdp", "embed="], list),
        ("mesh.rules=", "mesh.rules", [], list),
        ("seed=7", "seed", 7, int),
    ],
)
def test_override_parses_to_declared_type(override, key, expected, tp):
    cfg = _set(override)
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert type(node) is tp
    assert node == expected


def test_float_override_is_exact():
    cfg = _set("optimizer.lr=3e-4", "optimizer.b2=0.999")
    assert cfg.optimizer.lr == 0.0003
    assert cfg.optimizer.b2 == 0.999


def test_overrides_apply_in_order_and_leave_other_keys_alone():
    cfg = _set("model.num_layers=3", "optimizer.lr=1e-3", "model.num_layers=5")
    default = Config()
    assert cfg.model.num_layers == 5
    assert cfg.optimizer.lr == 1e-3
    assert cfg.model.hidden_size == default.model.hidden_size
    assert cfg.optimizer.weight_decay == default.optimizer.weight_decay
    assert cfg.mesh.rules == DEFAULT_RULES


def test_default_configs_do_not_share_mutable_lists():
    a, b = Config(), Config()
    apply_overrides(a, ["mesh.rules=x=data"])
    assert a.mesh.rules == ["x=data"]
    assert b.mesh.rules == DEFAULT_RULES


def test_parse_override_splits_on_first_equals():
    assert parse_override("a.b=c=d") == ("a.b", "c=d")
    assert parse_override(" model.num_layers =3") == ("model.num_layers", "3")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("model.num_layers")


# --- overrides: errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("optimzer.lr=1", "optimizer.lr"),
        ("optimizer.lrr=1", "optimizer.lr"),
        ("model.num_layer=3", "model.num_layers"),
        ("lr=1", "optimizer.lr"),  # a bare leaf name matches on the last component
    ],
)
def test_unknown_key_suggests_closest(override, suggestion):
    with pytest.raises(ConfigError) as info:
        _set(override)
    message = str(info.value)
    assert repr(override.split("=")[0]) in message
    assert "did you mean" in message
    assert suggestion in message


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        _set("zzzzzzzz.qqqqqq=1")
    assert "unknown config key 'zzzzzzzz.qqqqqq'" in str(info.value)
    assert "did you mean" not in str(info.value)


def test_key_below_a_leaf_is_unknown():
    with pytest.raises(ConfigError, match="unknown config key 'seed.x'"):
        _set("seed.x=1")


def test_setting_a_whole_section_is_an_error():
    with pytest.raises(ConfigError, match="section"):
        _set("optimizer=1")


@pytest.mark.parametrize(
    "override, key, type_name, value",
    [
        ("optimizer.lr=abc", "optimizer.lr", "float", "abc"),
        ("model.num_layers=abc", "model.num_layers", "int", "abc"),
        ("model.num_layers=2.5", "model.num_layers", "int", "2.5"),
        ("model.num_layers=nan", "model.num_layers", "int", "nan"),
        ("model.qkv_bias=maybe", "model.qkv_bias", "bool", "maybe"),
        ("train.steps=", "train.steps", "int", ""),
    ],
)
def test_wrong_type_error_names_key_type_and_value(override, key, type_name, value):
    with pytest.raises(ConfigError) as info:
        _set(override)
    message = str(info.value)
    assert repr(key) in message
    assert f"expects {type_name}" in message
    assert repr(value) in message


def test_failed_override_is_config_error_not_plain_value_error():
    # The launcher turns UserError (ConfigError's base) into exit 2; a bare ValueError would crash it.
    with pytest.raises(ConfigError):
        _set("optimizer.lr=1e-3", "model.num_layers=x")


def test_flat_keys_lists_leaves_only():
    keys = flat_keys(Config())
    assert "optimizer.lr" in keys and "model.num_layers" in keys and "mesh.rules" in keys and "seed" in keys
    assert "optimizer" not in keys and "model" not in keys
    assert len(keys) == len(set(keys))


# --- files: Python config -> JSON -> Config ----------------------------------------------------

PY_CONFIG = '''
from jz3_jax.config import Config


def get_config():
    cfg = Config()
    cfg.seed = 17
    cfg.run_dir = "runs/roundtrip"
    cfg.model.num_layers = 3
    cfg.model.qkv_bias = True
    cfg.model.rope_scaling_type = "llama3"
    cfg.optimizer.lr = 3e-4
    cfg.optimizer.schedule = "wsd"
    cfg.mesh.data = 2
    cfg.mesh.rules = ["batch=data", "embed=fsdp", "mlp="]
    cfg.bench.reference = False
    return cfg
'''


def test_python_config_roundtrips_through_json(tmp_path):
    src = tmp_path / "roundtrip.py"
    src.write_text(PY_CONFIG)
    cfg = load_config(src)
    assert cfg.seed == 17 and cfg.model.num_layers == 3 and cfg.model.qkv_bias is True
    assert cfg.optimizer.lr == 3e-4 and cfg.mesh.rules == ["batch=data", "embed=fsdp", "mlp="]
    assert cfg != Config()  # the file really changed something

    out = tmp_path / "out" / "config.json"
    save_config(cfg, out)
    assert not list(out.parent.glob("*.tmp"))  # the temp file was renamed into place
    again = load_config(out)
    assert again == cfg
    assert config_to_dict(again) == json.loads(out.read_text())
    assert type(again.optimizer.lr) is float and type(again.model.num_layers) is int


def test_repo_tiny_config_roundtrips(repo_root, tmp_path):
    cfg = apply_overrides(load_config(repo_root / "configs" / "tiny.py"), ["optimizer.lr=3e-4", "train.steps=1e2"])
    save_config(cfg, tmp_path / "tiny.json")
    again = load_config(tmp_path / "tiny.json")
    assert again == cfg
    assert again.model.hidden_size == 64 and again.optimizer.lr == 3e-4 and again.train.steps == 100


def test_json_int_for_float_key_becomes_float(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optimizer": {"lr": 1}}))
    cfg = load_config(path)
    assert cfg.optimizer.lr == 1.0 and type(cfg.optimizer.lr) is float


def test_partial_json_keeps_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"num_layers": 4}}))
    cfg = load_config(path)
    assert cfg.model.num_layers == 4
    assert cfg.model.hidden_size == Config().model.hidden_size


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"optimizer": {"lrr": 1e-3}}, "optimizer.lrr"),
        ({"optimzer": {"lr": 1e-3}}, "optimzer"),
        ({"nope": 1}, "nope"),
        ({"optimizer": {"lr": "abc"}}, "optimizer.lr"),
        ({"model": {"num_layers": 2.5}}, "model.num_layers"),
        ({"model": {"num_layers": "3"}}, "model.num_layers"),
        ({"model": {"qkv_bias": 1}}, "model.qkv_bias"),
        ({"model": {"num_layers": True}}, "model.num_layers"),
        ({"run_dir": 5}, "run_dir"),
        ({"mesh": {"rules": "batch=data"}}, "mesh.rules"),
        ({"mesh": {"rules": ["batch=data", 3]}}, "mesh.rules"),
        ({"optimizer": 3}, "optimizer"),
    ],
)
def test_json_with_unknown_key_or_wrong_type_raises(tmp_path, data, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)


def test_bad_config_files_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.py")
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad_json)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=".py"):
        load_config(yaml)
    no_fn = tmp_path / "nofn.py"
    no_fn.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(no_fn)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config():\n    return {'seed': 1}\n")
    with pytest.raises(ConfigError, match="not Config"):
        load_config(wrong)


def test_python_config_with_wrong_type_is_rejected(tmp_path):
    path = tmp_path / "badtype.py"
    path.write_text(
        "from jz3_jax.config import Config\n\n"
        "def get_config():\n    cfg = Config()\n    cfg.model.num_layers = '3'\n    return cfg\n"
    )
    with pytest.raises(ConfigError, match="model.num_layers"):
        load_config(path)


def test_config_from_dict_matches_overrides():
    cfg = config_from_dict({"optimizer": {"lr": 3e-4}, "model": {"num_layers": 3}})
    assert cfg == _set("optimizer.lr=3e-4", "model.num_layers=3")
    assert math.isclose(cfg.optimizer.lr, 3e-4)
