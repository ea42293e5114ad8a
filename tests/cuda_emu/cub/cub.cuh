/*
 * cub/cub.cuh of the CUDA emulator: the CUB collectives kernels/ uses, with
 * CUB's documented contracts (tests/cuda_emu/cuda_runtime.h says what the
 * emulator is).  As in CUB, a block collective's temporary storage may be
 * reused only after a __syncthreads, and a block reduction's result is
 * defined in thread 0 alone: the other threads receive a fill pattern.
 */
#ifndef NMP_EMU_CUB_CUH
#define NMP_EMU_CUB_CUH

#include <cuda_runtime.h>

namespace cub {

template <class T> inline T nmp_emu_undefined()
{
	T x;
	memset((void *)&x, 0x5a, sizeof x);
	return x;
}

inline void nmp_emu_check_block(int threads, const char *what)
{
	if (blockDim.x != (unsigned)threads || blockDim.y != 1 || blockDim.z != 1)
		nmp_emu::fatal("%s for %d threads run by a block of %u x %u x %u", what, threads, blockDim.x, blockDim.y,
			       blockDim.z);
}

template <class T, int BLOCK_THREADS> class BlockReduce {
      public:
	struct TempStorage {
		T v[BLOCK_THREADS];
	};
	explicit BlockReduce(TempStorage &s) : s_(s) {}
	T Sum(T x)
	{
		nmp_emu_check_block(BLOCK_THREADS, "cub::BlockReduce");
		s_.v[threadIdx.x] = x;
		__syncthreads();
		if (threadIdx.x != 0)
			return nmp_emu_undefined<T>();
		T r = T();
		for (int i = 0; i < BLOCK_THREADS; i++)
			r += s_.v[i];
		return r;
	}

      private:
	TempStorage &s_;
};

template <class T, int BLOCK_THREADS> class BlockScan {
      public:
	struct TempStorage {
		T v[BLOCK_THREADS];
	};
	explicit BlockScan(TempStorage &s) : s_(s) {}
	void ExclusiveSum(T x, T &out)
	{
		nmp_emu_check_block(BLOCK_THREADS, "cub::BlockScan");
		s_.v[threadIdx.x] = x;
		__syncthreads();
		T r = T();
		for (unsigned i = 0; i < threadIdx.x; i++)
			r += s_.v[i];
		out = r;
	}

      private:
	TempStorage &s_;
};

struct DeviceScan {
	/* The first call (temp NULL) asks for the temporary bytes; the second scans in stream order. */
	template <class In, class Out, class NumItems>
	static cudaError_t InclusiveSum(void *temp, size_t &temp_bytes, In in, Out out, NumItems n,
					cudaStream_t stream = 0)
	{
		if (!temp) {
			temp_bytes = 256;
			return cudaSuccess;
		}
		if (std::is_signed<NumItems>::value && n < NumItems(0))
			return cudaErrorInvalidValue;
		if (!nmp_emu::on_device(temp, temp_bytes) || temp_bytes < 256)
			return cudaErrorInvalidValue;
		if (n > 0 && (!nmp_emu::on_device(&in[0], (size_t)n * sizeof in[0]) ||
			      !nmp_emu::on_device(&out[0], (size_t)n * sizeof out[0])))
			return cudaErrorInvalidValue;
		const bool known = nmp_emu::enqueue(stream, [in, out, n]() {
			std::remove_cv_t<std::remove_reference_t<decltype(in[0])>> sum = 0;
			for (NumItems i = 0; i < n; i++) {
				sum += in[i];
				out[i] = sum;
			}
		});
		return known ? cudaSuccess : cudaErrorInvalidResourceHandle;
	}
};

} /* namespace cub */

#endif
