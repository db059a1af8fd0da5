// im2col and col2im: the data movement around a convolution's GEMM.
//
// Twin of im2col / col2im in minires/backends/numpy_backend.py; the layouts
// are the ones written in minires/backends/__init__.py:
//
//   x   (C, N, H, W)                  channel-major input, C-contiguous
//   col (C*kh*kw, N*OH*OW)            row (c, i, j), column (n, oh, ow)
//
// im2col also reads x through strides: image n of channel c starts at
// c * c_stride + n * n_stride (N*H*W and H*W for the layout above; H*W and
// C*H*W for an NCHW batch, such as the images a network is fed, which is
// then read where it is instead of being copied into the channel-major
// layout first).
//
// Reading guide for a C programmer new to CUDA
// --------------------------------------------
// * A __global__ function is a *kernel*. The host launches it on a grid of
//   gridDim.x blocks of blockDim.x threads each, and every one of those
//   threads runs the whole function. A thread knows who it is only through
//   blockIdx.x (its block) and threadIdx.x (its place in the block).
// * Grid-stride loop: thread t of the whole grid handles elements t,
//   t + stride, t + 2*stride, ... where stride is the number of threads in
//   the grid. Any grid size then covers any array size: the host can cap the
//   number of blocks and the kernel still visits every element exactly once.
// * `template <typename T>`: one source, compiled for T = float and
//   T = double. The host asks NVRTC for "im2col<float>" and
//   "im2col<double>" by name (CuPy's RawModule name_expressions).
// * This file includes nothing: NVRTC (the run-time compiler CuPy uses) has
//   no C standard library headers. Sizes are int: the host checks that every
//   flat index fits in 31 bits before it launches.

// One thread per element of col. The flat index of a col element decomposes,
// from the fastest-varying dimension outwards, as (c, i, j, n, oh, ow): col is
// the 6-D array (C, kh, kw, N, OH, OW) seen as a 2-D matrix. The element is
// the input pixel at row oh*sh + i*dh - ph, column ow*sw + j*dw - pw, or 0 when
// that falls into the zero padding around the image. (dh, dw is the dilation:
// kernel offset (i, j) sits i*dh rows and j*dw columns into its window; 1 is
// the ordinary, dense kernel.)
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ col,
                       int C, int N, int H, int W,
                       int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                       int OH, int OW, int c_stride, int n_stride)
{
    const int total = C * kh * kw * N * OH * OW;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        // Peel the coordinates off the flat index, innermost first.
        int rest = idx;
        const int ow = rest % OW;  rest /= OW;
        const int oh = rest % OH;  rest /= OH;
        const int n = rest % N;    rest /= N;
        const int j = rest % kw;   rest /= kw;
        const int i = rest % kh;
        const int c = rest / kh;
        // Where offset (i, j) of window (oh, ow) lands in the unpadded image.
        const int h = oh * sh + i * dh - ph;
        const int w = ow * sw + j * dw - pw;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        col[idx] = inside ? x[c * c_stride + n * n_stride + h * W + w] : T(0);
    }
}

// col2im is the adjoint of im2col: every col entry is added back onto the
// input pixel it was copied from.
//
// Why a gather and not a scatter. The direct way would give each col entry a
// thread that adds its value into x[...]. But up to kh*kw entries (every
// window that covers a pixel) land on the same pixel, so those threads would
// race and need atomicAdd, whose order of additions, and so the rounding of
// the sum, changes from run to run. Instead each thread *owns* one input
// pixel and reads (gathers) the col entries that map onto it. Each output is
// written by exactly one thread, no atomics, and the result is the same on
// every run. (Chainer's col2im_gpu does the same.)
//
// Which entries map onto pixel (h, w)? Offset (i, j) of window (oh, ow) reads
// padded row oh*sh + i*dh, so for a given i the pixel's padded row h + ph must
// equal oh*sh + i*dh: that window row exists when (h + ph - i*dh) is a
// non-negative multiple of sh whose quotient oh is < OH. Same for columns. The loop over
// (i, j) runs in the order of numpy_backend.col2im's slice adds, so the sum
// is accumulated in the same order.
template <typename T>
__global__ void col2im(const T* __restrict__ col, T* __restrict__ x,
                       int C, int N, int H, int W,
                       int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                       int OH, int OW)
{
    const int total = C * N * H * W;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        int rest = idx;
        const int w = rest % W;  rest /= W;
        const int h = rest % H;  rest /= H;
        const int n = rest % N;
        const int c = rest / N;
        T sum = T(0);
        for (int i = 0; i < kh; ++i) {
            const int oh_times_sh = h + ph - i * dh;
            if (oh_times_sh < 0 || oh_times_sh % sh != 0) continue;
            const int oh = oh_times_sh / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int ow_times_sw = w + pw - j * dw;
                if (ow_times_sw < 0 || ow_times_sw % sw != 0) continue;
                const int ow = ow_times_sw / sw;
                if (ow >= OW) continue;
                // col row (c, i, j), column (n, oh, ow).
                sum += col[((((c * kh + i) * kw + j) * N + n) * OH + oh) * OW + ow];
            }
        }
        x[idx] = sum;
    }
}
