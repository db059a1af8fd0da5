"""Test loss and accuracy: of a model on a loader, and of a saved checkpoint (``minires eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import data as mdata
from .. import functional as F
from ..autograd import Tensor
from ..backends.device import get_array_module, to_device, to_numpy
from ..grad_mode import no_grad
from ..nn import Module
from .build import build_model, input_channels, load_model_state
from .config import TrainConfig
from .datasets import load_data, make_transforms
from .errors import check_device
from .run_folder import load_run_checkpoint
from .saved_state import check_data
from .step import correct_count


def evaluate(model: Module, loader: mdata.DataLoader, device: str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the loader, in eval mode, without a graph.

    Each batch's sums stay on the model's device until the last batch has
    run: on a GPU, the figures are read back once (and the labels checked).
    """
    was_training = model.training
    model.eval()
    losses, corrects, seen = [], [], 0
    try:
        with no_grad():
            for x, y in loader:
                labels = to_device(y, device)
                logits = model(Tensor(to_device(x, device)))
                losses.append(F.cross_entropy(logits, labels, reduction="sum").data)
                corrects.append(correct_count(logits, labels))
                seen += len(y)
    finally:
        model.train(was_training)
    if not losses:
        return 0.0, 0.0
    F.check_labels()
    loss_sum, correct = 0.0, 0
    for loss, right in zip(
        *(to_numpy(get_array_module(a[0]).stack(a)) for a in (losses, corrects))
    ):
        loss_sum += float(loss)  # added in order, as numbers: the same sums as on the CPU
        correct += int(right)
    return loss_sum / seen, correct / seen


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    num_test: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    model_name: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint and measure its test loss and accuracy.

    By default on the data set it was trained on (normalised the same way);
    `model_name` builds another architecture and loads the weights into it
    (e.g. a resnet20's weights into plain20, which has the same keys).
    """
    path = Path(path)
    saved = load_run_checkpoint(path)
    cfg = TrainConfig.from_dict(saved["config"])
    same_data = data is None or data == cfg.data
    cfg.data = data or cfg.data
    cfg.data_dir = data_dir or cfg.data_dir
    cfg.num_test = num_test if num_test is not None else (cfg.num_test if same_data else None)
    cfg.model = model_name or cfg.model
    cfg.device = device
    cfg.validate()
    check_device(device)
    stats = (saved["data"]["mean"], saved["data"]["std"]) if same_data else None
    ds = load_data(cfg, stats)
    if same_data:  # the saved statistics must fit the images: one per channel
        check_data(saved["data"], path, channels=ds.train_images.shape[1])
    model = build_model(cfg.model, int(saved["data"]["num_classes"]))
    load_model_state(model, saved["model"], f"the checkpoint {str(path)!r}")
    _, test_tf = make_transforms(cfg, ds, input_channels(model))
    loader = mdata.DataLoader(ds.test_images, ds.test_labels, batch_size, transform=test_tf)
    if device != "cpu":
        model.to(device)
    loss, acc = evaluate(model, loader, device)
    return {
        "checkpoint": str(path),
        "model": cfg.model,
        "data": cfg.data,
        "epoch": int(saved.get("run", {}).get("epoch", 0)),
        "num_test": len(ds.test_labels),
        "test_loss": loss,
        "test_acc": acc,
    }
