// Softmax cross-entropy over (N, K) logits, forward and backward.
//
// Twin of cross_entropy_forward / cross_entropy_backward in
// minires/backends/numpy_backend.py. labels are int64 (long long), one class
// index in [0, K) per row, or ignore_index; weight holds the K class weights
// when `weighted` is 1, and is not read when it is 0 (no weights given: every
// w[k] is 1). See kernels/im2col.cu for a reading guide (kernels, grids,
// grid-stride loops, templates).

// A quiet NaN, the loss (and gradient) of a row whose label is out of range
// (NVRTC has no <math.h> and so no NAN macro; these are the IEEE bit patterns).
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

// w[k], the weight of class k: 1 for every class when no weights were given.
template <typename T>
__device__ __forceinline__ T class_weight(const T* weight, int weighted, long long k)
{
    return weighted ? weight[k] : T(1);
}

// One thread per row n (a sample): it makes three passes over the row's K
// logits z. With zmax the row's maximum,
//   log p_k = log softmax(z)_k = (z_k - zmax) - log(sum_k' exp(z_k' - zmax))
// Subtracting zmax first means exp never overflows, and the largest term of
// the sum is exp(0) = 1, so the log is finite (the log-sum-exp trick).
// The thread writes the row's softmax probabilities and its loss, PyTorch's
// formula with class weights w and label smoothing e (y = labels[n]):
//   row_loss[n] = -(1 - e) * w[y] * log p_y  -  (e / K) * sum_k w[k] * log p_k
// or 0 when y == ignore_index. It also writes the row's weight in the mean,
// row_weight[n] = w[y], 0 for an ignored row, so that the host's 'mean' is
// sum(row_loss) / sum(row_weight) (minires.functional.CrossEntropyFunction).
// A label outside [0, K) that is not ignore_index is never used as an index
// (that would read outside the row): its row's loss and weight are NaN, so
// the error cannot go unnoticed.
// (minires.functional.cross_entropy rejects such labels before this runs.)
//
// (A block per row, with the max and the sum as block reductions as in
// kernels/batch_norm.cu, would be faster for K = 1000 classes; one thread per
// row keeps this kernel short, and the loss is a tiny part of a ResNet step.)
template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ logits,
                                      const long long* __restrict__ labels,
                                      const T* __restrict__ weight,
                                      T* __restrict__ probs, T* __restrict__ row_loss,
                                      T* __restrict__ row_weight,
                                      int N, int K, int weighted, long long ignore_index,
                                      T label_smoothing)
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

        T weighted_log_p = T(0);  // sum_k w[k] * log p_k, the smoothing term
        for (int k = 0; k < K; ++k) {
            const T log_p = (z[k] - zmax) - log_sum;
            p[k] = exp(log_p);
            weighted_log_p += class_weight(weight, weighted, k) * log_p;
        }
        const long long label = labels[n];
        if (label == ignore_index) {
            row_loss[n] = T(0);
            row_weight[n] = T(0);
        } else if (label >= 0 && label < K) {
            const T w_y = class_weight(weight, weighted, label);
            T loss = -(T(1) - label_smoothing) * w_y * ((z[label] - zmax) - log_sum);
            if (label_smoothing != T(0)) loss -= label_smoothing / T(K) * weighted_log_p;
            row_loss[n] = loss;
            row_weight[n] = w_y;
        } else {
            row_loss[n] = quiet_nan<T>();
            row_weight[n] = quiet_nan<T>();
        }
    }
}

// One thread per logit (n, k). Row n's loss is -sum_k q_k log p_k with the
// target weights q = (1 - e) * w[y] * onehot(y) + (e / K) * w, so
//   glogits[n, k] = (sum(q) * p_k - q_k) * grad_losses[n],
// sum(q) = (1 - e) * w[y] + (e / K) * sum_k w[k]. A row whose label is
// ignore_index gets 0; one whose label is outside [0, K) gets NaN. The
// gradients (grad_losses, one per row, from the host's reduction) and the
// sum of the weights are read from device memory, so the host never waits;
// without weights (weighted = 0) that sum is K and weight_sum is not read.
// grad_stride is 1, or 0 when one gradient serves every row (the gradient
// of a mean or a sum), which is then read without being copied N times.
template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ probs,
                                       const long long* __restrict__ labels,
                                       const T* __restrict__ weight,
                                       const T* __restrict__ weight_sum,
                                       const T* __restrict__ grad_losses,
                                       T* __restrict__ glogits,
                                       int N, int K, int weighted, long long ignore_index,
                                       T label_smoothing, int grad_stride)
{
    const int total = N * K;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int n = idx / K;
        const int k = idx % K;
        const long long label = labels[n];
        if (label == ignore_index) {
            glogits[idx] = T(0);
            continue;
        }
        if (label < 0 || label >= K) {
            glogits[idx] = quiet_nan<T>();
            continue;
        }
        const T target = (T(1) - label_smoothing) * class_weight(weight, weighted, label);  // q_y
        const T w_sum = weighted ? weight_sum[0] : T(K);
        const T q_sum = target + label_smoothing / T(K) * w_sum;
        T g = probs[idx] * q_sum;
        if (k == label) g -= target;
        if (label_smoothing != T(0)) {
            g -= label_smoothing / T(K) * class_weight(weight, weighted, k);
        }
        glogits[idx] = g * grad_losses[n * grad_stride];
    }
}
