"""Contrastive model inversion (``base=cmi``): views, BN instance-mean embeddings, memory bank, InfoNCE,
the method's synthesis (persistent and re-initialised generator), and real distillation runs (``mi``,
``mi*`` = CMI*). Tiny BN teacher: ResNet-8 (width 4) fitted for one short epoch on 1000 real FMNIST
images; the condensed set is 3 real images per class."""

from __future__ import annotations

import pytest
import torch

from server.distillation import Distiller
from server.inversion import FeatureAlignment, Generator, InversionContext, build_method, inversion_methods
from server.inversion.cmi import (
    ContrastiveModelInversion,
    MemoryBank,
    contrastive_logits,
    global_view,
    info_nce,
    local_view,
)
from shared.config.distill import DistillConfig
from shared.errors import ConfigError
from shared.models import batchnorm_layers, build_model

MEAN, STD = (0.286,), (0.353,)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_method(teacher, condensed=None, **overrides) -> ContrastiveModelInversion:
    values = dict(synthesis_batch_size=12, generator_width=8, g_steps=2, warmup_epochs=0, cmi_bank_size=30,
                  cmi_head_dim=16, mode="mi*" if condensed is not None else "mi")
    cfg = DistillConfig(**(values | overrides))
    cfg.validate()
    net = teacher[0]
    guidance = None if condensed is None else FeatureAlignment(
        net, condensed.images, condensed.labels, 10, net.feature_dim, hidden=16, batch_size=16, policy=cfg.diffaugment)
    ctx = InversionContext(net, build_model("lenet5_half", 10, 1, 28),
                           Generator(cfg.latent_dim, 1, 28, MEAN, STD, width=cfg.generator_width), 10, cfg,
                           torch.device("cpu"), guidance=guidance, epoch=1)
    method = build_method("cmi", ctx)
    assert isinstance(method, ContrastiveModelInversion)
    return method


def test_views_keep_shape_move_pixels_and_pass_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    for view in (global_view, local_view):
        out = view(x)
        assert out.shape == x.shape and not torch.allclose(out, x)
        out.square().sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
        x.grad = None


def test_memory_bank_is_a_bounded_fifo() -> None:
    bank = MemoryBank(capacity=10, dim=3, device=torch.device("cpu"))
    assert len(bank) == 0 and bank.negatives().shape == (0, 3)
    for step in range(4):
        bank.push(torch.full((4, 3), float(step)))
        assert len(bank) == min(10, 4 * (step + 1))
    assert sorted(bank.negatives()[:, 0].tolist()) == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    bank.push(torch.arange(25.0).view(25, 1).repeat(1, 3))  # more than fits: the newest 10 survive
    assert sorted(bank.negatives()[:, 0].tolist()) == list(range(15, 25))
    copy = MemoryBank(capacity=10, dim=3, device=torch.device("cpu"))
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.negatives(), bank.negatives()) and copy.next == bank.next


def test_info_nce_negatives_and_values() -> None:
    torch.manual_seed(0)
    anchor, bank = torch.randn(5, 8), torch.randn(7, 8)
    logits = contrastive_logits(anchor, anchor.clone(), bank, temperature=0.1)
    assert logits.shape == (5, 5 + 7)  # each anchor: 1 positive, 4 in-batch and 7 bank negatives
    torch.testing.assert_close(logits.diagonal(), torch.full((5,), 10.0))  # cos = 1 with itself, / 0.1
    aligned = info_nce(anchor, anchor.clone(), bank, 0.1)
    shuffled = info_nce(anchor, anchor[torch.tensor([1, 2, 3, 4, 0])], bank, 0.1)
    assert float(aligned) < float(shuffled)
    assert contrastive_logits(anchor, anchor, bank[:0], 0.1).shape == (5, 5)  # empty bank: batch negatives only


def test_embeddings_are_per_bn_layer_instance_means(tiny_teacher) -> None:
    method = make_method(tiny_teacher)
    dim = sum(layer.num_features for layer in batchnorm_layers(tiny_teacher[0]))
    assert method.embed.dim == dim
    emb = method.embeddings(torch.randn(4, 1, 28, 28))
    assert emb.shape == (4, dim) and bool(torch.isfinite(emb).all())


def test_contrastive_term_is_finite_and_trains_generator_and_head(tiny_teacher) -> None:
    torch.manual_seed(0)
    method = make_method(tiny_teacher)
    gen = method.ctx.generator
    images = gen(gen.sample_latent(12))
    view = method.augment(images)
    terms = method.extra_losses(images, view, tiny_teacher[0](view))
    assert set(terms) == {"cr"} and bool(torch.isfinite(terms["cr"]))
    terms["cr"].backward()
    for module in (gen, method.head):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert make_method(tiny_teacher, cmi_weight=0.0).extra_losses(images.detach(), view.detach(),
                                                                   tiny_teacher[0](images)) == {}


def test_contrastive_keys_are_detached(tiny_teacher) -> None:
    """CMI (Fang et al.): only the local-view anchors carry gradient; keys and bank negatives do not."""
    torch.manual_seed(0)
    method = make_method(tiny_teacher)
    gen = method.ctx.generator
    images = gen(gen.sample_latent(8))
    key_view = method.augment(images)
    anchor_view = images.detach().requires_grad_(True)  # only the anchors' source may get a gradient
    key_leaf = key_view.detach().requires_grad_(True)
    terms = method.extra_losses(anchor_view, key_leaf, tiny_teacher[0](key_leaf))
    terms["cr"].backward()
    assert key_leaf.grad is None or float(key_leaf.grad.abs().sum()) == 0.0
    assert anchor_view.grad is not None and float(anchor_view.grad.abs().sum()) > 0


def test_synthesize_fills_the_bank_and_logs_every_term(tiny_teacher, tiny_condensed) -> None:
    torch.manual_seed(0)
    method = make_method(tiny_teacher, tiny_condensed)
    for step in range(4):
        batch = method.synthesize()
        assert len(method.bank) == min(30, 12 * (step + 1))
    assert batch.images.shape == (12, 1, 28, 28) and batch.teacher_logits.shape == (12, 10)
    assert {"bn", "oh", "adv", "cr", "fa", "g_loss"} <= set(batch.losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in batch.losses.values())
    # the newest bank entries are the returned images' global-view embeddings: same samples, new views
    assert method.bank.negatives().shape == (30, method.embed.dim)
    state = method.state_dict()
    other = make_method(tiny_teacher, tiny_condensed)
    other.load_state_dict(state)
    assert torch.equal(other.bank.negatives(), method.bank.negatives())


def test_bank_draws_distinct_negatives_without_replacement() -> None:
    bank = MemoryBank(capacity=50, dim=2, device=torch.device("cpu"))
    bank.push(torch.arange(20.0).view(20, 1).repeat(1, 2))
    assert torch.equal(bank.negatives(32), bank.negatives())  # fewer stored than asked: all of them
    torch.manual_seed(0)
    first, second = bank.negatives(8), bank.negatives(8)
    assert first.shape == (8, 2) and len(set(first[:, 0].tolist())) == 8  # distinct rows of the bank
    assert set(first[:, 0].tolist()) <= set(range(20)) and not torch.equal(first, second)  # drawn anew


def test_each_step_contrasts_against_cmi_negatives_bank_entries(tiny_teacher, monkeypatch) -> None:
    import server.inversion.cmi as cmi

    seen: list[int] = []
    real = cmi.info_nce

    def spy(anchor, positive, negatives, temperature):
        seen.append(negatives.shape[0])
        return real(anchor, positive, negatives, temperature)

    monkeypatch.setattr(cmi, "info_nce", spy)
    torch.manual_seed(0)
    method = make_method(tiny_teacher, cmi_negatives=8)
    for _ in range(3):
        method.synthesize()
    assert len(method.bank) == 30  # 3 x 12 pushed, capped
    assert seen == [0, 0, 8, 8, 8, 8]  # empty bank, then 12 and 24 stored: 8 drawn per step (g_steps 2)


def test_cmi_negatives_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"distill\.cmi_negatives"):
        DistillConfig(cmi_negatives=0).validate()


@pytest.mark.parametrize("reset", [True, False])
def test_reset_generator_mode_reinitialises_every_batch(tiny_teacher, reset: bool) -> None:
    torch.manual_seed(0)
    method = make_method(tiny_teacher, cmi_reset_generator=reset, g_steps=1)
    gen = method.ctx.generator
    bn = [m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for _ in range(3):
        method.synthesize()
    # BN counters restart with every re-initialisation: one generator step per batch -> 1, else 3
    assert {int(m.num_batches_tracked) for m in bn} == ({1} if reset else {3})
    assert len(method.bank) == 30  # 3 x 12 embeddings pushed, capped at the bank size


def test_teacher_without_batchnorm_is_refused() -> None:
    plain = build_model("convnet3", 10, 1, 28, width=8)  # GroupNorm only
    cfg = DistillConfig(bn_weight=0.0, mode="mi", synthesis_batch_size=4, generator_width=8)
    ctx = InversionContext(plain, build_model("lenet5_half", 10, 1, 28),
                           Generator(cfg.latent_dim, 1, 28, MEAN, STD, width=8), 10, cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"distill\.base=cmi"):
        build_method("cmi", ctx)


@pytest.mark.parametrize("mode", ["mi", "mi*"])
def test_distillation_loop_runs_with_cmi(engine_data, tiny_teacher, tiny_condensed, tmp_path, mode: str) -> None:
    assert inversion_methods.get("cmi") is ContrastiveModelInversion
    net, card = tiny_teacher
    cfg = DistillConfig(base="cmi", mode=mode, epochs=2, synthesis_batch_size=12, generator_width=8,
                        kd_batch_size=32, kd_steps=2, condensed_batch_size=16, discriminator_hidden=16,
                        warmup_epochs=1, eval_every_seconds=0.0, checkpoint_every=0, grid_every=0,
                        cmi_bank_size=64, cmi_head_dim=16)
    distiller = Distiller(cfg, net, card, tiny_condensed, engine_data[1], tmp_path, seed=0, progress=False)
    result = distiller.fit()
    epochs = [r for r in distiller.run.read_metrics() if r["event"] == "epoch"]
    assert len(epochs) == 2 and all("cr" in r and r["bank"] == 12 * (i + 1) for i, r in enumerate(epochs))
    assert ("fa" in epochs[-1]) == (mode == "mi*")
    assert result.accuracy is not None


def test_resume_reproduces_the_uninterrupted_run(engine_data, tiny_teacher, tiny_condensed, tmp_path) -> None:
    net, card = tiny_teacher

    def run(path, epochs: int, resume: bool = False) -> list[tuple]:
        cfg = DistillConfig(base="cmi", mode="mi*", epochs=epochs, synthesis_batch_size=12, generator_width=8,
                            kd_batch_size=32, kd_steps=2, condensed_batch_size=16, discriminator_hidden=16,
                            warmup_epochs=1, eval_every_seconds=1e9, checkpoint_every=0, grid_every=0,
                            cmi_bank_size=20, cmi_head_dim=16, lr_schedule="constant")
        distiller = Distiller(cfg, net, card, tiny_condensed, None, path, seed=3, progress=False)
        distiller.fit(resume=resume)
        return [(r["epoch"], r.get("kd_loss"), r["cr"], r["g_loss"]) for r in distiller.run.read_metrics()
                if r["event"] == "epoch"]

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    assert run(tmp_path / "part", 4, resume=True) == full  # head, bank and optimiser are all restored
