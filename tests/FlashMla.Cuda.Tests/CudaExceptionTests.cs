using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Tests;

public class CudaExceptionTests
{
    [Fact]
    public void Message_names_the_call_the_error_its_code_and_the_drivers_words()
    {
        var e = new CudaException(CUresult.CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc(1024 bytes)", "CUDA_ERROR_OUT_OF_MEMORY", "out of memory");

        Assert.Equal("cuMemAlloc(1024 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory", e.Message);
        Assert.Equal(CUresult.CUDA_ERROR_OUT_OF_MEMORY, e.Result);
        Assert.Equal("CUDA_ERROR_OUT_OF_MEMORY", e.ErrorName);
        Assert.Equal("cuMemAlloc(1024 bytes)", e.Operation);
        Assert.False(e.IsSticky);
    }

    [Fact]
    public void A_sticky_error_says_the_context_is_lost()
    {
        var e = new CudaException(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS, "cuStreamSynchronize(decode)", "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered");

        Assert.True(e.IsSticky);
        Assert.Equal("cuStreamSynchronize(decode) failed: CUDA_ERROR_ILLEGAL_ADDRESS (700): an illegal memory access was encountered (sticky: the CUDA context is lost)", e.Message);
    }

    [Theory]
    [InlineData(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS, true)]
    [InlineData(CUresult.CUDA_ERROR_LAUNCH_FAILED, true)]
    [InlineData(CUresult.CUDA_ERROR_ECC_UNCORRECTABLE, true)]
    [InlineData(CUresult.CUDA_ERROR_HARDWARE_STACK_ERROR, true)]
    [InlineData(CUresult.CUDA_ERROR_ILLEGAL_INSTRUCTION, true)]
    [InlineData(CUresult.CUDA_ERROR_MISALIGNED_ADDRESS, true)]
    [InlineData(CUresult.CUDA_ERROR_INVALID_PC, true)]
    [InlineData(CUresult.CUDA_ERROR_ASSERT, true)]
    [InlineData(CUresult.CUDA_ERROR_LAUNCH_TIMEOUT, true)]
    [InlineData(CUresult.CUDA_ERROR_OUT_OF_MEMORY, false)]
    [InlineData(CUresult.CUDA_ERROR_INVALID_VALUE, false)]
    [InlineData(CUresult.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, false)]
    [InlineData(CUresult.CUDA_ERROR_NOT_FOUND, false)]
    [InlineData(CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU, false)]
    public void Stickiness_follows_the_drivers_list_of_context_corrupting_errors(CUresult result, bool sticky)
    {
        Assert.Equal(sticky, CudaException.IsStickyResult(result));
    }

    [Fact]
    public void An_unnamed_code_falls_back_to_its_number()
    {
        Assert.Equal("CUDA_ERROR_ILLEGAL_ADDRESS", CudaException.FallbackName(CUresult.CUDA_ERROR_ILLEGAL_ADDRESS));
        Assert.Equal("CUDA_ERROR_912", CudaException.FallbackName((CUresult)912));
    }
}
