"""The condensed payload: the only thing a data site sends. Images, labels and plain metadata.

In memory, images are float32 ``N x C x H x W`` in pixel space [0, 1] and labels int64. On the wire
(``to_arrays``) images are uint8 (``round(255 x)``) or float16; ``from_arrays`` decodes them back.
``meta`` is a ``PayloadMeta`` whose ``to_dict`` holds only JSON-safe scalars and lists of numbers (keys
whose value is None are omitted), so it maps directly onto a Flower ConfigRecord or JSON.

``validate_payload(payload, PayloadSpec(...))`` is the server's strict check: it raises ``PayloadError``
naming the first offending field.

DP payloads (``epsilon`` set) carry ``noise_source="os-entropy"`` and no ``seed``: their noise and Poisson
sampling came from OS entropy, not from anything the server knows (``shared.privacy.secure_rng``). The
validator rejects a DP payload naming any other noise source, or naming it together with a seed; a DP
payload written before ``noise_source`` existed (it has a seed, from which its noise was drawn) is accepted
with a logged warning, or rejected when ``PayloadSpec.require_secret_noise`` is set.

What leaves a site is ``wire_meta`` (the Flower reply and the payload file). For a DP payload it leaves out
``DP_PRIVATE_FIELDS``: the per-class counts of the site's records, which the DP analysis treats as public
and therefore does not protect, and the sample rate and noise multiplier, from which (with the automatic
sample rate) the number of local records follows. The in-memory ``meta`` keeps them for the site itself
(its privacy ledger, its logs). A DP payload that does carry them is accepted with a warning (older
writers), or rejected under ``require_secret_noise``. Non-DP payloads keep their counts: nothing about
them is private in the DP sense, and docs/privacy.md lists what they reveal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import PayloadError
from shared.io import atomic_write_bytes

FORMAT_VERSION = 1
WIRE_DTYPES = {"uint8": np.uint8, "float16": np.float16}
META_KEY = "condex_meta"
SECRET_NOISE_SOURCE = "os-entropy"  # meta.noise_source of every DP payload: noise and sampling from OS entropy
# Meta fields a DP payload never sends (they stay at the site): exact class counts, and the sampling rate and
# noise multiplier, which together with epsilon and the step count give away the number of local records.
DP_PRIVATE_FIELDS = ("local_class_counts", "sample_rate", "noise_multiplier")

log = logging.getLogger("condex.payload")


@dataclass
class PayloadMeta:
    """What the server needs to know about a payload; privacy fields are None for non-DP methods."""

    method: str
    dataset: str
    ipc: int
    num_classes: int
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]
    # real samples per class at the site; sent only by non-DP payloads (see DP_PRIVATE_FIELDS, docs/privacy.md)
    local_class_counts: list[int] | None = None
    seed: int | None = None  # condense.seed of a non-DP run (reproducibility); never set for DP payloads
    noise_source: str | None = None  # DP payloads: where noise and sampling came from (SECRET_NOISE_SOURCE)
    iterations: int = 0  # iterations actually run
    wall_time_s: float = 0.0
    wire_dtype: str = "uint8"
    init: str = ""
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    dp_steps: int | None = None  # noisy releases the accountant composed
    clip: float | None = None
    # the teacher's class names the labels index (a folder site labels by name); None: not recorded
    class_names: list[str] | None = None
    # generator payloads only (shared/generator_payload.py): the allow-listed architecture, its options as
    # JSON ({"latent_dim": 32, ...}) and the classes it draws; images are drawn from it at ``ipc`` per class
    generator: str | None = None
    generator_options: str | None = None
    generator_classes: list[int] | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ints, floats, strings and lists of numbers; None-valued keys are left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = [_plain(v) for v in value] if isinstance(value, list | tuple) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PayloadMeta:
        """Inverse of ``to_dict``; raises ``PayloadError`` for missing, unknown or mistyped keys."""
        if not isinstance(values, dict):
            raise PayloadError(f"meta must be a mapping, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise PayloadError(f"meta has unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in values]
        if missing:
            raise PayloadError(f"meta is missing key(s) {', '.join(missing)}")
        return cls(**{k: _typed(k, v, fields[k]) for k, v in values.items()})

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class CondensedPayload:
    images: torch.Tensor  # float32 N x C x H x W, pixel space [0, 1]
    labels: torch.Tensor  # int64 N
    meta: PayloadMeta
    extra: dict[str, Any] = field(default_factory=dict)  # local-only diagnostics (e.g. loss curve); not sent

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.meta.num_classes).tolist()

    def normalized(self) -> torch.Tensor:
        """float32 images in the dataset's normalised space (what models see)."""
        mean = torch.tensor(self.meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.meta.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (self.images.float() - mean) / std

    def to_arrays(self, wire_dtype: str | None = None) -> dict[str, np.ndarray]:
        """Encode for the wire: ``images`` as uint8 or float16, ``labels`` as int64."""
        dtype = wire_dtype or self.meta.wire_dtype
        if dtype not in WIRE_DTYPES:
            raise PayloadError(f"wire_dtype={dtype!r} must be one of {', '.join(WIRE_DTYPES)}")
        pixels = self.images.detach().cpu().float().clamp(0.0, 1.0).numpy()
        if dtype == "uint8":
            images = np.rint(pixels * 255.0).astype(np.uint8)
        else:
            images = pixels.astype(np.float16)
        return {"images": np.ascontiguousarray(images), "labels": self.labels.detach().cpu().numpy().astype(np.int64)}

    def wire_meta(self, wire_dtype: str | None = None) -> dict[str, Any]:
        """What leaves the site: ``meta.to_dict()`` with ``wire_dtype`` set to the encoding ``to_arrays`` used,
        and, for a DP payload, without ``DP_PRIVATE_FIELDS``."""
        meta = self.meta.to_dict()
        if self.meta.epsilon is not None:
            for name in DP_PRIVATE_FIELDS:
                meta.pop(name, None)
        return {**meta, "wire_dtype": wire_dtype or self.meta.wire_dtype}

    def released(self) -> CondensedPayload:
        """The payload exactly as the server will see it: wire arrays and ``wire_meta``, decoded again."""
        return CondensedPayload.from_arrays(self.to_arrays(), self.wire_meta())

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: PayloadMeta | dict[str, Any]) -> CondensedPayload:
        """Decode wire arrays; the image dtype must match ``meta.wire_dtype``. A generator payload's arrays
        (``meta.generator`` set) are checked and drawn from by ``shared.generator_payload``."""
        meta = meta if isinstance(meta, PayloadMeta) else PayloadMeta.from_dict(meta)
        if meta.generator is not None:
            from shared.generator_payload import GeneratorPayload

            return GeneratorPayload.from_arrays(arrays, meta)
        for key in ("images", "labels"):
            if key not in arrays:
                raise PayloadError(f"{key}: missing from the payload arrays (found {', '.join(sorted(arrays))})")
        images, labels = np.asarray(arrays["images"]), np.asarray(arrays["labels"])
        expected = WIRE_DTYPES.get(meta.wire_dtype)
        if expected is None:
            raise PayloadError(f"meta.wire_dtype={meta.wire_dtype!r} must be one of {', '.join(WIRE_DTYPES)}")
        if images.dtype != expected:
            raise PayloadError(f"images: wire dtype is {images.dtype} but meta.wire_dtype says {meta.wire_dtype}")
        if labels.dtype != np.int64:
            raise PayloadError(f"labels: wire dtype must be int64, got {labels.dtype}")
        if images.ndim != 4 or labels.ndim != 1:  # a 0-d array has no length: refuse it before len() is asked
            raise PayloadError(f"images/labels: shapes {images.shape} / {labels.shape} must be N x C x H x W / N")
        decoded = images.astype(np.float32) / 255.0 if expected is np.uint8 else images.astype(np.float32)
        return cls(torch.from_numpy(decoded), torch.from_numpy(labels.copy()), meta)

    def wire_bytes(self) -> int:
        """Bytes this payload takes on the wire (what ``PayloadSpec.max_bytes`` caps)."""
        return self.images.numel() * np.dtype(WIRE_DTYPES[self.meta.wire_dtype]).itemsize + 8 * len(self)

    def check_source(self, spec: PayloadSpec) -> None:
        """Checks of what the images were made from; image payloads have nothing beyond the images."""

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (wire arrays) whose header metadata holds ``meta`` as JSON; atomic."""
        from safetensors.numpy import save

        data = save(self.to_arrays(), metadata={META_KEY: json.dumps(self.wire_meta())})
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> CondensedPayload:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise PayloadError(f"payload file {path} does not exist")
        try:
            with safe_open(str(path), framework="np") as handle:
                header = handle.metadata() or {}
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}
        except TypeError as exc:  # numpy has no such dtype (bf16, fp8): not something a condex site writes
            raise PayloadError(f"payload file {path}: a tensor has a dtype numpy cannot read ({exc}); images must be "
                               f"{' or '.join(WIRE_DTYPES)} and labels int64") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise PayloadError(f"payload file {path} is not a readable safetensors file: {exc}") from exc
        if META_KEY not in header:
            raise PayloadError(f"payload file {path} has no '{META_KEY}' metadata; was it written by condex?")
        try:
            meta = json.loads(header[META_KEY])
        except ValueError as exc:  # JSONDecodeError, and ints longer than Python's 4300-digit limit
            raise PayloadError(f"payload file {path}: metadata {META_KEY} is not valid JSON ({exc}); re-export "
                               "the payload with condex") from None
        return cls.from_arrays(arrays, meta)


@dataclass(frozen=True)
class PayloadSpec:
    """What the server accepts: geometry, classes, per-class cap, size cap and optionally a privacy bound."""

    num_classes: int
    image_shape: tuple[int, int, int]
    max_ipc: int = 50
    max_bytes: int = 16 * 2**20  # wire size of the images + labels
    dataset: str | None = None
    max_epsilon: float | None = None  # set to require DP payloads with at most this epsilon
    # also reject DP payloads of older writers: no noise_source, or DP_PRIVATE_FIELDS sent
    require_secret_noise: bool = False
    methods: tuple[str, ...] | None = None  # None: any method
    # The normalisation (the teacher's) the server sends in its query, so that sites holding their own images
    # (dataset "folder") never compute and send statistics of them. Not checked against the payload.
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None

    @classmethod
    def for_teacher(cls, card: Any, **limits: Any) -> PayloadSpec:
        """What a teacher (a ``ModelCard``) accepts: its classes and geometry, normalisation for the query, and
        ``limits`` (max_ipc, max_bytes, methods, privacy) as the caller sets them."""
        return cls(num_classes=card.num_classes, image_shape=(card.in_channels, card.image_size, card.image_size),
                   norm_mean=tuple(card.mean), norm_std=tuple(card.std), **limits)


# `condex distill --condensed FILE`: the same validator as the ServerApp, with the ServerApp's default byte cap
# (federation.max_payload_bytes) and a per-class cap no condensation setting reaches.
LOCAL_MAX_IPC = 1000
LOCAL_MAX_BYTES = 64 * 2**20


def validate_payload(payload: CondensedPayload, expected: PayloadSpec) -> None:
    """Raise ``PayloadError`` naming the field unless ``payload`` is well formed and matches ``expected``."""
    _validate_meta(payload.meta, expected)
    payload.check_source(expected)  # a generator payload: allow-list, weights, probe (shared/generator_payload.py)
    _validate_tensors(payload, expected)
    _validate_counts(payload)
    wire = payload.wire_bytes()
    if wire > expected.max_bytes:
        raise PayloadError(f"payload: {wire} bytes on the wire exceeds the cap of {expected.max_bytes} bytes")


def _validate_meta(meta: PayloadMeta, spec: PayloadSpec) -> None:
    if not isinstance(meta, PayloadMeta):
        raise PayloadError(f"meta must be a PayloadMeta, got {type(meta).__name__}")
    if meta.format_version != FORMAT_VERSION:
        raise PayloadError(f"meta.format_version={meta.format_version} is not supported (expected {FORMAT_VERSION})")
    if spec.methods is not None and meta.method not in spec.methods:
        raise PayloadError(f"meta.method={meta.method!r} is not accepted; accepted: {', '.join(spec.methods)}")
    if spec.dataset is not None and meta.dataset != spec.dataset:
        raise PayloadError(f"meta.dataset={meta.dataset!r} but the server expects {spec.dataset!r}")
    if meta.num_classes != spec.num_classes:
        raise PayloadError(f"meta.num_classes={meta.num_classes} but the server expects {spec.num_classes}")
    if tuple(meta.image_shape) != tuple(spec.image_shape):
        raise PayloadError(f"meta image shape (channels, height, width)={meta.image_shape} but the teacher expects "
                           f"{spec.image_shape}; condense at the teacher's resolution")
    if not 1 <= meta.ipc <= spec.max_ipc:
        raise PayloadError(f"meta.ipc={meta.ipc} must be in 1..{spec.max_ipc}")
    if len(meta.mean) != meta.channels or len(meta.std) != meta.channels:
        raise PayloadError(f"meta.mean/std must have {meta.channels} entries (one per channel)")
    if not all(math.isfinite(s) and s > 0 for s in meta.std) or not all(math.isfinite(m) for m in meta.mean):
        raise PayloadError(f"meta.std={meta.std} must be finite and > 0 and meta.mean={meta.mean} finite")
    counts = meta.local_class_counts
    if counts is not None and (len(counts) != meta.num_classes or any(c < 0 for c in counts)):
        raise PayloadError(f"meta.local_class_counts must be {meta.num_classes} non-negative integers")
    if meta.wire_dtype not in WIRE_DTYPES:
        raise PayloadError(f"meta.wire_dtype={meta.wire_dtype!r} must be one of {', '.join(WIRE_DTYPES)}")
    _validate_privacy(meta, spec)


def _validate_privacy(meta: PayloadMeta, spec: PayloadSpec) -> None:
    if meta.epsilon is not None:
        if not (math.isfinite(meta.epsilon) and meta.epsilon > 0):
            raise PayloadError(f"meta.epsilon={meta.epsilon} must be finite and > 0")
        if meta.delta is None or not 0.0 < meta.delta < 1.0:
            raise PayloadError(f"meta.delta={meta.delta} must be in (0, 1) when meta.epsilon is set")
        _validate_noise_source(meta, spec)
        _validate_dp_private_fields(meta, spec)
    elif meta.noise_source is not None:
        raise PayloadError(f"meta.noise_source={meta.noise_source!r} is only meaningful for DP payloads "
                           "(meta.epsilon is not set)")
    if spec.max_epsilon is not None:
        if meta.epsilon is None:
            raise PayloadError(f"meta.epsilon: the server requires a DP payload with epsilon <= {spec.max_epsilon}")
        if meta.epsilon > spec.max_epsilon:
            raise PayloadError(f"meta.epsilon={meta.epsilon:.3g} exceeds the server's bound {spec.max_epsilon}")


def _validate_noise_source(meta: PayloadMeta, spec: PayloadSpec) -> None:
    """A DP payload's noise must be secret: anything derived from a seed the server can know is rejected."""
    if meta.noise_source is None:
        message = (f"meta.noise_source: DP payload ({meta.method}) does not say where its noise came from; "
                   f"writers before noise_source drew it from meta.seed={meta.seed}, which makes it reproducible")
        if spec.require_secret_noise:
            raise PayloadError(f"{message}; the server requires noise_source={SECRET_NOISE_SOURCE!r}")
        log.warning("%s (accepted: PayloadSpec.require_secret_noise is off)", message)
        return
    if meta.noise_source != SECRET_NOISE_SOURCE:
        raise PayloadError(f"meta.noise_source={meta.noise_source!r}: a DP payload's noise and sampling must come "
                           f"from OS entropy ({SECRET_NOISE_SOURCE!r}); seed-derived noise can be regenerated")
    if meta.seed is not None:
        raise PayloadError(f"meta.seed={meta.seed} in a DP payload: DP noise never comes from a seed, so a DP "
                           "payload must not carry one")


def _validate_dp_private_fields(meta: PayloadMeta, spec: PayloadSpec) -> None:
    """A DP payload must not carry what its DP analysis does not protect (class counts, sample rate, noise)."""
    sent = [name for name in DP_PRIVATE_FIELDS if getattr(meta, name) is not None]
    if not sent:
        return
    message = (f"meta.{', meta.'.join(sent)}: a DP payload ({meta.method}) must not carry these; they reveal the "
               "site's class counts or number of records, which its (epsilon, delta) does not cover")
    if spec.require_secret_noise:
        raise PayloadError(f"{message}; the server requires current DP payloads")
    log.warning("%s (accepted: PayloadSpec.require_secret_noise is off)", message)


def _validate_tensors(payload: CondensedPayload, spec: PayloadSpec) -> None:
    images, labels = payload.images, payload.labels
    if not isinstance(images, torch.Tensor) or images.dtype != torch.float32:
        raise PayloadError(f"images must be a float32 tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.image_shape):
        raise PayloadError(f"images: shape {tuple(images.shape)} must be N x {' x '.join(map(str, spec.image_shape))}")
    if images.shape[0] == 0:
        raise PayloadError("images: the payload is empty; a client must send at least one image")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise PayloadError(f"labels must be an int64 tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (images.shape[0],):
        raise PayloadError(f"labels: shape {tuple(labels.shape)} must be ({images.shape[0]},), one per image")
    if not bool(torch.isfinite(images).all()):
        raise PayloadError("images: contain NaN or infinite values")
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        low, high = float(images.min()), float(images.max())
        raise PayloadError(f"images: values must lie in [0, 1], found [{low:.3g}, {high:.3g}]")
    if int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
        low, high = int(labels.min()), int(labels.max())
        raise PayloadError(f"labels: values must be in 0..{spec.num_classes - 1}, found {low}..{high}")


def _validate_counts(payload: CondensedPayload) -> None:
    counts = payload.class_counts()
    local_counts = payload.meta.local_class_counts
    for cls, count in enumerate(counts):
        if count > payload.meta.ipc:
            raise PayloadError(f"labels: class {cls} has {count} images, more than meta.ipc={payload.meta.ipc}")
        if local_counts is not None and count > 0 and local_counts[cls] == 0:
            raise PayloadError(f"labels: class {cls} has images but meta.local_class_counts says the site holds none")


def _plain(value: Any) -> Any:
    """numpy / torch scalars to Python scalars, so the dict is JSON- and ConfigRecord-safe."""
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    return value


def _typed(key: str, value: Any, f: dataclasses.Field) -> Any:
    kind = str(f.type)
    if kind.startswith("list"):
        if not isinstance(value, list | tuple):
            raise PayloadError(f"meta.{key} must be a list, got {type(value).__name__}")
        item = str if "str" in kind else int if "int" in kind else float
        return [_scalar(key, v, item) for v in value]
    base = int if kind.startswith("int") else float if kind.startswith("float") else str
    return _scalar(key, value, base)


def _scalar(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
        raise PayloadError(f"meta.{key}={value!r} must be a {kind.__name__}")
    if kind is int and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise PayloadError(f"meta.{key}={value!r} must be an integer")
    if kind is float and not isinstance(value, int | float):
        raise PayloadError(f"meta.{key}={value!r} must be a number")
    return kind(value)
