"""Student export: every format is written, reloaded and matches the PyTorch model; failures write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from server.export import FORMATS, export_student, onnx_available, probe_batch
from shared.checkpoint import card_for_dataset, load_checkpoint
from shared.data import get_dataset_info
from shared.errors import CheckpointError, ConfigError
from shared.models import build_model


@pytest.fixture()
def student():
    torch.manual_seed(0)
    net = build_model("lenet5_half", 10, 1, 28).eval()
    card = card_for_dataset(get_dataset_info("fashion_mnist"), "lenet5_half", role="student", test_accuracy=0.5,
                            provenance={"teacher": {"arch": "resnet8"}, "payloads": ["a.safetensors"]})
    return net, card


def test_round_trip_all_formats(student, tmp_path) -> None:
    net, card = student
    formats = FORMATS if onnx_available() else ("safetensors", "torchscript")
    records = export_student(net, card, tmp_path / "out", formats)
    assert [r.format for r in records] == list(formats)
    assert all(r.max_abs_diff <= 1e-4 for r in records)
    x = probe_batch(card, n=5, seed=3)  # fresh inputs, another batch size
    with torch.no_grad():
        expected = net(x)
    reloaded, loaded_card = load_checkpoint(tmp_path / "out")
    assert loaded_card.provenance["payloads"] == ["a.safetensors"] and loaded_card.role == "student"
    torch.testing.assert_close(reloaded(x), expected, atol=1e-5, rtol=0)
    scripted = torch.jit.load(str(tmp_path / "out" / "student.torchscript.pt"))
    torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=0)
    if onnx_available():
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / "out" / "student.onnx"), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(out - expected.numpy()).max() <= 1e-4
    program = torch.export.load(str(tmp_path / "out" / "student.pt2")).module()
    torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=0)
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert {e["format"] for e in report["exports"]} == set(formats)
    # export.json names every file in the directory and the input contract
    assert report["files"] == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert report["input"]["mean"] == card.mean and report["input"]["std"] == card.std
    assert report["input"]["shape"] == ["N", 1, 28, 28] and report["class_names"][3] == "Dress"


@pytest.mark.skipif(not onnx_available(), reason="needs the export extra (onnx, onnxruntime)")
def test_onnx_is_one_file_that_says_its_normalisation(student, tmp_path) -> None:
    """Issue 12.5: the .onnx alone (copied away from its directory) runs and carries mean/std and class names."""
    import shutil

    import onnx
    import onnxruntime as ort

    net, card = student
    export_student(net, card, tmp_path / "out", ("onnx",))
    assert not list((tmp_path / "out").glob("*.data"))
    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "out" / "student.onnx", alone)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(alone)).metadata_props}
    assert meta["condex.input"]["mean"] == card.mean and meta["condex.input"]["std"] == card.std
    assert meta["condex.class_names"] == list(card.class_names)
    x = probe_batch(card, n=4, seed=5)
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(session.run(None, {"images": x.numpy()})[0] - net(x).numpy()).max() <= 1e-4


def test_cli_export_names_every_file(student, tmp_path, capsys) -> None:
    from shared.checkpoint import save_checkpoint
    from shared.cli import main

    net, card = student
    save_checkpoint(tmp_path / "ckpt", net, card)
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--formats",
                 "safetensors,pt2"]) == 0
    out = capsys.readouterr().out
    files = json.loads((tmp_path / "out" / "export.json").read_text())["files"]
    assert files == ["card.json", "export.json", "model.safetensors", "student.pt2"]
    assert f"files in {tmp_path / 'out'}: {', '.join(files)}" in out and "mean [0.286]" in out


def test_failed_verification_writes_nothing(student, tmp_path) -> None:
    net, card = student
    with pytest.raises(CheckpointError, match="verification failed"):
        export_student(net, card, tmp_path / "out", ("safetensors",), tolerance=-1.0)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())  # no staging directory left behind


def test_unknown_format(student, tmp_path) -> None:
    net, card = student
    with pytest.raises(ConfigError, match="unknown"):
        export_student(net, card, tmp_path / "out", ("tflite",))


def test_verification_scales_with_the_logits(student, tmp_path) -> None:
    """A diverged student (logits ~1e7) differs between runtimes by float32 rounding far above 1e-4 absolute;
    the bound is relative to the logit scale, so it exports, and a real mismatch still fails."""
    net, card = student
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(30.0)
    logits = net(probe_batch(card)).abs().max()
    assert logits > 1e5
    formats = ("safetensors", "torchscript", "onnx")
    records = export_student(net, card, tmp_path / "out", formats)
    assert [r.format for r in records] == list(formats)
    assert all(r.max_abs_diff <= 1e-4 * float(logits) for r in records)
    with pytest.raises(CheckpointError, match=r"x the logit scale"):
        export_student(net, card, tmp_path / "again", ("safetensors",), tolerance=-1.0)
