"""Logit-standardised KD (``kd_loss=kl_logit_std``): invariances, gradients, and a real distillation run.

The end-to-end case fits a tiny BN teacher (ResNet-8, width 4) for one short epoch on 1000 real FMNIST
images and distils LeNet-5-half for two epochs of Algorithm 1 (``fast``, ``mi*``, 3 real images/class)."""

from __future__ import annotations

import pytest
import torch

from server.distillation import Distiller
from server.distillation.kd_logit_std import kl_logit_std, standardize_logits
from server.distillation.kd_losses import get_kd_loss, kl_divergence
from shared.config.distill import DistillConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(seed: int, n: int = 16, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=gen) * 3, torch.randn(n, classes, generator=gen) * 5


def test_registered_under_its_config_name() -> None:
    assert get_kd_loss("kl_logit_std") is kl_logit_std


def test_standardised_rows_have_zero_mean_unit_std() -> None:
    z = standardize_logits(torch.randn(8, 10) * 7 + 3)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=1, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_invariant_to_per_sample_shift_and_scale(temperature: float) -> None:
    student, teacher = _logits(0)
    gen = torch.Generator().manual_seed(1)
    n = student.shape[0]
    scale_s, scale_t = torch.rand(n, 1, generator=gen) * 5 + 0.1, torch.rand(n, 1, generator=gen) * 5 + 0.1
    shift_s, shift_t = torch.randn(n, 1, generator=gen) * 10, torch.randn(n, 1, generator=gen) * 10
    base = kl_logit_std(student, teacher, temperature)
    moved = kl_logit_std(student * scale_s + shift_s, teacher * scale_t + shift_t, temperature)
    torch.testing.assert_close(moved, base, atol=1e-5, rtol=1e-4)
    # plain KL is not invariant to scale: the test would catch a loss that ignored the standardisation
    assert not torch.allclose(kl_divergence(student * scale_s, teacher, temperature),
                              kl_divergence(student, teacher, temperature), atol=1e-3)


def test_zero_iff_same_relations_and_matches_formula() -> None:
    student, teacher = _logits(2)
    assert float(kl_logit_std(teacher * 0.3 - 2.0, teacher, 2.0).abs().max()) < 1e-5
    per_sample = kl_logit_std(student, teacher, 2.0)
    assert per_sample.shape == (student.shape[0],) and bool((per_sample > 0).all())
    # by hand: T^2 KL(softmax(Z(t)/T) || softmax(Z(s)/T))
    zs, zt = [(x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, unbiased=False) for x in (student, teacher)]
    p, q = torch.softmax(zt / 2.0, dim=1), torch.softmax(zs / 2.0, dim=1)
    torch.testing.assert_close(per_sample, 4.0 * (p * (p.log() - q.log())).sum(1), atol=1e-5, rtol=1e-4)


def test_finite_and_differentiable_even_for_constant_rows() -> None:
    student, teacher = _logits(3)
    student[0] = 1.5  # a row with zero spread
    student.requires_grad_(True)
    loss = kl_logit_std(student, teacher, 2.0)
    assert bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert student.grad is not None and bool(torch.isfinite(student.grad).all())
    assert float(student.grad[1:].abs().sum()) > 0


def test_distillation_loop_runs_with_logit_standardisation(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    teacher, card = tiny_teacher
    cfg = DistillConfig(epochs=2, synthesis_batch_size=16, generator_width=8, kd_batch_size=32, kd_steps=3,
                        condensed_batch_size=16, discriminator_hidden=16, warmup_epochs=1, eval_every_seconds=0.0,
                        checkpoint_every=0, grid_every=0, kd_loss="kl_logit_std", temperature=2.0)
    distiller = Distiller(cfg, teacher, card, tiny_condensed, engine_data[1], tmp_path, seed=0, progress=False)
    assert distiller.kd_loss is kl_logit_std
    result = distiller.fit()
    epochs = [r for r in distiller.run.read_metrics() if r["event"] == "epoch"]
    assert len(epochs) == 2 and all(torch.isfinite(torch.tensor(r["kd_loss"])) for r in epochs if r["epoch"] > 1)
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
