"""Generator, DiffAugment, MI loss terms, base methods and condensed-guided feature alignment.

A tiny BN teacher (ResNet-8, width 4) is fitted for one short epoch on 2000 real FMNIST images; the
condensed set is 5 real images per class."""

from __future__ import annotations

import pytest
import torch

from server.inversion import FeatureAlignment, Generator, InversionContext, build_method, inversion_methods
from server.inversion.deepinversion import DeepInversion, competition_loss, jitter_and_flip, total_variation
from server.inversion.generator import to_pixels
from shared.augment.diffaugment import cutout, diff_augment, translation
from shared.config.distill import DistillConfig
from shared.data import few_shot_indices, load_dataset
from shared.errors import ConfigError, UnknownNameError
from shared.models import build_model
from shared.train import train_classifier

MEAN, STD = (0.286,), (0.353,)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion_mnist", "train")


@pytest.fixture(scope="module")
def teacher(fmnist):
    torch.manual_seed(0)
    net = build_model("resnet8", 10, 1, 28, width=4)
    train_classifier(net, fmnist.subset(range(1000)), None, epochs=1, batch_size=50, lr=0.05, progress=False)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def condensed(fmnist):
    subset = fmnist.subset(few_shot_indices(fmnist.labels.numpy(), 5, seed=0))
    return subset.normalized(), subset.labels


def make_ctx(teacher, condensed, guided: bool, conditional: bool = False, **overrides) -> InversionContext:
    values = dict(synthesis_batch_size=20, generator_width=8, g_steps=2, warmup_epochs=0,
                  mode="mi*" if guided else "mi")
    cfg = DistillConfig(**(values | overrides))
    cfg.validate()
    gen = Generator(cfg.latent_dim, 1, 28, MEAN, STD, width=cfg.generator_width, num_classes=10 if conditional else 0)
    student = build_model("lenet5_half", 10, 1, 28)
    guidance = None
    if guided:
        guidance = FeatureAlignment(teacher, condensed[0], condensed[1], 10, teacher.feature_dim, hidden=16,
                                    batch_size=30, policy=cfg.diffaugment)
    return InversionContext(teacher, student, gen, 10, cfg, torch.device("cpu"), guidance=guidance, epoch=1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64, 30])
def test_generator_shape_and_range(channels: int, size: int) -> None:
    mean, std = (0.5,) * channels, (0.25,) * channels
    gen = Generator(latent_dim=32, channels=channels, image_size=size, mean=mean, std=std, width=8)
    z = gen.sample_latent(3)
    pixels = gen.pixels(z)
    assert pixels.shape == (3, channels, size, size)
    pixels = pixels.detach()
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    out = gen(z)
    torch.testing.assert_close(out, (pixels - 0.5) / 0.25)
    torch.testing.assert_close(to_pixels(out, mean, std), pixels)


def test_conditional_generator_uses_labels() -> None:
    gen = Generator(latent_dim=16, channels=1, image_size=28, mean=MEAN, std=STD, width=8, num_classes=10).eval()
    z = gen.sample_latent(2)
    a = gen(z, torch.tensor([0, 0]))
    b = gen(z, torch.tensor([0, 1]))
    assert a.shape == (2, 1, 28, 28)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="labels"):
        gen(z)


def test_generator_rejects_bad_stats() -> None:
    with pytest.raises(ConfigError, match="mean/std"):
        Generator(channels=3, mean=(0.5,), std=(0.2,))


def test_diffaugment_shapes_gradients_and_effects() -> None:
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    ones = torch.ones(4, 1, 8, 8)
    assert int((cutout(ones) == 0).sum(dim=(1, 2, 3)).min()) >= 4  # each image loses a patch
    shifted = translation(ones, ratio=0.25)
    assert float(shifted.sum()) <= float(ones.sum())  # zero fill enters from the borders
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ConfigError, match="unknown parts"):
        diff_augment(x, "colour")


def test_registry_lists_methods() -> None:
    assert {"generative-deepinversion", "deepinversion", "fast", "cmi"} <= set(inversion_methods.names())
    with pytest.raises(UnknownNameError, match="generative-deepinversion"):
        inversion_methods.get("nope")


def test_each_loss_term_finite_and_differentiable(teacher, condensed) -> None:
    ctx = make_ctx(teacher, condensed, guided=True)
    # The adversarial term only acts where student and teacher agree: use a perturbed copy of the teacher.
    ctx.student = build_model("resnet8", 10, 1, 28, width=4)
    ctx.student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        ctx.student.head.weight.add_(0.3 * torch.randn_like(ctx.student.head.weight))
    ctx.student.eval()
    method = build_method("generative-deepinversion", ctx)
    images = ctx.generator(ctx.generator.sample_latent(20))
    total, terms, t_logits = method.generator_loss(images, method.sample_targets())
    assert set(terms) == {"bn", "oh", "adv", "fa"}
    assert t_logits.shape == (20, 10) and torch.isfinite(total)
    params = list(ctx.generator.parameters())
    for name, term in terms.items():
        assert term.ndim == 0 and torch.isfinite(term), name
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([g.flatten() for g in grads if g is not None])
        assert torch.isfinite(flat).all(), name
        assert float(flat.abs().sum()) > 0, f"{name} does not reach the generator"
    # The student and the discriminator are frozen inside the generator loss: no gradients leak into them.
    assert all(p.grad is None for p in ctx.student.parameters())
    assert all(p.grad is None for p in ctx.guidance.discriminator.parameters())


def test_adversarial_term_off_during_warmup(teacher, condensed) -> None:
    ctx = make_ctx(teacher, condensed, guided=False, adv_weight=1.0)
    ctx.cfg.warmup_epochs = 5
    ctx.epoch = 2
    method = build_method("fast", ctx)
    _, terms, _ = method.generator_loss(ctx.generator(ctx.generator.sample_latent(20)), method.sample_targets())
    assert "adv" not in terms and "fa" not in terms


def test_discriminator_gets_three_input_types(teacher, condensed) -> None:
    ctx = make_ctx(teacher, condensed, guided=True)
    method = build_method("generative-deepinversion", ctx)
    before = [p.clone() for p in ctx.guidance.discriminator.parameters()]
    batch = method.synthesize()
    inputs = ctx.guidance.last_inputs
    assert inputs is not None
    real_f, real_y = inputs.real
    syn_f, syn_y = inputs.synthetic
    wrong_f, wrong_y = inputs.wrong_label
    assert real_f.shape == (30, teacher.feature_dim) and syn_f.shape == (20, teacher.feature_dim)
    assert torch.equal(wrong_f, real_f)  # the same condensed features ...
    assert bool((wrong_y != real_y).all())  # ... with a wrong label each
    assert set(real_y.tolist()) <= set(condensed[1].tolist())
    # Synthetic labels are the teacher's pseudo-labels of the step's images.
    assert syn_y.shape == (20,) and int(syn_y.max()) < 10
    assert batch.images.shape == (20, 1, 28, 28) and batch.teacher_logits.shape == (20, 10)
    assert torch.equal(batch.targets, batch.teacher_logits.argmax(1))
    after = list(ctx.guidance.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), "discriminator was not trained"
    assert {"d_loss", "d_real", "d_fake", "d_wrong", "fa", "bn", "oh", "adv"} <= set(batch.losses)


def test_discriminator_learns_condensed_vs_wrong_labels(teacher, condensed) -> None:
    """A few steps on fixed inputs drive real scores up and wrong-label scores down."""
    fa = FeatureAlignment(teacher, condensed[0], condensed[1], 10, teacher.feature_dim, hidden=16, lr=1e-2,
                          batch_size=50, policy="")
    feats = fa.features(condensed[0]).detach()
    for _ in range(25):
        fa._pending = (feats[:10], condensed[1][:10])
        fa.discriminator_step()
    d = fa.discriminator
    wrong = (condensed[1] + 1) % 10
    with torch.no_grad():
        assert float(d(feats, condensed[1]).mean()) > float(d(feats, wrong).mean())


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("name", ["generative-deepinversion", "fast"])
def test_methods_update_the_shared_generator(teacher, condensed, name: str, conditional: bool) -> None:
    ctx = make_ctx(teacher, condensed, guided=False, conditional=conditional)
    method = build_method(name, ctx)
    before = [p.clone() for p in ctx.generator.parameters()]
    batch = method.synthesize()
    assert torch.isfinite(batch.images).all()
    changed = [not torch.equal(a, b) for a, b in zip(before, ctx.generator.parameters(), strict=True)]
    assert all(changed), f"{name}: some generator parameters did not move"
    state = method.state_dict()
    assert state and build_method(name, ctx).load_state_dict(state) is None


# -- deepinversion: Yin et al.'s pixel optimisation ----------------------------------------------------

def test_deepinversion_optimises_leaf_pixels_and_its_loss_falls(teacher, condensed) -> None:
    torch.manual_seed(0)
    ctx = make_ctx(teacher, condensed, guided=False, g_steps=40, adv_weight=0.0)
    method = build_method("deepinversion", ctx)
    assert isinstance(method, DeepInversion)
    generator_before = [p.clone() for p in ctx.generator.parameters()]
    batch = method.synthesize()
    pixels = method.pixels
    assert pixels is not None and pixels.is_leaf and pixels.requires_grad and pixels.grad is not None
    assert pixels.shape == (20, 1, 28, 28)
    history = method.history
    assert len(history) == 40 and all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.6 * history[0], history  # the pixels fit the loss (jitter makes it noisy)
    assert batch.losses["g_loss"] == pytest.approx(min(history))  # the lowest-loss step's images
    # the run's generator is not what is optimised
    assert all(torch.equal(a, b) for a, b in zip(generator_before, ctx.generator.parameters(), strict=True))
    low, high = (0 - MEAN[0]) / STD[0], (1 - MEAN[0]) / STD[0]  # clipped to valid pixels
    assert float(batch.images.min()) >= low - 1e-5 and float(batch.images.max()) <= high + 1e-5
    assert torch.equal(batch.targets, batch.teacher_logits.argmax(1))


def test_deepinversion_cross_entropy_alone_makes_the_teacher_see_the_targets(teacher, condensed,
                                                                            monkeypatch) -> None:
    """With only the one-hot term and no jitter, 30 pixel steps suffice (BN matching, and the random views
    that change the objective every step, are what need upstream's thousands)."""
    import server.inversion.deepinversion as deepinversion

    monkeypatch.setattr(deepinversion, "jitter_and_flip", lambda images: images)
    torch.manual_seed(0)
    ctx = make_ctx(teacher, condensed, guided=False, g_steps=30, adv_weight=0.0, bn_weight=0.0, oh_weight=1.0,
                   di_tv_l2=0.0)
    batch = build_method("deepinversion", ctx).synthesize()
    assert batch.requested is not None
    assert float((batch.targets == batch.requested).float().mean()) >= 0.9


def test_deepinversion_terms_reach_the_pixels_and_compete_after_warmup(teacher, condensed) -> None:
    torch.manual_seed(0)
    ctx = make_ctx(teacher, condensed, guided=True, di_tv_l1=1e-3, di_l2=1e-4)
    method = build_method("deepinversion", ctx)
    assert isinstance(method, DeepInversion)
    pixels = torch.randn(20, 1, 28, 28, requires_grad=True)
    total, terms, t_logits = method.loss(pixels, method.sample_targets())
    assert set(terms) == {"bn", "oh", "tv", "l2", "adv", "fa"} and t_logits.shape == (20, 10)
    torch.testing.assert_close(total, torch.stack(list(terms.values())).sum())
    for name, term in terms.items():
        (grad,) = torch.autograd.grad(term, pixels, retain_graph=True)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in ctx.student.parameters())  # the student is probed, not trained
    ctx.cfg.warmup_epochs, ctx.epoch = 5, 2
    assert "adv" not in method.loss(pixels, method.sample_targets())[1]
    assert method.bn_stats.momentum == 0.0  # Yin et al. match each batch's own statistics


def test_deepinversion_pieces_on_hand_built_inputs() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    assert float(competition_loss(logits, logits)) == pytest.approx(1.0, abs=1e-6)  # JS 0: full agreement
    assert float(competition_loss(-10 * logits, 10 * logits)) < 0.8
    flat = torch.ones(2, 1, 6, 6)
    assert all(float(t) == 0.0 for t in total_variation(flat))
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # every horizontal neighbour differs by 1, every vertical one by 0
    tv_l1, _ = total_variation(stripes)
    assert float(tv_l1) == pytest.approx(1.0 + 0.0 + 1.0 + 1.0)
    torch.manual_seed(0)
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    views = [jitter_and_flip(x) for _ in range(20)]
    assert all(torch.equal(torch.sort(v.flatten(1))[0], torch.sort(x.flatten(1))[0]) for v in views)  # a permutation
    assert len({v[0, 0, 0, 0].item() for v in views}) > 3  # offsets and flips vary


def test_deepinversion_guided_trains_the_discriminator(teacher, condensed) -> None:
    torch.manual_seed(0)
    ctx = make_ctx(teacher, condensed, guided=True, g_steps=3)
    method = build_method("deepinversion", ctx)
    before = [p.clone() for p in ctx.guidance.discriminator.parameters()]
    batch = method.synthesize()
    assert {"bn", "oh", "tv", "adv", "fa", "d_loss", "g_loss"} <= set(batch.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.guidance.discriminator.parameters(), strict=True))
    assert method.state_dict() == {"bn_ema": {}}


def test_bn_loss_needs_batchnorm_teacher(condensed) -> None:
    teacher = build_model("lenet5", 10, 1, 28).eval()  # no BatchNorm layers
    ctx = make_ctx(teacher, condensed, guided=False)
    with pytest.raises(ConfigError, match="bn_weight"):
        build_method("fast", ctx)
