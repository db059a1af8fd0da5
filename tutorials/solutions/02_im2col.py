"""Solution to tutorial 02's exercise (try it first)."""

from __future__ import annotations

import numpy as np

import minires as mr
from minires.backends import numpy_backend as B

__all__ = ["Conv2dIm2col"]


class Conv2dIm2col(mr.Function):
    """Exercise 2.A: y = conv2d(x, w, b, stride, padding) as im2col + one GEMM."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, w, b):
        N, C, H, W = x.shape
        Fo, _, kh, kw = w.shape
        s, p = self.stride, self.padding
        OH, OW = B.out_size(H, kh, s, p), B.out_size(W, kw, s, p)
        x_cm = np.ascontiguousarray(x.transpose(1, 0, 2, 3))  # (C, N, H, W)
        col = B.im2col(x_cm, kh, kw, s, s, p, p)  # (C*kh*kw, N*OH*OW)
        self.col, self.w, self.x_shape = col, w, x.shape
        y = w.reshape(Fo, -1) @ col + b[:, None]  # (F, N*OH*OW)
        return np.ascontiguousarray(y.reshape(Fo, N, OH, OW).transpose(1, 0, 2, 3))

    def backward(self, gy):
        N, C, H, W = self.x_shape
        Fo, _, kh, kw = self.w.shape
        s, p = self.stride, self.padding
        g2 = gy.transpose(1, 0, 2, 3).reshape(Fo, -1)  # (F, N*OH*OW)
        gw = (g2 @ self.col.T).reshape(self.w.shape)
        gb = g2.sum(axis=1)
        gcol = self.w.reshape(Fo, -1).T @ g2
        gx = B.col2im(gcol, (C, N, H, W), kh, kw, s, s, p, p).transpose(1, 0, 2, 3)
        return np.ascontiguousarray(gx), gw, gb
