// flashmla_module.cu -- the one translation unit nvcc turns into
// build/flashmla.fatbin (nvcc --fatbin takes a single input): exactly the
// kernels the service loads by name (mla_params.h). Each kernel keeps its own
// file; this file only gathers them. The check harness links this same file,
// so the service and the checks run the same code.
#include "decode_export.cu"
#include "combine.cu"
#include "append_kv.cu"
#include "copy_blocks.cu"
#include "decode_reference.cu"
#include "decode_fp8_export.cu"
#include "fp8_kv.cu"
