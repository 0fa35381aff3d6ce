"""Adam for the head's few parameters, the same update as ``torch.optim.Adam`` with its defaults.

Constructing torch's optimiser imports ``torch._dynamo`` (and sympy): 1.4 s on this CPU, paid by the
first training of every session, a quarter of a first prediction. The update below is torch's
single-tensor Adam (betas 0.9 / 0.999, eps 1e-8, no weight decay) written out, step for step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class Adam:
    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params = list(params)
        self.lr = lr
        self.steps = 0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        step_size = self.lr / (1 - BETA1**self.steps)
        correction = (1 - BETA2**self.steps) ** 0.5
        for p, first, second in zip(self.params, self.first, self.second, strict=True):
            if p.grad is None:
                continue
            first.lerp_(p.grad, 1 - BETA1)
            second.mul_(BETA2).addcmul_(p.grad, p.grad, value=1 - BETA2)
            p.addcdiv_(first, (second.sqrt() / correction).add_(EPS), value=-step_size)
