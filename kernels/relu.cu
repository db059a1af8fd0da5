// ReLU forward and backward, elementwise over arrays of any shape, seen as
// flat runs of n values. Elementwise, so the layout does not matter as long
// as all arrays share it: cuda_backend._elementwise hands over channel-major
// activations (NCHW views of memory stored (C, N, H, W), what conv2d and
// batch_norm return) as their own memory, and the output keeps that layout.
//
// Twin of relu_forward / relu_backward in minires/backends/numpy_backend.py.
// See kernels/im2col.cu for a reading guide (kernels, grids, grid-stride
// loops, templates).

// y = max(x, 0), one thread per element. Written as "x < 0 ? 0 : x" so that
// a NaN passes through (NaN < 0 is false), as np.maximum lets it through: a
// diverging network should show NaN, not silently turn it into 0.
template <typename T>
__global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, int n)
{
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        y[idx] = x[idx] < T(0) ? T(0) : x[idx];
    }
}

// gx = gy * (y > 0), one thread per element. y > 0 exactly where x > 0, so
// the forward output is all backward needs; at x == 0 the gradient is taken
// as 0. Written as a product with the mask, as numpy_backend.relu_backward
// computes it, rather than "y > 0 ? gy : 0": the two differ where y <= 0 and
// gy is NaN or infinite (NaN * 0 and inf * 0 are NaN), and the product lets
// a diverging gradient show as NaN there, as NumPy's does.
template <typename T>
__global__ void relu_backward(const T* __restrict__ gy, const T* __restrict__ y,
                              T* __restrict__ gx, int n)
{
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        gx[idx] = gy[idx] * T(y[idx] > T(0));
    }
}
