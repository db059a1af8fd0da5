# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. Data parallelism: N processes, one model, and the BatchNorm catch
#
# **Claim.** The gradient of a mean loss over a global batch is the average
# of the gradients of the mean losses over its equal shards. So N processes,
# each holding a copy of the weights and 1/N of the batch, can train *one*
# model: each computes its shard's gradient, an **all-reduce** averages the
# gradients, and every copy takes the same step. The argument fails in
# exactly one layer of a ResNet: BatchNorm, which makes every sample's
# output depend on the statistics of *its shard*. `nn.SyncBatchNorm`
# all-reduces those statistics and restores the equality, to the last bits
# of float64.
#
# This notebook shows both claims with numbers, then measures what the
# all-reduce costs and what two processes gain on this machine. The
# processes are real: MPI (MPICH, through mpi4py) started with `mpiexec`,
# installed by `pip install "minires[dist]"`. Where MPI cannot start, the
# cells that need it say why and skip.
#
# *Runtime* (measured on a 2-core CPU): about 11 s in full mode and 10 s in
# quick mode with little else running, up to a minute when other work
# shares the cores. Its measurements of speed are only as steady as the
# machine they run on (section 8.4).

# %%
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

import minires as mr
import minires.functional as F
from minires.distributed.launch import find_mpiexec

QUICK = os.environ.get("MINIRES_QUICK") == "1"
REPO = Path(mr.__file__).resolve().parent.parent
MPIEXEC = find_mpiexec()


def mpi_run(n, args, threads=1):
    """Run `python ARGS` on n processes (threads BLAS threads each); rank 0's stdout."""
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": str(threads)}
    command = ([MPIEXEC, "-n", str(n)] if n > 1 else []) + [sys.executable, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    return done.stdout


try:
    import mpi4py  # noqa: F401

    MPI = MPIEXEC is not None and "ok" in mpi_run(
        2, ["-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier(); print('ok')"]
    )
    WHY_NOT = "" if MPI else "no mpiexec"
except (ImportError, RuntimeError) as e:
    MPI, WHY_NOT = False, str(e)[-300:]
print("MPI can start 2 processes:", MPI, WHY_NOT)

# %% [markdown]
# ## 8.1 The averaging argument, measured
#
# For a loss that is a mean over samples, $L = \frac{1}{2B}\sum_{i=1}^{2B}
# \ell_i = \frac12\left(\frac1B\sum_{i \le B}\ell_i + \frac1B\sum_{i > B}
# \ell_i\right)$, and a gradient is linear: $\nabla L$ is the mean of the two
# halves' gradients. That needs each $\ell_i$ to depend on sample $i$ alone.
# Below: a float64 ResNet-8, its gradient on 8 images against the average of
# its gradients on the two halves of 4, with BatchNorm using fixed (running)
# statistics, and with BatchNorm in training mode.


# %%
def grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(mr.Tensor(x)), y).backward()
    return [p.grad.copy() for p in model.parameters()]


def worst(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


rng = np.random.default_rng(0)
x = rng.normal(size=(8, 3, 8, 8))
y = rng.integers(0, 10, size=8)
mr.manual_seed(0)
net = mr.models.cifar_resnet(8).to(np.float64)
gaps = {}
for mode in ("fixed statistics", "batch statistics"):
    for m in net.modules():  # only the BatchNorm layers change mode
        if isinstance(m, mr.nn.BatchNorm2d):
            m.train(mode == "batch statistics")
    whole = grads(net, x, y)
    halves = [grads(net, x[:4], y[:4]), grads(net, x[4:], y[4:])]
    average = [(a + b) / 2 for a, b in zip(*halves)]
    gaps[mode] = worst(whole, average)
    print(f"BatchNorm with {mode}: |grad(2B) - mean of grad(B)| = {gaps[mode]:.2e}")

# %%
assert gaps["fixed statistics"] < 1e-13  # the average IS the gradient
assert gaps["batch statistics"] > 1e-4  # BatchNorm couples each half's samples

# %% [markdown]
# ## 8.2 The BatchNorm catch
#
# In training, BatchNorm normalises each channel with the mean and variance
# of the batch it is given. On two processes, each sees its own half. The
# means of the halves average to the mean of the whole (equal halves), but
# the variances do not: the variance of the whole is the mean of the halves'
# variances **plus** the variance of their means,
# $\sigma^2 = \overline{\sigma_r^2} + \overline{(\mu_r - \mu)^2}$.
# The halves therefore normalise with statistics that are both noisier and
# systematically smaller in variance.


# %%
def channel_values(batch):
    return batch.transpose(1, 0, 2, 3).reshape(batch.shape[1], -1)  # (C, all values)


acts = channel_values(x)
halves = [channel_values(x[:4]), channel_values(x[4:])]
mu_r = np.stack([h.mean(axis=1) for h in halves])
var_r = np.stack([h.var(axis=1) for h in halves])
print(
    "channel means of the halves:", mu_r.round(3).tolist(), "of the whole:", acts.mean(1).round(3)
)
print("variance of the whole:      ", acts.var(1).round(4))
print("mean of the halves' var.:   ", var_r.mean(0).round(4))
print("+ variance of their means:  ", (var_r.mean(0) + mu_r.var(0)).round(4))
assert np.allclose(acts.var(1), var_r.mean(0) + mu_r.var(0))

# %% [markdown]
# `SyncBatchNorm` all-reduces what the statistics are made of: the per-
# channel sum and count (then the mean is global), then the sum of squared
# deviations from that mean; in backward, the sums of `gy` and `gy * xhat`
# (the paths through the mean and the variance). Below, each of two MPI
# processes trains a float64 ResNet-8 for a few steps on its half of every
# batch, with SyncBatchNorm and with plain BatchNorm; one process trains on
# the whole batches. The script each rank runs:

# %%
STEPS = 4 if QUICK else 10
RANK_SCRIPT = textwrap.dedent(
    f"""
    import json, sys
    import numpy as np
    import minires as mr, minires.functional as F
    from minires import distributed as dist

    mr.set_num_threads(1)
    comm = dist.init_process_group()      # MPI under mpiexec, else one process
    W, r = comm.world_size, comm.rank
    losses = {{}}
    for sync in (True, False):
        mr.manual_seed(0)
        model = mr.models.cifar_resnet(8).to(np.float64)
        if sync and W > 1:
            mr.nn.convert_sync_batchnorm(model)
        buckets = dist.GradientBuckets(model.parameters(), comm)
        opt = mr.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        curve = []
        for step in range({STEPS}):
            g = np.random.default_rng(step)   # the same global batch on every rank
            x, y = g.normal(size=(16, 3, 8, 8)), g.integers(0, 10, size=16)
            mine = slice(r * 16 // W, (r + 1) * 16 // W)
            loss = F.cross_entropy(model(mr.Tensor(x[mine])), y[mine])
            opt.zero_grad()
            loss.backward()
            buckets.all_reduce_gradients()     # the mean of the shards' gradients
            opt.step()
            curve.append(float(comm.all_reduce(np.array([loss.item() / W]))[0]))
        losses["sync" if sync else "plain"] = curve
        losses["w_" + ("sync" if sync else "plain")] = float(model.fc.weight.data.sum())
    if r == 0:
        print(json.dumps(losses))
    """
)
print(RANK_SCRIPT)

# %%
if MPI:
    script = Path(tempfile.mkdtemp()) / "ranks.py"
    script.write_text(RANK_SCRIPT)
    one = json.loads(mpi_run(1, [str(script)]))
    two = json.loads(mpi_run(2, [str(script)]))
    print("step   1 process, 16 images   2 x 8, SyncBatchNorm   2 x 8, plain BatchNorm")
    for i in range(STEPS):
        print(
            f"{i + 1:>4}   {one['sync'][i]:.12f}         {two['sync'][i]:.12f}"
            f"         {two['plain'][i]:.12f}"
        )
    sync_gap = max(abs(a - b) for a, b in zip(one["sync"], two["sync"]))
    plain_gap = max(abs(a - b) for a, b in zip(one["sync"], two["plain"]))
    print(f"largest loss difference from one process: sync {sync_gap:.1e}, plain {plain_gap:.1e}")
else:
    print("skipped: MPI cannot start here:", WHY_NOT)

# %%
if MPI:
    assert sync_gap < 1e-10  # the same training run, up to float64 rounding
    assert plain_gap > 1e-4  # a different function: BatchNorm on half-batches
    assert abs(one["w_sync"] - two["w_sync"]) < 1e-10

# %% [markdown]
# Two things the numbers say, and one they do not. With SyncBatchNorm the
# two processes *are* the one-process run (tests/test_distributed_mpi.py
# proves it weight by weight, to 1e-10). With plain BatchNorm they train a
# different model, "BatchNorm with ghost batches of B", and
# tests/test_distributed_mpi.py shows that this is *exactly* the difference:
# the 2-process step equals one process that normalises each half with its
# own statistics. What the numbers do not say is that per-shard statistics are
# worse: with shards of 8 or more images they are a known regulariser, and on
# short runs on the digits a `--no-sync-bn` run sometimes tests better. What
# they cost is the equality: without it, the result depends on the number of
# processes. `minires train --nproc N` uses SyncBatchNorm unless told
# `--no-sync-bn`.
#
# ## 8.3 What an all-reduce costs
#
# Every step sends every gradient: 4 bytes per parameter in float32, in a
# few buckets of up to 25 MB (as PyTorch), plus SyncBatchNorm's small
# all-reduces (three per BatchNorm layer). The gradient bytes per step:

# %%
for name in ("resnet20", "resnet50"):
    n = mr.models.count_parameters(mr.models.get_model(name))
    print(f"{name}: {n:>10,} parameters -> {4 * n / 2**20:7.2f} MiB of gradients per step")

# %%
if MPI:
    sizes = {"resnet20": 1.03} if QUICK else {"resnet20": 1.03, "resnet50": 97.5}
    module = ["-m", "minires.distributed.measure"]
    for name, mb in sizes.items():
        r = json.loads(mpi_run(2, [*module, "--allreduce-mb", str(mb)]))
        print(
            f"all-reduce of {name}'s gradients ({r['allreduce_mb']:.2f} MiB) on 2 processes: "
            f"{1e3 * r['allreduce_s']:.2f} ms"
        )

# %% [markdown]
# ## 8.4 Scaling on this machine, stated honestly
#
# Two processes of one thread each against one process of two threads, on
# the same global batch of 64 (ResNet-20, 32x32 images, float32). On a
# two-core machine the most two processes can give is what the cores can do
# anyway: minires's one-process path already keeps both cores busy, so the
# gain, if any, comes from what threads parallelise badly (Python between
# the ops) and the loss from the all-reduces and SyncBatchNorm's
# synchronisations. Data parallelism pays across machines and GPUs, not
# inside one small CPU. (docs/benchmarks.md has the figures of an idle run.)

# %%
if MPI:
    steps = ["--steps", "2" if QUICK else "10", "--warmup", "1" if QUICK else "2"]
    module = ["-m", "minires.distributed.measure", "--model", "resnet20", "--batch", "64"]
    one = json.loads(mpi_run(1, [*module, *steps], threads=2))
    two = json.loads(mpi_run(2, [*module, *steps], threads=1))
    for r in (one, two):
        print(
            f"{r['nproc']} process(es) x {r['threads_per_process']} thread(s): "
            f"{r['img_per_s']:6.1f} img/s, gradient all-reduce {1e3 * r['grad_allreduce_s']:.1f}"
            f" ms/step ({r['grad_allreduce_bytes'] / 2**20:.2f} MiB)"
        )
    assert two["grad_allreduce_bytes"] == one["grad_allreduce_bytes"]  # every gradient, once
    print(f"speed-up of 2 processes: {two['img_per_s'] / one['img_per_s']:.2f}x")

# %% [markdown]
# ## What to remember
#
# * Data parallelism is an identity, not an approximation: the mean of the
#   shards' gradients is the gradient of the batch, whenever samples do not
#   interact.
# * BatchNorm makes samples interact. SyncBatchNorm all-reduces its sums so
#   that N processes compute what one process computes; plain BatchNorm on
#   shards is a different (ghost-batch) model.
# * The price is one all-reduce of every gradient per step (1 MiB for
#   ResNet-20, 98 MiB for ResNet-50) and three small ones per BatchNorm.
