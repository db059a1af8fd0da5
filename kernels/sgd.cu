// SGD over many parameters in one launch (a "multi-tensor" update).
//
// Twin of the per-parameter rule in minires/optim.py (sgd_update), which is
// PyTorch's torch.optim.SGD:
//
//     g = -grad if maximize else grad
//     g = g + weight_decay * p                 (when weight_decay != 0)
//     b = g                                    (the first step: a new buffer)
//     b = momentum * b + (1 - dampening) * g   (later steps)
//     g = g + momentum * b  if nesterov  else  b        (when momentum != 0)
//     p = p - lr * g
//
// Why one launch: a ResNet-20 has 59 parameter tensors, and the textbook
// update costs 5 to 7 array operations per tensor, each a kernel launch of a
// few microseconds of host time doing almost no work (most tensors hold a
// few hundred values). Here one thread updates one value of one tensor, and
// the tensors are laid end to end: flat index idx of the launch belongs to
// tensor i where offsets[i] <= idx < offsets[i + 1].
//
// The tensors are found through a table of device addresses that
// cuda_backend.sgd_step copies over once per step (a few hundred bytes):
//
//     table[0 .. n)            the parameters  (written)
//     table[n .. 2n)           their gradients (read)
//     table[2n .. 3n)          their momentum buffers (read and written; unused
//                              when momentum == 0)
//     table[3n .. 4n + 1)      offsets: offsets[i] = sizes of tensors 0..i-1
//
// An address is a long long (64 bits, as a pointer on the GPU), turned back
// into a pointer with reinterpret_cast.
//
// Rounding: each product is rounded on its own (mul_rn), never fused with
// the addition after it into one FMA, as nvcc would otherwise do; so every
// value is rounded exactly as NumPy's separate array operations round it,
// and the CUDA update gives NumPy's bits.
//
// See kernels/im2col.cu for a reading guide (kernels, grids, grid-stride
// loops, templates).

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// The tensor that flat index idx belongs to: the last i with
// offsets[i] <= idx (a binary search over the n + 1 offsets). A tensor of
// size 0 has the offset of the next one, so it is never chosen.
__device__ __forceinline__ int tensor_of(const long long* offsets, int tensors, long long idx)
{
    int lo = 0;
    int hi = tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= idx) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

template <typename T>
__global__ void sgd_step(const long long* __restrict__ table, int tensors, int total, T lr,
                         T momentum, T one_minus_dampening, T weight_decay, int nesterov,
                         int maximize, int first_step)
{
    const long long* params = table;
    const long long* grads = table + tensors;
    const long long* buffers = table + 2 * tensors;
    const long long* offsets = table + 3 * tensors;
    const int stride = blockDim.x * gridDim.x;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int i = tensor_of(offsets, tensors, idx);
        const long long j = idx - offsets[i];  // the index inside tensor i
        T* p = reinterpret_cast<T*>(params[i]) + j;
        const T* grad = reinterpret_cast<const T*>(grads[i]) + j;

        T g = maximize ? -*grad : *grad;
        if (weight_decay != T(0)) g = g + mul_rn(weight_decay, *p);
        if (momentum != T(0)) {
            T* b = reinterpret_cast<T*>(buffers[i]) + j;
            const T buf = first_step ? g : mul_rn(momentum, *b) + mul_rn(one_minus_dampening, g);
            *b = buf;
            g = nesterov ? g + mul_rn(momentum, buf) : buf;
        }
        *p = *p - mul_rn(lr, g);
    }
}
