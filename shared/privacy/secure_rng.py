"""Where DP randomness comes from: the operating system's entropy, never the configuration.

The Poisson sampling masks and the Gaussian noise of ``dp-dm`` / ``dp-gm`` are the secret part of the
mechanism: whoever can regenerate them can subtract the noise and read the clipped sums. They therefore
come from ``secret_generator``, a fresh ``torch.Generator`` whose whole state is drawn from the OS CSPRNG
(``os.urandom``). No configuration key, request or payload field reaches it; its state is not returned,
logged or stored (it lives only inside the generator object of the running process), and every call
gives an independent stream, so two runs with identical configuration draw different noise.

Why not just ``manual_seed(secrets.randbits(64))``: PyTorch's CPU generator (MT19937) keeps only the low
32 bits of a seed (seeds ``s`` and ``s + 2**32`` give the same stream), i.e. at most 2**32 distinct
streams. On the CPU all 624 state words (19968 bits) are therefore written from ``os.urandom``; on other
devices (Philox) the 64-bit seed is the whole key. Opacus' own answer (``PrivacyEngine(secure_mode=True)``)
is a ``torchcsprng`` generator, a package that is not installed here (and not maintained for current
torch); condex uses Opacus only for per-sample gradients and accounting, not its noise.

``condense.seed`` keeps seeding what is public and data-independent (random matching nets, DSA draws, the
synthetic images' noise initialisation), so non-DP runs stay reproducible.
"""

from __future__ import annotations

import os
import secrets

import torch

from shared.payload import SECRET_NOISE_SOURCE

# What a DP payload's ``meta.noise_source`` says about its noise and sampling (the only value accepted).
NOISE_SOURCE = SECRET_NOISE_SOURCE

# Layout of ``torch.Generator("cpu").get_state()`` (CPUGeneratorImplState): int64 seed, int left, int
# seeded, uint64 next, then the 624 MT19937 words stored as native uint64 (low 32 bits used), ...
_MT_WORDS = 624
_MT_OFFSET = 24
_CPU_STATE_BYTES = 5056


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A new generator on ``device`` whose state comes from OS entropy (see the module docstring)."""
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(64))
    if device.type == "cpu":
        _fill_mt19937_state(generator)
    return generator


def _fill_mt19937_state(generator: torch.Generator) -> None:
    """Overwrite all 624 state words with ``os.urandom``; refuse if torch's state layout is not the known one."""
    state = generator.get_state()
    if state.numel() != _CPU_STATE_BYTES:
        raise RuntimeError(f"torch CPU generator state has {state.numel()} bytes, expected {_CPU_STATE_BYTES}; "
                           "shared/privacy/secure_rng.py must be updated for this torch version")
    words = bytearray(8 * _MT_WORDS)  # little-endian uint64 per word, upper half zero
    entropy = os.urandom(4 * _MT_WORDS)
    for k in range(_MT_WORDS):
        words[8 * k:8 * k + 4] = entropy[4 * k:4 * k + 4]
    end = _MT_OFFSET + len(words)
    state[_MT_OFFSET:end] = torch.frombuffer(words, dtype=torch.uint8)
    state[:8] = 0  # the reported initial seed says nothing about the state
    generator.set_state(state)
    if not torch.equal(generator.get_state()[_MT_OFFSET:end], state[_MT_OFFSET:end]):
        raise RuntimeError("torch CPU generator did not take the OS-entropy state (unknown layout); "
                           "shared/privacy/secure_rng.py must be updated for this torch version")
