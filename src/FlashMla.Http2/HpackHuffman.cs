namespace FlashMla.Http2;

/// <summary>
/// The Huffman code of HPACK string literals (RFC 7541, section 5.2 and appendix B). The code is canonical:
/// codes of one length are consecutive in symbol order and every shorter code sorts before a longer one, so
/// the table is fully given by each symbol's code length, and both directions are built from that alone.
/// Decoding compares the next 32 bits, left-aligned, against each length's first code past its range.
/// </summary>
internal static class HpackHuffman
{
    /// <summary>The end-of-string symbol: its code (30 ones) must never appear inside a string.</summary>
    public const int Eos = 256;

    /// <summary>
    /// Code length in bits of each symbol 0..255 and of EOS (256), in symbol order: appendix B's "len" column.
    /// </summary>
    private static ReadOnlySpan<byte> CodeLengths =>
    [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0..31
        6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,                     // ' '..'?'
        13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,                           // '@'..'_'
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,                          // '`'..127
        20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 128..159
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 160..191
        26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 192..223
        20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 224..255
        30,                                                                                                                             // EOS
    ];

    private const int MaxLength = 30;

    /// <summary>Each symbol's code, right-aligned in the low <see cref="Lengths"/> bits.</summary>
    private static readonly uint[] Codes = new uint[257];
    private static readonly byte[] Lengths = new byte[257];

    /// <summary>Symbols ordered by (length, symbol): the order codes are assigned in.</summary>
    private static readonly ushort[] SymbolsByCode = new ushort[257];

    /// <summary>Per length: the first code of that length, and its symbols' start in <see cref="SymbolsByCode"/>.</summary>
    private static readonly uint[] FirstCode = new uint[MaxLength + 2];
    private static readonly int[] FirstIndex = new int[MaxLength + 2];

    /// <summary>Per length: the 32-bit left-aligned bound below which the next code has at most that length.</summary>
    private static readonly ulong[] LimitLeftAligned = new ulong[MaxLength + 1];

    static HpackHuffman()
    {
        var lengths = CodeLengths;
        int index = 0;
        for (int length = 1; length <= MaxLength; length++)
        {
            FirstIndex[length] = index;
            for (int symbol = 0; symbol < lengths.Length; symbol++)
                if (lengths[symbol] == length) SymbolsByCode[index++] = (ushort)symbol;
        }
        FirstIndex[MaxLength + 1] = index;
        uint code = 0;
        for (int length = 1; length <= MaxLength; length++)
        {
            FirstCode[length] = code;
            int count = FirstIndex[length + 1] - FirstIndex[length];
            for (int i = 0; i < count; i++)
            {
                int symbol = SymbolsByCode[FirstIndex[length] + i];
                Codes[symbol] = code + (uint)i;
                Lengths[symbol] = (byte)length;
            }
            code = (code + (uint)count) << 1;
            LimitLeftAligned[length] = (ulong)(FirstCode[length] + (uint)count) << (32 - length);
        }
    }

    /// <summary>Code and length of <paramref name="symbol"/> (0..256), for tests against appendix B.</summary>
    public static (uint Code, int Length) CodeOf(int symbol) => (Codes[symbol], Lengths[symbol]);

    /// <summary>Bytes the Huffman form of <paramref name="value"/> takes (Latin-1 characters; lower-cased when asked).</summary>
    public static int EncodedLength(string value, bool lowercase)
    {
        long bits = 0;
        foreach (char c in value) bits += Lengths[ToByte(c, lowercase, value)];
        return (int)((bits + 7) / 8);
    }

    /// <summary>Writes the Huffman form of <paramref name="value"/>, padded with the most significant bits of EOS (ones).</summary>
    public static int Encode(string value, bool lowercase, Span<byte> destination)
    {
        ulong pending = 0;
        int pendingBits = 0, pos = 0;
        foreach (char c in value)
        {
            int symbol = ToByte(c, lowercase, value);
            pending = (pending << Lengths[symbol]) | Codes[symbol];
            pendingBits += Lengths[symbol];
            while (pendingBits >= 8)
            {
                pendingBits -= 8;
                destination[pos++] = (byte)(pending >> pendingBits);
            }
        }
        if (pendingBits > 0) destination[pos++] = (byte)((pending << (8 - pendingBits)) | (0xFFu >> pendingBits));
        return pos;
    }

    /// <summary>
    /// Decodes <paramref name="source"/> into <paramref name="destination"/> (which must hold
    /// <c>source.Length * 8 / 5</c> bytes, the most a code of at least 5 bits can yield) and returns the length.
    /// Throws <see cref="HpackDecodingException"/> for EOS inside the string, padding longer than 7 bits or not all
    /// ones, or a code cut off by the end (section 5.2).
    /// </summary>
    public static int Decode(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        ulong buffer = 0; // the next unread bits, left-aligned at bit 63
        int bufferBits = 0, next = 0, written = 0;
        while (true)
        {
            while (bufferBits <= 56 && next < source.Length)
            {
                buffer |= (ulong)source[next++] << (56 - bufferBits);
                bufferBits += 8;
            }
            if (bufferBits == 0) return written;
            if (bufferBits <= 7 && buffer >> (64 - bufferBits) == (1UL << bufferBits) - 1) return written; // padding: a prefix of EOS
            ulong window = (buffer >> 32) | (bufferBits < 32 ? 0xFFFF_FFFFUL >> bufferBits : 0); // past the end reads as ones
            int length = 5;
            while (window >= LimitLeftAligned[length])
            {
                if (++length > MaxLength) throw new HpackDecodingException("Huffman string holds a code not in the table");
            }
            if (length > bufferBits)
            {
                bool ones = buffer >> (64 - bufferBits) == (1UL << bufferBits) - 1;
                throw new HpackDecodingException(ones ? "Huffman padding longer than 7 bits" : "Huffman string ends inside a code, or its padding is not all ones");
            }
            int symbol = SymbolsByCode[FirstIndex[length] + (int)((window >> (32 - length)) - FirstCode[length])];
            if (symbol == Eos) throw new HpackDecodingException("Huffman string holds the EOS symbol");
            destination[written++] = (byte)symbol;
            buffer <<= length;
            bufferBits -= length;
        }
    }

    /// <summary>The largest output <see cref="Decode"/> can write for <paramref name="sourceLength"/> input bytes.</summary>
    public static int MaxDecodedLength(int sourceLength) => (int)((long)sourceLength * 8 / 5);

    private static int ToByte(char c, bool lowercase, string value)
    {
        if (c > 0xFF) throw new HttpRequestException($"header value '{value}' holds a character outside Latin-1");
        if (lowercase && c is >= 'A' and <= 'Z') c = (char)(c + 32);
        return c;
    }
}
