"""A site's ImageFolder is labelled by folder *names* in the teacher's class ids (issue 12.1): a site holding
only some classes, numeric names ("10" after "2"), Fashion-MNIST names, unknown names refused; end to end
through the ServerApp's condense query and the real ClientApp (in-process grid), and through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client import app as client_app
from client.task import load_local_data
from server.distillation import load_condensed
from server.flower import app as server_app
from shared.checkpoint import card_for_dataset, save_checkpoint
from shared.config import DataConfig
from shared.data import LabeledImages, load_dataset
from shared.data.sources import FASHION_MNIST, folder_class_ids, load_folder
from shared.errors import DataError, PayloadError

FMNIST_NAMES = FASHION_MNIST.class_names


def write_image_folder(root: Path, data: LabeledImages, folders: dict[int, str], per_class: int = 6) -> Path:
    """``root/train/<folder>/<i>.png`` with ``per_class`` real images of each class in ``folders``."""
    from PIL import Image

    for label, folder in folders.items():
        target = root / "train" / folder
        target.mkdir(parents=True)
        idx = torch.nonzero(data.labels == label).flatten()[:per_class]
        for i, j in enumerate(idx.tolist()):
            Image.fromarray(data.images[j, 0].numpy()).save(target / f"{i}.png")
    return root


def test_folder_names_map_to_the_teachers_ids() -> None:
    assert folder_class_ids(["Dress", "Sneaker"], FMNIST_NAMES) == {"Dress": 3, "Sneaker": 7}
    assert folder_class_ids(["dress", "ANKLE BOOT"], FMNIST_NAMES) == {"dress": 3, "ANKLE BOOT": 9}
    # "T-shirt/top" cannot be a folder name; punctuation is ignored after case
    assert folder_class_ids(["T-shirt_top", "ankle_boot"], FMNIST_NAMES) == {"T-shirt_top": 0, "ankle_boot": 9}
    assert folder_class_ids(["3", "7"], FMNIST_NAMES) == {"3": 3, "7": 7}  # ids by value
    with pytest.raises(DataError, match=r"'Hat', 'cat'.*'T-shirt/top'"):
        folder_class_ids(["Dress", "Hat", "cat"], FMNIST_NAMES)
    with pytest.raises(DataError, match="same teacher class"):
        folder_class_ids(["Dress", "dress"], FMNIST_NAMES)


def test_numeric_folders_are_ids_by_value_without_a_teacher(tmp_path: Path, fmnist_test: LabeledImages) -> None:
    write_image_folder(tmp_path, fmnist_test, {2: "2", 0: "0"}, per_class=3)
    (tmp_path / "train" / "10").mkdir()  # "10" would sort before "2" lexically
    from PIL import Image

    Image.fromarray(fmnist_test.images[0, 0].numpy()).save(tmp_path / "train" / "10" / "a.png")
    data = load_folder(tmp_path, "train")
    assert sorted(set(data.labels.tolist())) == [0, 2, 10] and data.info.num_classes == 11
    assert data.labels.tolist().count(10) == 1


def test_site_with_two_named_classes_sends_their_ids(tmp_path: Path, fmnist_test: LabeledImages) -> None:
    write_image_folder(tmp_path, fmnist_test, {3: "Dress", 7: "Sneaker"})
    data = load_local_data({"data-dir": str(tmp_path)}, DataConfig(test_fraction=0.25), 10, None, FMNIST_NAMES)
    assert data.train.info.num_classes == 10 and data.train.info.class_names == FMNIST_NAMES
    labels = torch.cat([data.train.labels, data.test.labels])
    assert sorted(set(labels.tolist())) == [3, 7] and labels.tolist().count(3) == 6
    # the images of "Dress" really are Fashion-MNIST dresses
    dresses = torch.nonzero(fmnist_test.labels == 3).flatten()[:6]
    assert torch.equal(load_folder(tmp_path, "train", FMNIST_NAMES).images[:6], fmnist_test.images[dresses])


def test_unknown_folder_is_a_condex_error_reply(tmp_path: Path, fmnist_test: LabeledImages,
                                                fmnist_train: LabeledImages) -> None:
    write_image_folder(tmp_path / "site", fmnist_test, {3: "Dress", 5: "Hat"})
    teacher = _teacher(tmp_path / "teacher", fmnist_train)
    grid, cfg, spec, card = _grid(tmp_path, teacher)
    collected = server_app.collect_payloads(grid, [1], cfg, spec, card.class_names)
    outcome = collected.outcomes[0]
    assert outcome.status == "failed" and "DataError" in outcome.reason and "'Hat'" in outcome.reason


def _teacher(directory: Path, train: LabeledImages) -> Path:
    from shared.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, width=4)
    return save_checkpoint(directory, model.eval(), card_for_dataset(train.info, "resnet8", {"width": 4}))


def _grid(tmp_path: Path, teacher: Path):
    from tests.test_flower_sim import NON_DP, LocalGrid, tiny_overrides

    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"condense.method": "real"}
    cfg = server_app.server_config({}, overrides)
    _, card, _ = server_app.load_teacher(cfg)
    node = {"data-dir": str(tmp_path / "site"), "policy-require-dp": "false"}
    grid = LocalGrid({1: (client_app.build_app(overrides), node)}, {})
    return grid, cfg, server_app.payload_spec(card, cfg), card


def test_condense_query_carries_class_names_and_site_answers_in_teacher_ids(
        tmp_path: Path, fmnist_test: LabeledImages, fmnist_train: LabeledImages) -> None:
    """The ServerApp's own condense round against the real ClientApp of a site holding only Dress/ and 7/."""
    write_image_folder(tmp_path / "site", fmnist_test, {3: "Dress", 7: "7"})
    teacher = _teacher(tmp_path / "teacher", fmnist_train)
    grid, cfg, spec, card = _grid(tmp_path, teacher)
    collected = server_app.collect_payloads(grid, [1], cfg, spec, card.class_names)
    assert collected.outcomes[0].status == "accepted", collected.outcomes[0].reason
    payload = collected.payloads[1]
    assert sorted(set(payload.labels.tolist())) == [3, 7]
    assert payload.meta.class_names == list(FMNIST_NAMES)
    # federated evaluation at the same site labels its held-out images by the student card's class names
    from shared.models import build_model

    student = build_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).eval()
    student_card = card_for_dataset(fmnist_train.info, "lenet5_half", role="student")
    server_app.federated_evaluation(grid, [1], student, student_card, cfg, collected.outcomes)
    outcome = collected.outcomes[0]
    assert not outcome.eval_error and outcome.eval_accuracy is not None and outcome.eval_examples == 2


def test_cli_condense_with_teacher_then_distill_accepts_the_folder_payload(
        tmp_path: Path, fmnist_test: LabeledImages, fmnist_train: LabeledImages) -> None:
    from shared.cli import main

    write_image_folder(tmp_path / "site", fmnist_test, {3: "dress", 7: "Sneaker"})
    teacher = _teacher(tmp_path / "teacher", fmnist_train)
    out = tmp_path / "site-a.safetensors"
    assert main(["condense", "--dataset", "folder", "--data-root", str(tmp_path / "site"), "--teacher", str(teacher),
                 "--method", "real", "--ipc", "2", "--policy-require-dp", "false", "--output", str(out),
                 "--quiet"]) == 0
    card = card_for_dataset(fmnist_train.info, "resnet8", {"width": 4})
    condensed = load_condensed(out, card)
    assert sorted(set(condensed.labels.tolist())) == [3, 7] and len(condensed) == 4
    # without --teacher the folder names index the site's own two classes: refused by name, not by dataset
    plain = tmp_path / "plain.safetensors"
    assert main(["condense", "--dataset", "folder", "--data-root", str(tmp_path / "site"), "--method", "real",
                 "--ipc", "2", "--policy-require-dp", "false", "--output", str(plain), "--quiet"]) == 0
    with pytest.raises(PayloadError, match="--teacher"):
        load_condensed(plain, card)


def test_npz_site_labels_beyond_the_teacher_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, 12]))
    with pytest.raises(DataError, match="teacher's class ids"):
        load_folder(tmp_path, "train", FMNIST_NAMES)
    assert load_dataset("folder", "train", root=tmp_path).info.num_classes == 13


def test_make_sites_imagefolder_layout_round_trips_the_labels(tmp_path: Path) -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_sites", root / "scripts" / "deploy" / "make_sites.py")
    assert spec is not None and spec.loader is not None
    make_sites = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sites)
    folders = make_sites.make_sites(tmp_path, ["a", "b"], "digits", 0.3, 0, limit=30, layout="imagefolder")
    npz = make_sites.make_sites(tmp_path / "npz", ["a", "b"], "digits", 0.3, 0, limit=30)
    for name in ("a", "b"):
        site = load_folder(folders[name], "train", tuple(str(i) for i in range(10)))
        reference = load_folder(npz[name], "train")
        order = torch.argsort(reference.labels, stable=True)
        assert torch.equal(site.labels, reference.labels[order]) and torch.equal(site.images, reference.images[order])
