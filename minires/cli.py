"""The ``minires`` command: train, eval, models, predict, gradcheck, bench, gpu-check.

    minires train                        ResNet-20 on the embedded digits: ~99% in ~15 s
    minires train --data cifar10 --data-dir ~/data --out runs/c10
    minires train --out runs/c10 --resume          continue a stopped run exactly
    minires eval --checkpoint runs/c10             test loss and accuracy of a run
    minires models                                 the model names and their sizes
    minires predict dog.jpg --model resnet50 --weights resnet50-0676ba61.pth   top-5 classes
    minires gradcheck                              check every op's backward, float64
    minires bench --model resnet20                 time a training step (vs PyTorch)
    minires gpu-check                              the package's checks and timings on a GPU

Exit status (EXIT_STATUS below, also in ``minires --help``): 0 done; 1
training diverged or a gradient check failed; 2 a usage error, or a file
problem: an option out of range, a checkpoint, weights file, image or data
set that is missing, damaged or does not fit, an output that cannot be
written; 3 ``gpu-check`` found no usable GPU; 130 stopped by Ctrl-C (143 by
SIGTERM). Every error the user can fix prints one line, ``minires: error:
...``, that names the option or file, and never a Python traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .backends.device import DEVICES
from .checkpoint import CheckpointError
from .data import DataError
from .options import POSITIVE_INT
from .train import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DATASETS,
    METRICS_FILE,
    NUMBER_OPTIONS,
    PLOT_FILE,
    SCHEDULES,
    OutputError,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    UserError,
    check_device,
    evaluate_checkpoint,
)
from .train.processes import (
    launch_processes,
    launched_world_size,
    make_trainer,
    quiet_exit_status,
    with_world_size,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # EXIT_FAILED: diverged, or a gradcheck failed
EXIT_NO_GPU = 3  # `minires gpu-check` on a machine without a usable GPU

EXIT_STATUS = """\
exit status:
  0    done
  1    training diverged (NaN or infinite loss), or a gradient check failed
       (or a check of `minires gpu-check`)
  2    a usage error or a file problem: a bad or out-of-range option; a
       checkpoint, weights file, image or data set that is missing, damaged
       or does not fit; an output (run folder, checkpoint, metrics.jsonl,
       config.json, curves.png) that cannot be written; a missing optional
       package (Pillow for predict). One line on stderr says which.
  3    `minires gpu-check`: no usable GPU here (no CuPy, no device, or a
       missing CUDA library; one line says which and what to install)
  130  stopped by Ctrl-C (143: by SIGTERM); the message says which checkpoint,
       if any, a --resume continues from
"""

# The train options that are part of TrainConfig (parsed with default None, so
# that "not given" can be told apart from "given with the default value").
CONFIG_KEYS = [f for f in TrainConfig.__dataclass_fields__]


# --------------------------------------------------------------------------- #
# The parser
# --------------------------------------------------------------------------- #


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minires",
        description="minires: a from-scratch deep-learning framework for residual networks.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"minires {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_models_gradcheck_bench(sub)
    return parser


def _add_train(sub: Any) -> None:
    """The `minires train` command and its options."""
    t = sub.add_parser(
        "train",
        help="train a model (no options: ResNet-20 on the embedded digits, ~15 s)",
        description="Train a ResNet. Options not given take the data set's defaults "
        "(digits: resnet20, 20 epochs, batch 64; cifar10: He et al.'s recipe, 164 epochs; "
        "procedural: 10 epochs on 10,000 images). With --resume, options not given "
        "take the run's saved values.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--model", metavar="NAME", help="a name from `minires models` (resnet20)")
    t.add_argument("--data", choices=DATASETS, help="data set (digits)")
    t.add_argument("--data-dir", metavar="DIR", help="folder holding cifar-10-batches-py (data)")
    # Numeric options are parsed with TrainConfig's own rules (NUMBER_OPTIONS):
    # a bad value gets argparse's usage error, and is judged in one place.
    t.add_argument("--epochs", type=NUMBER_OPTIONS["epochs"])
    t.add_argument("--batch-size", type=NUMBER_OPTIONS["batch_size"])
    t.add_argument("--lr", type=NUMBER_OPTIONS["lr"], help="initial learning rate (0.1)")
    t.add_argument("--momentum", type=NUMBER_OPTIONS["momentum"], help="SGD momentum (0.9)")
    t.add_argument("--weight-decay", type=NUMBER_OPTIONS["weight_decay"], help="L2 weight decay")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (cosine)")
    t.add_argument(
        "--warmup-epochs",
        type=NUMBER_OPTIONS["warmup_epochs"],
        help="linear warm-up from lr/10, in epochs (0)",
    )
    t.add_argument(
        "--no-augment",
        dest="augment",
        action="store_const",
        const=False,
        help="no random crops or flips",
    )
    t.add_argument(
        "--num-train", type=NUMBER_OPTIONS["num_train"], metavar="N", help="use N training images"
    )
    t.add_argument(
        "--num-test", type=NUMBER_OPTIONS["num_test"], metavar="N", help="use N test images"
    )
    t.add_argument("--seed", type=NUMBER_OPTIONS["seed"], help="random seed (0)")
    t.add_argument("--device", choices=DEVICES, help="cpu (default) or cuda")
    t.add_argument(
        "--nproc",
        type=NUMBER_OPTIONS["nproc"],
        metavar="N",
        help="train on N processes (data parallel, through mpiexec; --batch-size is per process)",
    )
    t.add_argument(
        "--no-sync-bn",
        dest="sync_bn",
        action="store_const",
        const=False,
        help="with --nproc: BatchNorm statistics per process instead of over all of them",
    )
    t.add_argument("--out", metavar="DIR", help="run folder (default runs/DATA-MODEL[-k])")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    t.add_argument(
        "--progress",
        choices=("auto", "bar", "text", "none"),
        default="auto",
        help="progress display (auto: a tqdm bar on a terminal, else text lines)",
    )
    t.set_defaults(func=cmd_train)


def _add_eval(sub: Any) -> None:
    """The `minires eval` command."""
    e = sub.add_parser(
        "eval",
        help="test loss and accuracy of a checkpoint",
        description="Evaluate a checkpoint on the test split of the data set it was "
        "trained on (or of --data).",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a checkpoint file or a run folder"
    )
    e.add_argument("--data", choices=DATASETS, help="data set (default: the training one)")
    e.add_argument("--data-dir", metavar="DIR")
    e.add_argument("--num-test", type=NUMBER_OPTIONS["num_test"], metavar="N")
    e.add_argument("--batch-size", type=NUMBER_OPTIONS["batch_size"], default=256)
    e.add_argument("--device", choices=DEVICES, default="cpu")
    e.add_argument(
        "--model", metavar="NAME", help="load the weights into this model instead (e.g. plain20)"
    )
    e.add_argument("--json", action="store_true", help="print the result as one JSON line")
    e.set_defaults(func=cmd_eval)


def _add_predict(sub: Any) -> None:
    """The `minires predict` command."""
    p = sub.add_parser(
        "predict",
        help="classify images with an ImageNet ResNet and your weights file",
        description="Print the top classes of each image, with their probabilities, "
        "for an ImageNet model (torchvision layout) and a weights file you bring "
        "(safetensors or PyTorch .pth, e.g. torchvision's resnet50 file). Images are "
        "prepared as torchvision prepares them (shorter side 256, centre 224x224 crop, "
        'ImageNet normalisation). Needs Pillow: pip install "minires[predict]". '
        "Weights with other than 1000 classes give class numbers instead of names.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument(
        "--model", required=True, metavar="NAME", help="an ImageNet model, e.g. resnet50"
    )
    p.add_argument(
        "--weights", required=True, metavar="FILE", help="its weights (.safetensors or .pth)"
    )
    p.add_argument("--top", type=POSITIVE_INT, default=5, metavar="K", help="classes shown (5)")
    p.add_argument(
        "--resize",
        type=POSITIVE_INT,
        default=256,
        metavar="N",
        help="shorter side before the 224x224 crop (256; 232 for torchvision's V2 weights)",
    )
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON line per image")
    p.set_defaults(func=cmd_predict)


def _add_models_gradcheck_bench(sub: Any) -> None:
    """The `minires models`, `gradcheck` and `bench` commands."""
    m = sub.add_parser("models", help="list the model names and their parameter counts")
    m.add_argument("names", nargs="*", metavar="NAME", help="only these models")
    m.set_defaults(func=cmd_models)

    # -- gradcheck -----------------------------------------------------------
    g = sub.add_parser(
        "gradcheck",
        help="check every op's gradient against finite differences (float64)",
        description="Gradcheck every op, two residual blocks and a small ResNet, "
        "in float64, and print a table. Exit status 1 if any check fails.",
    )
    g.add_argument("--device", choices=DEVICES, default="cpu")
    g.add_argument("--seed", type=NUMBER_OPTIONS["seed"], default=0)
    g.set_defaults(func=cmd_gradcheck)

    # -- bench ---------------------------------------------------------------
    # Its options belong to minires/bench.py (add_arguments), which is only
    # imported when the command runs; everything after `bench` is passed on.
    b = sub.add_parser(
        "bench",
        help="time a training step and inference, against PyTorch when installed",
        add_help=False,
        description="See `minires bench --help`.",
    )
    b.set_defaults(func=cmd_bench)  # main() hands it the arguments it does not know

    # -- gpu-check -----------------------------------------------------------
    c = sub.add_parser(
        "gpu-check",
        help="run the package's checks on this machine's GPU, then time resnet20 and resnet50",
        description="On an NVIDIA GPU: every op forward and backward against NumPy, float64 "
        "gradient checks, a resnet20 training step against the CPU's, then `minires bench "
        "--device cuda` for resnet20 (batch 128) and resnet50 (batch 32) against PyTorch "
        "when it can use the GPU. Each step has a time limit; all of them take under 8 "
        "minutes; one summary at the end, then one JSON line. Exit status 0 if every check "
        "passed, 1 if one failed or ran out of time, 3 if there is no usable GPU here.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--quick", action="store_true", help="tiny sizes: tests the command, not the GPU's speed"
    )
    c.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    c.add_argument("--seed", type=NUMBER_OPTIONS["seed"], default=0)
    c.set_defaults(func=cmd_gpu_check)


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #


def default_out_dir(cfg: TrainConfig, root: str = "runs") -> Path:
    """runs/DATA-MODEL, or the first of runs/DATA-MODEL-2, -3, ... that is free."""
    base = Path(root) / f"{cfg.data}-{cfg.model}"
    candidate, k = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def cmd_train(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in CONFIG_KEYS if getattr(args, k, None) is not None}
    if given.get("nproc", 1) > 1 and launched_world_size() == 1:
        return launch_processes(given["nproc"], args.argv)  # mpiexec runs this command N times
    given = with_world_size(given)
    start = time.perf_counter()
    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out DIR, the folder of the run to continue")
        trainer = make_trainer(None, args.out, resume=True, overrides=given, progress=args.progress)
    else:
        data = given.pop("data", "digits")
        cfg = TrainConfig.for_data(data, **given)
        out = Path(args.out) if args.out is not None else default_out_dir(cfg)
        trainer = make_trainer(cfg, out, progress=args.progress)
    resume_args = ["minires", "train", "--out", str(trainer.out_dir), "--resume"]
    if trainer.cfg.nproc > 1:
        resume_args += ["--nproc", str(trainer.cfg.nproc)]
    resume_cmd = shlex.join(resume_args)
    try:
        result = trainer.run()
    except OutputError as e:  # say what is safe on disk, and how to go on
        kept = trainer.folder.describe_checkpoint()
        if kept is None:
            raise UserError(f"{e}; no checkpoint was saved") from None
        raise UserError(f"{e}; {kept} is intact: continue with {resume_cmd}") from None
    if not getattr(trainer, "is_writer", True):  # rank 0 of a data-parallel run reports
        return quiet_exit_status(result)
    out = result.out_dir
    title = f"{trainer.cfg.model} on {trainer.cfg.data}"
    plot_error = _draw_curves(result.history, out / PLOT_FILE, title)
    if result.status in ("aborted", "interrupted"):
        print(_stop_message(result, trainer, resume_cmd), file=sys.stderr)
        if plot_error:
            print(f"minires: error: {plot_error}", file=sys.stderr)
        return 128 + int(result.signal or signal.SIGINT)
    if result.history:
        last = result.history[-1]
        best = max(result.history, key=lambda r: r["test_acc"])
        print(
            f"done: {result.epoch} epochs, {time.perf_counter() - start:.1f} s this session "
            f"({last['total_train_time_s']:.1f} s of training steps in all). "
            f"Test accuracy {100 * last['test_acc']:.2f}% "
            f"(best {100 * best['test_acc']:.2f}% at epoch {best['epoch']})"
        )
    print(f"outputs in {out}/:")
    files = [
        (CHECKPOINT_FILE, f"weights, optimiser, schedule, RNG state (resume: {resume_cmd})"),
        (METRICS_FILE, "one JSON line per epoch"),
        (CONFIG_FILE, "the settings"),
        (PLOT_FILE, "loss and accuracy curves"),
    ]
    for name, what in files:
        if (out / name).is_file():
            print(f"  {name:<16} {what}")
    if plot_error:
        raise OutputError(f"{plot_error} (the run itself finished; its other files are saved)")
    return EXIT_OK


def _stop_message(result: Any, trainer: Trainer, resume_cmd: str) -> str:
    """What a stopped run tells the user: where it stopped, and what a resume continues from."""
    name = signal.Signals(result.signal or signal.SIGINT).name
    where = f"epoch {result.epoch + 1}"
    if trainer.train_loader.batch:
        where += f", batch {trainer.train_loader.batch}"
    if result.status == "interrupted":
        return (
            f"stopped by {name} at {where}; checkpoint saved in {result.checkpoint}\n"
            f"continue with: {resume_cmd}"
        )
    # Aborted (a second Ctrl-C): nothing was saved now; say what is on disk, if anything.
    if result.checkpoint is None:
        return (
            f"aborted in {where}, before any checkpoint was saved: there is nothing "
            f"to resume in {result.out_dir}/; start the run again to train it"
        )
    return (
        f"aborted in {where}, without saving it. The last checkpoint, {result.checkpoint}, "
        f"is intact; continue with: {resume_cmd}"
    )


def _draw_curves(history: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Plot if there is something to plot and matplotlib is installed.

    Returns the error if the file cannot be written (an OSError), else None.
    """
    if not history:
        return None
    from . import plots

    if not plots.matplotlib_available():
        print(
            f"note: matplotlib is not installed, so no {path.name} "
            "(pip install matplotlib); the numbers are in metrics.jsonl",
            file=sys.stderr,
        )
        return None
    try:
        plots.plot_curves(history, path, title)
    except OSError as e:
        return f"cannot write {str(path)!r}: {e.strerror or e}"
    except Exception as e:  # a plot is a convenience: report, do not lose the run's status
        print(f"note: could not draw {path}: {e}", file=sys.stderr)
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    result = evaluate_checkpoint(
        path,
        data=args.data,
        data_dir=args.data_dir,
        num_test=args.num_test,
        batch_size=args.batch_size,
        device=args.device,
        model_name=args.model,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['checkpoint']} ({result['model']}, epoch {result['epoch']}) on "
            f"{result['num_test']} {result['data']} test images: "
            f"loss {result['test_loss']:.4f}, accuracy {100 * result['test_acc']:.2f}%"
        )
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from . import models
    from .nn.init import skip_init

    names = args.names or models.list_models()
    unknown = [n for n in names if n not in models.list_models()]
    if unknown:
        raise UserError(
            f"unknown model {', '.join(map(repr, unknown))}; valid names: "
            f"{', '.join(models.list_models())}"
        )
    print(f"{'model':<18}{'parameters':>14}  kind")
    for name in names:
        # The shapes are all a count needs: drawing the random weights of
        # wide_resnet101_2 alone would take seconds.
        with skip_init():
            model = models.get_model(name)
        kind = type(model).__name__
        if kind == "CifarResNet":
            kind = "CIFAR, 3x32x32 input" + ("" if model.residual else ", no shortcuts")
        elif kind == "ResNet":
            wide = "wide ResNet, " if model.base_width > 64 else ""
            family = "ResNeXt, " if model.groups > 1 else wide
            kind = f"ImageNet, {family}torchvision layout, 3x224x224 input"
        print(f"{name:<18}{models.count_parameters(model):>14,}  {kind}", flush=True)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from . import predict
    from .data import imagenet

    try:
        imagenet.require_pillow()
    except ImportError as e:
        raise UserError(f"minires predict: {e}") from None
    check_device(args.device)
    if args.resize < 224:
        raise UserError(f"--resize {args.resize}: must be at least 224, the side of the crop")
    for image in args.images:  # a bad name is reported before the weights are read
        imagenet.check_image(image)
    try:
        model = predict.load_classifier(args.model, args.weights, args.device)
    except predict.PredictError as e:
        raise UserError(str(e)) from None
    num_classes = model.fc.out_features
    if args.top > num_classes:
        raise UserError(f"--top {args.top}: the model has only {num_classes} classes")
    if num_classes != len(imagenet.imagenet_classes()):
        print(
            f"note: the weights have {num_classes} classes, not ImageNet's 1000: "
            "classes are shown by number",
            file=sys.stderr,
        )
    for i, image in enumerate(args.images):
        top = predict.predict(model, image, k=args.top, resize=args.resize)
        if args.json:
            found = [p._asdict() for p in top]
            print(json.dumps({"image": image, "model": args.model, "top": found}), flush=True)
            continue
        print(("\n" if i else "") + f"{image}:")
        for p in top:
            print(f"  {100 * p.probability:6.2f}%  {p.index:>4}  {p.name or ''}".rstrip())
        sys.stdout.flush()
    return EXIT_OK


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from . import selfcheck

    check_device(args.device)
    return EXIT_OK if selfcheck.run(args.device, args.seed) else EXIT_FAILED


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from . import gpu_check

    return gpu_check.main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from . import bench
    except ImportError as e:
        raise UserError(f"minires bench is not available in this install: {e}") from None
    parser = argparse.ArgumentParser(prog="minires bench", description=bench.__doc__)
    bench.add_arguments(parser)
    return int(bench.main(parser.parse_args(args.bench_args)) or 0)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def _print_error(error: Exception) -> None:
    """One line on stderr, whatever the message holds."""
    print(f"minires: error: {' '.join(str(error).splitlines())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if args.command == "bench":
            args.bench_args = extra
        elif extra:
            parser.parse_args(argv)  # argparse's own "unrecognized arguments" error
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except SystemExit as e:  # argparse: --help, --version, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    except (UserError, CheckpointError, DataError) as e:
        _print_error(e)
        return EXIT_USAGE
    except TrainingDiverged as e:
        _print_error(e)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside the training loop (which handles its own)
        print("minires: interrupted", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    except BrokenPipeError:  # `minires models | head`: the reader left; not an error
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
