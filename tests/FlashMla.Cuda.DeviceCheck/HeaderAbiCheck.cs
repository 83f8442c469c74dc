using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>Compares the C# mirror of the kernel ABI with the header the fatbin was built from.</summary>
internal static partial class HeaderAbiCheck
{
    public static List<string> Compare(string headerPath)
    {
        string text = File.ReadAllText(headerPath);
        var defines = new Dictionary<string, string>();
        foreach (Match m in DefineLine().Matches(text)) defines[m.Groups[1].Value] = m.Groups[2].Value.Trim();
        var sizes = new Dictionary<string, int>();
        foreach (Match m in SizeAssert().Matches(text)) sizes[m.Groups[1].Value] = int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);

        var problems = new List<string>();
        void Int(string name, int mine)
        {
            if (!defines.TryGetValue(name, out string? value)) problems.Add($"{name} is not in the header");
            else if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int theirs) || theirs != mine)
                problems.Add($"{name}: header {value}, C# {mine}");
        }
        void Str(string name, string mine)
        {
            if (!defines.TryGetValue(name, out string? value)) problems.Add($"{name} is not in the header");
            else if (value != "\"" + mine + "\"") problems.Add($"{name}: header {value}, C# \"{mine}\"");
        }
        void Size(string type, int mine)
        {
            if (!sizes.TryGetValue(type, out int theirs)) problems.Add($"no size assert for {type} in the header");
            else if (theirs != mine) problems.Add($"sizeof({type}): header {theirs}, C# {mine}");
        }

        Int("MLA_ABI_VERSION", MlaKernelAbi.AbiVersion);
        Int("MLA_HEAD_DIM_K", MlaKernelAbi.HeadDimK);
        Int("MLA_HEAD_DIM_V", MlaKernelAbi.HeadDimV);
        Int("MLA_PAGE_TOKENS", MlaKernelAbi.PageTokens);
        Int("MLA_MAX_H_Q", MlaKernelAbi.MaxHeads);
        Int("MLA_MAX_ROWS_PER_SEQ", MlaKernelAbi.MaxRowsPerSeq);
        Int("MLA_ROWS_PER_CTA", MlaKernelAbi.RowsPerCta);
        Int("MLA_SCHED_INTS", MlaKernelAbi.SchedInts);
        Int("MLA_SCHED_FIXED_COST_PAGES", MlaKernelAbi.SchedFixedCostPages);
        Int("MLA_SCHED_BEGIN_SEQ", Core.Metadata.TileScheduler.BeginSeq);
        Int("MLA_SCHED_BEGIN_BLOCK", Core.Metadata.TileScheduler.BeginBlock);
        Int("MLA_SCHED_END_SEQ", Core.Metadata.TileScheduler.EndSeq);
        Int("MLA_SCHED_END_BLOCK", Core.Metadata.TileScheduler.EndBlock);
        Int("MLA_SCHED_BEGIN_SPLIT", Core.Metadata.TileScheduler.BeginSplit);
        Str("MLA_KERNEL_DECODE", MlaKernelAbi.KernelDecode);
        Str("MLA_DECODE_CLUSTER_WIDTH_SUFFIX", MlaKernelAbi.DecodeClusterWidthSuffix);
        Int("MLA_DECODE_THREADS", MlaKernelAbi.DecodeThreads);
        Int("MLA_DECODE_SMEM_BYTES", MlaKernelAbi.DecodeSmemBytes);
        Str("MLA_KERNEL_COMBINE", MlaKernelAbi.KernelCombine);
        Int("MLA_COMBINE_THREADS", MlaKernelAbi.CombineThreads);
        Int("MLA_COMBINE_ROWS_PER_CTA", MlaKernelAbi.CombineRowsPerCta);
        Str("MLA_KERNEL_APPEND", MlaKernelAbi.KernelAppend);
        Int("MLA_APPEND_THREADS", MlaKernelAbi.AppendThreads);
        Int("MLA_APPEND_ROWS_PER_CTA", MlaKernelAbi.AppendRowsPerCta);
        Str("MLA_KERNEL_COPY", MlaKernelAbi.KernelCopy);
        Int("MLA_COPY_THREADS", MlaKernelAbi.CopyThreads);
        // The fp8 cache (issue 17): its kernels, the decode's dynamic shared memory and the token layout.
        Str("MLA_KERNEL_DECODE_FP8", MlaKernelAbi.KernelDecodeFp8);
        Int("MLA_DECODE_FP8_SMEM_BYTES", MlaKernelAbi.DecodeFp8SmemBytes);
        Str("MLA_KERNEL_APPEND_FP8", MlaKernelAbi.KernelAppendFp8);
        Str("MLA_KERNEL_APPEND_FP8_RAW", MlaKernelAbi.KernelAppendFp8Raw);
        Str("MLA_KERNEL_COPY_FP8", MlaKernelAbi.KernelCopyFp8);
        Int("MLA_FP8_TOKEN_BYTES", MlaKernelAbi.Fp8TokenBytes);
        Int("MLA_FP8_SCALE_OFFSET", Core.Tensors.Fp8KvFormat.ScalesOffset);
        Int("MLA_FP8_ROPE_OFFSET", Core.Tensors.Fp8KvFormat.RopeOffset);
        Int("MLA_FP8_TILE", Core.Tensors.Fp8KvFormat.TileValues);
        Size("MlaDecodeParams", Marshal.SizeOf<MlaDecodeParams>());
        Size("KvAppendParams", Marshal.SizeOf<KvAppendParams>());
        Size("BlockCopyParams", Marshal.SizeOf<BlockCopyParams>());
        return problems;
    }

    [GeneratedRegex(@"^#define\s+(MLA_\w+)\s+([^/\r\n]+)", RegexOptions.Multiline)]
    private static partial Regex DefineLine();

    [GeneratedRegex(@"static_assert\(sizeof\((\w+)\)\s*==\s*(\d+)")]
    private static partial Regex SizeAssert();
}
