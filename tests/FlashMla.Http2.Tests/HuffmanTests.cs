using CsCheck;

namespace FlashMla.Http2.Tests;

/// <summary>
/// HPACK's Huffman code (RFC 7541, section 5.2 and appendix B): the RFC's own examples with Huffman (C.4
/// requests, C.6 responses, through the dynamic table), codes against appendix B, the padding and EOS rules,
/// and round trips of arbitrary strings and header lists.
/// </summary>
public sealed class HuffmanTests
{
    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    private static List<KeyValuePair<string, string>> Decode(HpackDecoder decoder, string hex)
    {
        var headers = new List<KeyValuePair<string, string>>();
        decoder.Decode(Hex(hex), headers);
        return headers;
    }

    private static byte[] EncodeHuffman(string value)
    {
        var buffer = new byte[HpackHuffman.EncodedLength(value, lowercase: false)];
        Assert.Equal(buffer.Length, HpackHuffman.Encode(value, lowercase: false, buffer));
        return buffer;
    }

    [Fact]
    public void The_RFC_7541_C4_requests_with_Huffman_decode_and_fill_the_dynamic_table()
    {
        var decoder = new HpackDecoder(maxCapacity: 4096);
        Assert.Equal([new(":method", "GET"), new(":scheme", "http"), new(":path", "/"), new(":authority", "www.example.com")],
            Decode(decoder, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        Assert.Equal(57, decoder.Table.Size);

        Assert.Equal([new(":method", "GET"), new(":scheme", "http"), new(":path", "/"), new(":authority", "www.example.com"),
            new("cache-control", "no-cache")], Decode(decoder, "8286 84be 5886 a8eb 1064 9cbf"));
        Assert.Equal(110, decoder.Table.Size);

        Assert.Equal([new(":method", "GET"), new(":scheme", "https"), new(":path", "/index.html"), new(":authority", "www.example.com"),
            new("custom-key", "custom-value")], Decode(decoder, "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"));
        Assert.Equal(164, decoder.Table.Size);
        Assert.Equal(("custom-key", "custom-value"), decoder.Table.Get(1));
        Assert.Equal(("cache-control", "no-cache"), decoder.Table.Get(2));
        Assert.Equal((":authority", "www.example.com"), decoder.Table.Get(3));
    }

    [Fact]
    public void The_RFC_7541_C6_responses_with_Huffman_decode_and_evict_through_a_256_byte_table()
    {
        var decoder = new HpackDecoder(maxCapacity: 256);
        decoder.Decode(Hex("3fe1 01"), []); // a size update to 256 (the example's SETTINGS_HEADER_TABLE_SIZE)
        const string date1 = "Mon, 21 Oct 2013 20:13:21 GMT", location = "https://www.example.com";
        Assert.Equal([new(":status", "302"), new("cache-control", "private"), new("date", date1), new("location", location)],
            Decode(decoder, "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"));
        Assert.Equal(222, decoder.Table.Size);

        // :status 307 evicts ":status: 302".
        Assert.Equal([new(":status", "307"), new("cache-control", "private"), new("date", date1), new("location", location)],
            Decode(decoder, "4883 640e ffc1 c0bf"));
        Assert.Equal(222, decoder.Table.Size);

        Assert.Equal([new(":status", "200"), new("cache-control", "private"), new("date", "Mon, 21 Oct 2013 20:13:22 GMT"), new("location", location),
            new("content-encoding", "gzip"), new("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")],
            Decode(decoder, "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 " +
                "dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"));
        Assert.Equal(215, decoder.Table.Size);
        Assert.Equal(3, decoder.Table.Count);
        Assert.Equal(("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"), decoder.Table.Get(1));
    }

    [Theory]
    [InlineData("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff")]
    [InlineData("no-cache", "a8eb 1064 9cbf")]
    [InlineData("custom-key", "25a8 49e9 5ba9 7d7f")]
    [InlineData("custom-value", "25a8 49e9 5bb8 e8b4 bf")]
    [InlineData("302", "6402")]
    [InlineData("private", "aec3 771a 4b")]
    [InlineData("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff")]
    [InlineData("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3")]
    public void The_encoder_writes_the_RFCs_Huffman_strings_byte_for_byte(string value, string hex) =>
        Assert.Equal(Hex(hex), EncodeHuffman(value));

    [Theory]
    [InlineData(48, 0x0u, 5)]          // '0'
    [InlineData(97, 0x3u, 5)]          // 'a'
    [InlineData(32, 0x14u, 6)]         // ' '
    [InlineData(38, 0xf8u, 8)]         // '&'
    [InlineData(0, 0x1ff8u, 13)]
    [InlineData(255, 0x3ffffeeu, 26)]
    [InlineData(10, 0x3ffffffcu, 30)]  // '\n'
    [InlineData(HpackHuffman.Eos, 0x3fffffffu, 30)]
    public void Codes_match_appendix_B(int symbol, uint code, int length) =>
        Assert.Equal((code, length), HpackHuffman.CodeOf(symbol));

    [Fact]
    public void Every_code_is_distinct_and_none_is_a_prefix_of_another()
    {
        var seen = new HashSet<string>();
        for (int symbol = 0; symbol <= HpackHuffman.Eos; symbol++)
        {
            var (code, length) = HpackHuffman.CodeOf(symbol);
            Assert.True(seen.Add(Convert.ToString(code, 2).PadLeft(length, '0')));
        }
        foreach (var a in seen)
            foreach (var b in seen)
                Assert.True(a == b || !b.StartsWith(a, StringComparison.Ordinal), $"{a} is a prefix of {b}");
        // Kraft: a complete prefix code sums to exactly 1.
        double kraft = seen.Sum(c => Math.Pow(2, -c.Length));
        Assert.Equal(1.0, kraft, 12);
    }

    [Theory]
    [InlineData("ff", "padding longer than 7 bits")]          // 8 bits of ones
    [InlineData("ffff", "padding longer than 7 bits")]        // 16 ones: no code, too long for padding
    [InlineData("fe", "ends inside a code")]                  // 11111110: the start of a 10-bit code
    [InlineData("00", "not all ones")]                        // '0', then 000 as padding
    [InlineData("ffff ffff", "EOS")]                          // EOS (30 ones) decoded inside the string
    [InlineData("ffff fffc", "EOS")]
    public void Malformed_Huffman_strings_are_decoding_errors(string hex, string why)
    {
        var source = Hex(hex);
        var error = Assert.Throws<HpackDecodingException>(() => HpackHuffman.Decode(source, new byte[HpackHuffman.MaxDecodedLength(source.Length)]));
        Assert.Contains(why, error.Message);
    }

    [Fact]
    public void A_Huffman_string_in_a_header_block_that_is_malformed_fails_the_whole_block()
    {
        // literal without indexing, new name "a", value Huffman-coded as one byte of ones (8 bits of padding)
        byte[] block = [0x00, 0x01, (byte)'a', 0x81, 0xFF];
        var error = Assert.Throws<HpackDecodingException>(() => new HpackDecoder(0).Decode(block, []));
        Assert.Contains("Huffman", error.Message);
    }

    [Fact]
    public void Any_latin1_string_round_trips_and_takes_the_length_the_encoder_predicts()
    {
        Gen.String[Gen.Char[(char)0, (char)255], 0, 300].Sample(value =>
        {
            var encoded = EncodeHuffman(value);
            var decoded = new byte[HpackHuffman.MaxDecodedLength(encoded.Length)];
            int n = HpackHuffman.Decode(encoded, decoded);
            Assert.Equal(value, System.Text.Encoding.Latin1.GetString(decoded, 0, n));
        }, iter: 2000);
    }

    [Fact]
    public void Header_lists_round_trip_through_the_encoder_and_decoder_whichever_form_each_string_takes()
    {
        var field = Gen.Select(Gen.String[Gen.Char['a', 'z'], 1, 40], Gen.String[Gen.Char[(char)32, (char)255], 0, 200]);
        field.List[0, 20].Sample(fields =>
        {
            var buffer = new byte[64 * 1024];
            int pos = 0;
            foreach (var (name, value) in fields)
            {
                Assert.True(HpackEncoder.TryEncodeLiteral(name, value, buffer.AsSpan(pos), out int n));
                pos += n;
            }
            var decoded = new List<KeyValuePair<string, string>>();
            new HpackDecoder(4096).Decode(buffer.AsSpan(0, pos), decoded);
            Assert.Equal(fields.Select(f => new KeyValuePair<string, string>(f.Item1, f.Item2)), decoded);
        }, iter: 500);
    }

    [Fact]
    public void Arbitrary_bytes_either_decode_or_fail_as_a_decoding_error()
    {
        Gen.Byte.Array[0, 64].Sample(bytes =>
        {
            var destination = new byte[HpackHuffman.MaxDecodedLength(bytes.Length)];
            try
            {
                int n = HpackHuffman.Decode(bytes, destination);
                // What decodes re-encodes to the same bytes: the code is a bijection on valid strings.
                Assert.Equal(bytes, EncodeHuffman(System.Text.Encoding.Latin1.GetString(destination, 0, n)));
            }
            catch (HpackDecodingException)
            {
            }
        }, iter: 5000);
    }
}
