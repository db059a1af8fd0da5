# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. The degradation problem
#
# *Runtime: full mode 15.6 min (936 s; 922 s and 934 s on two earlier runs
# with one other job on the machine, 25 min when it was busier), quick mode
# 115 s (the test suite's run, kernel start included), measured on a 2-core
# CPU. The outputs stored with this notebook are from the 936 s full run.*
#
# **Claim** (He et al. 2016, §4.2 and Figure 6). Train plain networks of
# growing depth the same way, with the same budget: the deeper one reaches a
# **higher training error**. That is not overfitting (it is the *training*
# error that is worse) and not a vanishing signal (the nets have BatchNorm);
# the deeper plain net is harder to optimise, although it could represent
# the shallower one exactly (by making its extra layers identities). Give the
# same nets identity shortcuts and depth stops hurting: the deeper residual
# net trains as well as the shallower one (in the paper, better).
#
# We reproduce both halves of Figure 6 with minires's CIFAR nets
# (`cifar_resnet(depth, residual=...)`: the same blocks with and without
# shortcuts) at the paper's depths 20, 32, 44 and 56, trained live with
# minires's SGD: every net at its best learning rate from a small sweep,
# three seeds each, training and test error curves, and error against depth.
#
# **What is scaled down, and why.** The paper trains for 64,000 steps of 128
# CIFAR images (32×32) on a GPU. This notebook has under twenty minutes of a
# 2-core CPU for 48 training runs. The nets keep the paper's widths (16, 32
# and 64 channels: minires's `cifar_resnet` has no width option, and at these
# sizes a narrower layer would not be proportionally faster, since much of a
# step is per-layer overhead) and the **images shrink to 8×8**: a step on
# 8×8 images costs about a tenth of a step on 32×32 ones, and the three
# stages then work on 8×8, 4×4 and 2×2 maps. Each run is 400 steps of 32
# images, about 0.2% of the images the paper's nets see: we show the
# *beginning* of Figure 6, where the gaps between plain nets are largest.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

import minires as mr
from minires.data import DataLoader, channel_stats, make_small_procedural, normalize
from minires.train import train_step

QUICK = os.environ.get("MINIRES_QUICK") == "1"
START = time.perf_counter()
# On 8x8 images every convolution is tiny, and waking a second thread costs
# more than it saves: one thread trains these nets about 30% faster (measured
# on 2 cores: resnet-56, 69 ms a step against 97 ms).
mr.set_num_threads(1)

DEPTHS = (20, 56) if QUICK else (20, 32, 44, 56)
SEEDS = (0, 1) if QUICK else (0, 1, 2)
LRS = (0.03, 0.01)  # the learning rates of the sweep (§6.3)
STEPS = 120 if QUICK else 400
BATCH, WARMUP, WEIGHT_DECAY = 32, 30, 1e-4
N_TRAIN, N_TEST, SIZE = 2000, 1000, 8
N_CHECKS = 5  # test error measured this many times during training (on N_TEST // 2 images)
LATE = STEPS // 5  # "final training error": mean mini-batch error over the last fifth

# %% [markdown]
# ## 6.1 The data: small procedural colour images
#
# `minires.data.make_small_procedural` draws colour images of any size from a
# recipe (see its docstring). Each image holds a patch of stripes under a
# soft round window, on a random background, with a blob of random colour
# and pixel noise. The **class** is the stripes' orientation (one of five,
# 36° apart) together with their colour (warm or cool): ten classes. The
# orientation is jittered, so neighbouring classes overlap a little and some
# images are truly ambiguous; stripe period, phase, position, window size and
# contrast, background and blob are random. We take 2,000 training images
# (`seed=0`) and 1,000 test images (`seed=1`), normalised per channel.
#
# **Why this data shows the effect.** It is harder than the 8×8 digits, on
# which every residual net reached 0% training error, so that the residual
# half of the figure had nothing to show: here the ambiguous images keep
# every net's test error near 6%, and no residual net reaches zero training
# error in the budget. It is not too hard either: a 20-layer plain net
# learns it (about 6% error after 400 steps), so when a deeper plain net
# fails, the task is not to blame. And the class needs two features of very
# different difficulty, a coarse one (the stripes' colour) and a fine one
# (their orientation, two or three stripes across 8 pixels), so that §6.6 can
# ask *what* the deep plain nets failed to learn. (The 32×32 recipe of
# `make_procedural`, drawn at 8 pixels, would not do: its stripes shrink to
# a period of 1.6 to 3.2 pixels under a window one or two pixels wide, and
# even the residual nets learn little of them in this budget.)

# %%
x_train, y_train = make_small_procedural(N_TRAIN, seed=0, size=SIZE)
x_test, y_test = make_small_procedural(N_TEST, seed=1, size=SIZE)
shown = [np.flatnonzero(y_train == c)[:3] for c in range(10)]

fig, axes = plt.subplots(3, 10, figsize=(10, 3.4))
for c, idx in enumerate(shown):
    for row, i in enumerate(idx):
        axes[row, c].imshow(x_train[i].transpose(1, 2, 0), interpolation="nearest")
        axes[row, c].set_xticks([])
        axes[row, c].set_yticks([])
    axes[0, c].set_title(f"{36 * (c % 5)}°, {'cool' if c >= 5 else 'warm'}", fontsize=8)
fig.suptitle("make_small_procedural: three training images of each class (8×8 pixels)")
plt.tight_layout()
plt.show()

mean, std = channel_stats(x_train)
x_train, x_test = normalize(x_train, mean, std), normalize(x_test, mean, std)
print("train", x_train.shape, "test", x_test.shape, "images per class", np.bincount(y_train))
for depth in DEPTHS:
    n = mr.models.count_parameters(mr.models.cifar_resnet(depth))
    print(
        f"depth {depth}: {(depth - 2) // 6} blocks per stage, {n:,} parameters (plain and residual)"
    )

# %% [markdown]
# ## 6.2 One training recipe for every net
#
# SGD with momentum 0.9 and weight decay $10^{-4}$; the learning rate rises
# linearly over the first 30 steps (He et al. warm up their deepest net too)
# and then follows a cosine down to zero at step 400; mini-batches of 32. A
# run with seed $s$ starts from the same random generator (the same initial
# weights for nets of the same depth) and sees the same batches in the same
# order, plain or residual. We record the loss and error of every training
# mini-batch (the paper's thin curves), and the test error of the net in
# evaluation mode five times during training (its bold curves).


# %%
def predict(model, x):
    """Class predictions of the whole set, BatchNorm in evaluation mode."""
    model.eval()
    with mr.no_grad():
        logits = model(mr.tensor(x))
    model.train()
    return logits.data.argmax(axis=1)


def train(depth, residual, lr, seed):
    mr.manual_seed(seed)
    model = mr.models.cifar_resnet(depth, residual=residual)
    opt = mr.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    cosine = mr.optim.CosineAnnealingLR(opt, T_max=STEPS)
    schedule = mr.optim.LinearWarmup(cosine, warmup_epochs=WARMUP)  # both count steps
    loader = DataLoader(x_train, y_train, batch_size=BATCH, shuffle=True, drop_last=True, seed=seed)
    checks = np.linspace(STEPS // N_CHECKS, STEPS, N_CHECKS).astype(int)
    run = {"loss": [], "error": [], "check_steps": checks, "test_curve": []}
    while len(run["loss"]) < STEPS:
        for xb, yb in loader:
            result = train_step(model, opt, xb, yb)
            schedule.step()
            run["loss"].append(result.loss)
            run["error"].append(1 - result.correct / len(yb))
            step = len(run["loss"])
            if step in checks and step < STEPS:
                half = slice(0, N_TEST // 2)
                run["test_curve"].append(np.mean(predict(model, x_test[half]) != y_test[half]))
            if step == STEPS:
                break
    run["loss"], run["error"] = np.array(run["loss"]), np.array(run["error"])
    run["train_error"] = run["error"][-LATE:].mean()  # the last fifth of the mini-batches
    run["train_loss"] = run["loss"][-LATE:].mean()
    run["test_pred"] = predict(model, x_test)
    run["test_error"] = np.mean(run["test_pred"] != y_test)
    run["test_curve"].append(run["test_error"])  # the last check is on the whole test set
    return run


def name(depth, residual):
    return f"{'resnet' if residual else 'plain'}-{depth}"


runs = {}  # (depth, residual, lr, seed) -> run


def run_once(depth, residual, lr, seed):
    start = time.perf_counter()
    r = runs[depth, residual, lr, seed] = train(depth, residual, lr, seed)
    seconds = time.perf_counter() - start
    errors = (
        f"training error {100 * r['train_error']:5.1f}%, test error {100 * r['test_error']:5.1f}%"
    )
    print(f"{name(depth, residual):10s} lr {lr:<5} seed {seed}: {seconds:5.1f} s, {errors}")


# %% [markdown]
# ## 6.3 Each net at its best learning rate
#
# A deep plain net is fragile: a rate that suits a shallow net can keep it
# from training at all. So that the comparison is not an artefact of one
# rate, every net trains at both rates of a small sweep, with every seed, and
# keeps the rate with the lowest final training error (the mini-batch error
# over the last fifth of training), **averaged over the seeds**: a rate that
# works for one seed and throws another off course does not win. The two
# rates bracket the paper's: He et al. use 0.1 for batches of 128, which the
# linear scaling rule (Goyal et al. 2017) turns into 0.025 for our batches of
# 32; we try 0.03 and a third of it.

# %%
NETS = [(depth, residual) for residual in (False, True) for depth in DEPTHS]
for depth, residual in NETS:
    for lr in LRS:
        for seed in SEEDS:
            run_once(depth, residual, lr, seed)


def sweep_errors(net, lr):
    """Final training errors of the net at this rate, one per seed."""
    return np.array([runs[(*net, lr, seed)]["train_error"] for seed in SEEDS])


best_lr = {net: min(LRS, key=lambda lr: (sweep_errors(net, lr).mean(), lr)) for net in NETS}
print(f"\nfinal training error, mean over {len(SEEDS)} seeds")
print(f"{'net':10s}" + "".join(f"{'lr ' + str(lr):>10s}" for lr in LRS) + "   best")
for net in NETS:
    row = "".join(f"{100 * sweep_errors(net, lr).mean():9.1f}%" for lr in LRS)
    print(f"{name(*net):10s}{row}   {best_lr[net]}")

colours = dict(zip((20, 32, 44, 56), ("tab:orange", "tab:green", "tab:blue", "tab:red")))
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for col, residual in enumerate((False, True)):
    for depth in DEPTHS:
        e = 100 * np.array([sweep_errors((depth, residual), lr) for lr in LRS])
        bars = [e.mean(1) - e.min(1), e.max(1) - e.mean(1)]
        axes[col].errorbar(LRS, e.mean(1), yerr=bars, fmt="o-", capsize=3, color=colours[depth],
                           label=name(depth, residual))  # fmt: skip
    axes[col].set_xscale("log")
    axes[col].set_xticks(LRS, [str(lr) for lr in LRS])
    axes[col].set_xticks([], minor=True)
    axes[col].set_xlabel("learning rate")
    axes[col].set_title(
        f"{'residual' if residual else 'plain'} nets (bars: lowest to highest seed)"
    )
    axes[col].legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
axes[0].set_ylabel("final training error (%)")
axes[0].set_ylim(0, 100)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6.4 Training and test curves: Figure 6
#
# Each net at its best rate. Thin lines: training error of the mini-batches,
# averaged over a sliding window of 20 steps; bold lines with dots: test
# error. Lines are the mean over the seeds, the shaded bands span the lowest
# to the highest seed.


# %% tags=["figure-06-figure-6"]
def seed_runs(depth, residual):
    return [runs[depth, residual, best_lr[depth, residual], seed] for seed in SEEDS]


def smooth(v, k=20):
    return np.convolve(v, np.ones(k) / k, mode="valid")


def draw_curves(ax, residual, first_step=0):
    """Figure 6's curves of one family: thin training error, bold test error, seed bands."""
    top = 0.0
    for depth in DEPTHS:
        rs = seed_runs(depth, residual)
        train_curves = 100 * np.array([smooth(r["error"]) for r in rs])
        steps = np.arange(train_curves.shape[1]) + 20
        test_curves = 100 * np.array([r["test_curve"] for r in rs])
        checks = rs[0]["check_steps"]
        keep, keep_checks = steps >= first_step, checks >= first_step
        train_curves, steps = train_curves[:, keep], steps[keep]
        test_curves, checks = test_curves[:, keep_checks], checks[keep_checks]
        c = colours[depth]
        ax.plot(steps, train_curves.mean(0), color=c, lw=0.9)
        ax.fill_between(steps, train_curves.min(0), train_curves.max(0), color=c, alpha=0.15, lw=0)
        ax.plot(checks, test_curves.mean(0), "o-", color=c, lw=2.5)
        ax.fill_between(checks, test_curves.min(0), test_curves.max(0), color=c, alpha=0.25, lw=0)
        top = max(top, train_curves.max(), test_curves.max())
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    return top


def legend_below(ax, residual):
    """The legend under the panel, where it hides no curve."""
    handles = [Line2D([], [], color=colours[depth], lw=2) for depth in DEPTHS]
    labels = [f"{name(depth, residual)} (lr {best_lr[depth, residual]})" for depth in DEPTHS]
    handles += [Line2D([], [], color="k", lw=0.9), Line2D([], [], color="k", lw=2.5, marker="o")]
    labels += ["training error (mini-batches)", "test error"]
    ax.legend(handles, labels, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))


fig, axes = plt.subplots(1, 3, figsize=(16, 5.4), gridspec_kw={"width_ratios": [1, 1, 0.75]})
for col, residual in enumerate((False, True)):
    draw_curves(axes[col], residual)
    axes[col].set_title(f"{'residual' if residual else 'plain'} nets (mean of {len(SEEDS)} seeds)")
    axes[col].set_ylim(0, 100)  # every curve on the chart: chance is 90%
    legend_below(axes[col], residual)
# The residual curves end close together near the bottom: the third panel
# zooms in on the last two thirds of training, its y-axis fitted to every curve.
top = draw_curves(axes[2], True, first_step=STEPS // 3)
axes[2].set_ylim(0, 1.1 * top)
axes[2].set_title(f"residual nets, from step {STEPS // 3} (zoomed)")
axes[0].set_ylabel("error (%)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6.5 Error against depth
#
# The end of the curves, as a function of depth: training error (the
# mini-batches of the last fifth of training) and test error (the final net
# on all 1,000 test images), mean over the seeds, with bars from the lowest
# to the highest seed.

# %% tags=["figure-06-error-against-depth"]
final = {}
for depth, residual in NETS:
    rs = seed_runs(depth, residual)
    final[depth, residual] = {
        key: np.array([r[key] for r in rs]) for key in ("train_error", "test_error", "train_loss")
    }

print(
    f"{'net':10s} {'lr':>5s}  {'training error: mean (seeds)':32s} {'test error: mean (seeds)':30s}"
)
for depth, residual in NETS:
    f = final[depth, residual]
    tr, te = 100 * f["train_error"], 100 * f["test_error"]
    print(f"{name(depth, residual):10s} {best_lr[depth, residual]:5}  "
          f"{tr.mean():5.1f}% ({', '.join(f'{v:.1f}' for v in tr)})".ljust(41) +
          f"{te.mean():5.1f}% ({', '.join(f'{v:.1f}' for v in te)})")  # fmt: skip

fig, ax = plt.subplots(figsize=(7, 4.5))
for residual, colour in ((False, "tab:red"), (True, "tab:blue")):
    for key, style, what in (("train_error", "--", "training"), ("test_error", "-", "test")):
        values = 100 * np.array([final[d, residual][key] for d in DEPTHS])
        mid = values.mean(1)
        bars = [mid - values.min(1), values.max(1) - mid]
        ax.errorbar(DEPTHS, mid, yerr=bars, fmt="o" + style, color=colour, capsize=4,
                    label=f"{'residual' if residual else 'plain'}, {what} error")  # fmt: skip
ax.set_xticks(DEPTHS)
ax.set_xlabel("depth (weighted layers)")
ax.set_ylabel("error (%)")
ax.set_ylim(0, 100)
ax.grid(alpha=0.3)
ax.legend()
ax.set_title("error against depth (bars: lowest to highest seed)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6.6 What the deep plain nets did not learn
#
# The class is orientation *and* colour (§6.1). Split each net's test
# predictions: is the colour right (warm or cool), and, among those, is the
# orientation right? Chance is 50% for colour and 20% for orientation. One
# might expect the deep plain nets to learn the easy feature and miss the
# fine one.

# %%
print(f"{'net':10s} {'colour right':>13s} {'orientation right':>18s}   (test, mean over seeds)")
split = {}
for depth, residual in NETS:
    colour_ok, angle_ok = [], []
    for r in seed_runs(depth, residual):
        pred = r["test_pred"]
        same_colour = pred // 5 == y_test // 5
        colour_ok.append(same_colour.mean())
        angle_ok.append((pred % 5 == y_test % 5)[same_colour].mean())
    split[depth, residual] = 100 * np.mean(colour_ok), 100 * np.mean(angle_ok)
    print(f"{name(depth, residual):10s} {split[depth, residual][0]:12.1f}%"
          f" {split[depth, residual][1]:17.1f}%")  # fmt: skip

# %% [markdown]
# They miss both. In full mode plain-56 gets the colour right on about 53%
# of the test images, barely better than a coin, although every residual
# net, and plain-20, get it right on more than 99%; plain-32 and plain-44 sit
# in between. Its failure is not one of capacity: plain-56 holds plain-20
# inside it (its extra layers could be identities, BatchNorm can undo its
# own normalisation and the ReLUs pass non-negative inputs unchanged), and
# it has three times the parameters. It is an optimisation failure: in
# 400 steps SGD does not find even the colour. That is the degradation
# problem.

# %% [markdown]
# ## 6.7 The claim, asserted
#
# On the means over seeds of the final training error, each net at its best
# rate:
#
# 1. the deepest plain net trains worse than the shallowest, by a wide
#    margin, and (full mode) every plain net trains worse than the next
#    shallower one;
# 2. depth costs the residual nets a small fraction of what it costs the
#    plain nets, and (full mode, 400 steps) nothing beyond two percentage
#    points: the deepest residual net trains as well as the shallowest. Quick
#    mode's 120 steps are too few for resnet-56 to catch up with resnet-20
#    (deeper nets, residual or not, start slower), so there only the relative
#    form is checked;
# 3. with shortcuts the deepest net trains far better than without them;
# 4. the degradation is not an artefact of the rate: the deepest plain net
#    at *either* rate of the sweep trains worse than the shallowest at its
#    best;
# 5. the data is not too easy: no residual net reaches zero error.

# %%
P = {d: final[d, False]["train_error"].mean() for d in DEPTHS}
R = {d: final[d, True]["train_error"].mean() for d in DEPTHS}
shallow, deep = DEPTHS[0], DEPTHS[-1]
print(f"training error, plain:    {', '.join(f'{d}: {100 * P[d]:.1f}%' for d in DEPTHS)}")
print(f"training error, residual: {', '.join(f'{d}: {100 * R[d]:.1f}%' for d in DEPTHS)}")
print(f"from {shallow} to {deep} layers the training error rises by "
      f"{100 * (P[deep] - P[shallow]):.1f} points without shortcuts and by "
      f"{100 * (R[deep] - R[shallow]):.1f} with them")  # fmt: skip

# 1. Deeper plain nets train worse ...
assert P[deep] > P[shallow] + 0.2, (P[deep], P[shallow])
if not QUICK:
    assert all(P[a] < P[b] for a, b in zip(DEPTHS, DEPTHS[1:])), P
# 2. ... deeper residual nets hardly or not at all ...
assert R[deep] - R[shallow] < 0.25 * (P[deep] - P[shallow]), (R, P)
if not QUICK:
    assert R[deep] <= R[shallow] + 0.02, (R[deep], R[shallow])
# 3. ... and the shortcuts make the deep net train far better.
assert R[deep] < P[deep] - 0.2, (R[deep], P[deep])
# 4. Not an artefact of the learning rate.
best_deep_plain = min(sweep_errors((deep, False), lr).mean() for lr in LRS)
assert best_deep_plain > P[shallow] + 0.2, (best_deep_plain, P[shallow])
# 5. Harder than the digits: every residual net keeps some error, on training and test.
assert all(final[d, True]["test_error"].min() > 0.02 for d in DEPTHS)
assert all(final[d, True]["train_error"].min() > 0.002 for d in DEPTHS)
print(f"\nall {len(runs)} runs and the figures in {(time.perf_counter() - START) / 60:.1f} min")

# %% [markdown]
# ## 6.8 Reading the result honestly
#
# The numbers quoted here are those full mode prints (quick mode trains only
# depths 20 and 56, for 120 steps, with two seeds).
#
# **The budget.** 400 steps of 32 images is about 0.2% of what the paper's
# nets see. The gaps between plain nets are therefore far larger than in
# Figure 6, where plain-56 ends a few points above plain-20: deep plain nets
# are slowest at the start, and the start is all we show. What matches the
# paper is the order: at every step, each plain net is behind the shallower
# ones (6.4%, 48%, 67% and 84% final training error at depths 20 to 56).
#
# **The right half.** In Figure 6 the deeper residual nets reach a *lower*
# training error. Here the four residual nets end within a point of each
# other (2.2 to 3.0% training error, 5.7 to 6.6% test error), inside the
# seeds' spread: depth costs them nothing, but does not yet help either; at
# this budget resnet-20 already fits most of what can be fitted. Quick mode
# shows the other side of the coin: after 120 steps resnet-56 is still
# several points behind resnet-20. Deeper nets, residual or not, start
# slower; the residual ones catch up within a few hundred steps, the plain
# ones do not.
#
# **Not overfitting, not the rate, not one seed.** The plain nets' test
# error follows their training error (plain-56: 84% and 83%), so the deep
# plain nets are not overfitting; they are not fitting. Both rates of the
# sweep leave plain-56 above 80% (mean over seeds), and at its best rate
# every seed of it ends above 79%. The deeper the plain net, the more its result depends on
# the seed (plain-32 ends anywhere between 24% and 69%); the residual nets'
# seeds agree to about a point.
#
# **Exercise.** (a) Train `plain-56` for four times as many steps
# (`STEPS = 1600` and rerun `train(56, False, 0.01, 0)`): how much of the gap
# to `plain-20` closes? (b) Replace `make_small_procedural` by
# `make_procedural(n, size=8)`, the 32×32 recipe drawn at 8 pixels, and
# train resnet-20 and plain-20: how far do they get? What does that tell you
# about choosing a data set for an experiment? (c) With more time, add
# depth 110 (`cifar_resnet(110, residual=...)`).
#
# Previous: [05_residual_gradient](05_residual_gradient.ipynb) ·
# Next: [07_gpu](07_gpu.ipynb).
