"""A linear-Gaussian state-space model written as a ppllm program, with its exact Kalman evidence.

    x_0 ~ N(0, s0²),  x_t = θ x_{t−1} + N(0, sx²),  y_t = x_t + N(0, sy²)

`LinearGaussian` proposes each x_t from its transition (a bootstrap particle filter) and
observes y_t; `AdaptedLinearGaussian` proposes x_t from p(x_t | x_{t−1}, y_t) and weights by
the predictive p(y_t | x_{t−1}) (the locally optimal proposal: same target, far lower
variance of Ẑ); `kalman_log_evidence` is log p(y_{0:T−1} | θ) in closed form.
"""

from __future__ import annotations

import math

import numpy as np

import ppllm


class LinearGaussian(ppllm.Program):
    def __init__(self, ys, theta: float = 0.5, sx: float = 1.0, sy: float = 1.0, s0: float = 1.0):
        self.ys, self.theta, self.sx, self.sy, self.s0 = tuple(ys), theta, sx, sy, s0
        self.x = 0.0
        self.i = 0

    async def step(self) -> None:
        i = self.i
        mean, sd = (self.theta * self.x, self.sx) if i else (0.0, self.s0)
        self.x = await self.sample(ppllm.Normal(mean, sd))
        await self.observe(ppllm.Normal(self.x, self.sy), self.ys[i])
        self.i += 1
        if self.i == len(self.ys):
            self.finish()


class AdaptedLinearGaussian(LinearGaussian):
    async def step(self) -> None:
        i, y = self.i, self.ys[self.i]
        mean, var = (self.theta * self.x, self.sx**2) if i else (0.0, self.s0**2)
        post_var = 1.0 / (1.0 / var + 1.0 / self.sy**2)
        post_mean = post_var * (mean / var + y / self.sy**2)
        self.x = await self.sample(ppllm.Normal(mean, math.sqrt(var)),
                                   proposal=ppllm.Normal(post_mean, math.sqrt(post_var)))
        await self.observe(ppllm.Normal(self.x, self.sy), y)
        self.i += 1
        if self.i == len(self.ys):
            self.finish()


def kalman_log_evidence(ys, theta: float, sx: float = 1.0, sy: float = 1.0, s0: float = 1.0) -> float:
    m, P, total = 0.0, s0 * s0, 0.0
    for t, y in enumerate(ys):
        if t:
            m, P = theta * m, theta * theta * P + sx * sx
        S = P + sy * sy
        total += -0.5 * (math.log(2 * math.pi * S) + (y - m) ** 2 / S)
        K = P / S
        m, P = m + K * (y - m), (1 - K) * P
    return total


def simulate(T: int, theta: float, seed: int, sx: float = 1.0, sy: float = 1.0, s0: float = 1.0) -> list[float]:
    gen = np.random.default_rng(seed)
    x, ys = gen.normal(0.0, s0), []
    for t in range(T):
        if t:
            x = theta * x + gen.normal(0.0, sx)
        ys.append(float(x + gen.normal(0.0, sy)))
    return ys
