/*
 * cuda_runtime.h of the CUDA emulator (tests/cuda_emu): the part of CUDA's
 * runtime API and device built-ins that kernels/ uses, declared with their
 * documented signatures and run on the CPU by runtime.cc.
 *
 * The emulator is a test build (make test-cuda-emu), not a backend: it runs
 * the CUDA backend's host code and kernels where no GPU is, so that their
 * logic meets the CPU backend's tests before a GPU does.  What it checks
 * beyond the kernels' arithmetic:
 *  - stream order: asynchronous work runs when its stream is synchronized,
 *    as late as CUDA allows, so a result read before its stream is waited
 *    for, or a pinned buffer refilled before its copy ran, shows;
 *  - device memory: every copy, set and free is checked against the
 *    allocations it names and the direction it claims; fresh allocations
 *    hold a fill pattern, not zeros;
 *  - launches: the configuration limits CUDA enforces, reported through
 *    cudaGetLastError;
 *  - shared memory: it holds a fill pattern when a block starts;
 *  - blocks: threads are fibers; __syncthreads and warp shuffles wait for
 *    the threads they name, a shuffle naming an exited lane or a barrier
 *    that can never be passed stops the program; blocks and threads run in
 *    ascending order on one launch and descending on the next, so that a
 *    missing barrier shows.
 *  - kernel arguments: a pointer argument, and each pointer of a tensor
 *    view (nmp_cu_view, view.cc), is NULL or device or pinned memory.
 * What it cannot check: timing, the memory model between concurrent
 * threads, and host memory that a kernel reaches through a pointer it
 * loads from memory.
 *
 * Kernel launches are rewritten before compiling (launches.sed):
 * k<<<grid, block, shmem, stream>>>(args) becomes
 * nmp_emu_kernel(k, grid, block, shmem, stream)(args).
 */
#ifndef NMP_EMU_CUDA_RUNTIME_H
#define NMP_EMU_CUDA_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__
/*
 * Blocks run one after another, so a function's static is its block's
 * shared memory.  The statics lie in one section, which the runtime fills
 * with a pattern before each block: a block reads only what it wrote, as
 * on a GPU, not zeros or the block before's values.
 */
#define __shared__ static __attribute__((section("nmp_emu_shared")))

enum cudaError {
	cudaSuccess = 0,
	cudaErrorInvalidValue = 1,
	cudaErrorMemoryAllocation = 2,
	cudaErrorInvalidConfiguration = 9,
	cudaErrorInvalidPitchValue = 12,
	cudaErrorInvalidDevicePointer = 17,
	cudaErrorInvalidMemcpyDirection = 21,
	cudaErrorNoDevice = 100,
	cudaErrorInvalidDevice = 101,
	cudaErrorInvalidResourceHandle = 400,
	cudaErrorNotReady = 600,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
	cudaMemcpyHostToHost = 0,
	cudaMemcpyHostToDevice = 1,
	cudaMemcpyDeviceToHost = 2,
	cudaMemcpyDeviceToDevice = 3,
	cudaMemcpyDefault = 4,
};

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

struct dim3 {
	unsigned x, y, z;
	constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
	unsigned x, y, z;
};

struct cudaDeviceProp {
	char name[256];
	size_t totalGlobalMem;
	int multiProcessorCount;
};

/* ---- the runtime API ------------------------------------------------------------------------ */

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
const char *cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError(void);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
template <class T> cudaError_t cudaMalloc(T **ptr, size_t bytes) { return cudaMalloc((void **)ptr, bytes); }
template <class T> cudaError_t cudaMallocHost(T **ptr, size_t bytes) { return cudaMallocHost((void **)ptr, bytes); }
template <class T> cudaError_t cudaMallocAsync(T **ptr, size_t bytes, cudaStream_t s)
{
	return cudaMallocAsync((void **)ptr, bytes, s);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
			 cudaMemcpyKind kind);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream = 0);

/* Events: the host's clock when the stream reaches them. */
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

/* ---- device built-ins ----------------------------------------------------------------------- */

extern uint3 nmp_emu_thread_idx, nmp_emu_block_idx;
extern dim3 nmp_emu_block_dim, nmp_emu_grid_dim;
#define threadIdx nmp_emu_thread_idx
#define blockIdx nmp_emu_block_idx
#define blockDim nmp_emu_block_dim
#define gridDim nmp_emu_grid_dim

void __syncthreads(void);

struct nmp_cu_view; /* kernels/cuda_common.cuh: a kernel's view of a tensor, whose pointers view.cc checks */

namespace nmp_emu {
/* Lane `lane + delta` of the calling lane's width-segment, or its own value past the segment's end. */
void shfl_down(unsigned mask, const void *mine, void *out, size_t bytes, unsigned delta, int width);
/* Runs `op` in stream order (now on the legacy stream); false for an unknown stream. */
bool enqueue(cudaStream_t stream, std::function<void()> op);
/* Is [p, p + bytes) inside one device allocation? */
bool on_device(const void *p, size_t bytes);
[[noreturn]] void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
	    std::function<void()> body);

/* A kernel's pointer arguments, and the pointers of a tensor view, must be device (or pinned) memory or NULL. */
void check_pointer(const char *kernel, const void *p);
void check_view(const char *kernel, const nmp_cu_view &v);
template <class T> void check_arg(const char *kernel, const T &a)
{
	if constexpr (std::is_pointer<T>::value)
		check_pointer(kernel, (const void *)a);
	else if constexpr (std::is_same<T, nmp_cu_view>::value)
		check_view(kernel, a);
}

template <class F> struct launcher {
	const char *name;
	F fn;
	dim3 grid, block;
	size_t shmem;
	cudaStream_t stream;
	/* The arguments are copied now, as a launch does; the kernel runs in stream order. */
	template <class... A> void operator()(A &&...args) const
	{
		auto kept = std::make_tuple(std::decay_t<A>(std::forward<A>(args))...);
		std::apply([this](const auto &...a) { (check_arg(name, a), ...); }, kept);
		F f = fn;
		launch(name, grid, block, shmem, stream, [f, kept]() { std::apply(f, kept); });
	}
};
} /* namespace nmp_emu */

#define nmp_emu_kernel(fn, ...) nmp_emu_make_launcher(#fn, fn, __VA_ARGS__)
template <class F>
nmp_emu::launcher<F> nmp_emu_make_launcher(const char *name, F fn, dim3 grid, dim3 block, size_t shmem = 0,
					   cudaStream_t stream = 0)
{
	return nmp_emu::launcher<F>{ name, fn, grid, block, shmem, stream };
}

template <class T> inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32)
{
	static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "a shuffle moves up to 8 bytes");
	T out;
	nmp_emu::shfl_down(mask, &var, &out, sizeof(T), delta, width);
	return out;
}

/* Atomics: one block runs at a time, on one host thread. */
template <class T> inline T nmp_emu_atomic_add(T *a, T v)
{
	T old = *a;
	*a = old + v;
	return old;
}
inline double atomicAdd(double *a, double v) { return nmp_emu_atomic_add(a, v); }
inline float atomicAdd(float *a, float v) { return nmp_emu_atomic_add(a, v); }
inline int atomicAdd(int *a, int v) { return nmp_emu_atomic_add(a, v); }
inline unsigned atomicAdd(unsigned *a, unsigned v) { return nmp_emu_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) { return nmp_emu_atomic_add(a, v); }
inline unsigned long long atomicMin(unsigned long long *a, unsigned long long v)
{
	unsigned long long old = *a;
	*a = v < old ? v : old;
	return old;
}
inline int __ffs(int x) { return __builtin_ffs(x); }

#endif
