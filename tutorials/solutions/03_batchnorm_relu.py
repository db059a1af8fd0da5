"""Solution to tutorial 03's exercise (try it first)."""

from __future__ import annotations

__all__ = ["bn_backward"]


def bn_backward(gy, xhat, gamma, inv_std):
    """Exercise 3.A: the compact formula, one row per channel (C, M)."""
    M = gy.shape[1]
    dbeta = gy.sum(axis=1)
    dgamma = (gy * xhat).sum(axis=1)
    scale = (gamma * inv_std)[:, None]
    dx = scale * (gy - dbeta[:, None] / M - xhat * dgamma[:, None] / M)
    return dx, dgamma, dbeta
