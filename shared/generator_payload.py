"""The generator payload: a site sends a small conditional generator instead of images (d2m, gendd, dp-*).

On the wire (``to_arrays``, the Flower reply's ``payload`` ArrayRecord and the safetensors file) it is the
generator's float32 weights, one array ``gen.<state key>`` each, and the usual ``PayloadMeta`` with three
more fields: ``generator`` (an architecture of the allow-list ``shared.models.generators``),
``generator_options`` (its keyword options as JSON) and ``generator_classes`` (the classes it draws: the
classes the site holds). Dataset, classes, normalisation and the privacy report are the same fields as for
image payloads.

Decoding (``GeneratorPayload.from_arrays``) never runs code from the payload and checks, in this order,
raising ``GeneratorPayloadError`` naming the field: the architecture is allow-listed and its options and
geometry are in the allowed ranges; the classes are distinct ids of the dataset; the array names and
shapes are exactly those of that architecture (compared on the ``meta`` device, so nothing is allocated
for a hostile claim); every weight is float32 and finite; the bytes fit ``MAX_GENERATOR_BYTES``. Only then
is the network built from condex code, the weights loaded (strict), and a probe batch of at most
``PROBE_BATCH`` images drawn under ``torch.no_grad`` in eval mode: its shape must be ``N x C x H x W`` of
the metadata and its values finite and in [0, 1]. The payload then *is* a ``CondensedPayload`` whose
images are ``ipc`` draws per class (the caller's ``ipc``: the ServerApp passes the IPC it asked for;
otherwise ``meta.ipc``) from a fixed public seed, so validation, screening and the engine see images.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError, GeneratorPayloadError
from shared.models.generators import ConditionalGenerator, build_generator
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec

WEIGHT_PREFIX = "gen."
PROBE_BATCH = 64  # images of the sandboxed probe forward pass
MAX_DRAW = 20_000  # images a decode may draw (ipc x classes), whatever the caller asks
MAX_GENERATOR_BYTES = 16 * 2**20  # weights of any accepted generator (the wire cap applies on top)
DRAW_SEED = 0  # public: the prototypes a server draws are reproducible
DRAW_BATCH = 500


@dataclass
class GeneratorPayload(CondensedPayload):
    """A condensed payload whose images are drawn from ``weights`` (the architecture named in ``meta``)."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # float32 CPU state dict, no counters

    @property
    def options(self) -> dict[str, int]:
        return json.loads(self.meta.generator_options or "{}")

    def to_arrays(self, wire_dtype: str | None = None) -> dict[str, np.ndarray]:
        """The weights as float32 arrays ``gen.<name>`` (no images travel)."""
        return {WEIGHT_PREFIX + name: np.ascontiguousarray(value.detach().cpu().float().numpy())
                for name, value in self.weights.items()}

    def wire_bytes(self) -> int:
        return sum(int(value.numel()) * 4 for value in self.weights.values())

    def released(self) -> GeneratorPayload:
        return GeneratorPayload.from_arrays(self.to_arrays(), self.wire_meta(), ipc=self.meta.ipc)

    def check_source(self, spec: PayloadSpec) -> None:
        """Re-run the generator checks (allow-list, weights, probe) on this payload's own weights."""
        module = checked_generator(self.meta, self.weights)
        probe(module, self.meta)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: PayloadMeta | dict[str, Any],
                    ipc: int | None = None) -> GeneratorPayload:
        """Decode and check wire arrays (see the module docstring), then draw ``ipc`` images per class."""
        meta = meta if isinstance(meta, PayloadMeta) else PayloadMeta.from_dict(meta)
        if meta.generator is None:
            raise GeneratorPayloadError("meta.generator: not set; this is an image payload, not a generator")
        weights = _weights_from_arrays(arrays)
        module = checked_generator(meta, weights)
        probe(module, meta)
        return draw_payload(module, weights, meta, meta.ipc if ipc is None else ipc)


def make_generator_payload(module: ConditionalGenerator, meta: PayloadMeta, arch: str,
                           extra: dict[str, Any] | None = None) -> GeneratorPayload:
    """A site's payload: ``module``'s weights and ``meta`` (with the generator fields filled), with
    ``meta.ipc`` images per class drawn for the site's own preview and local checks."""
    options = {"latent_dim": module.latent_dim, "width": module.width}
    meta.generator, meta.generator_options = arch, json.dumps(options, sort_keys=True)
    weights = state_weights(module)
    payload = draw_payload(module, weights, meta, meta.ipc)
    payload.extra = dict(extra or {})
    return payload


def state_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The float state of ``module`` on CPU (BatchNorm's integer step counters are left out)."""
    return {name: value.detach().cpu().float().clone() for name, value in module.state_dict().items()
            if not name.endswith("num_batches_tracked")}


def draw_payload(module: ConditionalGenerator, weights: dict[str, torch.Tensor], meta: PayloadMeta,
                 ipc: int) -> GeneratorPayload:
    """``ipc`` images of every class in ``meta.generator_classes`` (public seed ``DRAW_SEED``, eval mode)."""
    classes = list(meta.generator_classes or [])
    if not isinstance(ipc, int) or ipc < 1 or ipc * len(classes) > MAX_DRAW:
        raise GeneratorPayloadError(f"ipc={ipc!r}: a generator payload draws 1..{MAX_DRAW // max(len(classes), 1)} "
                                    f"images per class for its {len(classes)} classes")
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(ipc)
    images = sample(module, labels, torch.Generator().manual_seed(DRAW_SEED))
    drawn = dataclasses.replace(meta, ipc=ipc)
    return GeneratorPayload(images, labels, drawn, weights=weights)


@torch.no_grad()
def sample(module: ConditionalGenerator, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixels for ``labels`` in eval mode, in batches, on the module's device; float32 CPU."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = [module.sample(chunk.to(device), generator).float().cpu() for chunk in labels.split(DRAW_BATCH)]
    module.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, module.channels, module.image_size, module.image_size)


def checked_generator(meta: PayloadMeta, weights: dict[str, torch.Tensor]) -> ConditionalGenerator:
    """The allow-listed generator ``meta`` names with ``weights`` loaded, after every static check."""
    options = _options(meta)
    _check_geometry(meta)
    _check_classes(meta)
    try:
        with torch.device("meta"):  # shapes only: a hostile size claim allocates nothing
            shapes = {k: tuple(v.shape) for k, v in state_weights_meta(meta, options).items()}
    except ConfigError as exc:
        raise GeneratorPayloadError(f"meta.generator={meta.generator!r} / generator_options: {exc}") from None
    _check_weights(weights, shapes)
    module = build_generator(str(meta.generator), meta.num_classes, meta.channels, meta.height, **options)
    module.load_state_dict(weights, strict=False)  # exactly the keys checked above; counters keep defaults
    return module.eval()


def state_weights_meta(meta: PayloadMeta, options: dict[str, int]) -> dict[str, torch.Tensor]:
    module = build_generator(str(meta.generator), meta.num_classes, meta.channels, meta.height, **options)
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


@torch.no_grad()
def probe(module: ConditionalGenerator, meta: PayloadMeta) -> None:
    """The sandboxed forward pass: a bounded batch in eval mode; shape, finiteness and range checked."""
    classes = list(meta.generator_classes or [])
    labels = torch.tensor(classes, dtype=torch.int64).repeat(PROBE_BATCH // len(classes) + 1)[:PROBE_BATCH]
    out = sample(module, labels, torch.Generator().manual_seed(DRAW_SEED + 1))
    expected = (len(labels), meta.channels, meta.height, meta.width)
    if tuple(out.shape) != expected:
        raise GeneratorPayloadError(f"generator output: probe batch has shape {tuple(out.shape)}, expected {expected}")
    if not bool(torch.isfinite(out).all()):
        raise GeneratorPayloadError("generator output: the probe batch contains NaN or infinite values")
    low, high = float(out.min()), float(out.max())
    if low < 0.0 or high > 1.0:
        raise GeneratorPayloadError(f"generator output: probe values span [{low:.3g}, {high:.3g}], not within [0, 1]")


def _weights_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    foreign = sorted(name for name in arrays if not name.startswith(WEIGHT_PREFIX))
    if foreign:
        raise GeneratorPayloadError(f"payload arrays: {', '.join(foreign[:5])} do not belong to a generator payload "
                                    f"(every array is named {WEIGHT_PREFIX}<weight>)")
    total = sum(int(np.asarray(a).nbytes) for a in arrays.values())
    if total > MAX_GENERATOR_BYTES:
        raise GeneratorPayloadError(f"generator weights: {total} bytes exceeds {MAX_GENERATOR_BYTES}")
    weights = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype != np.float32:
            raise GeneratorPayloadError(f"{name}: dtype {array.dtype}, generator weights must be float32")
        weights[name[len(WEIGHT_PREFIX):]] = torch.from_numpy(array.copy())
    return weights


def _options(meta: PayloadMeta) -> dict[str, int]:
    try:
        options = json.loads(meta.generator_options or "{}")
    except ValueError as exc:
        raise GeneratorPayloadError(f"meta.generator_options is not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise GeneratorPayloadError(f"meta.generator_options={meta.generator_options!r} must be a JSON object")
    return options


def _check_geometry(meta: PayloadMeta) -> None:
    if meta.height != meta.width:
        raise GeneratorPayloadError(f"meta.height={meta.height} / meta.width={meta.width}: generators draw square "
                                    "images")


def _check_classes(meta: PayloadMeta) -> None:
    classes = meta.generator_classes
    if not classes or len(set(classes)) != len(classes) or any(not 0 <= c < meta.num_classes for c in classes):
        raise GeneratorPayloadError(f"meta.generator_classes={classes!r} must be distinct class ids in "
                                    f"0..{meta.num_classes - 1} (the classes the site holds)")
    counts = meta.local_class_counts
    if counts is not None and len(counts) == meta.num_classes and any(counts[c] == 0 for c in classes):
        raise GeneratorPayloadError("meta.generator_classes names a class meta.local_class_counts says the site "
                                    "does not hold")


def _check_weights(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    missing, unknown = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unknown:
        raise GeneratorPayloadError(f"generator weights: missing {missing[:5] or 'none'}, unexpected "
                                    f"{unknown[:5] or 'none'} for this architecture")
    for name, shape in shapes.items():
        value = weights[name]
        if tuple(value.shape) != shape:
            raise GeneratorPayloadError(f"{WEIGHT_PREFIX}{name}: shape {tuple(value.shape)}, the architecture needs "
                                        f"{shape}")
        if value.dtype != torch.float32:
            raise GeneratorPayloadError(f"{WEIGHT_PREFIX}{name}: dtype {value.dtype}, must be float32")
        if not bool(torch.isfinite(value).all()):
            raise GeneratorPayloadError(f"{WEIGHT_PREFIX}{name}: contains NaN or infinite values")
    if any(name.endswith("running_var") and bool((weights[name] < 0).any()) for name in shapes):
        raise GeneratorPayloadError("generator weights: a BatchNorm running_var is negative")

