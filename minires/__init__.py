"""minires: a from-scratch deep-learning framework that teaches residual networks.

    import minires as mr
    import minires.functional as F

    x = mr.tensor(array, requires_grad=True)
    y = F.relu(F.conv2d(x, w, padding=1)) + x
    y.sum().backward()
"""

from . import functional, models, nn
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
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "manual_seed",
    "models",
    "nn",
    "no_grad",
    "tensor",
]
