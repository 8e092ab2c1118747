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
    from flwr.common.config import flatten_dict

    from shared.config import flower_values

    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = flower_values(to_flat(load_config()))
    assert flatten_dict(app_config) == expected, "run: python scripts/sync_flwr_config.py"
    # and every mirrored value maps back onto the typed config unchanged
    assert to_flat(apply_overrides(CondexConfig(), flatten_dict(app_config))) == to_flat(load_config())


def test_sync_script_check_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_flwr_config.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- settings (issue 12.6): configs/setting/*.yaml, chosen by `setting` ------------------------------------
@pytest.mark.parametrize(("setting", "dataset", "ipc"),
                         [("cifar10_gpu", "cifar10", 5), ("cifar100_gpu", "cifar100", 1)])
def test_cifar_settings_compose_the_papers_first_pair(setting: str, dataset: str, ipc: int) -> None:
    from shared.config import setting_names

    assert {"fmnist_cpu", "cifar10_gpu", "cifar100_gpu"} <= set(setting_names())
    cfg = load_config(setting=setting)
    assert (cfg.setting, cfg.data.dataset, cfg.condense.ipc) == (setting, dataset, ipc)
    assert (cfg.teacher.arch, cfg.distill.student, cfg.condense.method) == ("resnet34", "resnet18", "gm")
    # Fast-Datafree's Fast-2 values for ResNet-34 -> ResNet-18 (scripts/fast_cifar.sh)
    d = cfg.distill
    assert (d.epochs, d.kd_steps, d.lr_student, d.adv_weight, d.oh_weight, d.bn_weight, d.temperature) == \
        (220, 400, 0.2, 1.33, 0.5, 10.0, 20.0)
    assert cfg.federation.sim_client_gpus == 0.5
    assert load_config(["setting=" + setting]).data.dataset == dataset  # the Hydra group override, same result


def test_a_flower_run_config_selects_a_setting_and_keeps_its_own_overrides() -> None:
    from flwr.common.config import flatten_dict

    from shared.config import config_for_run

    # what Flower hands the apps: every pyproject default (the FMNIST mirror) plus the user's entries
    mirror = flatten_dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    cfg = config_for_run(mirror | {"setting": "cifar10_gpu", "condense.ipc": 7})
    assert (cfg.setting, cfg.data.dataset, cfg.teacher.arch, cfg.condense.ipc) == ("cifar10_gpu", "cifar10",
                                                                                  "resnet34", 7)
    assert config_for_run(mirror).data.dataset == "fashion_mnist"
    later = config_for_run(mirror, {"setting": "cifar100_gpu"}, {"condense.ipc": 3})  # layers win, in order
    assert (later.data.dataset, later.condense.ipc) == ("cifar100", 3)


def test_an_unknown_setting_is_refused_with_the_choices() -> None:
    from shared.config import config_for_run

    with pytest.raises(ConfigError, match=r"setting='cifar_gpu' is unknown; choose one of .*cifar10_gpu"):
        config_for_run({"setting": "cifar_gpu"})
    with pytest.raises(ConfigError, match=r"setting='nope' is unknown"):
        load_config(setting="nope")
    with pytest.raises(ConfigError, match=r"federation.sim_client_gpus=-1.0 must be in \[0, 64\]"):
        config_for_run({"federation.sim-client-gpus": -1.0})


def test_flower_app_metadata_and_the_tested_flwr_range() -> None:
    """[project] and [tool.flwr.app] carry what flwr 1.42 validates and recommends, and the flwr dependency is
    bounded to the minor version the suite runs (issue 12.8)."""
    import flwr
    from flwr.common.config import validate_fields_in_config
    from packaging.requirements import Requirement

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    valid, errors, warnings = validate_fields_in_config(conf)
    assert valid and not errors and not warnings, (errors, warnings)
    (flwr_dep,) = [Requirement(d) for d in conf["project"]["dependencies"] if Requirement(d).name == "flwr"]
    app = conf["tool"]["flwr"]["app"]
    assert flwr.__version__ in flwr_dep.specifier and app["flwr-version-target"] in flwr_dep.specifier
    assert "1.43.0" not in flwr_dep.specifier and app["publisher"] and app["display-name"]
    assert conf["project"]["description"] and conf["project"]["license"]
