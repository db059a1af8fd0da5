"""Use every CPU core for the shifted-GEMM convolution, without a compiled extension.

NumPy releases the GIL while it copies arrays and while BLAS multiplies them,
so Python threads can run those steps on several cores at once. The shifted
convolution (minires/shifted_conv.py) is a loop over independent chunks of
columns: each chunk is a copy (building its columns) and a small GEMM.
Splitting the chunks among threads parallelises both, where BLAS on its own
would parallelise only the GEMM, and pays a thread wake-up on every small
call. Measured on a 2-core CPU, with the BatchNorm, ReLU and copies also
shared out: a resnet20 training step ran 1.29x faster (222 -> 287 img/s,
docs/benchmarks.md).

While the threads run, BLAS itself must run single-threaded, or each thread's
GEMM would start its own BLAS threads and oversubscribe the cores. NumPy has
no API for that; the small library ``threadpoolctl`` does it for every BLAS
that NumPy may be built with. It is optional (``pip install "minires[train]"``
brings it): without it, the chunks run one after another and BLAS keeps its
own threads, which is always correct, only slower.

``set_num_threads(n)`` sets how many threads minires uses, like
``torch.set_num_threads``; 1 turns this off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_num_threads = os.cpu_count() or 1
_pool: ThreadPoolExecutor | None = None
_controller: Any = None  # threadpoolctl.ThreadpoolController, found on first use


def set_num_threads(n: int) -> None:
    """Use up to ``n`` threads for minires's own parallel loops (1: none)."""
    global _num_threads, _pool
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    if n != _num_threads and _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads


def _blas_controller() -> Any:
    """threadpoolctl's controller of NumPy's BLAS, or False when there is none.

    False when threadpoolctl is not installed, or when it finds no BLAS
    library it can limit: minires's threads would then each start BLAS's
    own threads and oversubscribe the cores.
    """
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
            found = controller.select(user_api="blas").lib_controllers
            _controller = controller if found else False
        except ImportError:
            _controller = False
    return _controller


def enabled() -> bool:
    """Whether chunked loops run in parallel: several threads, and BLAS can be limited."""
    return _num_threads > 1 and bool(_blas_controller())


_blas_limited = 0  # how many single_threaded_blas() blocks are open
_blas_lock = threading.Lock()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread inside the block; nested blocks cost nothing.

    The limit is one setting for the whole process, so only the outermost
    block sets and restores it (threadpoolctl takes ~8 us to do so, and a
    training step opens a few hundred blocks).
    """
    global _blas_limited
    with _blas_lock:
        outermost = _blas_limited == 0
        _blas_limited += 1
    try:
        if outermost:
            with _blas_controller().limit(limits=1, user_api="blas"):
                yield
        else:
            yield
    finally:
        with _blas_lock:
            _blas_limited -= 1


def blas_guard() -> contextlib.AbstractContextManager:
    """Single-threaded BLAS while minires works, when its own threads are in use.

    An OpenBLAS thread keeps spinning for a while after a multi-threaded call;
    if BLAS ran multi-threaded between two parallel loops, that spinning
    thread would take a core from minires's workers.
    """
    return single_threaded_blas() if enabled() else contextlib.nullcontext()


def run_workers(work: Callable[[int, int], Any]) -> list[Any]:
    """Call ``work(worker, n_workers)`` on every worker thread; return the results.

    Worker w handles its own share of the loop (e.g. chunks w, w + n, ...), so
    the threads never write to the same memory. Only called when enabled().
    The calling thread is worker 0: waking a pool thread takes tens of
    microseconds (80 us on the 2-core VM of docs/benchmarks.md), and a
    training step hands out a few hundred loops.
    """
    global _pool
    n = _num_threads
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="minires")
    # NumPy's floating-point error settings (np.errstate) belong to the
    # calling thread's context; the workers must follow the caller's.
    errors = np.geterr()

    def task(worker: int) -> Any:
        with np.errstate(**errors):
            return work(worker, n)

    with single_threaded_blas():
        futures = [_pool.submit(task, w) for w in range(1, n)]
        first = work(0, n)
        return [first] + [f.result() for f in futures]


def share(n: int, worker: int, n_workers: int) -> slice:
    """Worker ``worker``'s contiguous share of range(n), the shares as equal as can be."""
    return slice(n * worker // n_workers, n * (worker + 1) // n_workers)


# Below this many array elements, handing work to threads costs more than
# it saves. A memory-bound pass (a copy, BatchNorm, ReLU) gains little from a
# second core anyway, since both cores share the memory bandwidth; under ~1M
# float32 values (4 MB) the wake-up and the two threads' turns at the GIL cost
# more (measured on the 2-core VM of docs/benchmarks.md: BatchNorm of a
# (64, 8192) batch took 0.40 ms on two threads, 0.32 ms on one). A product
# does 2*K flops per output, so it pays off from far fewer outputs.
MIN_PARALLEL_WORK = 1 << 20
MIN_PARALLEL_PRODUCT = 1 << 16


def for_rows(n_rows: int, body: Callable[[slice], Any], work: int | None = None) -> None:
    """Call ``body(rows)`` on consecutive shares of range(n_rows), in parallel.

    For work that is independent row by row (a channel of a (C, ...) array):
    each worker gets one contiguous slice of rows, like a CUDA grid of
    blocks over channels. Runs ``body(slice(0, n_rows))`` in the calling
    thread when parallelism is off, there are too few rows to share, or the
    job (``work`` elements) is too small to be worth it.
    """
    n = _num_threads if enabled() else 1
    small = work is not None and work < MIN_PARALLEL_WORK
    if n == 1 or n_rows < n or small:
        body(slice(0, n_rows))
        return
    run_workers(lambda worker, n_workers: body(share(n_rows, worker, n_workers)))


def _shareable(a: Any, work: int) -> bool:
    """Whether a product on NumPy array ``a`` (``work`` outputs) should use the threads.

    CuPy arrays never do: the GPU parallelises on its own.
    """
    return isinstance(a, np.ndarray) and enabled() and work >= MIN_PARALLEL_PRODUCT


def matmul(a: Any, b: Any) -> Any:
    """a (M, K) @ b (K, N), the columns of b shared among the threads."""
    if not _shareable(a, a.shape[0] * b.shape[1]):
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    n = b.shape[1]

    def work(worker: int, n_workers: int) -> None:
        cols = share(n, worker, n_workers)
        out[:, cols] = a @ b[:, cols]

    run_workers(work)
    return out


def matmul_t(a: Any, b: Any) -> Any:
    """a (M, N) @ b.T for b (K, N): the long shared dimension N is split among
    the threads, and their partial products summed."""
    n = a.shape[1]
    if not _shareable(a, n * a.shape[0]):
        return a @ b.T

    def work(worker: int, n_workers: int) -> Any:
        cols = share(n, worker, n_workers)
        return a[:, cols] @ b[:, cols].T

    partial = run_workers(work)
    return sum(partial[1:], partial[0])
