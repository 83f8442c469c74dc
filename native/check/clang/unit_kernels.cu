// unit_kernels.cu -- the device side of the harness's unit checks, for check.sh:
// the harness itself needs the CUDA runtime and cuBLAS, these kernels do not.
#include "../wgmma_check.cuh"
#include "../wgmma_narrow_check.cuh"

template __global__ void check::wgmma_narrow_unit<16>(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, float*, float*);
template __global__ void check::wgmma_narrow_unit<32>(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, float*, float*);
