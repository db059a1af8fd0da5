// Softmax cross-entropy over (N, K) logits, forward and backward.
//
// Twin of cross_entropy_forward / cross_entropy_backward in
// minires/backends/numpy_backend.py. labels are int64 (long long), one class
// index in [0, K) per row. See kernels/im2col.cu for a reading guide
// (kernels, grids, grid-stride loops, templates).

// A quiet NaN, the loss of a row whose label is out of range (NVRTC has no
// <math.h> and so no NAN macro; these are the IEEE bit patterns).
template <typename T>
__device__ T quiet_nan();

template <>
__device__ float quiet_nan<float>()
{
    return __int_as_float(0x7fc00000);
}

template <>
__device__ double quiet_nan<double>()
{
    return __longlong_as_double(0x7ff8000000000000LL);
}

// One thread per row n (a sample): it makes three passes over the row's K
// logits z. With zmax the row's maximum,
//   log softmax(z)_k = (z_k - zmax) - log(sum_k' exp(z_k' - zmax))
// Subtracting zmax first means exp never overflows, and the largest term of
// the sum is exp(0) = 1, so the log is finite (the log-sum-exp trick).
// The thread writes the row's softmax probabilities and its loss
//   row_loss[n] = -log softmax(z)_{labels[n]};
// the host takes the mean of row_loss over the N rows. A label outside
// [0, K) is never used as an index (that would read outside the row): its
// row's loss is NaN, so the mean is NaN and the error cannot go unnoticed.
// (minires.functional.cross_entropy rejects such labels before this runs.)
//
// (A block per row, with the max and the sum as block reductions as in
// kernels/batch_norm.cu, would be faster for K = 1000 classes; one thread per
// row keeps this kernel short, and the loss is a tiny part of a ResNet step.)
template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ logits,
                                      const long long* __restrict__ labels,
                                      T* __restrict__ probs, T* __restrict__ row_loss,
                                      int N, int K)
{
    const int stride = blockDim.x * gridDim.x;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += stride) {
        const T* z = logits + n * K;
        T* p = probs + n * K;

        T zmax = z[0];
        for (int k = 1; k < K; ++k) {
            if (z[k] > zmax) zmax = z[k];
        }
        T sum = T(0);
        for (int k = 0; k < K; ++k) sum += exp(z[k] - zmax);
        const T log_sum = log(sum);

        for (int k = 0; k < K; ++k) p[k] = exp((z[k] - zmax) - log_sum);
        const long long label = labels[n];
        row_loss[n] = (label >= 0 && label < K) ? -((z[label] - zmax) - log_sum)
                                                : quiet_nan<T>();
    }
}

// One thread per logit: glogits = (probs - onehot(labels)) * gloss / N.
// (An out-of-range label matches no k: its row gets probs * gloss / N.)
// gloss, the gradient of the (mean) loss, is read from device memory (a
// one-element array) so the host never waits for it.
template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ probs,
                                       const long long* __restrict__ labels,
                                       const T* __restrict__ gloss,
                                       T* __restrict__ glogits, int N, int K)
{
    const T scale = gloss[0] / T(N);
    const int total = N * K;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int n = idx / K;
        const int k = idx % K;
        T g = probs[idx];
        if (k == labels[n]) g -= T(1);
        glogits[idx] = g * scale;
    }
}
