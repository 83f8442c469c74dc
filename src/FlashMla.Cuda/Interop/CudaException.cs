using System.Runtime.InteropServices;

namespace FlashMla.Cuda.Interop;

/// <summary>
/// A CUDA driver call that returned anything but <c>CUDA_SUCCESS</c>. <see cref="IsSticky"/> marks
/// the errors after which the context is corrupt and every later call fails the same way: the
/// process must restart to use the GPU again.
/// </summary>
public sealed class CudaException : Exception
{
    public CudaException(CUresult result, string operation, string errorName, string description)
        : base(Format(result, operation, errorName, description))
    {
        Result = result;
        Operation = operation;
        ErrorName = errorName;
        IsSticky = IsStickyResult(result);
    }

    public CUresult Result { get; }

    /// <summary>The driver function that failed, and what it was doing (e.g. "cuLaunchKernel(mla_decode)").</summary>
    public string Operation { get; }

    /// <summary>The driver's name for the error, e.g. <c>CUDA_ERROR_ILLEGAL_ADDRESS</c>.</summary>
    public string ErrorName { get; }

    public bool IsSticky { get; }

    /// <summary>
    /// The errors the driver documents as leaving the context unusable ("the process must be
    /// terminated and relaunched"), and uncorrectable memory or link errors.
    /// </summary>
    public static bool IsStickyResult(CUresult result) => result switch
    {
        CUresult.CUDA_ERROR_ECC_UNCORRECTABLE
            or CUresult.CUDA_ERROR_NVLINK_UNCORRECTABLE
            or CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
            or CUresult.CUDA_ERROR_LAUNCH_TIMEOUT
            or CUresult.CUDA_ERROR_ASSERT
            or CUresult.CUDA_ERROR_HARDWARE_STACK_ERROR
            or CUresult.CUDA_ERROR_ILLEGAL_INSTRUCTION
            or CUresult.CUDA_ERROR_MISALIGNED_ADDRESS
            or CUresult.CUDA_ERROR_INVALID_ADDRESS_SPACE
            or CUresult.CUDA_ERROR_INVALID_PC
            or CUresult.CUDA_ERROR_LAUNCH_FAILED => true,
        _ => false,
    };

    internal static string Format(CUresult result, string operation, string errorName, string description)
    {
        string sticky = IsStickyResult(result) ? " (sticky: the CUDA context is lost)" : "";
        return $"{operation} failed: {errorName} ({(int)result}): {description}{sticky}";
    }

    /// <summary>The one place a <c>CUresult</c> becomes an exception.</summary>
    internal static void Check(CUresult result, string operation)
    {
        if (result != CUresult.CUDA_SUCCESS) throw FromResult(result, operation);
    }

    internal static CudaException FromResult(CUresult result, string operation)
    {
        // A result came back, so the library is loaded; the lookups fail only for unknown codes.
        string name = CudaDriver.cuGetErrorName(result, out IntPtr namePtr) == CUresult.CUDA_SUCCESS && namePtr != IntPtr.Zero
            ? Marshal.PtrToStringUTF8(namePtr) ?? FallbackName(result)
            : FallbackName(result);
        string text = CudaDriver.cuGetErrorString(result, out IntPtr textPtr) == CUresult.CUDA_SUCCESS && textPtr != IntPtr.Zero
            ? Marshal.PtrToStringUTF8(textPtr) ?? "no description"
            : "no description";
        return new CudaException(result, operation, name, text);
    }

    internal static string FallbackName(CUresult result) =>
        Enum.IsDefined(result) ? result.ToString() : "CUDA_ERROR_" + ((int)result).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
