using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>A host copy of every pool row the tests wrote, to compute references and compare read-backs.</summary>
internal sealed class KvMirror(int layers, int blocks)
{
    private readonly ushort[][] _rows = Enumerable.Range(0, layers).Select(_ => new ushort[(long)blocks * MlaDims.BlockSize * MlaDims.HeadDimK]).ToArray();
    private readonly bool[][] _written = Enumerable.Range(0, layers).Select(_ => new bool[blocks * MlaDims.BlockSize]).ToArray();

    public int Layers => layers;
    public int Blocks => blocks;

    public ReadOnlySpan<ushort> Row(int layer, int slot) => _rows[layer].AsSpan(slot * MlaDims.HeadDimK, MlaDims.HeadDimK);

    public bool Written(int layer, int slot) => _written[layer][slot];

    public void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        for (int n = 0; n < slots.Length; n++)
        {
            rows.Slice(n * MlaDims.HeadDimK, MlaDims.HeadDimK).CopyTo(_rows[layer].AsSpan(slots[n] * MlaDims.HeadDimK));
            _written[layer][slots[n]] = true;
        }
    }

    /// <summary>Sequential copy-on-write semantics: each copy sees the ones before it.</summary>
    public void CopyBlock(int source, int destination)
    {
        int rowsPerBlock = MlaDims.BlockSize * MlaDims.HeadDimK;
        for (int l = 0; l < layers; l++)
        {
            Array.Copy(_rows[l], (long)source * rowsPerBlock, _rows[l], (long)destination * rowsPerBlock, rowsPerBlock);
            Array.Copy(_written[l], source * MlaDims.BlockSize, _written[l], destination * MlaDims.BlockSize, MlaDims.BlockSize);
        }
    }

    /// <summary>Sequence <paramref name="sequence"/>'s first <paramref name="length"/> rows, gathered through its block table.</summary>
    public ushort[] Sequence(int layer, ReadOnlySpan<int> blockTable, int stride, int sequence, int length)
    {
        var rows = new ushort[length * MlaDims.HeadDimK];
        for (int t = 0; t < length; t++)
        {
            int slot = blockTable[sequence * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize;
            Row(layer, slot).CopyTo(rows.AsSpan(t * MlaDims.HeadDimK));
        }
        return rows;
    }
}
