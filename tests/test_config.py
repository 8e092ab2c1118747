"""Typed config: Hydra composition, Flower run-config mapping, validation, and the pyproject mirror."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shared.config import CondexConfig, apply_overrides, load_config, to_flat
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_fmnist_cpu_setting_is_the_default() -> None:
    cfg = load_config()
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.condense.ipc == 10 and cfg.condense.method == "dm"
    assert cfg.data.partition == "dirichlet" and cfg.data.alpha == 0.5


def test_hydra_overrides_reach_the_dataclasses() -> None:
    cfg = load_config(["condense.ipc=3", "data.partition=iid", "seed=7"])
    assert (cfg.condense.ipc, cfg.data.partition, cfg.seed) == (3, "iid", 7)


def test_flower_kebab_keys_map_onto_the_same_fields() -> None:
    cfg = apply_overrides(CondexConfig(), {"data.num-partitions": 4, "data.test-fraction": "0.25", "output-dir": "x"})
    assert cfg.data.num_partitions == 4 and cfg.data.test_fraction == 0.25 and cfg.output_dir == "x"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"data.num-partitions": "many"}, "data.num-partitions"),
    ({"data.colour": 1}, "data.colour"),
    ({"optimizer.lr": 1}, "optimizer.lr"),
    ({"data.download": "maybe"}, "data.download"),
])
def test_bad_keys_and_types_are_named(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        apply_overrides(CondexConfig(), overrides)


@pytest.mark.parametrize(("override", "field"), [
    ("data.dataset=imagenet", "data.dataset"),
    ("data.alpha=0", "data.alpha"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("device=tpu", "device"),
])
def test_validation_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config([override])


def test_pyproject_flower_config_mirrors_the_composed_defaults() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from flwr.common.config import flatten_dict
    from sync_flwr_config import flower_value

    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = {k: flower_value(v) for k, v in to_flat(load_config()).items()}
    assert flatten_dict(app_config) == expected, "run: python scripts/sync_flwr_config.py"
    # and every mirrored value maps back onto the typed config unchanged
    assert to_flat(apply_overrides(CondexConfig(), flatten_dict(app_config))) == to_flat(load_config())


def test_sync_script_check_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_flwr_config.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
