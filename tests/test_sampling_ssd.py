"""SSD-KD-style sampling (``sampler=ssd``): modulating function, priority sampling, slot reuse, and a real
distillation run (tiny ResNet-8 teacher fitted on 1000 real FMNIST images, LeNet-5-half student)."""

from __future__ import annotations

import pytest
import torch

from server.distillation import CondensedSet, Distiller
from server.distillation.pool import SamplePool, samplers
from server.distillation.sampling_ssd import SSDSampler, class_difficulty, class_diversity, modulating_weights
from shared.checkpoint import card_for_dataset
from shared.config.distill import DistillConfig
from shared.data import load_dataset
from shared.models import build_model
from shared.train import train_classifier

C = 4  # classes of the constructed examples


pytestmark = pytest.mark.usefixtures("one_thread")


def _spread_logits(labels: torch.Tensor, spread: list[float], seed: int = 0) -> torch.Tensor:
    """Teacher-like logits: the label's logit is high, plus per-class noise of the given spread."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(labels), C, generator=gen) * torch.tensor(spread)[labels].unsqueeze(1)
    logits[torch.arange(len(labels)), labels] += 5.0
    return logits


def _pool(per_class: int = 20, spread: list[float] | None = None, cap: int = 1000) -> SamplePool:
    labels = torch.arange(C).repeat_interleave(per_class)
    logits = _spread_logits(labels, spread or [1.0] * C)
    pool = SamplePool(cap=cap, policy="oldest", sampler="ssd")
    pool.add(torch.zeros(len(labels), 1, 2, 2), labels, logits)
    return pool


def test_registered_and_configurable() -> None:
    assert samplers.get("ssd") is SSDSampler
    custom = SSDSampler(DistillConfig(ssd_priority_power=0.0, ssd_uniform_mix=1.0))
    assert custom.priority_power == 0.0 and custom.uniform_mix == 1.0


def test_weights_sum_to_one_and_favour_hard_classes() -> None:
    difficulty = torch.tensor([1.0, 1.0, 4.0, 1.0])
    diversity = torch.ones(C)
    present = torch.ones(C, dtype=torch.bool)
    w = modulating_weights(difficulty, diversity, present, 1.0, 1.0, 0.1)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(w.argmax()) == 2 and float(w[2]) > 2 * float(w[0])
    # no modulation at all -> uniform; absent classes get nothing
    flat = modulating_weights(difficulty, diversity, present, 0.0, 0.0, 0.0)
    torch.testing.assert_close(flat, torch.full((C,), 0.25))
    absent = modulating_weights(difficulty, diversity, torch.tensor([True, True, False, True]), 1.0, 1.0, 0.1)
    assert float(absent[2]) == 0.0 and float(absent.sum()) == pytest.approx(1.0, abs=1e-6)


def test_collapsed_classes_have_low_diversity_and_more_weight() -> None:
    labels = torch.arange(C).repeat_interleave(30)
    logits = _spread_logits(labels, [1.0, 1.0, 1.0, 0.0])  # class 3: every sample has the same logits
    diversity = class_diversity(labels, logits, C)
    assert float(diversity[3]) < 1e-6 < float(diversity[:3].min())
    w = modulating_weights(torch.ones(C), diversity, torch.ones(C, dtype=torch.bool), 1.0, 0.5, 0.1)
    assert int(w.argmax()) == 3


def test_class_difficulty_uses_visited_samples_and_defaults_unknown_to_hardest() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    priority = torch.tensor([1.0, 3.0, 0.5, 99.0, 0.0])
    visited = torch.tensor([True, True, True, False, False])
    torch.testing.assert_close(class_difficulty(labels, priority, visited, 3), torch.tensor([2.0, 0.5, 2.0]))


def test_priority_sampling_follows_kd_losses() -> None:
    torch.manual_seed(0)
    pool = _pool()
    sampler = pool.sampler
    assert isinstance(sampler, SSDSampler)
    first = pool.sample(64)  # all unvisited: equal priorities
    labels = pool.labels[: pool.size]
    # feed back: class 2 is hard for the student, the others are easy
    everything = torch.arange(len(pool))
    pool.feedback(everything, torch.where(labels == 2, 3.0, 0.1))
    probs = sampler.sample_probabilities(pool)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(sampler.last_weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(sampler.last_weights.argmax()) == 2
    drawn = labels[pool.sample(4000).indices]
    share = torch.bincount(drawn, minlength=C).float() / len(drawn)
    assert float(share[2]) > 0.5 and float(share[2]) > 3 * float(share[0])
    assert first.images.shape[0] == 64


def test_overwritten_slots_are_revisited() -> None:
    pool = _pool(per_class=5, cap=20)
    sampler = pool.sampler
    assert isinstance(sampler, SSDSampler)
    pool.sample(8)
    pool.feedback(torch.arange(20), torch.full((20,), 0.5))
    assert bool(sampler.visited.all())
    labels = torch.zeros(5, dtype=torch.long)
    pool.add(torch.ones(5, 1, 2, 2), labels, _spread_logits(labels, [1.0] * C, seed=9))  # oldest-out: slots 0..4
    pool.sample(8)
    assert not bool(sampler.visited[:5].any()) and bool(sampler.visited[5:].all())


def test_state_round_trip() -> None:
    pool = _pool(per_class=5)
    pool.sample(8)
    pool.feedback(torch.arange(10), torch.linspace(0, 3, 10))
    fresh = SSDSampler()
    fresh.load_state_dict(pool.sampler.state_dict())
    torch.testing.assert_close(fresh.priority, pool.sampler.priority)
    assert torch.equal(fresh.visited, pool.sampler.visited)
    assert fresh.state_dict()["max_priority"] == pytest.approx(3.0)
    # rebuilt on first contact with the pool: the same exact distribution
    torch.testing.assert_close(fresh.sample_probabilities(pool), pool.sampler.sample_probabilities(pool))


def test_state_saved_before_the_incremental_sampler_loads() -> None:
    pool = _pool(per_class=5)
    priority, visited = torch.linspace(0, 2, 20), torch.arange(20) < 10
    legacy = {"priority": priority, "visited": visited, "fingerprint": torch.zeros(20, C)}
    sampler = SSDSampler()
    sampler.load_state_dict(legacy)
    probs = sampler.sample_probabilities(pool)
    assert sampler.max_priority == pytest.approx(float(priority[:10].max()))  # the old "largest visited"
    torch.testing.assert_close(probs, _reference_probabilities(sampler, pool))


# -- the incremental sampler against the exact formula -------------------------------------------------

def _reference_probabilities(sampler: SSDSampler, pool: SamplePool) -> torch.Tensor:
    """P(i) = w_c(i) p_i^alpha / sum_{j in c(i)} p_j^alpha recomputed from scratch over the whole pool (what
    the sampler did every step before it became incremental), unvisited entries at the running maximum."""
    labels = torch.cat([pool.cond_labels, pool.labels[: pool.size]])
    logits = torch.cat([pool.cond_logits, pool.logits[: pool.size]]) if pool.num_condensed else pool.logits[: pool.size]
    priority, visited = sampler.priority, sampler.visited
    p = (torch.where(visited, priority, torch.tensor(sampler.max_priority)) + 1e-3) ** sampler.priority_power
    difficulty = class_difficulty(labels, priority, visited, C)
    diversity = class_diversity(labels, logits, C)
    present = torch.bincount(labels, minlength=C) > 0
    w = modulating_weights(difficulty, diversity, present, sampler.difficulty_power, sampler.diversity_power,
                           sampler.uniform_mix)
    return w[labels] * p / torch.bincount(labels, weights=p, minlength=C)[labels]


def _busy_pool(seed: int = 0) -> tuple[SamplePool, list[float]]:
    """Condensed + synthetic entries, uneven classes, losses fed back, some slots overwritten (reservoir)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cond_labels = torch.tensor([0, 1, 2, 3, 3])
    condensed = (torch.zeros(5, 1, 2, 2), cond_labels, _spread_logits(cond_labels, [1.0] * C, seed=1))
    pool = SamplePool(cap=30, policy="reservoir", sampler="ssd", condensed=condensed,
                      cfg=DistillConfig(ssd_uniform_mix=0.05))
    fed: list[float] = []
    for step in range(6):
        labels = torch.randint(0, C - (step % 2), (12,), generator=gen)  # class 3 rarer
        pool.add(torch.zeros(12, 1, 2, 2), labels, _spread_logits(labels, [0.2, 1.0, 2.0, 0.5], seed=step + 2))
        for _ in range(3):
            batch = pool.sample(16)
            losses = torch.rand(16, generator=gen) * (3.0 if step < 2 else 1.0)
            pool.feedback(batch.indices, losses)
            fed += losses.tolist()
    labels = torch.randint(0, C, (12,), generator=gen)  # last write: some entries never trained on
    pool.add(torch.zeros(12, 1, 2, 2), labels, _spread_logits(labels, [1.0] * C, seed=9))
    return pool, fed


def test_incremental_statistics_equal_a_fresh_computation() -> None:
    pool, fed = _busy_pool()
    sampler = pool.sampler
    assert isinstance(sampler, SSDSampler)
    assert pool.seen > pool.cap  # slots were overwritten
    assert sampler.max_priority == pytest.approx(max(fed))  # the running maximum, not the current one
    assert sampler.max_priority > float(sampler.priority[sampler.visited].max())
    labels = torch.cat([pool.cond_labels, pool.labels[: pool.size]])
    torch.testing.assert_close(sampler.sample_probabilities(pool), _reference_probabilities(sampler, pool))
    torch.testing.assert_close(sampler.loss_sum.float(), torch.bincount(
        labels[sampler.visited], weights=sampler.priority[sampler.visited].double(), minlength=C).float())
    assert torch.equal(sampler.class_count, torch.bincount(labels, minlength=C))
    trees = sampler.trees
    assert trees is not None  # every internal node is the sum of its children
    for level in range(trees.depth):
        lo, hi = 1 << level, 2 << level
        children = trees.tree[:, 2 * lo:2 * hi:2] + trees.tree[:, 2 * lo + 1:2 * hi:2]
        torch.testing.assert_close(trees.tree[:, lo:hi], children)


def test_draws_follow_the_exact_distribution() -> None:
    """Chi-square goodness of fit of 200,000 draws (fixed seed) against the exact P(i)."""
    pool, _ = _busy_pool(seed=3)
    sampler = pool.sampler
    assert isinstance(sampler, SSDSampler)
    expected = _reference_probabilities(sampler, pool).double()
    assert float(expected.max() / expected.min()) > 5  # far from uniform, or the test proves little
    torch.manual_seed(7)
    draws = 200_000
    counts = torch.bincount(torch.cat([sampler.sample(pool, 10_000) for _ in range(draws // 10_000)]),
                            minlength=len(expected)).double()
    assert len(counts) == len(expected)
    chi2 = float(((counts - draws * expected) ** 2 / (draws * expected)).sum())
    df = len(expected) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * (2 / (9 * df)) ** 0.5) ** 3  # Wilson-Hilferty, p = 0.001
    assert chi2 < critical, (chi2, critical)
    # and the test has power: a distribution that only doubles the untrained entries' share is rejected
    wrong = expected.clone()
    unvisited = ~sampler.visited
    assert unvisited.any()
    wrong[unvisited] *= 2
    wrong /= wrong.sum()
    assert float(((counts - draws * wrong) ** 2 / (draws * wrong)).sum()) > critical


def test_new_samples_get_the_largest_priority_seen() -> None:
    pool = _pool(per_class=5, cap=40)
    sampler = pool.sampler
    assert isinstance(sampler, SSDSampler)
    pool.sample(4)
    pool.feedback(torch.arange(20), torch.full((20,), 4.0))
    pool.feedback(torch.arange(20), torch.full((20,), 0.5))  # losses fell, the running maximum stays
    labels = torch.arange(C)
    pool.add(torch.ones(C, 1, 2, 2), labels, _spread_logits(labels, [1.0] * C, seed=5))
    probs = sampler.sample_probabilities(pool)
    ratio = ((4.0 + 1e-3) / (0.5 + 1e-3)) ** sampler.priority_power
    torch.testing.assert_close(probs[20:] / probs[:20:5], torch.full((C,), ratio))


def test_distillation_loop_runs_with_ssd_sampling(tiny_teacher, tiny_condensed, engine_data, tmp_path) -> None:
    teacher, card = tiny_teacher
    cfg = DistillConfig(epochs=3, synthesis_batch_size=16, generator_width=8, kd_batch_size=32, kd_steps=3,
                        condensed_batch_size=16, discriminator_hidden=16, warmup_epochs=1, eval_every_seconds=0.0,
                        checkpoint_every=0, grid_every=0, sampler="ssd", pool_cap=24)
    distiller = Distiller(cfg, teacher, card, tiny_condensed, engine_data[1], tmp_path, seed=0, progress=False)
    result = distiller.fit()
    sampler = distiller.pool.sampler
    assert isinstance(sampler, SSDSampler)
    assert result.pool_size == 30 + 24  # condensed + capped synthetic store
    assert int(sampler.visited.sum()) > 0 and bool(torch.isfinite(sampler.priority).all())
    assert float(sampler.last_weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert result.accuracy is not None


def test_resume_reproduces_the_uninterrupted_run(tmp_path) -> None:
    train = load_dataset("fashion_mnist", "train")
    torch.manual_seed(0)
    teacher = build_model("resnet8", 10, 1, 28, width=4)
    train_classifier(teacher, train.subset(range(500)), None, epochs=1, batch_size=50, lr=0.05, progress=False)
    card = card_for_dataset(train.info, "resnet8", {"width": 4}, role="teacher")
    condensed = CondensedSet.from_real(train, 3)

    def run(path, epochs: int, resume: bool = False) -> list[tuple]:
        cfg = DistillConfig(mode="mi+cs", epochs=epochs, synthesis_batch_size=16, generator_width=8, kd_batch_size=32,
                            kd_steps=3, warmup_epochs=1, eval_every_seconds=1e9, checkpoint_every=0, grid_every=0,
                            sampler="ssd", pool_cap=24, lr_schedule="constant")
        distiller = Distiller(cfg, teacher.eval(), card, condensed, None, path, seed=3, progress=False)
        distiller.fit(resume=resume)
        return [(r["epoch"], r.get("kd_loss"), r["g_loss"]) for r in distiller.run.read_metrics()
                if r["event"] == "epoch"]

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    assert run(tmp_path / "part", 4, resume=True) == full  # priorities, visits and the running maximum restored


def test_a_write_right_after_loading_a_state_continues_exactly() -> None:
    """Resume, then the pool overwrites slots before the first draw: the sampler must end up where the
    uninterrupted one is (overwritten slots forgotten under the labels their losses were summed with)."""
    torch.manual_seed(0)
    cond_labels = torch.arange(6) % C
    condensed = (torch.randn(6, 1, 2, 2), cond_labels, torch.randn(6, C))

    def make() -> SamplePool:
        return SamplePool(cap=24, policy="reservoir", sampler="ssd", condensed=condensed)

    original = make()
    for _ in range(3):
        original.add(torch.randn(16, 1, 2, 2), torch.randint(C, (16,)), torch.randn(16, C))
        for _ in range(3):
            batch = original.sample(32)
            original.feedback(batch.indices, torch.rand(32) * 2)
    resumed = make()
    resumed.load_state_dict(original.state_dict())
    rng = torch.get_rng_state()

    def carry_on(pool: SamplePool) -> list[torch.Tensor]:
        torch.set_rng_state(rng)
        pool.add(torch.ones(16, 1, 2, 2), torch.arange(16) % C, torch.randn(16, C, generator=torch.Generator()))
        drawn = []
        for _ in range(3):
            drawn.append(pool.sample(32).indices)
            pool.feedback(drawn[-1], torch.rand(32))
        return drawn

    assert all(torch.equal(a, b) for a, b in zip(carry_on(original), carry_on(resumed), strict=True))
    a, b = original.sampler, resumed.sampler
    assert isinstance(a, SSDSampler) and isinstance(b, SSDSampler)
    assert torch.equal(a.loss_sum, b.loss_sum) and torch.equal(a.visit_count, b.visit_count)
    assert a.trees is not None and b.trees is not None and torch.equal(a.trees.tree, b.trees.tree)
