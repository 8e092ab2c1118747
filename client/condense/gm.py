"""Gradient matching with DSA (Zhao & Bilen, ICML 2021).

Every iteration draws a fresh ConvNet. ``outer_loop`` times: for each held class c, the gradient of the
classification loss w.r.t. the network's weights on a real batch of c is matched, layer by layer, to the
gradient on the synthetic images of c (both under the same DSA transform); the distance is, per layer,
the sum over output channels of 1 - cosine similarity (biases and norm parameters are skipped, as DC).
The synthetic images take one SGD step on the summed distance, then the network is trained for
``inner_loop`` steps on the synthetic set, so later matches happen along a training trajectory.
Subclasses change how the real-side gradients are formed (``dp-gm`` clips per sample and adds noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from client.condense.base import (
    Condenser,
    LocalData,
    PrivacyReport,
    Synthesis,
    TimeBudget,
    clamp_to_pixels,
    condensers,
    learnable,
    matching_net,
    sample_real,
)
from shared.augment.dsa import AugmentParams, SiameseAugment
from shared.config.condense import CondenseConfig
from shared.progress import progress_bar

Gradients = list[torch.Tensor]


def dc_schedule(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) of the DC/DSA papers for an IPC: 1 -> (1, 1), <= 10 -> (10, 50), else (50, 10)."""
    if ipc == 1:
        return 1, 1
    if ipc <= 10:
        return 10, 50
    return 50, 10


def matching_distance(real: Gradients, syn: Gradients) -> torch.Tensor:
    """Sum over weight tensors of sum over output channels of (1 - cosine(real, syn))."""
    total = syn[0].new_zeros(())
    for g_real, g_syn in zip(real, syn, strict=True):
        if g_syn.ndim == 1:  # bias / norm parameters carry no matching signal in DC
            continue
        r, s = g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1)
        cosine = (r * s).sum(dim=1) / (r.norm(dim=1) * s.norm(dim=1) + 1e-6)
        total = total + (1.0 - cosine).sum()
    return total


@condensers.register("gm")
class GradientMatching(Condenser):
    name = "gm"
    default_lr_img = 0.1  # the DSA paper's value

    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        state = learnable(local, cfg, generator, self.lr_img(cfg))
        syn, groups, labels, optimizer, augment = (state.images, state.groups, state.labels, state.optimizer,
                                                   state.augment)
        outer, inner = self.schedule(cfg)
        self.begin(local, cfg, releases=cfg.iterations * outer)
        losses: list[float] = []
        budget = TimeBudget(cfg.time_budget_s, cfg.time_budget_clock)
        done = 0
        with progress_bar(cfg.iterations, f"condense {self.name}", enabled=progress) as bar:
            while done < cfg.iterations and not budget.exhausted():
                loss = self._one_iteration(local, cfg, generator, augment, syn, groups, labels, optimizer, outer, inner)
                losses.append(loss)
                done += 1
                bar.advance(loss=loss)
        return Synthesis(syn.detach(), labels, done, losses, self.report())

    def schedule(self, cfg: CondenseConfig) -> tuple[int, int]:
        outer, inner = dc_schedule(cfg.ipc)
        return cfg.outer_loop or outer, cfg.inner_loop or inner

    def _one_iteration(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                       augment: SiameseAugment | None, syn: torch.Tensor, groups: torch.Tensor,
                       labels: torch.Tensor, optimizer: torch.optim.Optimizer, outer: int, inner: int) -> float:
        net = matching_net(local, cfg).train()
        weights = list(net.parameters())
        net_optimizer = torch.optim.SGD(weights, lr=cfg.lr_net)
        total = 0.0
        for step in range(outer):
            params = augment.sample(local.num_groups, local.image_size) if augment else None
            real = self.real_gradients(net, local, cfg, generator, augment, params)
            loss = syn.new_zeros(())
            for k in range(local.num_groups):
                mask = groups == k
                x = syn[mask]
                if augment is not None and params is not None:
                    x = augment.apply(x, params, groups[mask])
                grads = torch.autograd.grad(F.cross_entropy(net(x), labels[mask]), weights, create_graph=True)
                loss = loss + matching_distance(real[k], list(grads))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                syn.copy_(clamp_to_pixels(syn, local.info))
            total += float(loss.detach()) / outer
            if step < outer - 1:
                _train_on_synthetic(net, net_optimizer, syn.detach(), labels, inner, cfg.batch_train, augment,
                                    generator)
        return total

    # --- hooks the DP variant overrides ---
    def begin(self, local: LocalData, cfg: CondenseConfig, releases: int) -> None:
        """Called once before the first iteration with the planned number of real-gradient releases."""

    def real_gradients(self, net: torch.nn.Module, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                       augment: SiameseAugment | None, params: AugmentParams | None) -> list[Gradients]:
        """For every held class, the (detached) mean-loss gradient on a random real batch of that class."""
        weights = list(net.parameters())
        index = sample_real(local, cfg.batch_real, generator)
        out = []
        for k, cls in enumerate(local.classes):
            chosen = index[local.group_of[index] == k]
            x = local.images[chosen]
            if augment is not None and params is not None:
                x = augment.apply(x, params, local.group_of[chosen])
            loss = F.cross_entropy(net(x), torch.full((len(chosen),), cls, device=x.device))
            out.append([g.detach() for g in torch.autograd.grad(loss, weights)])
        return out

    def report(self) -> PrivacyReport | None:
        return None


def _train_on_synthetic(net: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                        labels: torch.Tensor, steps: int, batch: int, augment: SiameseAugment | None,
                        generator: torch.Generator) -> None:
    """``steps`` SGD steps of the matching net on the synthetic set (independent DSA per sample)."""
    for _ in range(steps):
        index = torch.randperm(len(images), generator=generator)[:batch].to(images.device)
        x = augment(images[index]) if augment is not None else images[index]
        loss = F.cross_entropy(net(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
