"""Training and evaluation: the loop behind ``minires train`` and ``minires eval``.

    cfg = TrainConfig.for_data("digits", epochs=5)
    result = Trainer(cfg, out_dir="runs/demo").run()
    result.history[-1]["test_acc"]

One module a job, in the order a reader meets them:

    config.py      TrainConfig, its defaults per data set, its validation
    datasets.py    the data splits, their transforms and loaders
    build.py       the model, the optimiser, the learning-rate schedule
    step.py        train_step: forward, cross-entropy, backward, SGD step
    trainer.py     Trainer: the epoch loop, evaluation, saving, resuming
    run_state.py   what a checkpoint holds, taken from a Trainer and given back
    distributed.py DistributedTrainer: the same loop on N processes (data parallel)
    processes.py   which trainer a command line gets; ``--nproc`` starts mpiexec
    metrics.py     an epoch's running sums and its line of metrics.jsonl
    evaluate.py    test loss and accuracy of a model or of a checkpoint
    run_folder.py  the files of a run: checkpoint, metrics.jsonl, config.json
    saved_state.py the checks a checkpoint passes before anything is taken from it
    progress.py    the progress bar (or text lines)
    signals.py     Ctrl-C and kill: stop after the current step
    errors.py      UserError, OutputError, TrainingDiverged, and the device check

Around the textbook loop sits what makes a run trustworthy:

* Metrics are appended to ``metrics.jsonl`` (one JSON object per epoch) and
  flushed as soon as they exist, so a crashed run still has its history.
* A checkpoint (``checkpoint.npz``, see minires/checkpoint.py) is written
  atomically after every epoch. It holds everything the rest of the run
  depends on: weights and BatchNorm buffers, the optimiser's momentum
  buffers and learning rates, the schedule's counter, the data loader's
  position, the random generators, the config, the metrics so far. So
  ``--resume`` continues *exactly*: on the CPU the resumed run ends with the
  same weights, bit for bit, as a run that was never stopped.
* Ctrl-C does not kill a step halfway (which would leave the weights half
  updated): the first Ctrl-C asks the loop to stop after the current step,
  which then saves a checkpoint *of that step* (resumable mid-epoch) and
  returns. A second Ctrl-C aborts at once; the last epoch's checkpoint on
  disk is untouched either way. SIGTERM (``kill``) is handled like Ctrl-C.
* A NaN or infinite loss stops the run before anything is saved from that
  step on, so the last good checkpoint stays as it was. On the CPU it stops
  before the bad step is applied; on a GPU, where looking at each loss would
  make the host wait for the GPU, at the next report (a progress line, a
  checkpoint, the end of the epoch), naming the batch. Labels on the GPU are
  range-checked there too (F.check_labels): the loop syncs only to report.

Errors a user can fix (a bad option, a missing data set, a damaged or wrong
checkpoint, an output that cannot be written) are raised as ``UserError``
with a one-line message meant to be printed as is.
"""

from .build import build_model, build_optimizer, input_channels, load_model_state
from .config import (
    DATA_DEFAULTS,
    DATASETS,
    NUM_CLASSES,
    NUMBER_OPTIONS,
    SCHEDULES,
    TrainConfig,
    resolve_resume_config,
)
from .datasets import Data, RepeatChannels, load_data, make_loaders, make_transforms
from .distributed import DistributedTrainer, distributed_train_step
from .errors import OutputError, TrainingDiverged, UserError, check_device
from .evaluate import evaluate, evaluate_checkpoint
from .metrics import EpochSums
from .progress import Progress
from .run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RunFolder,
    load_run_checkpoint,
)
from .step import StepResult, train_step
from .trainer import RunResult, Trainer

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "DATASETS",
    "DATA_DEFAULTS",
    "DistributedTrainer",
    "METRICS_FILE",
    "NUMBER_OPTIONS",
    "NUM_CLASSES",
    "OutputError",
    "PLOT_FILE",
    "SCHEDULES",
    "Data",
    "EpochSums",
    "Progress",
    "RepeatChannels",
    "RunFolder",
    "RunResult",
    "StepResult",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "UserError",
    "build_model",
    "build_optimizer",
    "check_device",
    "distributed_train_step",
    "evaluate",
    "evaluate_checkpoint",
    "input_channels",
    "load_data",
    "load_model_state",
    "load_run_checkpoint",
    "make_loaders",
    "make_transforms",
    "resolve_resume_config",
    "train_step",
]
