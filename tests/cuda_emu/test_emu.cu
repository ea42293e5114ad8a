/*
 * The CUDA emulator's own tests (make test-cuda-emu runs them first): what
 * cuda_runtime.h promises to catch, it catches.  Compiled like kernels/, by
 * launches.sed and g++.
 */
#include <cuda_runtime.h>
#include <cub/cub.cuh>

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern "C" {
#include <cmocka.h>
}

#define CHECK(call) assert_int_equal((int)(call), (int)cudaSuccess)

/* The block's sum by warp shuffles and a shared array, as kernels/cuda_common.cuh does it. */
static __device__ unsigned long long block_sum(unsigned long long x)
{
	__shared__ unsigned long long part[32];
	for (int o = 16; o > 0; o >>= 1)
		x += __shfl_down_sync(0xffffffffu, x, o);
	const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0)
		part[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = lane < (blockDim.x >> 5) ? part[lane] : 0;
		for (int o = 16; o > 0; o >>= 1)
			x += __shfl_down_sync(0xffffffffu, x, o);
	}
	__syncthreads();
	return x;
}

static __global__ void sum_kernel(const unsigned *in, unsigned long long n, unsigned long long *out)
{
	unsigned long long s = 0;
	for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
	     i += (unsigned long long)gridDim.x * blockDim.x)
		s += in[i];
	s = block_sum(s);
	if (threadIdx.x == 0)
		atomicAdd(out, s);
}

/* Invariant: the sum of 0..n-1 for any n and block size, whole and partial blocks, any grid. */
static void test_block_sum(void **state)
{
	(void)state;
	static const unsigned long long ns[] = { 1, 31, 32, 255, 256, 257, 1000, 4099 };
	static const unsigned threads[] = { 32, 64, 256, 1024 };
	unsigned *d_in;
	unsigned long long *d_out;
	CHECK(cudaMalloc(&d_in, 4099 * sizeof *d_in));
	CHECK(cudaMalloc(&d_out, sizeof *d_out));
	unsigned h_in[4099];
	for (unsigned i = 0; i < 4099; i++)
		h_in[i] = i;
	CHECK(cudaMemcpy(d_in, h_in, sizeof h_in, cudaMemcpyHostToDevice));
	for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
		for (size_t b = 0; b < sizeof threads / sizeof *threads; b++)
			for (unsigned grid = 1; grid <= 5; grid += 4) {
				unsigned long long got = 0, zero = 0;
				CHECK(cudaMemcpy(d_out, &zero, sizeof zero, cudaMemcpyHostToDevice));
				sum_kernel<<<grid, threads[b]>>>(d_in, ns[a], d_out);
				CHECK(cudaGetLastError());
				CHECK(cudaMemcpy(&got, d_out, sizeof got, cudaMemcpyDeviceToHost));
				assert_int_equal(got, ns[a] * (ns[a] - 1) / 2);
			}
	CHECK(cudaFree(d_in));
	CHECK(cudaFree(d_out));
}

/* Reverses a block's values through shared memory; without the barrier a thread reads too early. */
static __global__ void reverse_kernel(unsigned *v, bool barrier)
{
	__shared__ unsigned s[256];
	s[threadIdx.x] = v[threadIdx.x];
	if (barrier)
		__syncthreads();
	v[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

/* A missing __syncthreads gives a wrong result on the launch that runs threads in descending order. */
static void test_missing_barrier_shows(void **state)
{
	(void)state;
	unsigned *d;
	unsigned h[256];
	CHECK(cudaMalloc(&d, sizeof h));
	unsigned base = 0; /* each launch's values differ from the last's */
	for (int barrier = 1; barrier >= 0; barrier--) {
		int wrong = 0;
		for (int launch = 0; launch < 2; launch++, base += 1000) {
			for (unsigned i = 0; i < 256; i++)
				h[i] = base + i;
			CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice));
			reverse_kernel<<<1, 256>>>(d, barrier);
			CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
			for (unsigned i = 0; i < 256; i++)
				wrong += h[i] != base + 255 - i;
		}
		if (barrier)
			assert_int_equal(wrong, 0);
		else
			assert_true(wrong > 0);
	}
	CHECK(cudaFree(d));
}

/* Even threads write their cell of shared memory, odd ones leave theirs; every thread reports its cell. */
static __global__ void half_written_kernel(unsigned *out)
{
	__shared__ unsigned s[64];
	if (threadIdx.x % 2 == 0)
		s[threadIdx.x] = blockIdx.x * 1000 + threadIdx.x;
	__syncthreads();
	out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

/* Invariant: a block's shared memory holds what it wrote and the fill pattern elsewhere, on every launch. */
static void test_shared_memory_starts_filled(void **state)
{
	(void)state;
	unsigned *d, h[3 * 64];
	CHECK(cudaMalloc(&d, sizeof h));
	for (int launch = 0; launch < 2; launch++) { /* ascending, then descending blocks */
		half_written_kernel<<<3, 64>>>(d);
		CHECK(cudaGetLastError());
		CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
		for (unsigned b = 0; b < 3; b++)
			for (unsigned t = 0; t < 64; t++)
				assert_int_equal(h[b * 64 + t], t % 2 ? 0xa5a5a5a5u : b * 1000 + t);
	}
	CHECK(cudaFree(d));
}

static __global__ void fill_kernel(unsigned *v, unsigned n, unsigned x)
{
	const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n)
		v[i] = x;
}

/*
 * Stream order, as late as CUDA allows: a pinned buffer is read when its
 * copy runs, a result is there only once its stream is waited for, and
 * fresh device memory holds the fill pattern, not zeros.
 */
static void test_stream_order(void **state)
{
	(void)state;
	cudaStream_t s;
	CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
	unsigned *pin, *d, out[64];
	CHECK(cudaMallocHost(&pin, 64 * sizeof *pin));
	CHECK(cudaMalloc(&d, 64 * sizeof *d));
	CHECK(cudaMemcpy(out, d, sizeof out, cudaMemcpyDeviceToHost));
	assert_int_equal(out[0], 0xa5a5a5a5u);

	for (unsigned i = 0; i < 64; i++)
		pin[i] = 1;
	CHECK(cudaMemcpyAsync(d, pin, 64 * sizeof *pin, cudaMemcpyHostToDevice, s));
	pin[7] = 2; /* refilled before the stream was waited for: the copy takes this */
	CHECK(cudaStreamSynchronize(s));
	CHECK(cudaMemcpy(out, d, sizeof out, cudaMemcpyDeviceToHost));
	assert_int_equal(out[7], 2);

	fill_kernel<<<1, 64, 0, s>>>(d, 64, 9);
	CHECK(cudaGetLastError());
	CHECK(cudaMemcpy(out, d, sizeof out, cudaMemcpyDeviceToHost)); /* not ordered after the kernel */
	assert_int_equal(out[0], 1);
	CHECK(cudaStreamSynchronize(s));
	CHECK(cudaMemcpy(out, d, sizeof out, cudaMemcpyDeviceToHost));
	assert_int_equal(out[0], 9);

	/* From pageable memory the source is taken at the call. */
	unsigned page[64];
	for (unsigned i = 0; i < 64; i++)
		page[i] = 3;
	CHECK(cudaMemcpyAsync(d, page, sizeof page, cudaMemcpyHostToDevice, s));
	page[0] = 4;
	CHECK(cudaStreamSynchronize(s));
	CHECK(cudaMemcpy(out, d, sizeof out, cudaMemcpyDeviceToHost));
	assert_int_equal(out[0], 3);

	CHECK(cudaFree(d));
	CHECK(cudaFreeHost(pin));
	CHECK(cudaStreamDestroy(s));
}

/* What CUDA reports as errors, the emulator reports: launch limits, copy directions and bounds, memory. */
static void test_errors(void **state)
{
	(void)state;
	unsigned *d, h[8] = { 0 };
	CHECK(cudaMalloc(&d, sizeof h));
	fill_kernel<<<1, 2048>>>(d, 8, 1);
	assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
	assert_int_equal(cudaGetLastError(), cudaSuccess);
	fill_kernel<<<0, 32>>>(d, 8, 1);
	assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);

	assert_int_equal(cudaMemcpy(d, h, sizeof h, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
	assert_int_equal(cudaMemcpy(d, h, sizeof h + 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
	assert_int_equal(cudaMemcpy(h, d + 1, sizeof h, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
	assert_int_equal(cudaMemsetAsync(h, 0, sizeof h, 0), cudaErrorInvalidValue);
	assert_int_equal(cudaMemcpy2D(d, 8, h, 16, 12, 2, cudaMemcpyHostToDevice), cudaErrorInvalidPitchValue);
	assert_int_equal(cudaFree(h), cudaErrorInvalidValue);

	size_t free0, total, free1;
	CHECK(cudaMemGetInfo(&free0, &total));
	void *big;
	assert_int_equal(cudaMalloc(&big, total + 1), cudaErrorMemoryAllocation);
	CHECK(cudaMalloc(&big, 1 << 20));
	CHECK(cudaMemGetInfo(&free1, &total));
	assert_int_equal(free0 - free1, 1 << 20);
	CHECK(cudaFree(big));
	CHECK(cudaFree(d));
}

static __global__ void scan_kernel(unsigned *v)
{
	typedef cub::BlockScan<unsigned, 128> scan;
	__shared__ typename scan::TempStorage tmp;
	unsigned out;
	scan(tmp).ExclusiveSum(v[threadIdx.x], out);
	v[threadIdx.x] = out;
}

/* The CUB subset: a block's exclusive scan and the device-wide inclusive scan. */
static void test_cub(void **state)
{
	(void)state;
	unsigned h[128], *d;
	for (unsigned i = 0; i < 128; i++)
		h[i] = i % 3;
	CHECK(cudaMalloc(&d, sizeof h));
	CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice));
	scan_kernel<<<1, 128>>>(d);
	CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
	for (unsigned i = 0, want = 0; i < 128; want += i % 3, i++)
		assert_int_equal(h[i], want);

	unsigned long long in[300], out[300], *d_in, *d_out;
	for (int i = 0; i < 300; i++)
		in[i] = (unsigned long long)i * 7;
	CHECK(cudaMalloc(&d_in, sizeof in));
	CHECK(cudaMalloc(&d_out, sizeof out));
	CHECK(cudaMemcpy(d_in, in, sizeof in, cudaMemcpyHostToDevice));
	size_t bytes = 0;
	CHECK(cub::DeviceScan::InclusiveSum(NULL, bytes, d_in, d_out, 300));
	void *tmp;
	CHECK(cudaMalloc(&tmp, bytes));
	CHECK(cub::DeviceScan::InclusiveSum(tmp, bytes, d_in, d_out, 300));
	CHECK(cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost));
	for (int i = 0; i < 300; i++)
		assert_int_equal(out[i], 7ull * (unsigned long long)i * (unsigned long long)(i + 1) / 2);
	CHECK(cudaFree(tmp));
	CHECK(cudaFree(d_in));
	CHECK(cudaFree(d_out));
	CHECK(cudaFree(d));
}

static __global__ void stuck_kernel(int how)
{
	unsigned x = threadIdx.x;
	if (how == 0) { /* lane 0 at a barrier, the rest of its warp at a shuffle that needs it */
		if (threadIdx.x == 0)
			__syncthreads();
		else
			x = __shfl_down_sync(0xffffffffu, x, 1);
	} else if (threadIdx.x != 5) { /* a shuffle naming lane 5, which has exited */
		x = __shfl_down_sync(0xffffffffu, x, 1);
	}
	(void)x;
}

/* Runs stuck_kernel(how) in a child; it must stop with SIGABRT and say `want` on stderr. */
static void expect_stop(int how, const char *want)
{
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], 2);
		stuck_kernel<<<1, 64>>>(how);
		_exit(0);
	}
	close(fds[1]);
	char msg[512] = { 0 };
	size_t got = 0;
	ssize_t r;
	while (got < sizeof msg - 1 && (r = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0)
		got += (size_t)r;
	close(fds[0]);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	if (!strstr(msg, want))
		fail_msg("stderr '%s' does not say '%s'", msg, want);
}

static void test_stuck_threads_stop(void **state)
{
	(void)state;
	expect_stop(0, "neither can go on");
	expect_stop(1, "exits while its warp waits");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_block_sum),
		cmocka_unit_test(test_missing_barrier_shows),
		cmocka_unit_test(test_shared_memory_starts_filled),
		cmocka_unit_test(test_stream_order),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_cub),
		cmocka_unit_test(test_stuck_threads_stop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
