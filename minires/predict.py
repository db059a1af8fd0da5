"""Classify images with an ImageNet ResNet and weights you bring (``minires predict``).

    import minires as mr
    from minires.predict import load_classifier, predict

    model = load_classifier("resnet50", "resnet50-0676ba61.pth")   # torchvision's file
    for p in predict(model, "dog.jpg", k=5):
        print(f"{100 * p.probability:5.1f}%  {p.name}")

``load_classifier`` reads the weights with ``mr.load`` (safetensors, or a
PyTorch .pth file read without PyTorch), builds the named model with as many
classes as the file's ``fc`` layer has, and loads them strictly: a file that
does not fit the model is refused with the keys and shapes that differ, never
half loaded. ``predict`` prepares the image as torchvision does
(``minires.data.imagenet.preprocess``), runs the model in eval mode without a
graph, and returns the top k classes with their softmax probabilities, named
by ImageNet's 1000 class names when the model has 1000 outputs (a model
fine-tuned to another number of classes gets indices, and ``name`` None).
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import models
from .autograd import Tensor
from .backends.device import device_of, to_device, to_numpy
from .checkpoint import CheckpointError
from .data.imagenet import RESIZE, imagenet_classes, preprocess
from .grad_mode import no_grad
from .nn import Module
from .weights import WeightsError, load, state_dict_from

__all__ = ["PredictError", "Prediction", "load_classifier", "predict", "softmax", "top_k"]


class PredictError(ValueError):
    """A model name or a weights file that cannot classify ImageNet images. Says why."""


class Prediction(NamedTuple):
    """One of the top classes of an image."""

    index: int  # the output (class) number
    name: str | None  # ImageNet's name for it; None when the model has not 1000 outputs
    probability: float  # softmax probability, in [0, 1]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (the max is subtracted first: exp cannot overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, k: int = 5) -> list[Prediction]:
    """The k most probable classes of one image's logits (C,), most probable first.

    Ties keep the lower class index first.
    """
    logits = np.asarray(logits)
    if logits.ndim != 1:
        raise ValueError(f"top_k: logits must have shape (C,), got {logits.shape}")
    if not 1 <= k <= logits.shape[0]:
        raise ValueError(f"top_k: k must be in 1..{logits.shape[0]} (the classes), got {k}")
    probs = softmax(logits)
    names = imagenet_classes() if logits.shape[0] == len(imagenet_classes()) else None
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(int(i), names[i] if names else None, float(probs[i])) for i in order]


def predict(
    model: Module, image: str | Path | Any, k: int = 5, resize: int = RESIZE
) -> list[Prediction]:
    """The top ``k`` classes of one image (a file path or a PIL Image), most probable first.

    ``resize``: the shorter side before the 224 crop (see ``preprocess``).
    The model runs in eval mode (BatchNorm uses its running statistics; the
    model's own mode is restored after) on the device its parameters are on,
    in its dtype, on a (1, 3, 224, 224) input prepared by ``preprocess``.
    """
    weight = next(iter(model.parameters())).data
    x = preprocess(image, resize).astype(weight.dtype, copy=False)  # a float64 model gets float64
    device = device_of(weight)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            logits = model(Tensor(to_device(x, device)))
    finally:
        model.train(was_training)
    return top_k(to_numpy(logits.data)[0], k)


def load_classifier(name: str, weights: str | Path, device: str = "cpu") -> Module:
    """The ImageNet model ``name`` (torchvision layout) with the weights in the file ``weights``.

    The file may be safetensors or a PyTorch .pth / .pt file, holding the
    state dict itself or a dict around it ({"state_dict": ...}); a
    "module." prefix on every key (a model saved in DataParallel) is removed.
    The number of classes is the first dimension of the file's ``fc.weight``.
    Raises PredictError, naming the model or file, when the name is unknown
    or not an ImageNet ResNet, or the file is missing, unreadable, or does not
    fit the model (missing or unexpected keys, other shapes).
    """
    if name not in models.list_models():
        raise PredictError(
            f"unknown model {name!r}; valid names: {', '.join(models.list_models())}"
        )
    state = _read_state_dict(Path(weights))
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, np.ndarray) and fc.ndim == 2 else 1000
    model = models.get_model(name, num_classes=num_classes)
    if not isinstance(model, models.ResNet):
        raise PredictError(
            f"{name} is not an ImageNet model (it is a {type(model).__name__}); predict "
            "needs one with torchvision's layout and 3x224x224 input: see `minires models`"
        )
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:  # StateDictError names every bad key
        msg = e.args[0] if e.args else str(e)
        shapes = f"the file holds {_layout(state)}, {name} has {_layout(model.state_dict())}"
        raise PredictError(
            f"the weights in {str(weights)!r} do not fit {name} ({shapes}): {msg}"
        ) from None
    return model.eval().to(device)


def _layout(state: Any) -> str:
    """A ResNet's shape read from its keys: "bottleneck blocks 3-4-6-3" (blocks per stage)."""
    keys = list(state)
    kind = "bottleneck" if any(k.endswith(".conv3.weight") for k in keys) else "basic"
    counts = []
    for stage in range(1, 5):
        blocks = {k.split(".")[1] for k in keys if k.startswith(f"layer{stage}.")}
        counts.append(str(len(blocks)))
    return f"{kind} blocks {'-'.join(counts)}"


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The {name: array} dict in a weights file, or PredictError naming the file."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise PredictError(f"weights file {str(path)!r} {what}")
    try:
        state = state_dict_from(load(path))
    except (OSError, WeightsError, CheckpointError, ValueError) as e:
        raise PredictError(f"cannot read weights file {str(path)!r}: {e}") from None
    if all(k.startswith("module.") for k in state):
        state = state_dict_from(state, strip_prefix="module.")
    return state
