"""Bad local inputs (issue 13.3): one payload validator for every entry point, finite teachers and students,
finite in-range config values, and named errors instead of tracebacks for damaged files and folders.

Every case goes through the real entry point (``condex`` main, ``load_checkpoint``, ``load_folder``,
``apply_overrides``) and must end in a ``CondexError`` naming the field, never another exception."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save as save_numpy
from safetensors.torch import load_file, save_file

from shared.checkpoint import CARD_FILE, load_checkpoint, save_checkpoint
from shared.cli import main
from shared.config import apply_overrides, load_config
from shared.data.sources import load_folder
from shared.errors import CheckpointError, CondexError, ConfigError, DataError, PayloadError
from shared.models import build_model
from shared.payload import META_KEY, CondensedPayload, PayloadMeta


@pytest.fixture(scope="module")
def base_config():
    return load_config()


@pytest.fixture
def teacher_dir(tmp_path: Path, tiny_teacher) -> Path:
    model, card = tiny_teacher
    return save_checkpoint(tmp_path / "teacher", model, copy.deepcopy(card))


def payload(num: int = 20, ipc: int = 2) -> CondensedPayload:
    meta = PayloadMeta("dm", "fashion_mnist", ipc, 10, 1, 28, 28, [0.286], [0.353], local_class_counts=[5] * 10,
                       seed=0)
    return CondensedPayload(torch.rand(num, 1, 28, 28), torch.arange(num) % 10, meta)


# ---- config values --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "named"), [
    ("condense.ipc", True, "condense.ipc"), ("data.alpha", "nan", "data.alpha"),
    ("data.alpha", float("nan"), "data.alpha"), ("condense.time-budget-s", float("nan"), "time_budget_s"),
    ("distill.lr-student", float("inf"), "distill.lr_student"), ("distill.temperature", "inf", "temperature"),
    ("data.classes-per-partition", 0, "classes_per_partition"),
    ("data.classes-per-partition", -2, "classes_per_partition"),
    ("data.classes-per-partition", 50, "classes_per_partition"), ("teacher.lr", "nan", "teacher.lr"),
    ("federation.reply-timeout-s", True, "reply-timeout-s"), ("distill.budget-seconds", "-inf", "budget_seconds"),
    ("condense.epsilon", "inf", "condense.epsilon"), ("distill.epochs", 2.5, "distill.epochs"),
])
def test_bad_config_values_are_named(base_config, key: str, value: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        apply_overrides(copy.deepcopy(base_config), {key: value}).validate()


def test_a_section_built_in_code_is_type_checked_too() -> None:
    from shared.config import DistillConfig

    with pytest.raises(ConfigError, match=r"distill\.temperature=nan"):
        DistillConfig(temperature=float("nan")).validate()
    with pytest.raises(ConfigError, match=r"distill\.epochs=True"):
        DistillConfig(epochs=True).validate()


# ---- command lines --------------------------------------------------------------------------------------
def test_cli_bad_values_exit_2_with_the_field(tmp_path: Path, teacher_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = {
        "teacher.lr=nan": ["teacher", "train", "--lr", "nan", "--epochs", "1", "--out", str(tmp_path / "t")],
        "--limit-test=-5": ["teacher", "eval", "--checkpoint", str(teacher_dir), "--limit-test", "-5"],
        "real:IPC": ["distill", "--teacher", str(teacher_dir), "--condensed", "real:abc", "--out", str(tmp_path / "d")],
        "distill.temperature=inf": ["distill", "--teacher", str(teacher_dir), "--set", "distill.temperature=inf",
                                    "--out", str(tmp_path / "d")],
        "data.alpha=nan": ["condense", "--alpha", "nan", "--output", str(tmp_path / "p.safetensors"), "--quiet"],
    }
    for named, argv in runs.items():
        assert main(argv) == 2, named
        err = capsys.readouterr().err
        assert named.split("=")[0] in err and "Traceback" not in err, (named, err)
    assert not (tmp_path / "t").exists() and not (tmp_path / "d" / "state.pt").exists()


def test_distill_runs_the_servers_validator_on_condensed_files(tmp_path: Path, teacher_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """One NaN pixel used to give exit 0 and a NaN student; now the ServerApp's validate_payload refuses it."""
    bad = payload()
    bad.images[3, 0, 5, 5] = float("nan")
    # save() clamps pixels into [0, 1]; write the float16 wire arrays as a hostile writer would
    arrays = {"images": bad.images.numpy().astype(np.float16), "labels": bad.labels.numpy()}
    meta = bad.wire_meta("float16")
    (tmp_path / "nan.safetensors").write_bytes(save_numpy(arrays, metadata={META_KEY: json.dumps(meta)}))
    over = payload(num=30, ipc=2)  # class 0 has 3 images but meta.ipc says 2
    over.save(tmp_path / "over.safetensors")
    for name, words in (("nan", "NaN"), ("over", "more than meta.ipc")):
        code = main(["distill", "--teacher", str(teacher_dir), "--condensed", str(tmp_path / f"{name}.safetensors"),
                     "--out", str(tmp_path / name), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and words in err and f"{name}.safetensors" in err, err
        assert not (tmp_path / name / "student").exists()


# ---- payload files --------------------------------------------------------------------------------------
def _bf16_file(path: Path) -> None:
    meta = payload().wire_meta()
    save_file({"images": torch.rand(20, 1, 28, 28, dtype=torch.bfloat16), "labels": torch.arange(20)}, str(path),
              metadata={META_KEY: json.dumps(meta)})


def _bigint_file(path: Path) -> None:
    good = payload()
    text = json.dumps(good.wire_meta()).replace('"ipc": 2', '"ipc": ' + "9" * 5000)
    path.write_bytes(save_numpy(good.to_arrays(), metadata={META_KEY: text}))


@pytest.mark.parametrize(("write", "named"), [(_bf16_file, "dtype"), (_bigint_file, "not valid JSON")])
def test_damaged_payload_files_are_named(tmp_path: Path, write: Callable[[Path], None], named: str) -> None:
    write(tmp_path / "p.safetensors")
    with pytest.raises(PayloadError, match=named):
        CondensedPayload.load(tmp_path / "p.safetensors")


# ---- teachers and students ------------------------------------------------------------------------------
def _nan_weight(directory: Path) -> None:
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][0] = float("nan")
    save_file(state, str(weights))


def _card_change(**changes: object) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        card = json.loads((directory / CARD_FILE).read_text())
        (directory / CARD_FILE).write_text(json.dumps(card | changes))
    return change


@pytest.mark.parametrize(("damage", "named"), [
    (_nan_weight, "NaN/infinite"), (_card_change(mean=[float("nan")]), "mean"),
    (_card_change(std=[float("inf")]), "std"), (_card_change(version="1"), "version"),
    (_card_change(mean="0.5"), "mean and std must be lists"),
])
def test_non_finite_or_mistyped_checkpoints_are_refused(teacher_dir: Path, damage: Callable[[Path], None],
                                                        named: str) -> None:
    damage(teacher_dir)
    with pytest.raises(CheckpointError, match=named):
        load_checkpoint(teacher_dir)


def test_a_student_with_nan_weights_is_refused_at_the_node(tiny_teacher) -> None:
    from shared import wire

    model, card = tiny_teacher
    # a fresh copy, not copy.deepcopy: earlier tests may leave graph tensors (hook outputs) on the shared teacher
    student = build_model(card.arch, card.num_classes, card.in_channels, card.image_size, **card.arch_kwargs)
    student.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(student.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN/infinite"):
        wire.student_from_content(wire.student_to_content(student, copy.deepcopy(card)))


# ---- site folders ---------------------------------------------------------------------------------------
def _image_site(root: Path) -> Path:
    for cls in ("0", "1"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / "train" / cls / f"{i}.png")
    return root


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


FOLDER_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "README in a class folder": (lambda r: (r / "train/0/README.md").write_text("hello"), "README.md"),
    "subfolder in a class folder": (lambda r: (r / "train/0/more").mkdir(), "subfolders"),
    "corrupt image": (lambda r: (r / "train/1/0.png").write_bytes(b"\x89PNG\r\n\x1a\nxx"), "0.png"),
    "truncated image": (lambda r: _truncate(r / "train/1/1.png"), "1.png"),
    "symlink loop": (lambda r: os.symlink(r / "train/0/loop", r / "train/0/loop"), "loop"),
}


@pytest.mark.parametrize("case", list(FOLDER_DAMAGE))
def test_damaged_image_folders_are_named(tmp_path: Path, case: str) -> None:
    damage, named = FOLDER_DAMAGE[case]
    root = _image_site(tmp_path / "site")
    damage(root)
    with pytest.raises(DataError, match=named):
        load_folder(root, "train")


def test_hidden_files_in_a_class_folder_are_skipped(tmp_path: Path) -> None:
    root = _image_site(tmp_path / "site")
    (root / "train/0/.DS_Store").write_bytes(b"\0\1junk")
    assert len(load_folder(root, "train")) == 4


@pytest.mark.parametrize(("write", "named"), [
    (lambda p: p.write_bytes(b"PK\x03\x04garbage"), "cannot be read"),
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 10**12])), "span"),
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, -1])), "span"),
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0.5, 1])), "integers"),
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(3)), "integers"),
    (lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([{}, 1, 2, 3], dtype=object)),
     "cannot be read"),
])
def test_damaged_npz_sites_are_named(tmp_path: Path, write: Callable[[Path], None], named: str) -> None:
    write(tmp_path / "train.npz")
    with pytest.raises(DataError, match=named):
        load_folder(tmp_path, "train")


def test_a_truncated_npz_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.arange(40) % 2)
    _truncate(tmp_path / "train.npz")
    with pytest.raises(CondexError, match=r"train\.npz"):
        load_folder(tmp_path, "train")


def test_a_card_with_a_huge_integer_is_named(teacher_dir: Path) -> None:
    text = (teacher_dir / CARD_FILE).read_text()
    (teacher_dir / CARD_FILE).write_text(text.replace('"num_classes": 10', '"num_classes": ' + "9" * 5000))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(teacher_dir)
