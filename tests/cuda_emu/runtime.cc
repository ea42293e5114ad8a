/*
 * runtime.cc — the CUDA emulator's runtime (see cuda_runtime.h): device
 * memory, streams, launches, and the fibers that run a block's threads.
 *
 * One host thread drives it.  Work on a stream of ours waits in the
 * stream's queue until the stream is synchronized (or the device is); work
 * on the legacy stream (0) runs at once, after the blocking streams' work.
 * A launch runs its blocks one at a time; a block's threads are fibers on
 * their own stacks, switched only where a thread waits at a barrier or
 * finishes.
 */
#include <cuda_runtime.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include <deque>
#include <map>
#include <set>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define NMP_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NMP_EMU_ASAN 1
#endif
#endif
#ifdef NMP_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers switch stacks on x86-64 only"
#endif

uint3 nmp_emu_thread_idx, nmp_emu_block_idx;
dim3 nmp_emu_block_dim, nmp_emu_grid_dim;

static void say(const char *fmt, va_list ap)
{
	fputs("nmp-emu: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void nmp_emu::fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	abort();
}

/* ---- memory ----------------------------------------------------------------------------------- */

/* What fresh device memory and a block's shared memory hold. */
enum { FILL = 0xa5 };

namespace {

struct region {
	size_t bytes;
	bool device; /* else pinned host memory */
};

std::map<uintptr_t, region> regions;
size_t device_used;
cudaError_t last_error = cudaSuccess;

/* The emulated device's memory: NMP_EMU_DEVICE_MIB, 1 GiB unless set. */
size_t device_capacity(void)
{
	static size_t cap;
	if (!cap) {
		const char *s = getenv("NMP_EMU_DEVICE_MIB");
		cap = (size_t)(s ? strtoull(s, NULL, 10) : 1024) << 20;
	}
	return cap;
}

/* The allocation holding [p, p + bytes), or NULL. */
const region *find(const void *p, size_t bytes)
{
	const uintptr_t a = (uintptr_t)p;
	auto it = regions.upper_bound(a);
	if (it == regions.begin())
		return NULL;
	--it;
	if (a - it->first > it->second.bytes || bytes > it->second.bytes - (a - it->first))
		return NULL;
	return &it->second;
}

bool is_device(const void *p, size_t bytes)
{
	const region *r = find(p, bytes);
	return r && r->device;
}

/* Host memory is anything outside the device's allocations (pageable or pinned). */
bool is_host(const void *p, size_t bytes)
{
	const region *r = find(p, bytes ? bytes : 1);
	return !r || !r->device;
}

bool is_pinned(const void *p, size_t bytes)
{
	const region *r = find(p, bytes);
	return r && !r->device;
}

cudaError_t complain(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t complain(cudaError_t e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	say(fmt, ap);
	va_end(ap);
	return e;
}

cudaError_t allocate(void **ptr, size_t bytes, bool device)
{
	if (!ptr)
		return cudaErrorInvalidValue;
	*ptr = NULL;
	if (device && bytes > device_capacity() - device_used)
		return cudaErrorMemoryAllocation;
	void *p = malloc(bytes ? bytes : 1);
	if (!p)
		return cudaErrorMemoryAllocation;
	memset(p, FILL, bytes); /* not zeros: a kernel that reads what nothing wrote should notice */
	regions[(uintptr_t)p] = region{ bytes ? bytes : 1, device };
	if (device)
		device_used += bytes ? bytes : 1;
	*ptr = p;
	return cudaSuccess;
}

cudaError_t release(void *p, bool device)
{
	if (!p)
		return cudaSuccess;
	auto it = regions.find((uintptr_t)p);
	if (it == regions.end() || it->second.device != device)
		return complain(cudaErrorInvalidValue, "%s(%p): not an allocation of its kind",
				device ? "cudaFree" : "cudaFreeHost", p);
	if (device)
		device_used -= it->second.bytes;
	regions.erase(it);
	free(p);
	return cudaSuccess;
}

/* Do both sides of a copy lie where its kind says? */
cudaError_t check_copy(const char *what, void *dst, const void *src, size_t dst_extent, size_t src_extent,
		       cudaMemcpyKind kind)
{
	bool ok;
	switch (kind) {
	case cudaMemcpyHostToDevice: ok = is_device(dst, dst_extent) && is_host(src, src_extent); break;
	case cudaMemcpyDeviceToHost: ok = is_host(dst, dst_extent) && is_device(src, src_extent); break;
	case cudaMemcpyDeviceToDevice: ok = is_device(dst, dst_extent) && is_device(src, src_extent); break;
	case cudaMemcpyHostToHost: ok = is_host(dst, dst_extent) && is_host(src, src_extent); break;
	default: return complain(cudaErrorInvalidMemcpyDirection, "%s: copy kind %d is not emulated", what, (int)kind);
	}
	if (!ok)
		return complain(cudaErrorInvalidValue, "%s: %zu bytes from %p to %p do not lie where kind %d says", what,
				src_extent, src, dst, (int)kind);
	return cudaSuccess;
}

/* ---- streams ---------------------------------------------------------------------------------- */

} /* namespace */

struct CUstream_st {
	unsigned flags;
	std::deque<std::function<void()>> work;
};

namespace {

std::set<CUstream_st *> streams;

void drain(CUstream_st *s)
{
	while (!s->work.empty()) {
		std::function<void()> op = std::move(s->work.front());
		s->work.pop_front();
		op();
	}
}

/* The legacy stream waits for the work of every blocking stream. */
void legacy_sync(void)
{
	for (CUstream_st *s : streams)
		if (!(s->flags & cudaStreamNonBlocking))
			drain(s);
}

void drain_all(void)
{
	for (CUstream_st *s : streams)
		drain(s);
}

} /* namespace */

bool nmp_emu::enqueue(cudaStream_t s, std::function<void()> op)
{
	if (!s) {
		legacy_sync();
		op();
		return true;
	}
	if (!streams.count(s))
		return false;
	s->work.push_back(std::move(op));
	return true;
}

bool nmp_emu::on_device(const void *p, size_t bytes)
{
	return is_device(p, bytes);
}

void nmp_emu::check_pointer(const char *kernel, const void *p)
{
	if (p && !find(p, 1))
		nmp_emu::fatal("kernel %s: argument %p is host memory that is not pinned", kernel, p);
}

/* For the emulated cuBLAS (cublas.cc), which finds these by name. */
extern "C" __attribute__((visibility("default"))) int nmp_emu_on_device(const void *p, size_t bytes)
{
	return is_device(p, bytes);
}

extern "C" __attribute__((visibility("default"))) void nmp_emu_legacy_sync(void)
{
	legacy_sync();
}

/* ---- fibers ----------------------------------------------------------------------------------- */

/*
 * nmp_emu_switch(save, to): pushes the callee-saved registers, stores the
 * stack pointer in *save, loads `to` and pops the registers saved there.
 * A new fiber's stack holds six zeros and the address of fiber_main.
 */
extern "C" void nmp_emu_switch(void **save, void *to);
asm(".text\n"
    ".globl nmp_emu_switch\n"
    ".type nmp_emu_switch, @function\n"
    "nmp_emu_switch:\n"
    "\tpushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n"
    "\tmovq %rsp, (%rdi)\n"
    "\tmovq %rsi, %rsp\n"
    "\tpopq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n"
    "\tret\n"
    ".size nmp_emu_switch, .-nmp_emu_switch\n");

namespace {

enum fiber_state { READY, AT_SYNCTHREADS, AT_WARP, DONE };

#define STACK_BYTES ((size_t)256 << 10)
#define GUARD_BYTES ((size_t)4096)
#define MAX_THREADS 1024

struct fiber {
	void *sp;
	char *stack; /* lowest usable byte, above the guard page */
	fiber_state state;
	uint64_t slot[2]; /* a shuffle's value, in slot[parity] */
	unsigned parity;  /* flips at each shuffle */
	void *fake_stack;
};

fiber fibers[MAX_THREADS];
unsigned n_fibers;     /* created so far */
unsigned n_threads;    /* in this block */
unsigned current;      /* the running thread */
void *sched_sp;
#ifdef NMP_EMU_ASAN
void *sched_fake_stack;  /* AddressSanitizer's view of the scheduler's stack */
const void *sched_bottom;
size_t sched_size;
#endif
const std::function<void()> *body;
const char *kernel_name;

void enter_fiber(unsigned t)
{
	current = t;
	fiber &f = fibers[t];
	const unsigned x = nmp_emu_block_dim.x, y = nmp_emu_block_dim.y;
	nmp_emu_thread_idx = uint3{ t % x, t / x % y, t / (x * y) };
#ifdef NMP_EMU_ASAN
	__sanitizer_start_switch_fiber(&sched_fake_stack, f.stack, STACK_BYTES);
#endif
	nmp_emu_switch(&sched_sp, f.sp);
#ifdef NMP_EMU_ASAN
	__sanitizer_finish_switch_fiber(sched_fake_stack, NULL, NULL);
#endif
}

/* From the running thread back to the scheduler. */
void leave_fiber(void)
{
	fiber &f = fibers[current];
#ifdef NMP_EMU_ASAN
	__sanitizer_start_switch_fiber(&f.fake_stack, sched_bottom, sched_size);
#endif
	nmp_emu_switch(&f.sp, sched_sp);
#ifdef NMP_EMU_ASAN
	__sanitizer_finish_switch_fiber(fibers[current].fake_stack, &sched_bottom, &sched_size);
#endif
}

void thread_exits(void);

/* A fiber runs one thread of a block each time it is entered from the top of its loop. */
[[noreturn]] void fiber_main(void)
{
#ifdef NMP_EMU_ASAN
	__sanitizer_finish_switch_fiber(NULL, &sched_bottom, &sched_size);
#endif
	for (;;) {
		(*body)();
		thread_exits();
		leave_fiber();
	}
}

void make_fiber(fiber &f)
{
	char *mem = (char *)mmap(NULL, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		nmp_emu::fatal("no memory for a thread's stack");
	mprotect(mem, GUARD_BYTES, PROT_NONE);
	f.stack = mem + GUARD_BYTES;
	uintptr_t top = ((uintptr_t)f.stack + STACK_BYTES) & ~(uintptr_t)15;
	void **sp = (void **)top;
	*--sp = NULL;                     /* fiber_main's return address: never used */
	*--sp = (void *)&fiber_main;      /* where the first switch returns to */
	for (int r = 0; r < 6; r++)
		*--sp = NULL;             /* rbp rbx r12 r13 r14 r15 */
	f.sp = sp;
}

/*
 * The block's scheduler: a queue of runnable threads, run in turn until each
 * waits or exits.  A barrier releases its waiters (onto the queue, in the
 * launch's order) when its last participant arrives: __syncthreads when
 * every thread of the block waits there or has exited, a shuffle when every
 * lane of its mask waits there.
 */
unsigned queue[MAX_THREADS], q_head, q_len;
unsigned n_done, n_sync;
unsigned warp_count[MAX_THREADS / 32], warp_mask[MAX_THREADS / 32];
bool descending;

void make_ready(unsigned t)
{
	fibers[t].state = READY;
	queue[(q_head + q_len++) % MAX_THREADS] = t;
}

void release_sync(void)
{
	if (!n_sync || n_sync + n_done != n_threads)
		return;
	for (unsigned i = 0; i < n_threads; i++) {
		const unsigned t = descending ? n_threads - 1 - i : i;
		if (fibers[t].state == AT_SYNCTHREADS)
			make_ready(t);
	}
	n_sync = 0;
}

const char *state_name(fiber_state s)
{
	return s == READY ? "running" : s == AT_SYNCTHREADS ? "at __syncthreads" : s == AT_WARP ? "at a shuffle" : "exited";
}

void thread_exits(void)
{
	const unsigned w = current / 32, lane = current % 32;
	fibers[current].state = DONE;
	n_done++;
	if (warp_count[w] && (warp_mask[w] >> lane & 1))
		nmp_emu::fatal("kernel %s: lane %u of warp %u exits while its warp waits for it at a shuffle", kernel_name,
			       lane, w);
	release_sync();
}

/* The kernels' shared memory (__shared__ in cuda_runtime.h): the linker's bounds of its section, if any. */
extern "C" char __start_nmp_emu_shared[] __attribute__((weak));
extern "C" char __stop_nmp_emu_shared[] __attribute__((weak));

void run_block(void)
{
	if (__start_nmp_emu_shared)
		memset(__start_nmp_emu_shared, FILL, (size_t)(__stop_nmp_emu_shared - __start_nmp_emu_shared));
	n_done = n_sync = 0;
	q_head = q_len = 0;
	memset(warp_count, 0, sizeof warp_count);
	for (unsigned i = 0; i < n_threads; i++) {
		fibers[i].parity = 0;
		make_ready(descending ? n_threads - 1 - i : i);
	}
	while (q_len) {
		const unsigned t = queue[q_head];
		q_head = (q_head + 1) % MAX_THREADS;
		q_len--;
		enter_fiber(t);
	}
	if (n_done == n_threads)
		return;
	unsigned a = 0;
	while (fibers[a].state == DONE)
		a++;
	for (unsigned t = a + 1; t < n_threads; t++)
		if (fibers[t].state != DONE && fibers[t].state != fibers[a].state)
			nmp_emu::fatal("kernel %s, block (%u,%u,%u): thread %u waits %s and thread %u %s: neither can go on",
				       kernel_name, nmp_emu_block_idx.x, nmp_emu_block_idx.y, nmp_emu_block_idx.z, a,
				       state_name(fibers[a].state), t, state_name(fibers[t].state));
	nmp_emu::fatal("kernel %s, block (%u,%u,%u): thread %u waits %s for threads that never come", kernel_name,
		       nmp_emu_block_idx.x, nmp_emu_block_idx.y, nmp_emu_block_idx.z, a, state_name(fibers[a].state));
}

unsigned long long launches;

} /* namespace */

void __syncthreads(void)
{
	fibers[current].state = AT_SYNCTHREADS;
	n_sync++;
	release_sync();
	leave_fiber();
}

/* The calling lane waits at a shuffle with `mask` until every lane the mask names is there. */
static void warp_wait(unsigned mask)
{
	const unsigned w = current / 32, lane = current % 32;
	if (!(mask >> lane & 1))
		nmp_emu::fatal("kernel %s: lane %u shuffles with a mask (%#x) that leaves it out", kernel_name, lane, mask);
	if (warp_count[w] && warp_mask[w] != mask)
		nmp_emu::fatal("kernel %s: lanes of warp %u shuffle with masks %#x and %#x", kernel_name, w, warp_mask[w], mask);
	if (!warp_count[w])
		for (unsigned l = 0; l < 32; l++) {
			if (!(mask >> l & 1))
				continue;
			if (w * 32 + l >= n_threads)
				nmp_emu::fatal("kernel %s: a shuffle's mask names lane %u of warp %u, past the block's %u threads",
					       kernel_name, l, w, n_threads);
			if (fibers[w * 32 + l].state == DONE)
				nmp_emu::fatal("kernel %s: a shuffle's mask names lane %u of warp %u, which has exited",
					       kernel_name, l, w);
		}
	warp_mask[w] = mask;
	fibers[current].state = AT_WARP;
	if (++warp_count[w] == (unsigned)__builtin_popcount(mask)) {
		warp_count[w] = 0;
		for (unsigned i = 0; i < 32; i++) {
			const unsigned l = descending ? 31 - i : i;
			if (mask >> l & 1)
				make_ready(w * 32 + l);
		}
	}
	leave_fiber();
}

/*
 * One wait per shuffle: a lane writes its value to one of two slots, in
 * turn, and reads its source's after the wait.  A lane can write the same
 * slot again only two shuffles on, after a wait that every lane reaches
 * once it has read this one.
 */
void nmp_emu::shfl_down(unsigned mask, const void *mine, void *out, size_t bytes, unsigned delta, int width)
{
	const unsigned t = current, lane = t % 32, par = fibers[t].parity;
	if (width <= 0 || width > 32 || (width & (width - 1)))
		nmp_emu::fatal("kernel %s: shuffle width %d", kernel_name, width);
	fibers[t].parity ^= 1;
	memcpy(&fibers[t].slot[par], mine, bytes);
	warp_wait(mask);
	const unsigned seg = lane % (unsigned)width, src = lane + delta;
	uint64_t v = fibers[t].slot[par];
	if (seg + delta < (unsigned)width) {
		if (!(mask >> src & 1))
			nmp_emu::fatal("kernel %s: lane %u reads lane %u, which its mask (%#x) leaves out", kernel_name, lane,
				       src, mask);
		v = fibers[t - lane + src].slot[par];
	}
	memcpy(out, &v, bytes);
}

void nmp_emu::launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
		     std::function<void()> fn)
{
	const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
	if (!grid.x || !grid.y || !grid.z || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || !threads ||
	    threads > MAX_THREADS || block.z > 64 || shmem > 48 * 1024) {
		last_error = complain(cudaErrorInvalidConfiguration,
				      "kernel %s: launch of (%u,%u,%u) blocks of (%u,%u,%u) threads, %zu shared bytes", name,
				      grid.x, grid.y, grid.z, block.x, block.y, block.z, shmem);
		return;
	}
	const bool desc = launches++ & 1;
	auto run = [name, grid, block, n = (unsigned)threads, fn, desc]() {
		while (n_fibers < n)
			make_fiber(fibers[n_fibers++]);
		body = &fn;
		kernel_name = name;
		nmp_emu_grid_dim = grid;
		nmp_emu_block_dim = block;
		n_threads = n;
		descending = desc;
		const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
		for (unsigned long long i = 0; i < blocks; i++) {
			const unsigned long long b = desc ? blocks - 1 - i : i;
			nmp_emu_block_idx = uint3{ (unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
						   (unsigned)(b / ((unsigned long long)grid.x * grid.y)) };
			run_block();
		}
	};
	if (!enqueue(stream, run))
		last_error = complain(cudaErrorInvalidResourceHandle, "kernel %s: launch on an unknown stream", name);
}

/* ---- the runtime API -------------------------------------------------------------------------- */

cudaError_t cudaGetDeviceCount(int *count)
{
	/* NMP_EMU_NO_DEVICE: the machine CI has, with no GPU and no driver. */
	*count = getenv("NMP_EMU_NO_DEVICE") ? 0 : 1;
	return *count ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaSetDevice(int device)
{
	return device == 0 && !getenv("NMP_EMU_NO_DEVICE") ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
	if (device != 0)
		return cudaErrorInvalidDevice;
	memset(prop, 0, sizeof *prop);
	snprintf(prop->name, sizeof prop->name, "CUDA emulator on the CPU (tests/cuda_emu)");
	prop->totalGlobalMem = device_capacity();
	prop->multiProcessorCount = 1;
	return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorInvalidValue: return "invalid argument";
	case cudaErrorMemoryAllocation: return "out of memory";
	case cudaErrorInvalidConfiguration: return "invalid configuration argument";
	case cudaErrorInvalidPitchValue: return "invalid pitch argument";
	case cudaErrorInvalidDevicePointer: return "invalid device pointer";
	case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
	case cudaErrorNoDevice: return "no CUDA-capable device is detected";
	case cudaErrorInvalidDevice: return "invalid device ordinal";
	case cudaErrorInvalidResourceHandle: return "invalid resource handle";
	case cudaErrorNotReady: return "device not ready";
	}
	return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
	cudaError_t e = last_error;
	last_error = cudaSuccess;
	return e;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
	*total_bytes = device_capacity();
	*free_bytes = device_capacity() - device_used;
	return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
	return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags)
{
	if (flags & ~(unsigned)cudaStreamNonBlocking)
		return cudaErrorInvalidValue;
	*stream = new CUstream_st{ flags, {} };
	streams.insert(*stream);
	return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
	if (!streams.count(s))
		return complain(cudaErrorInvalidResourceHandle, "cudaStreamDestroy(%p): not a stream", (void *)s);
	drain(s); /* work already queued still runs */
	streams.erase(s);
	delete s;
	return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
	if (!s) {
		legacy_sync();
		return cudaSuccess;
	}
	if (!streams.count(s))
		return complain(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize(%p): not a stream", (void *)s);
	drain(s);
	return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
	drain_all();
	return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
	return allocate(ptr, bytes, true);
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes)
{
	return allocate(ptr, bytes, false);
}

/* Stream-ordered: the memory is the stream's from now on, so it may be allocated at once. */
cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t s)
{
	if (s && !streams.count(s))
		return cudaErrorInvalidResourceHandle;
	return allocate(ptr, bytes, true);
}

/* cudaFree waits for the device's work first, as CUDA's does. */
cudaError_t cudaFree(void *ptr)
{
	drain_all();
	return release(ptr, true);
}

cudaError_t cudaFreeHost(void *ptr)
{
	drain_all();
	return release(ptr, false);
}

cudaError_t cudaFreeAsync(void *ptr, cudaStream_t s)
{
	if (!ptr)
		return cudaSuccess;
	auto it = regions.find((uintptr_t)ptr);
	if (it == regions.end() || !it->second.device)
		return complain(cudaErrorInvalidValue, "cudaFreeAsync(%p): not a device allocation", ptr);
	return nmp_emu::enqueue(s, [ptr]() { release(ptr, true); }) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
	cudaError_t e = check_copy("cudaMemcpy", dst, src, bytes, bytes, kind);
	if (e != cudaSuccess)
		return e;
	legacy_sync();
	memmove(dst, src, bytes);
	return cudaSuccess;
}

/*
 * From pageable memory the source is read now (CUDA stages it before
 * returning); from pinned or device memory, when the stream reaches the
 * copy.  Into host memory the bytes land when the stream reaches the copy.
 */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s)
{
	cudaError_t e = check_copy("cudaMemcpyAsync", dst, src, bytes, bytes, kind);
	if (e != cudaSuccess)
		return e;
	if (s && !streams.count(s))
		return complain(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on an unknown stream");
	if (kind == cudaMemcpyHostToDevice && !is_pinned(src, bytes)) {
		std::vector<uint8_t> staged((const uint8_t *)src, (const uint8_t *)src + bytes);
		nmp_emu::enqueue(s, [dst, staged]() { memcpy(dst, staged.data(), staged.size()); });
	} else {
		nmp_emu::enqueue(s, [dst, src, bytes]() { memmove(dst, src, bytes); });
	}
	return cudaSuccess;
}

cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
			 cudaMemcpyKind kind)
{
	if (width > dpitch || width > spitch)
		return complain(cudaErrorInvalidPitchValue, "cudaMemcpy2D: width %zu over pitch %zu or %zu", width, dpitch,
				spitch);
	if (!height || !width)
		return cudaSuccess;
	cudaError_t e = check_copy("cudaMemcpy2D", dst, src, (height - 1) * dpitch + width, (height - 1) * spitch + width,
				   kind);
	if (e != cudaSuccess)
		return e;
	legacy_sync();
	for (size_t r = 0; r < height; r++)
		memmove((uint8_t *)dst + r * dpitch, (const uint8_t *)src + r * spitch, width);
	return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t s)
{
	if (!is_device(ptr, bytes))
		return complain(cudaErrorInvalidValue, "cudaMemsetAsync: %zu bytes at %p are not device memory", bytes, ptr);
	return nmp_emu::enqueue(s, [ptr, value, bytes]() { memset(ptr, value, bytes); }) ? cudaSuccess
											 : cudaErrorInvalidResourceHandle;
}

cudaError_t cudaMemset(void *ptr, int value, size_t bytes)
{
	if (!is_device(ptr, bytes))
		return complain(cudaErrorInvalidValue, "cudaMemset: %zu bytes at %p are not device memory", bytes, ptr);
	legacy_sync();
	memset(ptr, value, bytes);
	return cudaSuccess;
}

/* ---- events ----------------------------------------------------------------------------------- */

struct CUevent_st {
	CUstream_st *stream; /* where it was last recorded */
	bool recorded, reached;
	double ms;           /* the host's monotonic clock when the stream reached it */
};

namespace {
std::set<CUevent_st *> events;
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
	*event = new CUevent_st{ NULL, false, false, 0 };
	events.insert(*event);
	return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
	if (!events.erase(e))
		return complain(cudaErrorInvalidResourceHandle, "cudaEventDestroy(%p): not an event", (void *)e);
	drain_all(); /* work queued to stamp it runs first */
	delete e;
	return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
	if (!events.count(e) || (s && !streams.count(s)))
		return complain(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown event or stream");
	e->stream = s;
	e->recorded = true;
	e->reached = false;
	nmp_emu::enqueue(s, [e]() {
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		e->ms = (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
		e->reached = true;
	});
	return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
	if (!events.count(e))
		return complain(cudaErrorInvalidResourceHandle, "cudaEventSynchronize(%p): not an event", (void *)e);
	if (e->recorded && !e->reached)
		return cudaStreamSynchronize(e->stream);
	return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
	if (!events.count(a) || !events.count(b) || !a->recorded || !b->recorded)
		return complain(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event not recorded");
	if (!a->reached || !b->reached)
		return cudaErrorNotReady;
	*ms = (float)(b->ms - a->ms);
	return cudaSuccess;
}
