"""minires: a from-scratch deep-learning framework that teaches residual networks.

Example::

    >>> import numpy as np
    >>> import minires as mr
    >>> import minires.functional as F
    >>> x = mr.tensor(np.ones((1, 2, 4, 4)), requires_grad=True)
    >>> w = mr.tensor(np.full((2, 2, 3, 3), 0.1))
    >>> y = F.relu(F.conv2d(x, w, padding=1)) + x   # a residual add is `+`
    >>> y.sum().backward()
    >>> x.grad.shape
    (1, 2, 4, 4)
"""

from . import data, functional, models, nn, optim
from .autograd import (
    Config,
    Function,
    Parameter,
    Tensor,
    enable_grad,
    is_grad_enabled,
    no_grad,
    tensor,
)
from .gradcheck import GradcheckError, gradcheck
from .nn.init import manual_seed

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Function",
    "GradcheckError",
    "Parameter",
    "Tensor",
    "enable_grad",
    "data",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "manual_seed",
    "models",
    "nn",
    "optim",
    "no_grad",
    "tensor",
]
