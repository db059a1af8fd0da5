"""Run by test_distributed_train.py: ``mpiexec -n 2 python tests/mpi_train_worker.py OUT STEP``.

A 2-process training run in which a stop is requested on rank 1 *only*,
after step STEP (as when a signal reaches one process): every rank must stop
after that same step, and rank 0 save it. Prints one line per rank.
"""

from __future__ import annotations

import signal
import sys

import minires as mr
from minires import distributed as dist
from minires.train import DistributedTrainer, TrainConfig

TINY = {"num_train": 64, "num_test": 40, "batch_size": 16, "epochs": 3, "nproc": 2}


def main(out: str, step: int) -> None:
    mr.set_num_threads(1)
    comm = dist.init_process_group("mpi")
    cfg = TrainConfig.for_data("digits", **TINY)

    def on_step(trainer: DistributedTrainer) -> None:
        if trainer.sched.last_epoch == step and comm.rank == 1:
            trainer.request_stop(int(signal.SIGTERM))

    trainer = DistributedTrainer(cfg, out, progress="none", log=lambda text: None)
    result = trainer.run(on_step)
    print(f"rank {comm.rank}: {result.status} {result.signal} {trainer.sched.last_epoch}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
