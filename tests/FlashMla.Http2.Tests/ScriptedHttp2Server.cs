using FlashMla.Http2;
using System.Buffers.Binary;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Client.Transport;

namespace FlashMla.Http2.Tests;

/// <summary>
/// A scripted HTTP/2 server on loopback for the protocol paths Kestrel never takes: the test reads the
/// client's frames and writes whatever frames it wants, well-formed or not. With a certificate it speaks TLS
/// (https://) and answers ALPN as told.
/// </summary>
internal sealed class ScriptedHttp2Server : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly X509Certificate2? _certificate;
    private readonly SslApplicationProtocol[] _alpn = [];

    public ScriptedHttp2Server() => _listener.Start();

    /// <param name="alpn">The protocols this server accepts by ALPN (h2 unless told otherwise).</param>
    public ScriptedHttp2Server(X509Certificate2 certificate, params SslApplicationProtocol[] alpn)
    {
        _certificate = certificate;
        _alpn = alpn.Length > 0 ? alpn : [SslApplicationProtocol.Http2];
        _listener.Start();
    }

    public string Address => $"{(_certificate is null ? "http" : "https")}://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>The protocol ALPN chose on the last TLS connection accepted.</summary>
    public SslApplicationProtocol NegotiatedProtocol { get; private set; }

    /// <summary>Accepts a connection (TLS first, with a certificate) and checks the client preface.</summary>
    public async Task<ScriptedConnection> AcceptAsync()
    {
        var socket = await _listener.AcceptSocketAsync().WaitAsync(TimeSpan.FromSeconds(10));
        Stream stream = new NetworkStream(socket, ownsSocket: true);
        if (_certificate is not null)
        {
            var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
            await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
            {
                ServerCertificateContext = SslStreamCertificateContext.Create(_certificate, null),
                ApplicationProtocols = [.. _alpn],
            }).WaitAsync(TimeSpan.FromSeconds(10));
            NegotiatedProtocol = ssl.NegotiatedApplicationProtocol;
            stream = ssl;
        }
        var connection = new ScriptedConnection(stream);
        var preface = new byte[Http2Frames.Preface.Length];
        await connection.Stream.ReadExactlyAsync(preface);
        Assert.Equal(Http2Frames.Preface.ToArray(), preface);
        return connection;
    }

    public void Dispose() => _listener.Stop();
}

internal sealed class ScriptedConnection(Stream stream) : IDisposable
{
    public Stream Stream { get; } = stream;

    public async Task<(Http2FrameHeader Header, byte[] Payload)> ReadFrameAsync()
    {
        var head = new byte[Http2FrameHeader.Size];
        await Stream.ReadExactlyAsync(head).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        var header = Http2FrameHeader.Read(head);
        var payload = new byte[header.Length];
        await Stream.ReadExactlyAsync(payload).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        return (header, payload);
    }

    /// <summary>The next frame of <paramref name="type"/>, skipping others (acks, window updates).</summary>
    public async Task<(Http2FrameHeader Header, byte[] Payload)> ReadFrameAsync(Http2FrameType type)
    {
        while (true)
        {
            var frame = await ReadFrameAsync();
            if (frame.Header.Type == type) return frame;
        }
    }

    /// <summary>Reads the client's SETTINGS (returned) and its connection WINDOW_UPDATE, sends ours.</summary>
    public async Task<Dictionary<Http2Setting, uint>> HandshakeAsync(params (Http2Setting, uint)[] settings)
    {
        var (header, payload) = await ReadFrameAsync();
        Assert.Equal(Http2FrameType.Settings, header.Type);
        var client = new Dictionary<Http2Setting, uint>();
        for (int i = 0; i < payload.Length; i += 6)
            client[(Http2Setting)BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(i))] = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 2));
        var frame = new byte[Http2Frames.SettingsFrameSize(settings.Length)];
        Http2Frames.WriteSettings(frame, settings);
        await Stream.WriteAsync(frame);
        return client;
    }

    public async Task WriteAsync(Http2FrameType type, Http2FrameFlags flags, int streamId, byte[] payload)
    {
        var frame = new byte[Http2FrameHeader.Size + payload.Length];
        new Http2FrameHeader(payload.Length, type, flags, streamId).Write(frame);
        payload.CopyTo(frame, Http2FrameHeader.Size);
        await Stream.WriteAsync(frame);
    }

    public Task WriteRawAsync(byte[] bytes) => Stream.WriteAsync(bytes).AsTask();

    /// <summary>A header block: <c>:status</c> then literal fields (no indexing, no Huffman).</summary>
    public static byte[] Headers(int status, params (string Name, string Value)[] fields) => Fields([(":status", status.ToString()), .. fields]);

    /// <summary>A header block of literal fields (trailers have no <c>:status</c>).</summary>
    public static byte[] Fields(params (string Name, string Value)[] fields)
    {
        var buffer = new byte[4096];
        int pos = 0;
        foreach (var (name, value) in fields)
        {
            Assert.True(HpackEncoder.TryEncodeLiteral(name, value, buffer.AsSpan(pos), out int n));
            pos += n;
        }
        return buffer[..pos];
    }

    public static byte[] UInt32(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    public void Dispose() => Stream.Dispose();
}
