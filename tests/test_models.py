"""Model zoo: shapes, gradients, BN exposure, argument errors, parameter counts, scripting and export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from shared.errors import ConfigError, UnknownNameError
from shared.models import batchnorm_layers, build_model, count_parameters, model_names, model_options
from shared.models.mobilenetv2 import InvertedResidual

EXPECTED_NAMES = {
    "convnet3",
    "lenet5",
    "lenet5_half",
    "resnet8",
    "resnet18",
    "resnet34",
    "wrn16_1",
    "wrn16_2",
    "wrn40_1",
    "wrn40_2",
    "mobilenetv2",
    "vgg11",
    "vgg16",
}
NO_BATCHNORM = {"convnet3", "lenet5", "lenet5_half"}
# Narrower variants of the big models for the geometry-only tests; the layer structure is the same.
NARROW = {
    "resnet18": {"width": 16},
    "resnet34": {"width": 16},
    "vgg11": {"width": 16},
    "vgg16": {"width": 16},
    "mobilenetv2": {"width_mult": 0.5},
}
# Very narrow variants for the property test (many random geometries).
TINY = {
    "convnet3": {"width": 8},
    "resnet8": {"width": 4},
    "resnet18": {"width": 4},
    "resnet34": {"width": 4},
    "vgg11": {"width": 4},
    "vgg16": {"width": 4},
    "mobilenetv2": {"width_mult": 0.25, "last_channel": 64},
}


def test_registry_holds_every_documented_name() -> None:
    assert set(model_names()) == EXPECTED_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_forward_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    # Default widths on the FMNIST geometry; the 3x32x32 pass checks the same structure at lower CPU cost.
    options = {} if channels == 1 else NARROW.get(name, {})
    net = build_model(name, num_classes=7, in_channels=channels, image_size=size, **options)
    x = torch.randn(2, channels, size, size)
    logits, features = net(x, return_features=True)
    assert logits.shape == (2, 7)
    assert features.shape == (2, net.feature_dim)
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    logits.square().sum().backward()
    for param_name, param in net.named_parameters():
        assert param.grad is not None, f"{name}: no gradient reaches {param_name}"
        assert torch.isfinite(param.grad).all(), param_name
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("size", [8, 16, (28, 20)])
def test_small_and_non_square_images(name: str, size: int | tuple[int, int]) -> None:
    net = build_model(name, num_classes=10, in_channels=1, image_size=size, **NARROW.get(name, {})).eval()
    height, width = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        logits, features = net(torch.randn(2, 1, height, width), return_features=True)
    assert logits.shape == (2, 10) and features.shape == (2, net.feature_dim)
    assert net.image_size == (height, width)


@settings(max_examples=25, deadline=None)
@example(name="lenet5", channels=1, height=10, width=10)  # once pooled to nothing
@given(
    name=st.sampled_from(sorted(EXPECTED_NAMES)),
    channels=st.integers(1, 4),
    height=st.integers(8, 40),
    width=st.integers(8, 40),
)
def test_any_geometry(name: str, channels: int, height: int, width: int) -> None:
    options = TINY.get(name, {})
    net = build_model(name, num_classes=3, in_channels=channels, image_size=(height, width), **options).eval()
    with torch.no_grad():
        logits, features = net(torch.randn(1, channels, height, width), return_features=True)
    assert logits.shape == (1, 3) and features.shape == (1, net.feature_dim)


def test_numpy_integers_are_accepted() -> None:
    net = build_model("lenet5", num_classes=np.int64(10), in_channels=np.int64(1), image_size=(np.int64(28), 28))
    assert net.num_classes == 10 and type(net.in_channels) is int and net.image_size == (28, 28)


def test_plain_forward_equals_logits_of_feature_forward() -> None:
    net = build_model("resnet8", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        logits, features = net(x, return_features=True)
        assert torch.equal(net(x), logits)
        assert torch.allclose(net.head(features), logits)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_batchnorm_layers_in_forward_order(name: str) -> None:
    net = build_model(name, num_classes=10, in_channels=1, image_size=16, **NARROW.get(name, {}))
    layers = batchnorm_layers(net)
    assert (len(layers) == 0) == (name in NO_BATCHNORM)
    called: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda module, _i, _o: called.append(module)) for m in layers]
    net(torch.randn(2, 1, 16, 16))
    for handle in handles:
        handle.remove()
    assert [id(m) for m in called] == [id(m) for m in layers]
    # Hooks keep layer outputs; an in-place activation would overwrite them.
    assert not any(getattr(m, "inplace", False) for m in net.modules())


def test_convnet3_norm_options() -> None:
    assert batchnorm_layers(build_model("convnet3", width=8, norm="batchnorm"))
    instance = build_model("convnet3", width=8)
    assert not batchnorm_layers(instance)
    group_norms = [m for m in instance.modules() if isinstance(m, nn.GroupNorm)]
    assert len(group_norms) == 3 and all(m.num_groups == m.num_channels == 8 and m.affine for m in group_norms)
    bare = build_model("convnet3", width=8, norm="none")
    assert not any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d) for m in bare.modules())
    # DC ConvNet on 28x28: 28 -> 14 -> 7 -> 3, flattened without global pooling.
    assert instance.feature_dim == 8 * 3 * 3
    assert build_model("convnet3", width=8, depth=2).feature_dim == 8 * 7 * 7


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match="resnet8") as info:
        build_model("resnet9")
    assert "resnet9" in str(info.value) and "lenet5_half" in str(info.value)
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError for dict-style callers
        build_model("nope")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "resnet8", "in_channels": 0}, "in_channels"),
        ({"name": "resnet8", "num_classes": 1}, "num_classes"),
        ({"name": "resnet8", "num_classes": 2.5}, "num_classes"),
        ({"name": "lenet5", "image_size": 4}, "image_size"),
        ({"name": "lenet5", "image_size": (28, 28, 1)}, "image_size"),
        ({"name": "resnet8", "width": 0}, "width"),
        ({"name": "vgg11", "width": 1.5}, "width"),
        ({"name": "resnet8", "depth": 3}, "depth"),  # not an option of resnet8
        ({"name": "lenet5_half", "width": 3}, "width"),
        ({"name": "convnet3", "norm": "layernorm"}, "norm"),
        ({"name": "convnet3", "depth": 5, "image_size": 16}, "depth"),
        ({"name": "mobilenetv2", "width_mult": 0}, "width_mult"),
        ({"name": "mobilenetv2", "last_channel": 0}, "last_channel"),
        ({"name": "wrn16_1", "drop_rate": 1.0}, "drop_rate"),
    ],
)
def test_bad_arguments_raise_config_error_naming_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_model(**kwargs)  # type: ignore[arg-type]


def test_parameter_counts() -> None:
    def params(name: str, **options: object) -> int:
        return count_parameters(build_model(name, num_classes=10, in_channels=3, image_size=32, **options))

    # Published CIFAR-10 counts (3x3 stem ResNet-18: 11.17M; WRN-40-2: 2.24M).
    assert params("resnet18") == 11_173_962
    assert params("wrn40_2") == 2_243_546
    assert params("lenet5_half") < params("lenet5")
    assert params("resnet8", width=8) < params("resnet8") < params("resnet8", width=32)
    assert params("resnet8") < params("resnet18") < params("resnet34")
    assert params("wrn16_1") < params("wrn16_2") and params("wrn16_1") < params("wrn40_1")
    assert params("mobilenetv2", width_mult=0.5) < params("mobilenetv2")
    assert params("vgg11") < params("vgg16")
    assert params("convnet3", width=64) < params("convnet3")
    net = build_model("lenet5")
    net.head.weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - net.head.weight.numel()


def test_arch_bookkeeping_rebuilds_the_same_network() -> None:
    net = build_model("mobilenetv2", num_classes=10, in_channels=1, image_size=28, width_mult=0.5)
    assert net.arch == "mobilenetv2" and net.arch_kwargs == {"width_mult": 0.5, "last_channel": None}
    again = build_model(net.arch, num_classes=10, in_channels=1, image_size=28, **net.arch_kwargs)
    again.load_state_dict(net.state_dict())  # strict: same keys and shapes
    assert model_options("resnet8") == {"width": 16}
    assert model_options("lenet5") == {}


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet8", {}),
        ("lenet5_half", {}),
        ("convnet3", {"width": 16}),
        ("wrn16_1", {}),
    ],
)
def test_scriptable_and_traceable(name: str, options: dict[str, object]) -> None:
    net = build_model(name, num_classes=10, in_channels=1, image_size=28, **options).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected_logits, expected_features = net(x, return_features=True)
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, still supported
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(net)
        logits, features = scripted(x, True)
        assert torch.allclose(logits, expected_logits, atol=1e-5)
        assert torch.allclose(features, expected_features, atol=1e-5)
        traced = torch.jit.trace(net, x, check_trace=False)  # compared below instead
        assert torch.allclose(traced(x), expected_logits, atol=1e-5)


def test_onnx_export_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    net = build_model("resnet8", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(3, 1, 28, 28)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue())
    (out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), net(x), atol=1e-4)


def test_inverted_residual_block_is_scriptable() -> None:
    # The whole MobileNetV2 is slow to script on a busy CPU; its only custom forward is this block's.
    block = InvertedResidual(8, 8, stride=1, expansion=6).eval()
    x = torch.randn(2, 8, 7, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(block)
    with torch.no_grad():
        assert torch.allclose(scripted(x), block(x), atol=1e-5)
