// BatchNorm over a channel-major (C, M) matrix, forward and backward.
//
// Twin of batch_norm_forward / batch_norm_backward in
// minires/backends/numpy_backend.py. Row c of x holds the M = N*H*W values of
// channel c, contiguous, so a channel's statistics are a reduction over one
// row. The kernels, in the order cuda_backend launches them:
//
//   forward:   batch_norm_stats            per channel: mean, var, inv_std
//              batch_norm_apply            per element: xhat, y
//              batch_norm_update_running   per channel, training only
//   backward:  batch_norm_backward_reduce  per channel: gbeta, ggamma
//              batch_norm_backward_apply   per element: gx
//
// See kernels/im2col.cu for a reading guide (kernels, grids, grid-stride
// loops, templates). New here: shared memory and __syncthreads().
//
// * A __shared__ array is one array per *block*, visible to all threads of
//   that block (and much faster than global memory). Threads of different
//   blocks never see each other's shared memory.
// * __syncthreads() is a barrier: no thread of the block passes it until
//   every thread of the block has reached it. Every thread of the block must
//   reach the same __syncthreads() calls, so none may sit behind a condition
//   that differs between threads of a block.

// Threads per block of the per-channel kernels: at most this many (the size
// of their shared scratch arrays), and a power of two (the tree reduction
// halves the number of active threads at each step). cuda_backend launches
// them with REDUCE_THREADS, which it checks against this bound.
constexpr int BN_MAX_THREADS = 256;

// The sum of v over all threads of the block, returned to every thread.
//
// A tree reduction in shared memory: each thread stores its value; then the
// first half of the threads add in the values of the second half, then the
// first quarter add the second quarter, ... until partial[0] holds the total
// (log2(blockDim.x) steps, with a barrier after each so that a thread never
// reads a slot before its owner has written it). Every thread of the block
// must call it, as it contains __syncthreads().
template <typename T>
__device__ T block_sum(T v, T* partial)
{
    const int t = threadIdx.x;
    partial[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    const T total = partial[0];
    // Everyone must have read partial[0] before any thread, in a later
    // call, overwrites it.
    __syncthreads();
    return total;
}

// One block per channel (a grid-stride loop over channels when there are
// more channels than blocks). The block's threads each sum a strided share
// of the row, then block_sum adds the shares. Two passes over the row, as in
// NumPy: the mean first, then the mean of squared deviations from it (the
// one-pass formula E[x^2] - E[x]^2 loses digits to cancellation).
//
// Why not atomicAdd into one sum per channel? The order in which atomics
// land changes from run to run and so would the rounding of the statistics;
// a fixed reduction tree gives the same bits on every run.
template <typename T>
__global__ void batch_norm_stats(const T* __restrict__ x, T* __restrict__ mean,
                                 T* __restrict__ var, T* __restrict__ inv_std,
                                 int C, int M, T eps)
{
    __shared__ T partial[BN_MAX_THREADS];
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const T* row = x + c * M;

        T s = T(0);
        for (int m = threadIdx.x; m < M; m += blockDim.x) s += row[m];
        const T mu = block_sum(s, partial) / T(M);

        T q = T(0);
        for (int m = threadIdx.x; m < M; m += blockDim.x) {
            const T d = row[m] - mu;
            q += d * d;
        }
        const T v = block_sum(q, partial) / T(M);

        if (threadIdx.x == 0) {  // one thread writes the channel's results
            mean[c] = mu;
            var[c] = v;
            // 1/sqrt rather than the rsqrt intrinsic: sqrt and division are
            // correctly rounded, so the same var gives the same bits as
            // NumPy's 1.0 / np.sqrt(var + eps). (mean and var themselves may
            // differ from NumPy's in the last bits: the sums are added in
            // another order.)
            inv_std[c] = T(1) / sqrt(v + eps);
        }
    }
}

// One thread per element of the (C, M) matrix: element idx is in channel
// c = idx / M.  xhat = (x - mean) * inv_std,  y = gamma * xhat + beta.
template <typename T>
__global__ void batch_norm_apply(const T* __restrict__ x, const T* __restrict__ mean,
                                 const T* __restrict__ inv_std,
                                 const T* __restrict__ gamma, const T* __restrict__ beta,
                                 T* __restrict__ y, T* __restrict__ xhat, int C, int M)
{
    const int total = C * M;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = idx / M;
        const T xh = (x[idx] - mean[c]) * inv_std[c];
        xhat[idx] = xh;
        y[idx] = xh * gamma[c] + beta[c];
    }
}

// One thread per channel, updating the running statistics in place:
//   r = (1 - momentum) * r + momentum * batch_stat
// with the *unbiased* batch variance var * M / (M - 1), as PyTorch keeps it.
template <typename T>
__global__ void batch_norm_update_running(const T* __restrict__ mean,
                                          const T* __restrict__ var,
                                          T* __restrict__ running_mean,
                                          T* __restrict__ running_var,
                                          int C, int M, T momentum)
{
    const T unbias = T(M) / T(M > 1 ? M - 1 : 1);
    const int stride = blockDim.x * gridDim.x;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * mean[c];
        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * (var[c] * unbias);
    }
}

// Backward, step 1: the two per-channel sums of the gradient formula,
//   gbeta[c] = sum_m gy[c, m],   ggamma[c] = sum_m gy[c, m] * xhat[c, m],
// one block per channel, reduced like batch_norm_stats.
template <typename T>
__global__ void batch_norm_backward_reduce(const T* __restrict__ gy,
                                           const T* __restrict__ xhat,
                                           T* __restrict__ gbeta, T* __restrict__ ggamma,
                                           int C, int M)
{
    __shared__ T partial[BN_MAX_THREADS];
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        const T* gy_row = gy + c * M;
        const T* xhat_row = xhat + c * M;
        T s = T(0);
        T sx = T(0);
        for (int m = threadIdx.x; m < M; m += blockDim.x) {
            s += gy_row[m];
            sx += gy_row[m] * xhat_row[m];
        }
        const T sum_gy = block_sum(s, partial);
        const T sum_gy_xhat = block_sum(sx, partial);
        if (threadIdx.x == 0) {
            gbeta[c] = sum_gy;
            ggamma[c] = sum_gy_xhat;
        }
    }
}

// Backward, step 2: one thread per element,
//   gx = gamma * inv_std * (gy - gbeta/M - xhat * ggamma/M),
// the formula of numpy_backend.batch_norm_backward. The two subtracted terms
// are the gradient that flows back through the batch mean and variance.
template <typename T>
__global__ void batch_norm_backward_apply(const T* __restrict__ gy,
                                          const T* __restrict__ xhat,
                                          const T* __restrict__ gamma,
                                          const T* __restrict__ inv_std,
                                          const T* __restrict__ gbeta,
                                          const T* __restrict__ ggamma,
                                          T* __restrict__ gx, int C, int M)
{
    const int total = C * M;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = idx / M;
        const T scale = gamma[c] * inv_std[c];
        gx[idx] = (xhat[idx] * (-ggamma[c] / T(M)) + gy[idx] - gbeta[c] / T(M)) * scale;
    }
}
