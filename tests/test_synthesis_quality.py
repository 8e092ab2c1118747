"""Synthesis-quality metrics (server/inversion/quality.py) on hand-built cases, the first-order MAML
update of ``fast`` on a tiny generator, the BN-statistics momentum, and the condensed share of KD batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from server.distillation.pool import SamplePool
from server.inversion import Generator, InversionContext, build_method
from server.inversion.losses import BNStatistics
from server.inversion.quality import label_statistics, manifold_metrics
from shared.config.distill import DistillConfig
from shared.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_label_statistics_hand_built() -> None:
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.full((4, 4), -10.0)
    logits[0, 0] = logits[1, 1] = logits[2, 1] = logits[3, 3] = 10.0  # image 2 asked for class 2, judged 1
    stats = label_statistics(targets, logits)
    assert stats["agreement"] == pytest.approx(0.75)
    assert stats["label_histogram"] == [1, 2, 0, 1] and stats["classes_present"] == 3
    shares = torch.tensor([0.25, 0.5, 0.25])
    assert stats["label_entropy"] == pytest.approx(float(-(shares * shares.log()).sum()) / math.log(4))
    assert stats["confidence"] == pytest.approx(1.0, abs=1e-6)
    balanced = label_statistics(torch.arange(4), torch.eye(4) * 20)
    assert balanced["label_entropy"] == pytest.approx(1.0) and balanced["agreement"] == 1.0


def test_manifold_metrics_hand_built() -> None:
    # Reference: 4 points on a unit square; k = 1 radius of each is 1 (its nearest neighbour).
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    near = torch.tensor([[0.1, 0.0], [0.9, 0.05]])  # inside the balls of the first two corners only
    far = torch.tensor([[10.0, 10.0], [11.0, 10.0]])
    m = manifold_metrics(torch.cat([near, far]), reference, k=1)
    assert m["precision"] == pytest.approx(0.5)  # 2 of 4 synthetic points inside the reference manifold
    # Synthetic k=1 radii: near points are 0.80 apart, far points 1 apart; corners (0,0),(1,0) are inside.
    assert m["recall"] == pytest.approx(0.5)
    # Each corner's ball (radius 1) holds a near point: (0,0),(1,0) directly; (0,1) holds (0.1,0)? distance
    # sqrt(0.01 + 1) > 1, no; (1,1): (0.9,0.05) is sqrt(0.01+0.9025) < 1, yes.
    assert m["coverage"] == pytest.approx(0.75)
    assert manifold_metrics(reference.clone(), reference, k=1) == {"precision": 1.0, "recall": 1.0, "coverage": 1.0}


def _fast(tiny_teacher, **overrides):
    teacher, _ = tiny_teacher
    cfg = DistillConfig(synthesis_batch_size=10, generator_width=4, latent_dim=16, g_steps=3, warmup_epochs=0,
                        mode="mi", **overrides)
    cfg.validate()
    gen = Generator(cfg.latent_dim, 1, 28, (0.286,), (0.353,), width=cfg.generator_width, num_classes=10)
    ctx = InversionContext(teacher, build_model("lenet5_half", 10, 1, 28), gen, 10, cfg, torch.device("cpu"))
    return build_method("fast", ctx)


def test_fomaml_meta_gradient_is_the_sum_of_inner_gradients(tiny_teacher, monkeypatch) -> None:
    torch.manual_seed(0)
    method = _fast(tiny_teacher, synthesis_augment="none", adv_weight=0.0)
    inner_grads: list[list[torch.Tensor]] = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):  # record the clone's gradients before each inner step
        if self is not method.meta_optimizer:
            params = self.param_groups[0]["params"]
            inner_grads.append([p.grad.detach().clone() for p in params])
        else:  # the meta step: its gradients must equal the sum of the recorded inner ones
            meta = [p.grad.detach().clone() for p in method.ctx.generator.parameters()]
            summed = [torch.stack(g).sum(0) for g in zip(*inner_grads, strict=True)]
            assert len(inner_grads) == 3 and len(meta) == len(summed)
            for m, s in zip(meta, summed, strict=True):
                torch.testing.assert_close(m, s)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    before = [p.detach().clone() for p in method.ctx.generator.parameters()]
    batch = method.synthesize()
    assert len(inner_grads) == 3
    assert any(not torch.equal(b, p) for b, p in zip(before, method.ctx.generator.parameters(), strict=True))
    assert batch.images.shape == (10, 1, 28, 28) and "best_loss" in batch.losses
    assert batch.requested is not None and batch.features is not None and batch.features.shape[0] == 10


def test_fast_returns_the_best_step(tiny_teacher) -> None:
    torch.manual_seed(0)
    method = _fast(tiny_teacher, synthesis_augment="none", adv_weight=0.0, bn_momentum=0.0)
    batch = method.synthesize()
    assert batch.losses["best_loss"] <= batch.losses["g_loss"] + 1e-6


def test_bn_momentum_blends_earlier_batches(tiny_teacher) -> None:
    teacher, _ = tiny_teacher
    stats = BNStatistics(teacher, momentum=0.5)
    x1, x2 = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28) * 3
    with stats.active():
        teacher(x1)
    first = {i: m.clone() for i, (m, _) in stats._last.items()}
    stats.update_momentum()
    assert all(torch.equal(stats.ema[i][0], first[i]) for i in first)  # the first batch seeds the average
    with stats.active():
        teacher(x2)
    second = {i: m.clone() for i, (m, _) in stats._last.items()}
    stats.update_momentum()
    for i in first:
        torch.testing.assert_close(stats.ema[i][0], 0.5 * first[i] + 0.5 * second[i])
    restored = BNStatistics(teacher, momentum=0.5)
    restored.load_state_dict(stats.state_dict())
    assert all(torch.equal(restored.ema[i][1], stats.ema[i][1]) for i in stats.ema)
    stats.remove()
    restored.remove()


def test_condensed_share_holds_as_the_pool_fills() -> None:
    torch.manual_seed(0)
    cond = (torch.zeros(20, 1, 4, 4), torch.zeros(20, dtype=torch.long), torch.zeros(20, 3))
    pool = SamplePool(cap=2000, condensed=cond, condensed_share=0.25)
    for size in (10, 500, 2000, 4000):
        while pool.seen < size:
            pool.add(torch.ones(100, 1, 4, 4), torch.ones(100, dtype=torch.long), torch.ones(100, 3))
        batch = pool.sample(64)
        assert int((batch.indices < pool.num_condensed).sum()) == 16  # 25% of 64, however large the pool
        assert float((batch.images == 0).float().mean()) == pytest.approx(0.25)
    uniform = SamplePool(cap=2000, condensed=cond)
    uniform.add(torch.ones(2000, 1, 4, 4), torch.ones(2000, dtype=torch.long), torch.ones(2000, 3))
    assert int((uniform.sample(1000).indices < 20).sum()) < 40  # without it: about 1%


def test_noisy_layers_route_groups_and_make_same_class_codes_differ() -> None:
    from server.inversion.generator import NoisyLayers

    torch.manual_seed(0)
    noise = NoisyLayers(groups=4, dim=8)
    code = torch.ones(8, 8)  # eight identical codes (one class, no noise): without the layer, one image
    out = noise(code)
    for i in range(8):  # sample i goes through map i * 4 // 8
        torch.testing.assert_close(out[i], code[i] @ noise.weight[i * 4 // 8])
    assert torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])
    gen = Generator(8, 1, 28, (0.5,), (0.5,), width=4, num_classes=3)
    labels = torch.zeros(8, dtype=torch.long)
    plain, noisy = gen(torch.zeros(8, 8), labels), gen(torch.zeros(8, 8), labels, NoisyLayers(4, 8))
    assert torch.allclose(plain[0], plain[7]) and not torch.allclose(noisy[0], noisy[7])


def test_fast_trains_fresh_noisy_layers_per_batch(tiny_teacher) -> None:
    torch.manual_seed(0)
    method = _fast(tiny_teacher, noisy_groups=5)
    first, second = method.noisy_layers(), method.noisy_layers()
    assert first is not None and second is not None and first.weight.shape == (5, 16, 16)
    assert not torch.equal(first.weight, second.weight)
    before = {k: v.clone() for k, v in method.ctx.generator.state_dict().items()}
    batch = method.synthesize()
    assert batch.images.shape == (10, 1, 28, 28)
    assert set(method.ctx.generator.state_dict()) == set(before)  # the noisy maps are not part of the generator


def test_comparison_grid_frames_exactly_the_tiles_the_teacher_disagrees_with() -> None:
    from shared.viz import comparison_grid

    names = ["zero", "one"]
    synthetic = torch.full((4, 1, 28, 28), 0.5)
    requested = torch.tensor([0, 0, 1, 1])
    teacher = torch.tensor([0, 1, 1, 1])  # only the second tile of row "zero" is labelled otherwise
    grid = np.asarray(comparison_grid(names, synthetic, requested, teacher, scale=1))
    red = (grid[..., 0] > 200) & (grid[..., 1] < 60) & (grid[..., 2] < 60)
    rows, cols = np.nonzero(red)
    assert red.any()
    assert rows.max() < 14 + 30  # all red pixels lie in the first class row ...
    tile_left = 8 + 7 * len("zero")  # ... around its second synthetic tile
    assert cols.min() >= tile_left + 30 - 1 and cols.max() <= tile_left + 30 + 28


def test_plot_run_draws_every_panel_and_names_missing_metrics(tmp_path) -> None:
    from server.distillation.plots import PANELS, _series, plot_run

    records = [{"event": "epoch", "epoch": e, "seconds": float(e), "kd_loss": 1.0 / e, "agreement": 0.5,
                "confidence": 0.7, "classes_present": 8, "label_histogram": [1] * 10} for e in range(1, 4)]
    records += [{"event": "eval", "epoch": 3, "seconds": 3.0, "accuracy": 0.4}]
    assert _series(records, "epoch", "classes_present_share") == ([1.0, 2.0, 3.0], [0.8, 0.8, 0.8])
    assert _series(records, "epoch", "bn_raw") == ([], [])
    path = plot_run(records, tmp_path / "plots" / "run.png")
    assert path.stat().st_size > 10_000 and len(PANELS) == 6
    assert [p.name for p in path.parent.iterdir()] == ["run.png"]  # no temp file left
