"""Proved equal: two MPI processes on 2 x B images compute what one process computes on 2B.

mpi_worker.py runs on two processes (one BLAS thread each) and saves what
each rank got; these tests redo the same computations in one process on the
whole batch (distributed_cases.py) and compare, in float64:

* with SyncBatchNorm, one SGD step of a ResNet-8 gives the same weights and
  running statistics as one process on the batch of 2B, to 1e-10;
* with plain BatchNorm it does not (the difference is ~1e-2), and the
  difference is exactly what per-shard statistics predict: the weights are
  those of one process that normalises each half of the batch with that
  half's statistics, and each rank's running statistics those of its half;
* a SyncBatchNorm layer on two shards equals BatchNorm2d on their union
  (outputs, input gradients, and gamma/beta gradients once summed), and its
  gradient passes a finite-difference check taken across both processes;
* the gradients went through several buckets, not one call per parameter.
"""

from __future__ import annotations

import distributed_cases as cases
import numpy as np
import pytest
from mpi_helpers import REPO, run_mpi

import minires as mr
from minires.distributed import GradientBuckets, SingleProcess

TOL = 1e-10


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the worker once on 2 processes: {case: [rank 0's arrays, rank 1's]}."""
    out = tmp_path_factory.mktemp("mpi")
    done = run_mpi(cases.WORLD, [str(REPO / "tests" / "mpi_worker.py"), str(out)], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    names = ("sync", "plain", "ddp", "layer", "direction", "stats")
    return {
        name: [dict(np.load(out / f"{name}-rank{r}.npz")) for r in range(cases.WORLD)]
        for name in names
    }


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in keys)


def _params(state: dict[str, np.ndarray]) -> list[str]:
    return [k for k in state if "running" not in k and "num_batches" not in k]


def _buffers(state: dict[str, np.ndarray]) -> list[str]:
    return [k for k in state if "running" in k]


def test_sync_bn_step_equals_one_process_on_the_whole_batch(ranks):
    x, y = cases.global_batch()
    reference = cases.train_step(cases.make_model(False), [(x, y)])
    for state in ranks["sync"] + ranks["ddp"]:  # by hand, and through the wrapper
        assert _max_diff(state, reference, reference) < TOL  # weights and running stats


def test_every_rank_holds_the_same_weights(ranks):
    for name in ("sync", "plain", "ddp"):
        r0, r1 = ranks[name]
        assert all(np.array_equal(r0[k], r1[k]) for k in _params(r0)), name


def test_plain_bn_differs_by_what_per_shard_statistics_predict(ranks):
    x, y = cases.global_batch()
    whole = cases.train_step(cases.make_model(False), [(x, y)])
    halves = [(cases.shard(x, r), cases.shard(y, r)) for r in range(cases.WORLD)]
    per_shard = cases.train_step(cases.make_model(False), halves)
    for r, state in enumerate(ranks["plain"]):
        # Not the step on the whole batch: BatchNorm saw only half of it...
        assert _max_diff(state, whole, _params(whole)) > 1e-4
        # ...but exactly the step whose BatchNorm uses each half's own statistics,
        assert _max_diff(state, per_shard, _params(per_shard)) < TOL
        # and this rank's running statistics are those of its half alone.
        alone = cases.make_model(False)
        with mr.no_grad():
            alone(mr.Tensor(halves[r][0]))
        expected = {k: np.asarray(v) for k, v in alone.state_dict().items()}
        assert _max_diff(state, expected, _buffers(expected)) < TOL
    assert _max_diff(ranks["plain"][0], ranks["plain"][1], _buffers(whole)) > 1e-3


def test_sync_bn_layer_on_shards_equals_batchnorm_on_the_union(ranks):
    cases.check_sync_bn_layer_equals_batchnorm_on_the_union(ranks["layer"], TOL)


def test_sync_bn_gradient_matches_finite_differences_across_ranks(ranks):
    for d in ranks["direction"]:
        analytic, numeric = float(d["analytic"]), float(d["numeric"])
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(analytic)), (analytic, numeric)


def test_gradients_travel_in_a_few_buckets(ranks):
    params = list(cases.make_model(False).parameters())
    buckets = GradientBuckets(params, SingleProcess(), cases.BUCKET_BYTES)
    grad_bytes = sum(p.data.nbytes for p in params)
    assert 1 < len(buckets.buckets) < len(params) / 2
    for stats in ranks["stats"]:
        # One all-reduce per bucket (plus one tiny one: which parameters
        # have a gradient), carrying every gradient once.
        assert int(stats["calls"]) == len(buckets.buckets) + 1
        assert int(stats["bytes"]) == grad_bytes + len(params)
