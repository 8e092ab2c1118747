"""``replay = generative``: constant-memory generative pseudo replay after PRE-DFKD (Binici et al. 2022,
"Robust and Resource-Efficient Data-Free Knowledge Distillation by Generative Pseudo Replay").

Instead of a pool that grows with every synthetic batch, a small VAE (convolutional encoder + "memory
generator" decoder) is trained on the stream of synthetic batches and replays pseudo-samples into the KD
batches, so memory is the same after ten epochs or ten thousand:

* ``add(batch)``: the batch replaces the previous one as the *fresh* batch, then the VAE takes
  ``vae_steps`` Adam steps (``vae_lr``) on the new batch together with as many samples it decodes from its
  own prior (generative replay of its past, so it does not forget earlier batches). Loss per sample:
  squared error summed over pixels (normalised space) + KL(q(z|x) || N(0, I)).
* ``sample(n)``: condensed samples (if any) are always replayed as they are, with the share a pool would
  give them in expectation, n_cond / (n_cond + min(synthetic seen, ``pool_cap``)); of the rest, a
  ``vae_replay_fraction`` share is decoded by the memory generator from N(0, I) and labelled by the
  teacher (its logits and argmax), and the remainder is drawn from the fresh batch.
* Stored tensors: the condensed samples, one fresh batch, the VAE and its optimiser -- nothing grows.

PRE-DFKD + guidance (``mode=mi*``) is the paper's PRE-DFKD* (Table 3). Replayed samples need the teacher:
the engine passes it as ``teacher`` (see ``build_generative_replay``). Priority samplers do not apply:
``distill.sampler`` must be ``uniform``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from server.distillation.pool import PoolBatch, replays
from shared.config.distill import DistillConfig
from shared.errors import ConfigError

Condensed = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ReplayVAE(nn.Module):
    """Encoder (two stride-2 convs) -> Gaussian latent -> decoder (two x2 upsampling convs), normalised space."""

    def __init__(self, channels: int, image_size: tuple[int, int], latent_dim: int, width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.start = (math.ceil(image_size[0] / 4), math.ceil(image_size[1] / 4))
        flat = 2 * width * self.start[0] * self.start[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(),
            nn.Linear(flat, 2 * latent_dim))
        self.project = nn.Linear(latent_dim, flat)
        self.decoder = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, channels, 3, padding=1))
        self.width = width

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], 2 * self.width, *self.start)
        out = self.decoder(h)
        return out[..., : self.image_size[0], : self.image_size[1]]  # sizes not divisible by 4

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per sample, averaged: sum of squared errors + KL to the standard normal prior."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.mse_loss(self.decode(z), x, reduction="none").flatten(1).sum(dim=1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        return (recon + kl).mean()

    @torch.no_grad()
    def sample(self, n: int, device: torch.device) -> torch.Tensor:
        return self.decode(torch.randn(n, self.latent_dim, device=device))


class GenerativeReplay:
    """The ``Replay`` of ``server.distillation.pool`` for ``replay=generative`` (see the module docstring)."""

    def __init__(self, cfg: DistillConfig, condensed: Condensed | None, teacher: nn.Module | None = None) -> None:
        if cfg.sampler != "uniform":
            raise ConfigError(f"distill.sampler={cfg.sampler!r} needs a pool of stored samples; "
                              "replay=generative draws uniformly: set distill.sampler=uniform or replay=pool")
        self.cfg = cfg
        self.teacher = teacher
        empty = (torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0))
        self.cond_images, self.cond_labels, self.cond_logits = condensed or empty
        self.vae: ReplayVAE | None = None  # built on the first batch (its shape and device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.fresh: Condensed | None = None  # the latest synthetic batch
        self.seen = 0  # synthetic samples ever added
        self.vae_steps_done = 0

    @property
    def num_condensed(self) -> int:
        return int(self.cond_labels.shape[0])

    def __len__(self) -> int:
        """Stored samples: the condensed ones plus the fresh batch (constant once a batch arrived)."""
        return self.num_condensed + (0 if self.fresh is None else int(self.fresh[1].shape[0]))

    # -- training the memory generator ----------------------------------------------------------------
    def _build(self, images: torch.Tensor) -> None:
        cfg = self.cfg
        self.vae = ReplayVAE(images.shape[1], (images.shape[2], images.shape[3]), cfg.vae_latent_dim,
                             cfg.vae_width).to(images.device)
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_lr)

    def add(self, images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        """Make this the fresh batch and train the VAE on it plus an equal number of its own replays."""
        if self.vae is None:
            self._build(images)
        assert self.vae is not None and self.optimizer is not None
        self.fresh = (images.detach(), labels.detach(), teacher_logits.detach().float())
        for _ in range(self.cfg.vae_steps):
            batch = images.detach()
            if self.vae_steps_done > 0:  # replay the past before learning the present
                batch = torch.cat([batch, self.vae.sample(images.shape[0], images.device)])
            loss = self.vae.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.vae_steps_done += 1
        self.seen += int(images.shape[0])

    # -- KD batches -----------------------------------------------------------------------------------
    def split(self, batch_size: int) -> tuple[int, int, int]:
        """How many (condensed, fresh, replayed) samples a KD batch of ``batch_size`` gets."""
        if self.fresh is None:
            return batch_size, 0, 0
        union = self.num_condensed + min(self.seen, self.cfg.pool_cap)
        share = self.cfg.condensed_share or self.num_condensed / union
        n_cond = int(torch.binomial(torch.tensor(float(batch_size)), torch.tensor(share)))
        rest = batch_size - n_cond
        n_replay = round(rest * self.cfg.vae_replay_fraction) if self.vae_steps_done else 0
        return n_cond, rest - n_replay, n_replay

    def sample(self, batch_size: int) -> PoolBatch:
        if self.fresh is None and self.num_condensed == 0:
            raise ConfigError("the generative replay is empty: mode mi needs at least one synthesised batch, "
                              "modes cs-only/mi+cs/mi* need condensed samples")
        n_cond, n_fresh, n_replay = self.split(batch_size)
        parts: list[Condensed] = []
        indices: list[torch.Tensor] = []
        if n_cond:
            idx = torch.randint(self.num_condensed, (n_cond,))
            parts.append(self._take((self.cond_images, self.cond_labels, self.cond_logits), idx))
            indices.append(idx)
        if n_fresh:
            assert self.fresh is not None
            idx = torch.randint(int(self.fresh[1].shape[0]), (n_fresh,))
            parts.append(self._take(self.fresh, idx))
            indices.append(idx + self.num_condensed)
        if n_replay:
            parts.append(self._replayed(n_replay))
            indices.append(torch.full((n_replay,), -1))  # not stored: no position to report
        images, labels, logits = (torch.cat(t) for t in zip(*parts, strict=True))
        return PoolBatch(images, labels, logits, torch.cat(indices))

    @staticmethod
    def _take(source: Condensed, idx: torch.Tensor) -> Condensed:
        images, labels, logits = source
        idx = idx.to(images.device)
        return images[idx], labels[idx], logits[idx]

    @torch.no_grad()
    def _replayed(self, n: int) -> Condensed:
        if self.teacher is None:
            raise ConfigError("replay=generative needs the teacher to label replayed samples; the distillation "
                              "engine must pass it (build_generative_replay(cfg, condensed, teacher))")
        assert self.vae is not None and self.fresh is not None
        images = self.vae.sample(n, self.fresh[0].device)
        logits = self.teacher(images).float()
        return images, logits.argmax(dim=1), logits

    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        del indices, losses  # uniform draws: nothing to learn from the KD losses

    # -- memory and checkpoints -----------------------------------------------------------------------
    def stored_bytes(self) -> int:
        """Bytes of every tensor this replay holds (condensed, fresh batch, VAE, optimiser state)."""
        held = [*_tensors(self.state_dict()), self.cond_images, self.cond_labels, self.cond_logits]
        return sum(t.numel() * t.element_size() for t in held)

    def state_dict(self) -> dict[str, Any]:
        return {
            "vae": None if self.vae is None else self.vae.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "fresh": self.fresh, "seen": self.seen, "vae_steps_done": self.vae_steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the VAE, its optimiser and the fresh batch (the condensed part comes from the run's inputs)."""
        self.fresh, self.seen = state["fresh"], int(state["seen"])
        self.vae_steps_done = int(state["vae_steps_done"])
        if state["vae"] is not None:
            assert self.fresh is not None
            self._build(self.fresh[0])
            assert self.vae is not None and self.optimizer is not None
            self.vae.load_state_dict(state["vae"])
            self.optimizer.load_state_dict(state["optimizer"])


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


@replays.register("generative")
def build_generative_replay(cfg: DistillConfig, condensed: Condensed | None,
                            teacher: nn.Module | None = None) -> GenerativeReplay:
    """``replay = generative``: a VAE memory generator replaces the growing pool (constant memory)."""
    return GenerativeReplay(cfg, condensed, teacher)
