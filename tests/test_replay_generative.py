"""Generative replay (``replay=generative``): VAE shapes and losses, batch composition, constant memory
over steps, checkpoint round trip, and real distillation runs in modes ``mi`` and ``mi*``.

Tiny BN teacher (ResNet-8, width 4) fitted for one short epoch on 1000 real FMNIST images; synthetic
batches for the unit tests are real FMNIST images (what the replay stores does not depend on their origin)."""

from __future__ import annotations

import pytest
import torch

from server.distillation import CondensedSet, Distiller
from server.distillation.pool import replays
from server.distillation.replay_generative import GenerativeReplay, ReplayVAE, build_generative_replay
from shared.config.distill import DistillConfig
from shared.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _real(data, start: int, n: int, teacher) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = data[0].subset(range(start, start + n)).normalized()
    with torch.no_grad():
        logits = teacher[0](images)
    return images, logits.argmax(1), logits


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 30)])
def test_vae_shapes_and_differentiable_loss(channels: int, size: int) -> None:
    vae = ReplayVAE(channels, (size, size), latent_dim=8, width=4)
    x = torch.randn(5, channels, size, size)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 8)
    assert vae.decode(mu).shape == x.shape and vae.sample(3, torch.device("cpu")).shape == (3, channels, size, size)
    loss = vae.loss(x)
    assert bool(torch.isfinite(loss))
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in vae.parameters())


def test_registered_and_config_checks(tiny_teacher) -> None:
    assert replays.get("generative") is build_generative_replay
    with pytest.raises(ConfigError, match=r"distill\.sampler"):
        GenerativeReplay(DistillConfig(sampler="ssd"), None, tiny_teacher[0])


def test_memory_is_constant_over_steps(engine_data, tiny_teacher) -> None:
    torch.manual_seed(0)
    cfg = DistillConfig(vae_latent_dim=8, vae_width=4, vae_steps=2)
    tiny_condensed = _real(engine_data, 0, 20, tiny_teacher)
    replay = GenerativeReplay(cfg, tiny_condensed, tiny_teacher[0])
    sizes, lengths = [], []
    for step in range(12):
        replay.add(*_real(engine_data, 100 + 16 * step, 16, tiny_teacher))
        sizes.append(replay.stored_bytes())
        lengths.append(len(replay))
        replay.sample(32)
    assert len(set(sizes)) == 1, sizes  # nothing grows with the number of batches seen
    assert set(lengths) == {20 + 16} and replay.seen == 12 * 16 and replay.vae_steps_done == 24
    # the VAE learns the stream: its loss on a seen batch drops with training
    batch = _real(engine_data, 100, 16, tiny_teacher)[0]
    untrained = ReplayVAE(1, (28, 28), 8, 4)
    torch.manual_seed(1)
    fresh_loss = float(untrained.loss(batch).detach())
    torch.manual_seed(1)
    assert replay.vae is not None and float(replay.vae.loss(batch).detach()) < fresh_loss


def test_batch_composition_and_teacher_labels(engine_data, tiny_teacher) -> None:
    torch.manual_seed(0)
    cfg = DistillConfig(vae_latent_dim=8, vae_width=4, vae_replay_fraction=0.5, pool_cap=20)
    tiny_condensed = _real(engine_data, 0, 20, tiny_teacher)
    replay = GenerativeReplay(cfg, tiny_condensed, tiny_teacher[0])
    only_condensed = replay.sample(16)  # nothing synthesised yet (mode cs-only): tiny_condensed only
    assert bool((only_condensed.indices < 20).all()) and bool((only_condensed.indices >= 0).all())
    replay.add(*_real(engine_data, 100, 16, tiny_teacher))
    counts = torch.tensor([replay.split(64) for _ in range(200)]).float()
    assert bool((counts.sum(1) == 64).all())
    # tiny_condensed share = 20 / (20 + min(seen=16, cap=20)); the rest split half fresh, half replayed
    assert float(counts[:, 0].mean()) == pytest.approx(64 * 20 / 36, rel=0.1)
    assert bool(((counts[:, 1] - counts[:, 2]).abs() <= 1).all())
    batch = replay.sample(64)
    assert batch.images.shape == (64, 1, 28, 28) and batch.teacher_logits.shape == (64, 10)
    replayed = batch.indices == -1
    assert int(replayed.sum()) > 0
    with torch.no_grad():
        logits = tiny_teacher[0](batch.images[replayed])
    torch.testing.assert_close(batch.teacher_logits[replayed], logits)
    assert torch.equal(batch.labels[replayed], logits.argmax(1))
    stored = ~replayed
    torch.testing.assert_close(batch.labels[stored][batch.indices[stored] < 20],
                               tiny_condensed[1][batch.indices[stored][batch.indices[stored] < 20]])
    no_teacher = GenerativeReplay(cfg, tiny_condensed)
    no_teacher.add(*_real(engine_data, 100, 16, tiny_teacher))
    with pytest.raises(ConfigError, match="teacher"):  # a draw with replayed samples needs the tiny_teacher
        no_teacher.sample(64)


def test_state_round_trip(engine_data, tiny_teacher) -> None:
    cfg = DistillConfig(vae_latent_dim=8, vae_width=4)
    replay = GenerativeReplay(cfg, None, tiny_teacher[0])
    replay.add(*_real(engine_data, 100, 16, tiny_teacher))
    restored = GenerativeReplay(cfg, None, tiny_teacher[0])
    restored.load_state_dict(replay.state_dict())
    assert restored.seen == 16 and len(restored) == 16 and restored.vae is not None and replay.vae is not None
    for a, b in zip(restored.vae.parameters(), replay.vae.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["mi", "mi*"])
def test_distillation_loop_runs_with_generative_replay(engine_data, tiny_teacher, tmp_path, mode: str) -> None:
    net, card = tiny_teacher
    cfg = DistillConfig(epochs=3, synthesis_batch_size=16, generator_width=8, kd_batch_size=32, kd_steps=3,
                        condensed_batch_size=16, discriminator_hidden=16, warmup_epochs=1, eval_every_seconds=0.0,
                        checkpoint_every=0, grid_every=0, replay="generative", vae_latent_dim=8, vae_width=4, mode=mode)
    distiller = Distiller(cfg, net, card, CondensedSet.from_real(engine_data[0], 3), engine_data[1], tmp_path, seed=0,
                          progress=False)
    replay = distiller.pool
    assert isinstance(replay, GenerativeReplay)
    assert replay.teacher is distiller.teacher  # the loop hands its tiny_teacher to the replay factory
    result = distiller.fit()
    n_cond = 0 if mode == "mi" else 30
    assert result.pool_size == n_cond + 16 and result.synthetic_seen == 3 * 16
    assert replay.vae_steps_done == 3 * cfg.vae_steps
    epochs = [r for r in distiller.run.read_metrics() if r["event"] == "epoch"]
    assert len(epochs) == 3 and {r["pool"] for r in epochs} == {n_cond + 16}
    assert result.accuracy is not None


def test_resume_reproduces_the_uninterrupted_run(engine_data, tiny_teacher, tmp_path) -> None:
    net, card = tiny_teacher
    tiny_condensed = CondensedSet.from_real(engine_data[0], 3)

    def run(path, epochs: int, resume: bool = False) -> list[tuple]:
        cfg = DistillConfig(mode="mi+cs", epochs=epochs, synthesis_batch_size=16, generator_width=8, kd_batch_size=32,
                            kd_steps=3, warmup_epochs=1, eval_every_seconds=1e9, checkpoint_every=0, grid_every=0,
                            replay="generative", vae_latent_dim=8, vae_width=4, lr_schedule="constant")
        distiller = Distiller(cfg, net, card, tiny_condensed, None, path, seed=3, progress=False)
        distiller.fit(resume=resume)
        return [(r["epoch"], r.get("kd_loss"), r["g_loss"]) for r in distiller.run.read_metrics()
                if r["event"] == "epoch"]

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    assert run(tmp_path / "part", 4, resume=True) == full  # VAE, its optimiser and the fresh batch restored
