// Max and average pooling over (P, H, W) planes, forward and backward.
//
// Twin of max_pool_* / avg_pool_* in minires/backends/numpy_backend.py. A
// plane is one (n, c) image channel; P = N*C planes are stored one after the
// other, each H*W values, C-contiguous. Output planes are (OH, OW), which the
// host computes (numpy_backend.pool_out_size: OH = (H + 2*ph - kh) / sh + 1,
// or one more with ceil_mode, whose last window may run past the padding;
// every bounds check below treats positions past the padding like padding).
// See kernels/im2col.cu for a reading guide (kernels, grids, grid-stride
// loops, templates).
//
// Forward kernels: one thread per output pixel, looping over its window.
// Backward kernels: one thread per *input* pixel, looping over the windows
// that contain it and gathering their gradients (no atomics, deterministic;
// kernels/im2col.cu explains the choice at col2im).

// -infinity, the value of max-pool's padding (it never wins a window that
// holds a real value). Spelled through the bit pattern of +infinity, since
// NVRTC has no <math.h> and so no INFINITY macro: 0x7f800000 is float +inf,
// 0x7ff0... is double +inf.
template <typename T>
__device__ T minus_infinity();

template <>
__device__ float minus_infinity<float>()
{
    return -__int_as_float(0x7f800000);
}

template <>
__device__ double minus_infinity<double>()
{
    return -__longlong_as_double(0x7ff0000000000000LL);
}

// For the backward gathers: does input position pos (a row or a column,
// unpadded coordinates) sit at offset k of some window, and which one?
// Window o covers padded positions o*s .. o*s + (size-1), so pos is at offset
// k of window o when pos + pad = o*s + k: (pos + pad - k) must be a
// non-negative multiple of the stride s, and o = (pos + pad - k) / s must be
// an existing window (< out). Returns o, or -1 when there is no such window.
__device__ inline int pool_window(int pos, int pad, int k, int s, int out)
{
    const int o_times_s = pos + pad - k;
    if (o_times_s < 0 || o_times_s % s != 0) return -1;
    const int o = o_times_s / s;
    return o < out ? o : -1;
}

// Max pooling, forward: the maximum of each window and where it was.
// argmax holds the offset i*kw + j of the winner inside its window. The scan
// starts with offset (0, 0) and replaces the best on a *strictly* larger
// value, so on ties the first maximum (in row-major window order) wins, or
// on a NaN. Every comparison with a NaN is false, so "v > best" alone would
// drop a NaN anywhere but first in its window and hide a diverged
// activation; with "|| v != v" (true for NaN only) a window with a NaN gives
// NaN and its gradient goes to its last NaN: PyTorch's rule, and
// numpy_backend.max_pool_forward's. Padding reads as -infinity.
template <typename T>
__global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                 int* __restrict__ argmax,
                                 int P, int H, int W,
                                 int kh, int kw, int sh, int sw, int ph, int pw,
                                 int OH, int OW)
{
    const int total = P * OH * OW;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        int rest = idx;
        const int ow = rest % OW;  rest /= OW;
        const int oh = rest % OH;
        const int p = rest / OH;
        const T* plane = x + p * H * W;
        T best = T(0);
        int best_offset = 0;
        for (int i = 0; i < kh; ++i) {
            const int h = oh * sh + i - ph;
            for (int j = 0; j < kw; ++j) {
                const int w = ow * sw + j - pw;
                const bool inside = h >= 0 && h < H && w >= 0 && w < W;
                const T v = inside ? plane[h * W + w] : minus_infinity<T>();
                if ((i == 0 && j == 0) || v > best || v != v) {
                    best = v;
                    best_offset = i * kw + j;
                }
            }
        }
        y[idx] = best;
        argmax[idx] = best_offset;
    }
}

// Max pooling, backward: an input pixel receives the gradient of every
// window whose winner it was. For each offset (i, j), the window (if any)
// that holds this pixel at that offset passes its gy on when its argmax is
// i*kw + j.
template <typename T>
__global__ void max_pool_backward(const T* __restrict__ gy, const int* __restrict__ argmax,
                                  T* __restrict__ gx,
                                  int P, int H, int W,
                                  int kh, int kw, int sh, int sw, int ph, int pw,
                                  int OH, int OW)
{
    const int total = P * H * W;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        int rest = idx;
        const int w = rest % W;  rest /= W;
        const int h = rest % H;
        const int p = rest / H;
        T sum = T(0);
        for (int i = 0; i < kh; ++i) {
            const int oh = pool_window(h, ph, i, sh, OH);
            if (oh < 0) continue;
            for (int j = 0; j < kw; ++j) {
                const int ow = pool_window(w, pw, j, sw, OW);
                if (ow < 0) continue;
                const int out = (p * OH + oh) * OW + ow;
                if (argmax[out] == i * kw + j) sum += gy[out];
            }
        }
        gx[idx] = sum;
    }
}

// How many of window o's k positions along one axis count in average
// pooling's divisor (PyTorch's rule, numpy_backend._window_sizes): the window
// starts at o*s - pad; the positions inside the padded input [-pad, size + pad)
// count when count_include_pad is nonzero, else only those inside the input
// [0, size). The part of a ceil_mode window past the padding never counts.
__device__ inline int window_size(int o, int s, int pad, int k, int size, int count_include_pad)
{
    int start = o * s - pad;
    int end = start + k < size + pad ? start + k : size + pad;
    if (!count_include_pad) {
        start = start > 0 ? start : 0;
        end = end < size ? end : size;
    }
    return end - start;
}

// Average pooling, forward: the window's sum (padding adds zeros) divided by
// its divisor: rows counted times columns counted, see window_size.
template <typename T>
__global__ void avg_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                 int P, int H, int W,
                                 int kh, int kw, int sh, int sw, int ph, int pw,
                                 int OH, int OW, int count_include_pad)
{
    const int total = P * OH * OW;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        int rest = idx;
        const int ow = rest % OW;  rest /= OW;
        const int oh = rest % OH;
        const int p = rest / OH;
        const T* plane = x + p * H * W;
        T sum = T(0);
        for (int i = 0; i < kh; ++i) {
            const int h = oh * sh + i - ph;
            if (h < 0 || h >= H) continue;  // padding row: adds 0
            for (int j = 0; j < kw; ++j) {
                const int w = ow * sw + j - pw;
                if (w < 0 || w >= W) continue;
                sum += plane[h * W + w];
            }
        }
        const int divisor = window_size(oh, sh, ph, kh, H, count_include_pad) *
                            window_size(ow, sw, pw, kw, W, count_include_pad);
        y[idx] = sum / T(divisor);
    }
}

// Average pooling, backward: each window spreads gy / divisor evenly over its
// positions; an input pixel gathers that share from every window that
// contains it.
template <typename T>
__global__ void avg_pool_backward(const T* __restrict__ gy, T* __restrict__ gx,
                                  int P, int H, int W,
                                  int kh, int kw, int sh, int sw, int ph, int pw,
                                  int OH, int OW, int count_include_pad)
{
    const int total = P * H * W;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        int rest = idx;
        const int w = rest % W;  rest /= W;
        const int h = rest % H;
        const int p = rest / H;
        T sum = T(0);
        for (int i = 0; i < kh; ++i) {
            const int oh = pool_window(h, ph, i, sh, OH);
            if (oh < 0) continue;
            for (int j = 0; j < kw; ++j) {
                const int ow = pool_window(w, pw, j, sw, OW);
                if (ow < 0) continue;
                const int divisor = window_size(oh, sh, ph, kh, H, count_include_pad) *
                                    window_size(ow, sw, pw, kw, W, count_include_pad);
                sum += gy[(p * OH + oh) * OW + ow] / T(divisor);
            }
        }
        gx[idx] = sum;
    }
}
