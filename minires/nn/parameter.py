"""Parameter: the Tensors a Module learns (as ``torch.nn.Parameter``)."""

from __future__ import annotations

from ..autograd import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable parameter of a Module (requires_grad=True).

    A Module finds its parameters by type: an attribute holding a Parameter
    is registered, one holding a plain Tensor is not.
    """

    def __init__(self, data: object, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
