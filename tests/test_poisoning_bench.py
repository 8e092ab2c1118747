"""The poisoning benchmark's attacks and summary (issue 13.4): each attack yields a payload the validator
accepts (the lie is in the content, not the format), replaces only the chosen sites, and the summary judges
the 1-point target from the distillation results."""

from __future__ import annotations

import pytest
import torch

from benchmarks.poisoning.__main__ import summarize
from benchmarks.poisoning.attacks import attacks, poison
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec, validate_payload

SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), norm_mean=(0.286,), norm_std=(0.353,))


def _site(seed: int, classes: tuple[int, ...] = (0, 3, 4)) -> CondensedPayload:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(5)
    counts = [40 if c in classes else 0 for c in range(10)]
    meta = PayloadMeta("dm", "fashion_mnist", 5, 10, 1, 28, 28, [0.286], [0.353], local_class_counts=counts)
    return CondensedPayload(torch.rand(len(labels), 1, 28, 28, generator=generator), labels, meta)


@pytest.mark.parametrize("name", ["flip", "noise", "ood"])
def test_every_attack_passes_the_format_checks(name: str) -> None:
    honest = _site(0)
    hostile = attacks.get(name)(honest, torch.Generator().manual_seed(1))
    validate_payload(hostile.released(), SPEC)
    assert hostile.images.shape == honest.images.shape and hostile.meta.method == honest.meta.method
    assert float(hostile.images.min()) >= 0.0 and float(hostile.images.max()) <= 1.0
    if name == "flip":
        assert bool((hostile.labels == (honest.labels + 1) % 10).all())
        assert hostile.meta.local_class_counts == [0, 40, 0, 0, 40, 40, 0, 0, 0, 0]
    else:
        assert torch.equal(hostile.labels, honest.labels) and not torch.equal(hostile.images, honest.images)


def test_poison_replaces_the_first_sites_by_name_only() -> None:
    sites = {f"site{i}.safetensors": _site(i) for i in (3, 0, 2, 1)}
    poisoned, hostile = poison(sites, "noise", 2, seed=0)
    assert hostile == ["site0.safetensors", "site1.safetensors"]
    for name, payload in poisoned.items():
        assert (payload is sites[name]) == (name not in hostile)
    with pytest.raises(ValueError, match="hostile=5"):
        poison(sites, "noise", 5)


def test_summary_judges_the_one_point_target() -> None:
    base = {"content": "a", "attack": None, "screened": True, "hostile_sites": [], "sites": 10, "samples_received": 100,
            "samples_kept": 100, "rejected_sites": [], "hostile_samples_kept": 0, "screening": {}, "path": "x"}
    sets = {"clean": base, "flip": base | {"attack": "flip", "content": "b"},
            "noise": base | {"attack": "noise", "content": "b"},  # screening left the same sites as for flip
            "flip-unscreened": base | {"screened": False, "content": "c"}}
    cases = [{"case": "fast:mi*", "condensed": n, "accuracy": {"mean": m, "std": 0.01, "n": 3}}
             for n, m in (("clean", 0.80), ("flip", 0.795), ("flip-unscreened", 0.60))]
    results = summarize(sets, {"cases": cases})
    assert results["sets"]["flip"]["points_lost"] == pytest.approx(0.5)
    assert results["sets"]["noise"]["distilled_as"] == "flip" and results["sets"]["noise"]["points_lost"] == \
        pytest.approx(0.5)
    assert results["target"] == {"max_points_lost": 1.0, "worst_screened": pytest.approx(0.5), "met": True}
    cases[1]["accuracy"]["mean"] = 0.78
    assert summarize(sets, {"cases": cases})["target"]["met"] is False


def test_content_hash_tells_equal_kept_sets_from_different_ones() -> None:
    from benchmarks.poisoning.__main__ import content_hash

    a = {"site0.safetensors": _site(0), "site1.safetensors": _site(1)}
    again = {"site1.safetensors": _site(1), "site0.safetensors": _site(0)}
    assert content_hash(a) == content_hash(again)
    assert content_hash(a) != content_hash(poison(a, "flip", 1)[0])
    assert content_hash(a) != content_hash({"site0.safetensors": _site(0)})
