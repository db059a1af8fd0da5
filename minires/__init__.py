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

from . import data, functional, models, nn, optim, viz
from .autograd import Function, Tensor, tensor
from .backends import parallel
from .backends.parallel import get_num_threads, set_num_threads
from .grad_mode import detect_anomaly, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import GradcheckError, gradcheck
from .nn.init import manual_seed
from .nn.parameter import Parameter
from .weights import load, load_pth, load_safetensors, save_safetensors, state_dict_from

__version__ = "0.1.0"

__all__ = [
    "Function",
    "GradcheckError",
    "Parameter",
    "Tensor",
    "data",
    "detect_anomaly",
    "enable_grad",
    "functional",
    "get_num_threads",
    "gradcheck",
    "is_grad_enabled",
    "load",
    "load_pth",
    "load_safetensors",
    "manual_seed",
    "models",
    "nn",
    "no_grad",
    "optim",
    "parallel",
    "save_safetensors",
    "set_grad_enabled",
    "set_num_threads",
    "state_dict_from",
    "tensor",
    "viz",
]
