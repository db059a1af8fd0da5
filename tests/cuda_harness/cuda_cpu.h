// cuda_cpu.h: run the CUDA C kernels of kernels/*.cu on the CPU, unchanged.
//
// The point is to test the *logic* of the kernels (index arithmetic, the
// grid-stride loops, the shared-memory reductions and their barriers) on
// every machine, GPU or not. The very same .cu files are compiled by a C++
// compiler with this header in front, as in
//
//     g++ -std=c++17 -pthread -x c++ -include cuda_cpu.h -c kernels/relu.cu
//
// (tests/cuda_harness/harness.py does it through a generated C++ file that
// includes this header, then the .cu file, then defines extern "C" launchers
// for ctypes), and the kernels are run through cuda_cpu::launch, which plays
// the part of the CUDA runtime. Only what minires's kernels use is provided.
//
// How a launch runs (cuda_cpu::launch below)
// ------------------------------------------
// * Blocks run one after another. Within a block, every CUDA thread is a real
//   std::thread, so the threads of a block truly run concurrently, as on a
//   GPU, and __syncthreads() is a real barrier across them (BlockBarrier).
//   Keep blocks small in tests (tens of threads): thread creation is cheap
//   but not free.
// * threadIdx and blockIdx are thread_local: each std::thread sets its own
//   before it calls the kernel. blockDim and gridDim are the same for every
//   thread of a launch, so they are plain globals, set before any thread
//   starts.
// * __shared__ is `static`. A `static` local variable exists once in the
//   whole process, so all threads of a block see the same array, which is
//   exactly what shared memory is. That is only right because blocks run one
//   at a time: two blocks running together would share one array where a GPU
//   gives each block its own. (And because launches run one at a time: the
//   Python tests never launch from two threads at once.) A template kernel
//   gets one array per instantiation (float, double), as it should.
// * __syncthreads() that not every thread of the block reaches (one behind a
//   condition that differs between threads, or a thread that returned early)
//   is undefined behaviour in CUDA and usually a hang. Here the barrier
//   notices a thread leaving the kernel while others wait (or arriving after
//   one left), releases everyone, and launch() returns an error code instead
//   of hanging, so the bug shows up as a failed test.
//
// What this does not emulate: warps (no warp-synchronous code or shuffles
// are used by the kernels, so none are provided; atomicAdd on an int and
// __threadfence are, for the last-block reductions of batch_norm.cu),
// memory spaces and their speed, and floating-point details of the GPU
// (fused multiply-adds, the accuracy of expf and friends); the tests
// compare with tolerances.
#pragma once

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

// ---- Function and variable qualifiers: plain C++ has one memory, one kind
// ---- of function.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
// __restrict__ is understood by g++ and clang++ as it is.

// ---- Built-in variables.
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

// ---- Math: CUDA device code has float and double overloads of the C math
// ---- functions in the global namespace; <cmath> has them in std::.
using std::exp;
using std::log;
using std::sqrt;
using std::max;
using std::min;

// Products rounded on their own: on a GPU, __fmul_rn / __dmul_rn are never
// fused with a following addition into an FMA. A C++ compiler for x86-64
// without -mfma never fuses either, so a plain product is the same.
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// Reinterpret the bits of an integer as a floating-point number.
inline float __int_as_float(int bits)
{
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline double __longlong_as_double(long long bits)
{
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

namespace cuda_cpu {

// A reusable barrier for the threads of one block, which also detects
// __syncthreads() calls that not all threads make.
//
// The classic "generation" barrier: the last thread to arrive starts a new
// generation and wakes the others; a waiting thread leaves when the
// generation it arrived in is over. (std::barrier does the same, but needs
// C++20.)
class BlockBarrier {
public:
    explicit BlockBarrier(int size) : size_(size) {}

    // __syncthreads()
    void arrive_and_wait()
    {
        std::unique_lock<std::mutex> lock(mutex_);
        if (broken_) return;
        if (exited_ > 0) {  // a thread has left the kernel: it will never arrive
            break_barrier();
            return;
        }
        const unsigned long generation = generation_;
        if (++arrived_ == size_) {
            arrived_ = 0;
            ++generation_;
            released_.notify_all();
            return;
        }
        released_.wait(lock, [&] { return generation_ != generation || broken_; });
    }

    // Called once by each thread when it returns from the kernel.
    void exit()
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ++exited_;
        if (arrived_ > 0) break_barrier();  // others wait for this thread in vain
    }

    bool broken() const { return broken_; }

private:
    void break_barrier()
    {
        broken_ = true;
        released_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable released_;
    const int size_;
    int arrived_ = 0;
    int exited_ = 0;
    unsigned long generation_ = 0;
    bool broken_ = false;
};

// The barrier of the block now running (blocks run one at a time).
inline BlockBarrier* current_barrier = nullptr;

enum LaunchResult { LAUNCH_OK = 0, LAUNCH_BAD_CONFIG = 1, LAUNCH_DIVERGENT_SYNC = 2 };

// kernel<<<grid, block>>>(args...), synchronously: returns when every thread
// of every block has finished. Returns a LaunchResult.
template <typename... Params, typename... Args>
int launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args)
{
    const unsigned threads = block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024) {
        return LAUNCH_BAD_CONFIG;  // as CUDA's "invalid configuration argument"
    }
    gridDim = grid;
    blockDim = block;
    int result = LAUNCH_OK;
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                BlockBarrier barrier(static_cast<int>(threads));
                current_barrier = &barrier;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned tz = 0; tz < block.z; ++tz) {
                    for (unsigned ty = 0; ty < block.y; ++ty) {
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            pool.emplace_back([=, &barrier] {
                                blockIdx = {bx, by, bz};
                                threadIdx = {tx, ty, tz};
                                kernel(args...);
                                barrier.exit();
                            });
                        }
                    }
                }
                for (std::thread& t : pool) t.join();
                current_barrier = nullptr;
                if (barrier.broken()) result = LAUNCH_DIVERGENT_SYNC;
            }
        }
    }
    return result;
}

}  // namespace cuda_cpu

// ---- Atomics and fences. Blocks run one at a time here, so a kernel's
// ---- atomics never race with another block's; they are real atomics
// ---- anyway, and the fence a real fence, so the code means what it says.
inline int atomicAdd(int* address, int value)
{
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

inline void __threadfence()
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

inline void __syncthreads()
{
    cuda_cpu::current_barrier->arrive_and_wait();
}
