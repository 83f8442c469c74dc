// flashmla_module.cu -- the one translation unit nvcc turns into
// build/flashmla.fatbin (nvcc --fatbin takes a single input). Each kernel
// keeps its own file; this file only gathers them. The check harness
// compiles this same file, so the service and the checks run the same code.
// The decode implementations come first; decode_export.cu wraps the one
// mla_config.h's MLA_DECODE_EXPORT selects as flashmla_decode_splitkv.
#include "decode_splitkv.cu"
#include "decode_sm90_roles.cu"
#include "decode_sm90_tma.cu"
#include "decode_export.cu"
#include "combine.cu"
#include "append_kv.cu"
#include "copy_blocks.cu"
#include "decode_reference.cu"
