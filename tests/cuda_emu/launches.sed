# The CUDA emulator's one rewrite of CUDA source (see cuda_runtime.h):
#   kernel<<<config>>>(args)  ->  nmp_emu_kernel(kernel, config)(args)
s/([A-Za-z_][A-Za-z0-9_]*(<[^<>]*>)?)<<<([^>]*)>>>\(/nmp_emu_kernel(\1, \3)(/g
