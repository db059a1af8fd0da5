// BatchNorm over a channel-major (C, M) matrix, forward and backward, with
// the ReLU that often follows it fused in.
//
// Twin of batch_norm_forward / batch_norm_backward in
// minires/backends/numpy_backend.py. Row c of x holds the M = N*H*W values of
// channel c, contiguous, so a channel's statistics are a reduction over one
// row. The kernels, in the order cuda_backend launches them:
//
//   forward:   batch_norm_stats            per channel: mean, var, inv_std, and
//                                          the running statistics updated
//              batch_norm_apply            per element: xhat, y (relu(y) if asked)
//   backward:  batch_norm_backward_reduce  per channel: gbeta, ggamma
//              batch_norm_backward_apply   per element: gx
//
// See kernels/im2col.cu for a reading guide (kernels, grids, grid-stride
// loops, templates). New here: shared memory and __syncthreads(), and a
// reduction spread over many blocks per channel.
//
// * A __shared__ array is one array per *block*, visible to all threads of
//   that block (and much faster than global memory). Threads of different
//   blocks never see each other's shared memory.
// * __syncthreads() is a barrier: no thread of the block passes it until
//   every thread of the block has reached it. Every thread of the block must
//   reach the same __syncthreads() calls, so none may sit behind a condition
//   that differs between threads of a block.
//
// Many blocks per channel. A ResNet-20 has 16 to 64 channels: one block per
// channel would keep 16 of an H100's 132 multiprocessors busy. So each row
// is cut into K chunks of `chunk` values (cuda_backend chooses K so that
// C * K blocks fill the GPU), one block reduces one chunk and writes its
// partial result, and the *last* block to finish a channel combines that
// channel's K partials, in the fixed order k = 0 .. K-1, and writes the
// channel's result. One launch, no second pass over x:
//
//   1. thread 0 writes the chunk's partial result, then __threadfence()
//      (the write is visible to every block before what follows), then
//      atomicAdd(&done[c], 1), which returns how many chunks of channel c
//      were finished before this one;
//   2. the block that gets K - 1 is the last: it reads the K partials
//      (through a volatile pointer, so from memory, not from a cache that
//      may hold an old value), combines them, and sets done[c] back to 0,
//      ready for the next launch (kernels of one stream run one after the
//      other, so one array of counters serves every launch).
//
// Why not atomicAdd the sums themselves into one total per channel? The
// order in which atomics land changes from run to run, and so would the
// rounding of the statistics; partials combined in a fixed order give the
// same bits on every run, whichever block happens to finish last.

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

// The chunk of row c that item b = c * K + k of a launch reduces: values
// [first, last) of the row.
struct Chunk {
    int c, k, first, last;
};

__device__ __forceinline__ Chunk chunk_of(int b, int K, int M, int chunk)
{
    Chunk r;
    r.c = b / K;
    r.k = b % K;
    r.first = r.k * chunk;
    r.last = min(M, r.first + chunk);
    return r;
}

// Step 1 of the last-block pattern (see the top of the file), run by every
// thread of the block after it wrote its partial result: returns true, in
// every thread, in the block that finished channel c last.
__device__ __forceinline__ bool finished_last(int* done, int c, int K, int* flag)
{
    if (threadIdx.x == 0) {
        __threadfence();
        *flag = atomicAdd(&done[c], 1) == K - 1;
    }
    __syncthreads();
    const bool last = *flag != 0;
    __syncthreads();  // everyone has read flag before a later chunk sets it
    return last;
}

// Forward statistics. Chunk k of channel c (n values) gives its sum and the
// sum of squared deviations from its own mean, m2 (two passes over the
// chunk, as NumPy: the one-pass E[x^2] - E[x]^2 loses digits to
// cancellation). The last block combines the chunks exactly:
//
//   mean = sum_k sum_k' / M
//   var  = sum_k (m2_k + n_k * (mean_k - mean)^2) / M,   mean_k = sum_k / n_k
//
// (the within-chunk and between-chunk parts of the sum of squares), and
// writes mean, var, inv_std and, when update_running is 1, the running
// statistics: r = (1 - momentum) * r + momentum * batch_stat, with the
// *unbiased* batch variance var * M / (M - 1), as PyTorch keeps it (and
// with update_count 1, adds one to *count). With
// K = 1 the formulas reduce to the plain two-pass mean and variance.
template <typename T>
__global__ void batch_norm_stats(const T* __restrict__ x, T* partial_sum, T* partial_m2,
                                 int* done, T* __restrict__ mean, T* __restrict__ var,
                                 T* __restrict__ inv_std, T* __restrict__ running_mean,
                                 T* __restrict__ running_var, long long* count, int C,
                                 int M, int chunk, T eps, T momentum, int update_running,
                                 int update_count)
{
    __shared__ T partial[BN_MAX_THREADS];
    __shared__ int flag;
    const int K = (M + chunk - 1) / chunk;
    for (int b = blockIdx.x; b < C * K; b += gridDim.x) {
        const Chunk ch = chunk_of(b, K, M, chunk);
        const T* row = x + ch.c * M;
        const T n = T(ch.last - ch.first);

        T s = T(0);
        for (int m = ch.first + threadIdx.x; m < ch.last; m += blockDim.x) s += row[m];
        const T sum = block_sum(s, partial);
        const T mu = sum / n;
        T q = T(0);
        for (int m = ch.first + threadIdx.x; m < ch.last; m += blockDim.x) {
            const T d = row[m] - mu;
            q += d * d;
        }
        const T m2 = block_sum(q, partial);
        if (threadIdx.x == 0) {
            partial_sum[b] = sum;
            partial_m2[b] = m2;
        }
        if (!finished_last(done, ch.c, K, &flag)) continue;

        const volatile T* sums = partial_sum + ch.c * K;
        const volatile T* m2s = partial_m2 + ch.c * K;
        T t = T(0);
        for (int k = threadIdx.x; k < K; k += blockDim.x) t += sums[k];
        const T mean_c = block_sum(t, partial) / T(M);
        T w = T(0);
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const T n_k = T(min(M, (k + 1) * chunk) - k * chunk);
            const T d = sums[k] / n_k - mean_c;
            w += m2s[k] + n_k * d * d;
        }
        const T var_c = block_sum(w, partial) / T(M);
        if (threadIdx.x == 0) {
            mean[ch.c] = mean_c;
            var[ch.c] = var_c;
            // 1/sqrt rather than the rsqrt intrinsic: sqrt and division are
            // correctly rounded, so the same var gives the same bits as
            // NumPy's 1.0 / np.sqrt(var + eps).
            inv_std[ch.c] = T(1) / sqrt(var_c + eps);
            if (update_running) {
                const T unbias = T(M) / T(M > 1 ? M - 1 : 1);
                running_mean[ch.c] = (T(1) - momentum) * running_mean[ch.c] + momentum * mean_c;
                running_var[ch.c] =
                    (T(1) - momentum) * running_var[ch.c] + momentum * (var_c * unbias);
            }
            // BatchNorm2d's num_batches_tracked, counted here rather than
            // by a launch of its own: once per launch, by channel 0.
            if (update_count && ch.c == 0) *count += 1;
            done[ch.c] = 0;
        }
    }
}

// One thread per element of the (C, M) matrix: element idx is in channel
// c = idx / M.  xhat = (x - mean) * inv_std,  y = gamma * xhat + beta, and
// with relu = 1, y = max(y, 0), written "y < 0 ? 0 : y" as relu_forward in
// kernels/relu.cu so that a NaN passes through.
//
// Fusing the ReLU saves a launch and a pass over memory each way: the
// separate ReLU reads y and writes a new array, here y is written once.
template <typename T>
__global__ void batch_norm_apply(const T* __restrict__ x, const T* __restrict__ mean,
                                 const T* __restrict__ inv_std,
                                 const T* __restrict__ gamma, const T* __restrict__ beta,
                                 T* __restrict__ y, T* __restrict__ xhat, int C, int M, int relu)
{
    const int total = C * M;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = idx / M;
        const T xh = (x[idx] - mean[c]) * inv_std[c];
        xhat[idx] = xh;
        const T v = xh * gamma[c] + beta[c];
        y[idx] = (relu && v < T(0)) ? T(0) : v;
    }
}

// The gradient that reaches BatchNorm's output: gy itself, or with relu = 1
// the gradient through the fused ReLU, gy * (y > 0) with y its output, as
// relu_backward in kernels/relu.cu (a NaN gy stays NaN).
template <typename T>
__device__ __forceinline__ T bn_grad(const T* gy, const T* y, int idx, int relu)
{
    return relu ? gy[idx] * T(y[idx] > T(0)) : gy[idx];
}

// Backward, step 1: the two per-channel sums of the gradient formula,
//   gbeta[c] = sum_m g[c, m],   ggamma[c] = sum_m g[c, m] * xhat[c, m],
// g = bn_grad(...), over chunks and combined by the last block of each
// channel, like batch_norm_stats.
template <typename T>
__global__ void batch_norm_backward_reduce(const T* __restrict__ gy, const T* __restrict__ y,
                                           const T* __restrict__ xhat, T* partial_gbeta,
                                           T* partial_ggamma, int* done,
                                           T* __restrict__ gbeta, T* __restrict__ ggamma,
                                           int C, int M, int chunk, int relu)
{
    __shared__ T partial[BN_MAX_THREADS];
    __shared__ int flag;
    const int K = (M + chunk - 1) / chunk;
    for (int b = blockIdx.x; b < C * K; b += gridDim.x) {
        const Chunk ch = chunk_of(b, K, M, chunk);
        const int base = ch.c * M;
        T s = T(0);
        T sx = T(0);
        for (int m = ch.first + threadIdx.x; m < ch.last; m += blockDim.x) {
            const T g = bn_grad(gy, y, base + m, relu);
            s += g;
            sx += g * xhat[base + m];
        }
        const T sum_g = block_sum(s, partial);
        const T sum_g_xhat = block_sum(sx, partial);
        if (threadIdx.x == 0) {
            partial_gbeta[b] = sum_g;
            partial_ggamma[b] = sum_g_xhat;
        }
        if (!finished_last(done, ch.c, K, &flag)) continue;

        const volatile T* gbetas = partial_gbeta + ch.c * K;
        const volatile T* ggammas = partial_ggamma + ch.c * K;
        T t = T(0);
        T tx = T(0);
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            t += gbetas[k];
            tx += ggammas[k];
        }
        const T total_g = block_sum(t, partial);
        const T total_g_xhat = block_sum(tx, partial);
        if (threadIdx.x == 0) {
            gbeta[ch.c] = total_g;
            ggamma[ch.c] = total_g_xhat;
            done[ch.c] = 0;
        }
    }
}

// Backward, step 2: one thread per element,
//   gx = gamma * inv_std * (g - gbeta/M - xhat * ggamma/M),  g = bn_grad(...),
// the formula of numpy_backend.batch_norm_backward. The two subtracted terms
// are the gradient that flows back through the batch mean and variance.
template <typename T>
__global__ void batch_norm_backward_apply(const T* __restrict__ gy, const T* __restrict__ y,
                                          const T* __restrict__ xhat,
                                          const T* __restrict__ gamma,
                                          const T* __restrict__ inv_std,
                                          const T* __restrict__ gbeta,
                                          const T* __restrict__ ggamma,
                                          T* __restrict__ gx, int C, int M, int relu)
{
    const int total = C * M;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = idx / M;
        const T scale = gamma[c] * inv_std[c];
        const T g = bn_grad(gy, y, idx, relu);
        gx[idx] = (xhat[idx] * (-ggamma[c] / T(M)) + g - gbeta[c] / T(M)) * scale;
    }
}
