"""Algorithm 1 end to end on tiny models: pool, KD loss, modes, resume, condensed-set checks, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from server.distillation import CondensedSet, Distiller, load_condensed
from server.distillation.kd_losses import get_kd_loss, kd_losses
from server.distillation.pool import SamplePool, samplers
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config.distill import DistillConfig
from shared.errors import ConfigError, PayloadError, UnknownNameError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**overrides) -> DistillConfig:
    values = dict(epochs=3, synthesis_batch_size=16, generator_width=8, kd_batch_size=32, kd_steps=2,
                  condensed_batch_size=16, discriminator_hidden=16, warmup_epochs=1, eval_every_seconds=0.0,
                  eval_samples=200, checkpoint_every=2, grid_every=2, lr_schedule="constant")
    values.update(overrides)
    return DistillConfig(**values)


def run(teacher, condensed, test, path, resume=False, **overrides):
    net, card = teacher
    distiller = Distiller(tiny_cfg(**overrides), net, card, condensed, test, path, seed=1, progress=False)
    return distiller, distiller.fit(resume=resume)


# -- pool ---------------------------------------------------------------------------------------------
def _batch(n: int, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return ids.view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), torch.arange(n) % 3, ids.view(n, 1).repeat(1, 3)


@pytest.mark.parametrize("policy", ["reservoir", "oldest"])
def test_pool_cap_respected_and_condensed_kept(policy: str) -> None:
    cond = _batch(4, -4)
    pool = SamplePool(cap=10, policy=policy, condensed=cond)
    for step in range(7):
        pool.add(*_batch(5, 5 * step))
        assert pool.size <= 10 and len(pool) == 4 + min(10, 5 * (step + 1))
    assert pool.seen == 35
    images, _ = pool.synthetic()
    ids = images[:, 0, 0, 0]
    assert len(set(ids.tolist())) == 10  # no duplicates
    if policy == "oldest":
        assert sorted(ids.tolist()) == list(range(25, 35))  # only the newest survive
    batch = pool.get(torch.arange(4))  # condensed entries are never evicted
    torch.testing.assert_close(batch.images, cond[0])
    sample = pool.sample(64)
    assert sample.images.shape == (64, 1, 2, 2) and int(sample.indices.max()) < len(pool)
    # Stored logits travel with their images.
    torch.testing.assert_close(sample.teacher_logits[:, 0], sample.images[:, 0, 0, 0])


def test_pool_state_round_trip_and_errors() -> None:
    pool = SamplePool(cap=6)
    pool.add(*_batch(8, 0))
    clone = SamplePool(cap=6)
    clone.load_state_dict(pool.state_dict())
    assert (clone.size, clone.seen) == (pool.size, pool.seen)
    torch.testing.assert_close(clone.synthetic()[0], pool.synthetic()[0])
    with pytest.raises(ConfigError, match="empty"):
        SamplePool(cap=3).sample(2)
    with pytest.raises(ConfigError, match="pool_cap"):
        SamplePool(cap=0)
    with pytest.raises(UnknownNameError, match="uniform"):
        SamplePool(cap=3, sampler="nope")
    assert "uniform" in samplers.names()


def test_kl_loss_per_sample() -> None:
    assert "kl" in kd_losses.names()
    kl = get_kd_loss("kl")
    logits = torch.randn(5, 10)
    assert torch.allclose(kl(logits, logits, 4.0), torch.zeros(5), atol=1e-6)
    other = torch.randn(5, 10)
    loss = kl(other, logits, 4.0)
    assert loss.shape == (5,) and bool((loss > 0).all())


# -- the loop -----------------------------------------------------------------------------------------
def test_guided_end_to_end(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    _, result = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "run", base="fast", mode="mi*")
    assert result.epochs == 3 and result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
    assert result.pool_size == len(tiny_condensed) + 3 * 16
    assert 0.0 < result.compute_fraction <= 1.0
    assert {"synthesis", "kd"} <= set(result.phase_seconds)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert {"bn", "oh", "fa", "d_loss", "kd_loss"} <= set(epochs[-1]) and "adv" in epochs[-1]
    assert "adv" not in epochs[0]  # warm-up
    assert all(torch.isfinite(torch.tensor(r["kd_loss"])) for r in epochs if r["epoch"] > 1)
    _, card = load_checkpoint(tmp_path / "run" / "student")
    assert card.role == "student" and card.arch == "lenet5_half" and card.provenance["distill"]["mode"] == "mi*"
    assert card.provenance["payloads"] == tiny_condensed.sources
    assert (tmp_path / "run" / "grids" / "condensed.png").is_file()
    assert any(p.name.startswith("synthetic_epoch") for p in (tmp_path / "run" / "grids").iterdir())
    assert (tmp_path / "run" / "plots" / "run.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["config"]["mode"] == "mi*"


def test_synthetic_budget_stops_synthesis_and_keeps_distilling(tiny_teacher, tiny_condensed, engine_data,
                                                                tmp_path) -> None:
    _, result = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "b", epochs=4,
                    synthetic_budget=32, checkpoint_every=0, grid_every=0)
    assert result.synthetic_seen == 32 and result.pool_size == len(tiny_condensed) + 32
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 4 and "oh" in epochs[1] and "oh" not in epochs[2]  # 2 batches of 16, then KD only
    assert all(torch.isfinite(torch.tensor(r["kd_loss"])) for r in epochs if r["epoch"] > 1)
    with pytest.raises(ConfigError, match="synthetic_budget"):
        tiny_cfg(synthetic_budget=-1).validate()


def test_pool_every_keeps_every_kth_batch(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    distiller, result = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "k", epochs=5, pool_every=2,
                            checkpoint_every=0, grid_every=0)
    epochs = [r for r in distiller.run.read_metrics() if r["event"] == "epoch"]
    assert all("oh" in r for r in epochs)  # the generator trains every epoch
    assert result.synthetic_seen == 3 * 16 and result.pool_size == len(tiny_condensed) + 3 * 16  # epochs 1, 3, 5


@pytest.mark.parametrize(("mode", "base"), [("cs-only", "fast"), ("mi", "generative-deepinversion"), ("mi+cs", "fast"),
                                            ("mi+cs", "deepinversion"), ("mi", "cmi")])
def test_modes(tiny_teacher, tiny_condensed, engine_data, tmp_path, mode: str, base: str) -> None:
    distiller, result = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / mode, mode=mode, base=base,
                            epochs=2, checkpoint_every=0, grid_every=0)
    synthetic = 0 if mode == "cs-only" else 2 * 16
    condensed_n = 0 if mode == "mi" else len(tiny_condensed)
    assert result.pool_size == synthetic + condensed_n
    assert (distiller.generator is None) == (mode == "cs-only")
    assert distiller.guidance is None


def test_resume_reproduces_next_losses(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    run(tiny_teacher, tiny_condensed, engine_data[1], full_dir, epochs=4, base="generative-deepinversion")
    run(tiny_teacher, tiny_condensed, engine_data[1], part_dir, epochs=2, base="generative-deepinversion")
    distiller, _ = run(tiny_teacher, tiny_condensed, engine_data[1], part_dir, resume=True, epochs=4,
                       base="generative-deepinversion")
    assert distiller.epoch == 4

    def losses(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r.get("kd_loss"), r["g_loss"], r["d_loss"]) for r in map(json.loads, lines)
                if r["event"] == "epoch"]

    assert losses(part_dir) == losses(full_dir)  # epochs 3-4 after resuming equal the uninterrupted run
    a, _ = load_checkpoint(full_dir / "student")
    b, _ = load_checkpoint(part_dir / "student")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_compute_fraction_is_a_fraction_after_one_epoch_and_after_resume(tiny_teacher, tiny_condensed,
                                                                        engine_data, tmp_path) -> None:
    """Evaluation forwards are outside the budget and a resumed run keeps the seconds counted before."""
    _, first = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "p", epochs=1, checkpoint_every=1)
    assert 0.3 < first.compute_fraction <= 1.0
    _, resumed = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "p", resume=True, epochs=3)
    assert 0.3 < resumed.compute_fraction <= 1.0
    assert resumed.train_seconds > first.train_seconds


def test_warmup_epochs_only_synthesise(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    distiller, _ = run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "w", epochs=3, warmup_epochs=2,
                       checkpoint_every=0, grid_every=0)
    epochs = [r for r in distiller.run.read_metrics() if r["event"] == "epoch"]
    assert ["kd_loss" in r for r in epochs] == [False, False, True]
    assert all({"agreement", "label_entropy", "coverage", "precision", "recall"} <= set(r) for r in epochs)


def test_resume_refuses_changed_config(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "r", epochs=1, mode="mi+cs")
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "r", resume=True, epochs=2, mode="mi+cs",
            temperature=2.0)
    with pytest.raises(Exception, match="no checkpoint"):
        run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "missing", resume=True)


# -- input checks -------------------------------------------------------------------------------------
def test_condensed_shape_and_class_mismatch(tiny_teacher, engine_data, tmp_path) -> None:
    net, card = tiny_teacher
    wrong_size = CondensedSet(torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))
    with pytest.raises(PayloadError, match=r"\(1, 28, 28\)"):
        Distiller(tiny_cfg(), net, card, wrong_size, None, tmp_path / "a", progress=False)
    wrong_classes = CondensedSet(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 12]))
    with pytest.raises(PayloadError, match="10 classes"):
        Distiller(tiny_cfg(), net, card, wrong_classes, None, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="needs condensed"):
        Distiller(tiny_cfg(mode="mi*"), net, card, None, None, tmp_path / "c", progress=False)
    with pytest.raises(PayloadError, match="float32"):
        CondensedSet(torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.long))


def test_load_condensed_checks_payloads(tiny_teacher, tmp_path) -> None:
    from shared.payload import CondensedPayload, PayloadMeta

    _, card = tiny_teacher

    def payload(dataset: str, size: int, labels: list[int], mean: float | None = None) -> CondensedPayload:
        meta = PayloadMeta(method="real", dataset=dataset, ipc=2, num_classes=10, channels=1, height=size,
                           width=size, mean=[mean] if mean is not None else list(card.mean), std=list(card.std),
                           local_class_counts=[5] * 10)
        return CondensedPayload(torch.rand(len(labels), 1, size, size), torch.tensor(labels), meta)

    folder = tmp_path / "payloads"
    payload("fashion_mnist", 28, [0, 1, 1]).save(folder / "site0.safetensors")
    payload("fashion_mnist", 28, [2, 3]).save(folder / "site1.safetensors")
    loaded = load_condensed(folder, card)
    assert len(loaded) == 5 and loaded.labels.tolist() == [0, 1, 1, 2, 3] and len(loaded.sources) == 2
    own_stats = payload("fashion_mnist", 28, [4], mean=0.5)  # a site that normalised with its own statistics
    own_stats.save(tmp_path / "own.safetensors")
    pixels = CondensedPayload.load(tmp_path / "own.safetensors").images.float()  # as stored (quantised)
    expected = (pixels - card.mean[0]) / card.std[0]  # in the teacher's space, not the site's
    torch.testing.assert_close(load_condensed(tmp_path / "own.safetensors", card).images, expected)
    other = payload("mnist", 28, [0])  # judged by class names (issue 12.2): digits are not the teacher's classes
    other.meta.class_names = [str(d) + "-digit" for d in range(10)]
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(PayloadError, match="the teacher's are"):
        load_condensed(tmp_path / "other.safetensors", card)
    payload("fashion_mnist", 32, [0]).save(tmp_path / "big.safetensors")
    with pytest.raises(PayloadError, match="teacher expects"):
        load_condensed(tmp_path / "big.safetensors", card)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PayloadError, match=r"no \*\.safetensors"):
        load_condensed(empty, card)


def test_config_validation_names_fields() -> None:
    for field, value in [("mode", "mi**"), ("kd_steps", 0), ("temperature", 0.0), ("pool_policy", "fifo"),
                         ("diffaugment", "colour")]:
        with pytest.raises(ConfigError, match=f"distill.{field}"):
            DistillConfig(**{field: value}).validate()
    with pytest.raises(ConfigError, match="both 0"):
        DistillConfig(epochs=0, budget_seconds=0).validate()


def test_cli_distill_and_export(tiny_teacher, tmp_path) -> None:
    from shared.cli import main

    net, card = tiny_teacher
    save_checkpoint(tmp_path / "teacher", net, card)
    out = tmp_path / "cli"
    code = main(["distill", "--teacher", str(tmp_path / "teacher"), "--condensed", "real:2", "--method", "fast",
                 "--guided", "--epochs", "2", "--out", str(out), "--no-progress",
                 "--set", "distill.synthesis_batch_size=8", "--set", "distill.generator_width=8",
                 "--set", "distill.kd_steps=1", "--set", "distill.eval_samples=100"])
    assert code == 0 and (out / "student" / "card.json").is_file()
    assert main(["export", "--checkpoint", str(out / "student"), "--out", str(tmp_path / "exp"),
                 "--formats", "safetensors,torchscript"]) == 0
    assert (tmp_path / "exp" / "student.torchscript.pt").is_file()
    assert main(["distill", "--teacher", str(tmp_path / "nope"), "--out", str(out), "--no-progress"]) == 2


def test_a_finished_run_leaves_no_hooks_on_the_teacher(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    """The teacher outlives a run (the ServerApp's, a test session's): every hook a base method put on it
    is removed, so it can be copied and reused."""
    teacher, _ = tiny_teacher

    def hooks() -> int:  # other tests may have hooked this session teacher directly: count, compare after
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in teacher.modules())

    before = hooks()
    for base in ("fast", "cmi"):
        run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / base, base=base, mode="mi*")
        assert hooks() == before, base


def test_cached_kd_views_label_each_view_once(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    """``kd_views=3``: every image enters the pool with two crop/flip views, each carrying the teacher's logits
    on that very view; KD steps then never call the teacher."""
    net, card = tiny_teacher
    distiller = Distiller(tiny_cfg(epochs=2, kd_views=3, checkpoint_every=0, grid_every=0, mode="mi+cs"), net, card,
                          tiny_condensed, engine_data[1], tmp_path / "v", seed=1, progress=False)
    n_cond = len(tiny_condensed)
    pool = distiller.pool
    assert pool.num_condensed == 3 * n_cond and pool.cap == 3 * distiller.cfg.pool_cap
    torch.testing.assert_close(pool.cond_images[:n_cond], tiny_condensed.images)
    assert not torch.equal(pool.cond_images[n_cond:2 * n_cond], tiny_condensed.images)  # an augmented view
    assert torch.equal(pool.cond_labels, tiny_condensed.labels.repeat(3))
    with torch.no_grad():
        torch.testing.assert_close(pool.cond_logits, net(pool.cond_images).float())
    result = distiller.fit()
    assert result.pool_size == n_cond + 2 * 16 and result.synthetic_seen == 2 * 16
    with torch.no_grad():  # synthetic views too: the logits stored are the teacher's on the stored view
        torch.testing.assert_close(pool.logits[:pool.size], net(pool.images[:pool.size]).float(), atol=1e-4, rtol=1e-4)
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        distiller._kd_step()
    finally:
        hook.remove()
    assert calls == []
    with pytest.raises(ConfigError, match="kd_views"):
        tiny_cfg(kd_views=2, kd_augment="none").validate()
    with pytest.raises(ConfigError, match="kd_views"):
        tiny_cfg(kd_views=-1).validate()
    with pytest.raises(ConfigError, match=r"distill\.kd_views=2 caches views in the KD pool but distill\.replay"):
        Distiller(tiny_cfg(kd_views=2, replay="generative"), net, card, tiny_condensed, None, tmp_path / "g",
                  progress=False)
