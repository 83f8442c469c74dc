using System.Buffers;
using System.Text;

namespace FlashMla.Http2;

/// <summary>
/// Decodes the header blocks of one connection (RFC 7541): indexed fields, the three literal forms, dynamic
/// table size updates, the dynamic table and Huffman-coded strings (<see cref="HpackHuffman"/>).
/// </summary>
internal sealed class HpackDecoder
{
    private readonly int _maxCapacity;
    private readonly HpackDynamicTable _table;

    /// <param name="maxCapacity">The SETTINGS_HEADER_TABLE_SIZE this side advertised: the largest size update the peer may send.</param>
    public HpackDecoder(int maxCapacity)
    {
        _maxCapacity = maxCapacity;
        _table = new HpackDynamicTable(maxCapacity);
    }

    internal HpackDynamicTable Table => _table;

    /// <summary>
    /// Decodes one whole header block into <paramref name="headers"/> and returns the header list's size as
    /// SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113, section 6.5.2: name and value octets plus 32 per field).
    /// Fields past <paramref name="maxListSize"/> are decoded (the dynamic table must stay in step with the peer's
    /// encoder) but not added: a few bytes that index a large table entry again and again must not grow the list.
    /// Throws <see cref="HpackDecodingException"/> when the block is malformed (a connection error of type
    /// COMPRESSION_ERROR: the table may be out of step).
    /// </summary>
    public long Decode(ReadOnlySpan<byte> block, List<KeyValuePair<string, string>> headers, long maxListSize = long.MaxValue)
    {
        long listSize = 0;
        bool fieldSeen = false;
        int pos = 0;
        while (pos < block.Length)
        {
            byte first = block[pos];
            if ((first & 0x80) != 0)
            {
                // Indexed header field: 1xxxxxxx.
                int index = ReadInteger(block, ref pos, 7);
                if (index == 0) throw new HpackDecodingException("indexed header field with index 0");
                var (name, value) = Lookup(index);
                Emit(headers, name, value, ref listSize, maxListSize);
                fieldSeen = true;
            }
            else if ((first & 0xC0) == 0x40)
            {
                // Literal with incremental indexing: 01xxxxxx.
                var (name, value) = ReadLiteral(block, ref pos, 6);
                _table.Add(name, value);
                Emit(headers, name, value, ref listSize, maxListSize);
                fieldSeen = true;
            }
            else if ((first & 0xE0) == 0x20)
            {
                // Dynamic table size update: 001xxxxx, only before the first field (RFC 7541, section 4.2).
                if (fieldSeen) throw new HpackDecodingException("dynamic table size update after a header field");
                int capacity = ReadInteger(block, ref pos, 5);
                if (capacity > _maxCapacity)
                    throw new HpackDecodingException($"dynamic table size update to {capacity} bytes, above the {_maxCapacity} this client allows");
                _table.Resize(capacity);
            }
            else
            {
                // Literal without indexing 0000xxxx, or never indexed 0001xxxx: the same to a decoder.
                var (name, value) = ReadLiteral(block, ref pos, 4);
                Emit(headers, name, value, ref listSize, maxListSize);
                fieldSeen = true;
            }
        }
        return listSize;
    }

    /// <summary>Header field overhead in SETTINGS_MAX_HEADER_LIST_SIZE's count (RFC 9113, section 6.5.2).</summary>
    public const int FieldOverhead = 32;

    private static void Emit(List<KeyValuePair<string, string>> headers, string name, string value, ref long listSize, long maxListSize)
    {
        // Latin-1 strings: one char per octet received.
        listSize += name.Length + value.Length + FieldOverhead;
        if (listSize <= maxListSize) headers.Add(new(name, value));
    }

    private (string Name, string Value) ReadLiteral(ReadOnlySpan<byte> block, ref int pos, int prefixBits)
    {
        int nameIndex = ReadInteger(block, ref pos, prefixBits);
        string name = nameIndex == 0 ? ReadString(block, ref pos) : Lookup(nameIndex).Name;
        return (name, ReadString(block, ref pos));
    }

    private static string ReadString(ReadOnlySpan<byte> block, ref int pos)
    {
        if (pos >= block.Length) throw new HpackDecodingException("header block ends inside a string literal");
        bool huffman = (block[pos] & 0x80) != 0;
        int length = ReadInteger(block, ref pos, 7);
        if (length > block.Length - pos) throw new HpackDecodingException($"string literal of {length} bytes runs past the end of the header block");
        var bytes = block.Slice(pos, length);
        pos += length;
        if (!huffman) return Encoding.Latin1.GetString(bytes);
        int most = HpackHuffman.MaxDecodedLength(length);
        byte[]? rented = most > 512 ? ArrayPool<byte>.Shared.Rent(most) : null;
        try
        {
            Span<byte> decoded = rented ?? stackalloc byte[512];
            return Encoding.Latin1.GetString(decoded[..HpackHuffman.Decode(bytes, decoded)]);
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private (string Name, string Value) Lookup(int index)
    {
        if (index <= HpackStaticTable.Count) return HpackStaticTable.Get(index);
        int dynamic = index - HpackStaticTable.Count;
        if (dynamic > _table.Count)
            throw new HpackDecodingException($"header index {index} is past the end of the tables ({HpackStaticTable.Count} static, {_table.Count} dynamic)");
        return _table.Get(dynamic);
    }

    /// <summary>An HPACK integer with an N-bit prefix (RFC 7541, section 5.1), at most <see cref="int.MaxValue"/>.</summary>
    internal static int ReadInteger(ReadOnlySpan<byte> block, ref int pos, int prefixBits)
    {
        if (pos >= block.Length) throw new HpackDecodingException("header block ends inside an integer");
        int max = (1 << prefixBits) - 1;
        int value = block[pos++] & max;
        if (value < max) return value;
        long total = value;
        for (int shift = 0; ; shift += 7)
        {
            if (pos >= block.Length) throw new HpackDecodingException("header block ends inside an integer");
            if (shift > 28) throw new HpackDecodingException("integer longer than 31 bits");
            byte b = block[pos++];
            total += (long)(b & 0x7F) << shift;
            if (total > int.MaxValue) throw new HpackDecodingException("integer longer than 31 bits");
            if ((b & 0x80) == 0) return (int)total;
        }
    }
}

/// <summary>A malformed header block (RFC 7541 decoding error): a connection error of type COMPRESSION_ERROR.</summary>
internal sealed class HpackDecodingException(string message) : Exception("HPACK: " + message);
