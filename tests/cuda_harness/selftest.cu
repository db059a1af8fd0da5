// Kernels that test the CPU harness itself (cuda_cpu.h), not minires.
// Templated like minires's kernels so the same glue generator handles them.

// Every thread records who it is: out[global id] = blockIdx.x * 1000 +
// threadIdx.x, and thread 0 of block 0 also writes blockDim.x, gridDim.x past
// the end of the ids.
template <typename T>
__global__ void harness_thread_ids(T* __restrict__ out)
{
    const int id = blockIdx.x * blockDim.x + threadIdx.x;
    out[id] = T(blockIdx.x * 1000 + threadIdx.x);
    if (id == 0) {
        out[blockDim.x * gridDim.x] = T(blockDim.x);
        out[blockDim.x * gridDim.x + 1] = T(gridDim.x);
    }
}

// Each block reverses its slice of blockDim.x values through shared memory:
// right only if the threads of a block share `buffer` and the barrier holds
// every thread until all have written (a thread reads another's slot). The
// loop does it `rounds` times in the same buffer, so the barrier after the
// reads matters too.
template <typename T>
__global__ void harness_block_reverse(const T* __restrict__ in, T* __restrict__ out,
                                      int rounds)
{
    __shared__ T buffer[256];
    const int t = threadIdx.x;
    const int base = blockIdx.x * blockDim.x;
    T value = in[base + t];
    for (int r = 0; r < rounds; ++r) {
        buffer[t] = value;
        __syncthreads();
        value = buffer[blockDim.x - 1 - t];
        __syncthreads();
    }
    out[base + t] = value;
}

// A bug on purpose: threads with threadIdx.x >= waiting return before the
// barrier that the others wait at. The harness must report it, not hang.
template <typename T>
__global__ void harness_divergent_sync(T* __restrict__ out, int waiting)
{
    if (static_cast<int>(threadIdx.x) >= waiting) return;
    __syncthreads();
    out[threadIdx.x] = T(1);
}
