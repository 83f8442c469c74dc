namespace FlashMla.Http2;

/// <summary>
/// Encodes header fields (RFC 7541) without state: static-table indexes where a whole field matches,
/// otherwise literals without indexing, so the peer's decoder table never changes. A string is Huffman-coded
/// (<see cref="HpackHuffman"/>) when that is shorter, as other encoders do.
/// Each method returns false when <c>destination</c> is too small (the caller grows its buffer and retries).
/// </summary>
internal static class HpackEncoder
{
    /// <summary>A whole field from the static table: <c>1xxxxxxx</c>.</summary>
    public static bool TryEncodeIndexed(int index, Span<byte> destination, out int written) =>
        TryEncodeInteger(index, 7, 0x80, destination, out written);

    /// <summary>A literal value under a static-table name: <c>0000xxxx</c> then the value.</summary>
    public static bool TryEncodeLiteral(int nameIndex, string value, Span<byte> destination, out int written)
    {
        written = 0;
        if (!TryEncodeInteger(nameIndex, 4, 0x00, destination, out int n)) return false;
        if (!TryEncodeString(value, lowercase: false, destination[n..], out int m)) return false;
        written = n + m;
        return true;
    }

    /// <summary>A literal name (written in lower case, as HTTP/2 requires) and value: <c>00000000</c>, name, value.</summary>
    public static bool TryEncodeLiteral(string name, string value, Span<byte> destination, out int written)
    {
        written = 0;
        if (destination.IsEmpty) return false;
        destination[0] = 0;
        if (!TryEncodeString(name, lowercase: true, destination[1..], out int n)) return false;
        if (!TryEncodeString(value, lowercase: false, destination[(1 + n)..], out int m)) return false;
        written = 1 + n + m;
        return true;
    }

    /// <summary>A dynamic table size update: <c>001xxxxx</c> (only tests need to write one).</summary>
    public static bool TryEncodeSizeUpdate(int size, Span<byte> destination, out int written) =>
        TryEncodeInteger(size, 5, 0x20, destination, out written);

    public static bool TryEncodeInteger(int value, int prefixBits, byte pattern, Span<byte> destination, out int written)
    {
        written = 0;
        if (destination.IsEmpty) return false;
        int max = (1 << prefixBits) - 1;
        if (value < max)
        {
            destination[0] = (byte)(pattern | value);
            written = 1;
            return true;
        }
        destination[0] = (byte)(pattern | max);
        int pos = 1;
        value -= max;
        while (value >= 0x80)
        {
            if (pos >= destination.Length) return false;
            destination[pos++] = (byte)(value | 0x80);
            value >>= 7;
        }
        if (pos >= destination.Length) return false;
        destination[pos++] = (byte)value;
        written = pos;
        return true;
    }

    private static bool TryEncodeString(string value, bool lowercase, Span<byte> destination, out int written)
    {
        written = 0;
        int huffmanLength = HpackHuffman.EncodedLength(value, lowercase);
        bool huffman = huffmanLength < value.Length;
        int length = huffman ? huffmanLength : value.Length;
        if (!TryEncodeInteger(length, 7, huffman ? (byte)0x80 : (byte)0x00, destination, out int n)) return false;
        if (destination.Length - n < length) return false;
        var target = destination.Slice(n, length);
        if (huffman)
        {
            HpackHuffman.Encode(value, lowercase, target);
        }
        else
        {
            for (int i = 0; i < value.Length; i++)
            {
                char c = value[i]; // Latin-1: EncodedLength checked
                if (lowercase && c is >= 'A' and <= 'Z') c = (char)(c + 32);
                target[i] = (byte)c;
            }
        }
        written = n + length;
        return true;
    }
}
