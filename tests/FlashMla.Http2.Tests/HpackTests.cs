using FlashMla.Http2;
using System.Text;

namespace FlashMla.Http2.Tests;

/// <summary>HPACK: the stateless encoder, and the decoder with its dynamic table (Huffman strings: <see cref="HuffmanTests"/>).</summary>
public sealed class HpackTests
{
    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    private static List<KeyValuePair<string, string>> Decode(HpackDecoder decoder, byte[] block)
    {
        var headers = new List<KeyValuePair<string, string>>();
        decoder.Decode(block, headers);
        return headers;
    }

    /// <summary>A literal with incremental indexing and a new name (what a server's encoder writes to fill the table).</summary>
    private static byte[] IndexedLiteral(string name, string value)
    {
        var buffer = new byte[name.Length + value.Length + 16];
        Assert.True(HpackEncoder.TryEncodeLiteral(name, value, buffer, out int n));
        buffer[0] = 0x40;
        return buffer[..n];
    }

    [Fact]
    public void Decode_returns_the_header_list_size_and_past_the_limit_keeps_the_table_in_step_but_adds_no_more_fields()
    {
        // Two new literals with indexing, then the first one indexed again 100 times, one byte for 1035 bytes of
        // list each: the amplification a list limit must not let grow the list.
        var block = new List<byte>();
        block.AddRange(IndexedLiteral("x-a", new string('a', 1000)));
        block.AddRange(IndexedLiteral("x-b", "b"));
        for (int i = 0; i < 100; i++) block.Add(0x80 | (HpackStaticTable.Count + 2)); // "x-a", the older entry
        long fieldA = 3 + 1000 + HpackDecoder.FieldOverhead, fieldB = 3 + 1 + HpackDecoder.FieldOverhead;

        var unlimited = new List<KeyValuePair<string, string>>();
        Assert.Equal(101 * fieldA + fieldB, new HpackDecoder(4096).Decode(block.ToArray(), unlimited));
        Assert.Equal(102, unlimited.Count);

        var decoder = new HpackDecoder(4096);
        var limited = new List<KeyValuePair<string, string>>();
        Assert.Equal(101 * fieldA + fieldB, decoder.Decode(block.ToArray(), limited, maxListSize: 3 * fieldA));
        Assert.Equal(["x-a", "x-b", "x-a"], limited.Select(f => f.Key).ToArray()); // 2 fieldA + fieldB fit, a third fieldA does not
        // The table holds both literals: the next block's references decode as the encoder meant them.
        Assert.Equal([new("x-b", "b")], Decode(decoder, [(byte)(0x80 | (HpackStaticTable.Count + 1))]));
    }

    [Fact]
    public void The_RFC_7541_C3_requests_decode_and_fill_the_dynamic_table()
    {
        // RFC 7541, appendix C.3: three requests without Huffman coding sharing one dynamic table.
        var decoder = new HpackDecoder(maxCapacity: 4096);
        var first = Decode(decoder, Hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"));
        Assert.Equal([new(":method", "GET"), new(":scheme", "http"), new(":path", "/"), new(":authority", "www.example.com")], first);
        Assert.Equal(57, decoder.Table.Size);

        var second = Decode(decoder, Hex("8286 84be 5808 6e6f 2d63 6163 6865"));
        Assert.Equal(new KeyValuePair<string, string>(":authority", "www.example.com"), second[3]);
        Assert.Equal(new KeyValuePair<string, string>("cache-control", "no-cache"), second[4]);
        Assert.Equal(110, decoder.Table.Size);

        var third = Decode(decoder, Hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"));
        Assert.Equal([new(":method", "GET"), new(":scheme", "https"), new(":path", "/index.html"), new(":authority", "www.example.com"),
            new("custom-key", "custom-value")], third);
        Assert.Equal(164, decoder.Table.Size);
        Assert.Equal(("custom-key", "custom-value"), decoder.Table.Get(1));
        Assert.Equal((":authority", "www.example.com"), decoder.Table.Get(3));
    }

    [Fact]
    public void The_oldest_entries_are_evicted_when_the_table_is_full_and_a_too_large_entry_empties_it()
    {
        var decoder = new HpackDecoder(maxCapacity: 100);
        Decode(decoder, IndexedLiteral("aaaa", "1111")); // 40 bytes
        Decode(decoder, IndexedLiteral("bbbb", "2222")); // 80 bytes
        Decode(decoder, IndexedLiteral("cccc", "3333")); // 120 > 100: "aaaa" goes
        Assert.Equal(2, decoder.Table.Count);
        Assert.Equal(80, decoder.Table.Size);
        Assert.Equal(("cccc", "3333"), decoder.Table.Get(1));
        Assert.Equal(("bbbb", "2222"), decoder.Table.Get(2));
        // Index 62 is the newest dynamic entry, 63 the one before.
        Assert.Equal([new("bbbb", "2222")], Decode(decoder, [0x80 | 63]));

        Decode(decoder, IndexedLiteral("big", new string('x', 70))); // 105 bytes: larger than the table
        Assert.Equal(0, decoder.Table.Count);
        Assert.Equal(0, decoder.Table.Size);
    }

    [Fact]
    public void Size_updates_shrink_the_table_only_at_the_start_of_a_block_and_never_above_the_advertised_size()
    {
        var decoder = new HpackDecoder(maxCapacity: 4096);
        Decode(decoder, IndexedLiteral("aaaa", "1111"));
        Decode(decoder, IndexedLiteral("bbbb", "2222"));
        var update = new byte[8];
        Assert.True(HpackEncoder.TryEncodeSizeUpdate(50, update, out int n));
        var headers = Decode(decoder, [.. update[..n], 0x88]); // size update, then :status 200
        Assert.Equal([new(":status", "200")], headers);
        Assert.Equal(50, decoder.Table.Capacity);
        Assert.Equal(("bbbb", "2222"), decoder.Table.Get(1));
        Assert.Equal(1, decoder.Table.Count);

        var late = Assert.Throws<HpackDecodingException>(() => decoder.Decode([0x88, 0x20], []));
        Assert.Contains("size update after a header field", late.Message);
        Assert.True(HpackEncoder.TryEncodeSizeUpdate(5000, update, out n));
        var above = Assert.Throws<HpackDecodingException>(() => decoder.Decode(update[..n], []));
        Assert.Contains("above the 4096", above.Message);
    }

    [Fact]
    public void With_table_size_0_an_indexed_literal_is_decoded_but_never_stored()
    {
        var decoder = new HpackDecoder(maxCapacity: 0);
        Assert.Equal([new("grpc-status", "0")], Decode(decoder, IndexedLiteral("grpc-status", "0")));
        Assert.Equal(0, decoder.Table.Count);
        var error = Assert.Throws<HpackDecodingException>(() => decoder.Decode([0x80 | 62], []));
        Assert.Contains("past the end of the tables", error.Message);
    }

    [Theory]
    [InlineData(new byte[] { 0x80 }, "index 0")]
    [InlineData(new byte[] { 0xFF }, "ends inside an integer")]
    [InlineData(new byte[] { 0xFF, 0x80 }, "ends inside an integer")]
    [InlineData(new byte[] { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F }, "longer than 31 bits")]
    [InlineData(new byte[] { 0x00, 0x05, 0x61 }, "runs past the end")]
    [InlineData(new byte[] { 0x00 }, "ends inside a string")]
    [InlineData(new byte[] { 0x0F, 0x30 }, "past the end of the tables")]
    public void Malformed_blocks_are_decoding_errors_that_say_what_is_wrong(byte[] block, string why)
    {
        var error = Assert.Throws<HpackDecodingException>(() => new HpackDecoder(0).Decode(block, []));
        Assert.Contains(why, error.Message);
    }

    [Fact]
    public void Encoded_request_fields_round_trip_through_the_decoder_with_lower_case_names()
    {
        var buffer = new byte[4096];
        int pos = 0;
        void Add(bool ok, int n)
        {
            Assert.True(ok);
            pos += n;
        }
        Add(HpackEncoder.TryEncodeIndexed(HpackStaticTable.MethodPost, buffer.AsSpan(pos), out int n1), n1);
        Add(HpackEncoder.TryEncodeLiteral(HpackStaticTable.Path, "/flashmla.v1.Decoder/Decode", buffer.AsSpan(pos), out int n2), n2);
        string longValue = new('v', 300); // length needs a multi-byte integer
        Add(HpackEncoder.TryEncodeLiteral("Grpc-Timeout", longValue, buffer.AsSpan(pos), out int n3), n3);
        Add(HpackEncoder.TryEncodeLiteral("TE", "trailers", buffer.AsSpan(pos), out int n4), n4);

        var headers = Decode(new HpackDecoder(0), buffer[..pos]);
        Assert.Equal([new(":method", "POST"), new(":path", "/flashmla.v1.Decoder/Decode"), new("grpc-timeout", longValue), new("te", "trailers")], headers);
        Assert.False(HpackEncoder.TryEncodeLiteral("x", longValue, new byte[100], out _));
        Assert.Throws<HttpRequestException>(() => HpackEncoder.TryEncodeLiteral("x", "\u4e2d", new byte[100], out _));
    }

    [Theory]
    [InlineData(0, 5)]
    [InlineData(30, 5)]
    [InlineData(31, 5)]
    [InlineData(1337, 5)]
    [InlineData(127, 7)]
    [InlineData(int.MaxValue, 4)]
    public void Integers_round_trip_at_the_prefix_boundaries(int value, int prefixBits)
    {
        var buffer = new byte[8];
        Assert.True(HpackEncoder.TryEncodeInteger(value, prefixBits, 0, buffer, out int written));
        int pos = 0;
        Assert.Equal(value, HpackDecoder.ReadInteger(buffer.AsSpan(0, written), ref pos, prefixBits));
        Assert.Equal(written, pos);
        if (value == 1337 && prefixBits == 5) Assert.Equal(Hex("1f9a0a"), buffer[..written]); // RFC 7541, C.1.2
    }

    [Fact]
    public void Header_values_are_latin1_bytes_both_ways()
    {
        var buffer = new byte[64];
        // Huffman would take 5 bytes for these 4 (the e-acute alone has a 22-bit code), so the literal stays raw.
        Assert.True(HpackEncoder.TryEncodeLiteral("x-name", "caf\u00e9", buffer, out int n));
        Assert.Equal(4, buffer[n - 5]);
        Assert.Equal(Encoding.Latin1.GetBytes("caf\u00e9"), buffer[(n - 4)..n]);
        Assert.Equal("caf\u00e9", Decode(new HpackDecoder(0), buffer[..n])[0].Value);
    }
}
