"""`minires predict` and minires.data.imagenet: torchvision's ImageNet preprocessing,
the shipped class names, and a ResNet-18 whose top-5 equals PyTorch's.

The reference pipeline is written out here, independently: torchvision's
resize rule and crop offsets computed by hand for the test image's size, PIL's
bilinear resize (what torchvision itself calls on a PIL image), then torch ops
for the crop, the scaling and the normalisation, and a torch ResNet-18 with
the same random weights (minires._torch_reference; torchvision is not
installed). minires reads the same weights from a safetensors or .pth file.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import minires as mr
from minires.cli import main
from minires.data import imagenet
from minires.data.imagenet import ImageError, center_crop_box, preprocess, resized_size
from minires.predict import PredictError, load_classifier, predict, softmax, top_k

Image = pytest.importorskip("PIL.Image")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- #
# Test images and weights
# --------------------------------------------------------------------------- #


def _photo(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    """A colour gradient with noise: every pixel differs, so a shifted crop shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 7 + y / 11)], -1)
    rgb = rgb + rng.normal(0, 20, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    paths = {"png": tmp_path / "photo.png", "jpeg": tmp_path / "photo.jpg"}
    img = _photo()
    img.save(paths["png"])
    img.save(paths["jpeg"], quality=90)
    return paths


def _random_resnet18_state(num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """resnet18 weights with torchvision's names: random, BatchNorm statistics not 0 and 1,
    and an fc layer scaled so that the logits spread (std ~6 on the test image):
    top-5 probabilities far from 1/1000 and from ties."""
    rng = np.random.default_rng(seed)
    mr.manual_seed(seed)  # the same initial weights whatever ran before in this process
    model = mr.models.resnet18(num_classes=num_classes)
    state = {}
    for name, v in model.state_dict().items():
        v = np.array(v)
        if name.endswith("num_batches_tracked"):
            pass
        elif name.endswith("running_var") or (v.ndim == 1 and name.endswith("weight")):
            v = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        elif name.endswith(("running_mean", "bias")):
            v = rng.normal(0, 0.1, v.shape).astype(np.float32)
        elif name == "fc.weight":
            v = v * np.float32(2)
        state[name] = v
    return state


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return _random_resnet18_state()


def _save_pth(state: dict[str, np.ndarray], path: Path, wrap: bool = False) -> Path:
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    if wrap:  # a training checkpoint: {"state_dict": ..., "epoch": ...}, DataParallel names
        tensors = {"state_dict": {"module." + k: v for k, v in tensors.items()}, "epoch": 90}
    torch.save(tensors, path)
    return path


def _predict_json(capsys, *argv: str) -> list[dict]:
    assert main(["predict", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


# --------------------------------------------------------------------------- #
# The class names shipped in the package
# --------------------------------------------------------------------------- #


def test_the_imagenet_class_names_are_torchvisions() -> None:
    names = imagenet.imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(n and n == n.strip() for n in names)
    known = {
        0: "tench",
        1: "goldfish",
        134: "crane bird",
        207: "golden retriever",
        281: "tabby",
        517: "crane",
        638: "maillot",
        639: "maillot tank suit",
        999: "toilet tissue",
    }
    assert {i: names[i] for i in known} == known


# --------------------------------------------------------------------------- #
# Preprocessing
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "size, resized, box",
    [
        # (width, height) -> shorter side 256, longer int(256 * long / short);
        # crop offsets round((side - 224) / 2), half to even.
        ((300, 200), (384, 256), (80, 16)),
        ((200, 300), (256, 384), (16, 80)),
        ((640, 480), (341, 256), (58, 16)),  # 341.33 truncated; (341-224)/2 = 58.5 -> 58
        ((387, 256), (387, 256), (82, 16)),  # no resize; 81.5 -> 82 (half to even)
        ((256, 256), (256, 256), (16, 16)),
        ((100, 50), (512, 256), (144, 16)),  # enlarged
        ((225, 2000), (256, 2275), (16, 1026)),  # 2275.55 -> 2275; 1025.5 -> 1026
        ((2000, 225), (2275, 256), (1026, 16)),
    ],
)
def test_resize_and_crop_geometry_by_hand(size, resized, box) -> None:
    assert resized_size(*size) == resized
    left, top = box
    assert center_crop_box(*resized) == (left, top, left + 224, top + 224)


def test_a_crop_larger_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="smaller than 224"):
        center_crop_box(223, 300)


@pytest.mark.parametrize(
    "resize, resized, rows, cols",
    [
        (256, (384, 256), slice(16, 240), slice(80, 304)),
        (232, (348, 232), slice(4, 228), slice(62, 286)),  # torchvision's V2 weights
    ],
)
def test_preprocess_by_hand(resize, resized, rows, cols) -> None:
    """300x200: PIL bilinear to the resized size, the centre crop, /255, normalised."""
    img = _photo()
    x = preprocess(img, resize=resize)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    big = np.asarray(img.resize(resized, Image.Resampling.BILINEAR), dtype=np.float64)
    crop = big[rows, cols] / 255
    want = (crop - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[0], want.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_preprocess_of_one_colour_is_the_normalised_colour() -> None:
    """Resizing a flat colour keeps it, so every output value is known exactly;
    a different colour per channel shows the channel order."""
    x = preprocess(Image.new("RGB", (500, 333), (255, 0, 128)))
    for c, v in enumerate((255, 0, 128)):
        want = (np.float32(v) / np.float32(255) - np.float32(MEAN[c])) / np.float32(STD[c])
        assert np.all(x[0, c] == want), (c, np.unique(x[0, c]), want)


def test_preprocess_reads_files_and_any_mode(tmp_path: Path) -> None:
    rgb = _photo(260, 240)
    path = tmp_path / "a.png"
    rgb.save(path)
    np.testing.assert_array_equal(preprocess(path), preprocess(rgb))
    np.testing.assert_array_equal(preprocess(str(path)), preprocess(rgb))

    gray = preprocess(rgb.convert("L"))  # grayscale: three equal channels before normalising
    raw = (
        gray[0] * np.array(STD, np.float32)[:, None, None]
        + np.array(MEAN, np.float32)[:, None, None]
    )
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-6)
    np.testing.assert_allclose(raw[0], raw[2], atol=1e-6)

    rgba = rgb.copy()
    rgba.putalpha(Image.new("L", rgb.size, 7))  # alpha is dropped, as ImageFolder does
    np.testing.assert_array_equal(preprocess(rgba), preprocess(rgb))

    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png", transparency=bytes([0, 128] + [255] * 14))  # a tRNS chunk
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Palette images with Transparency" warning
        got = preprocess(tmp_path / "p.png")
    np.testing.assert_array_equal(got, preprocess(palette.convert("RGB")))


def test_preprocess_refuses_what_is_not_an_image() -> None:
    with pytest.raises(TypeError, match="preprocess: image must be a file path or a PIL Image"):
        preprocess(np.zeros((224, 224, 3)))
    with pytest.raises(ValueError, match="preprocess: resize must be an integer >= 224, got 200"):
        preprocess(_photo(), resize=200)


# --------------------------------------------------------------------------- #
# Against PyTorch: the whole pipeline, through the command line
# --------------------------------------------------------------------------- #


def _torch_top5(path: Path, state: dict[str, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """torchvision's pipeline, by hand, on a 300x200 image; torch's resnet18."""
    torch = pytest.importorskip("torch")
    from minires._torch_reference import imagenet_resnet

    net = imagenet_resnet("resnet18").eval()
    ours = list(state.items())
    theirs = net.state_dict()
    assert len(ours) == len(theirs)
    with torch.no_grad():  # the same modules in the same order; names differ
        for (name, v), (tname, t) in zip(ours, theirs.items()):
            assert name.rsplit(".", 1)[1] == tname.rsplit(".", 1)[1] and v.shape == t.shape
            t.copy_(torch.from_numpy(np.array(v)))
    with Image.open(path) as f:
        img = f.convert("RGB")
    assert img.size == (300, 200)
    img = img.resize((384, 256), Image.Resampling.BILINEAR)  # shorter side 256
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[:, 16:240, 80:304]
    x = x.to(torch.float32) / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        logits = net(x[None])[0]
    top = torch.topk(logits, 6)
    # The order compared below is decided by gaps far above float32 noise (~1e-5),
    assert np.all(np.diff(top.values.numpy()) < -1e-3), top.values  # 5th-6th: 4e-3 (jpeg)
    probs = torch.softmax(logits, dim=0)[top.indices[:5]].numpy()
    return top.indices[:5].tolist(), probs


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_top5_equals_pytorch_from_a_safetensors_file(capsys, tmp_path, images, state, fmt):
    weights = tmp_path / "r18.safetensors"
    mr.save_safetensors(state, weights)
    (result,) = _predict_json(
        capsys, str(images[fmt]), "--model", "resnet18", "--weights", str(weights)
    )
    want_idx, want_p = _torch_top5(images[fmt], state)
    assert result["image"] == str(images[fmt]) and result["model"] == "resnet18"
    assert [t["index"] for t in result["top"]] == want_idx
    names = imagenet.imagenet_classes()
    assert [t["name"] for t in result["top"]] == [names[i] for i in want_idx]
    np.testing.assert_allclose([t["probability"] for t in result["top"]], want_p, atol=1e-4)
    assert want_p[4] > 0.01  # real probabilities compared, not 1/1000 each


def test_top5_equals_pytorch_from_a_pth_checkpoint(capsys, tmp_path, images, state):
    """torch.save of {"state_dict": {"module.conv1.weight": ...}, "epoch": 90}."""
    weights = _save_pth(state, tmp_path / "checkpoint.pth", wrap=True)
    (result,) = _predict_json(
        capsys, str(images["png"]), "--model", "resnet18", "--weights", str(weights)
    )
    want_idx, want_p = _torch_top5(images["png"], state)
    assert [t["index"] for t in result["top"]] == want_idx
    np.testing.assert_allclose([t["probability"] for t in result["top"]], want_p, atol=1e-4)


def test_softmax_and_top_k(capsys) -> None:
    torch = pytest.importorskip("torch")
    z = np.random.default_rng(3).normal(0, 30, (1000,)).astype(np.float32)
    np.testing.assert_allclose(
        softmax(z), torch.softmax(torch.from_numpy(z).double(), 0), rtol=1e-12
    )
    assert softmax(np.array([1000.0, 0.0]))[0] == 1.0  # no overflow
    rows = z.reshape(4, 250)  # a batch: one softmax per row
    want = torch.softmax(torch.from_numpy(rows).double(), 1)
    np.testing.assert_allclose(softmax(rows), want, rtol=1e-12)
    got = top_k(z, 3)
    order = np.argsort(-z)[:3]
    assert [p.index for p in got] == order.tolist()
    assert got[0].name == imagenet.imagenet_classes()[order[0]]
    ties = top_k(np.array([1.0, 3.0, 3.0, 0.0]), 3)  # not 1000 classes: no names
    assert [p.index for p in ties] == [1, 2, 0] and ties[0].name is None
    assert abs(sum(p.probability for p in top_k(z, 1000)) - 1) < 1e-12
    with pytest.raises(ValueError, match=r"top_k: k must be in 1\.\.4"):
        top_k(np.zeros(4), 5)


def test_the_printed_table(capsys, tmp_path, images, state) -> None:
    weights = tmp_path / "r18.safetensors"
    mr.save_safetensors(state, weights)
    argv = [
        str(images["png"]),
        str(images["jpeg"]),
        "--model",
        "resnet18",
        "--weights",
        str(weights),
    ]
    assert main(["predict", *argv, "--top", "3"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\n")
    assert len(blocks) == 2
    model = load_classifier("resnet18", weights)
    for block, image in zip(blocks, (images["png"], images["jpeg"])):
        lines = block.strip("\n").splitlines()
        assert lines[0] == f"{image}:" and len(lines) == 4
        for line, p in zip(lines[1:], predict(model, image, k=3)):
            assert line == f"  {100 * p.probability:6.2f}%  {p.index:>4}  {p.name}"


def test_resize_reaches_the_preprocessing(capsys, images, weights18) -> None:
    args = [str(images["png"]), "--model", "resnet18", "--weights", str(weights18)]
    (got,) = _predict_json(capsys, *args, "--resize", "232", "--top", "3")
    model = load_classifier("resnet18", weights18)
    want = predict(model, images["png"], k=3, resize=232)
    assert got["top"] == [p._asdict() for p in want]
    assert want != predict(model, images["png"], k=3)  # 232 is not 256
    err = _error(capsys, [*args, "--resize", "200"])
    assert "--resize 200: must be at least 224, the side of the crop" in err


def test_predict_runs_in_eval_mode_and_in_the_models_dtype(images, state) -> None:
    model = mr.models.resnet18()
    model.load_state_dict(state)
    want = predict(model.eval(), images["png"])
    model.train()
    assert predict(model, images["png"]) == want  # BatchNorm used its running statistics
    assert model.training  # and the mode is restored
    wide = predict(model.to(np.float64), images["png"])
    assert [p.index for p in wide] == [p.index for p in want]
    np.testing.assert_allclose(
        [p.probability for p in wide], [p.probability for p in want], atol=1e-5
    )


def test_weights_with_other_than_1000_classes_give_numbers(capsys, tmp_path, images) -> None:
    weights = tmp_path / "ten.safetensors"
    mr.save_safetensors(_random_resnet18_state(num_classes=10), weights)
    args = [str(images["png"]), "--model", "resnet18", "--weights", str(weights)]
    assert main(["predict", *args, "--json"]) == 0
    captured = capsys.readouterr()
    top = json.loads(captured.out)["top"]
    assert len(top) == 5 and all(t["name"] is None and 0 <= t["index"] < 10 for t in top)
    assert "the weights have 10 classes, not ImageNet's 1000" in captured.err
    assert main(["predict", *args, "--top", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 10 and all(line.split()[-1].isdigit() for line in lines)


# --------------------------------------------------------------------------- #
# Mistakes: one line, exit status 2
# --------------------------------------------------------------------------- #


def _error(capsys, argv: list[str]) -> str:
    assert main(["predict", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # every mistake is found before any image is classified
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def weights18(tmp_path, state) -> Path:
    path = tmp_path / "resnet18.safetensors"
    mr.save_safetensors(state, path)
    return path


def test_a_file_for_another_model_lists_the_keys_that_differ(capsys, images, weights18) -> None:
    err = _error(capsys, [str(images["png"]), "--model", "resnet50", "--weights", str(weights18)])
    assert f"the weights in {str(weights18)!r} do not fit resnet50" in err
    assert "the file holds basic blocks 2-2-2-2, resnet50 has bottleneck blocks 3-4-6-3" in err
    assert "missing keys: layer1.0.conv3.weight" in err
    assert "layer1.0.conv1.weight: expected shape (64, 64, 1, 1), got (64, 64, 3, 3)" in err


def test_unexpected_keys_are_named(capsys, tmp_path, images, state) -> None:
    extra = dict(state, **{"head.weight": np.zeros((2, 2), np.float32)})
    path = tmp_path / "extra.safetensors"
    mr.save_safetensors(extra, path)
    err = _error(capsys, [str(images["png"]), "--model", "resnet18", "--weights", str(path)])
    assert "do not fit resnet18" in err and "unexpected keys: head.weight" in err


@pytest.mark.parametrize(
    "model, message",
    [
        ("resnet9", "unknown model 'resnet9'; valid names: resnet18, resnet34"),
        ("resnet20", "resnet20 is not an ImageNet model (it is a CifarResNet)"),
    ],
)
def test_a_model_predict_cannot_use(capsys, images, weights18, model, message) -> None:
    err = _error(capsys, [str(images["png"]), "--model", model, "--weights", str(weights18)])
    assert message in err


def test_weights_files_that_cannot_be_read(capsys, tmp_path, images) -> None:
    image = str(images["png"])
    missing = tmp_path / "nope.pth"
    err = _error(capsys, [image, "--model", "resnet18", "--weights", str(missing)])
    assert f"weights file {str(missing)!r} not found" in err
    err = _error(capsys, [image, "--model", "resnet18", "--weights", str(tmp_path)])
    assert "is a folder, not a file" in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a weights file at all")
    err = _error(capsys, [image, "--model", "resnet18", "--weights", str(junk)])
    assert f"cannot read weights file {str(junk)!r}" in err


def test_images_that_cannot_be_read(capsys, tmp_path, images, weights18) -> None:
    rest = ["--model", "resnet18", "--weights", str(weights18)]
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    err = _error(capsys, [str(images["png"]), str(text), *rest])
    assert f"{str(text)!r} is not an image file Pillow can read" in err  # png not classified
    err = _error(capsys, [str(tmp_path / "gone.jpg"), *rest])
    assert f"image {str(tmp_path / 'gone.jpg')!r} not found" in err

    truncated = tmp_path / "cut.jpg"  # the header reads; decoding fails
    truncated.write_bytes(images["jpeg"].read_bytes()[:600])
    with pytest.raises(ImageError, match="cannot read image .*cut.jpg"):
        preprocess(truncated)
    err = _error(capsys, [str(truncated), *rest])
    assert f"cannot read image {str(truncated)!r}" in err


def test_without_pillow_the_error_says_what_to_install(capsys, monkeypatch, images, weights18):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    err = _error(capsys, [str(images["png"]), "--model", "resnet18", "--weights", str(weights18)])
    assert 'pip install "minires[predict]"' in err and "Pillow>=10" in err
    with pytest.raises(ImportError, match=r"minires\[predict\]"):
        preprocess(images["png"])


def test_top_must_be_a_positive_number_no_larger_than_the_classes(capsys, images, weights18):
    args = [str(images["png"]), "--model", "resnet18", "--weights", str(weights18)]
    assert "--top: must be a positive integer, got '0'" in _error(capsys, [*args, "--top", "0"])
    err = _error(capsys, [*args, "--top", "1001"])
    assert "--top 1001: the model has only 1000 classes" in err


def test_load_classifier_raises_predict_errors(weights18) -> None:
    with pytest.raises(PredictError, match="do not fit resnet34"):
        load_classifier("resnet34", weights18)
    model = load_classifier("resnet18", weights18)
    assert not model.training and model.fc.out_features == 1000
