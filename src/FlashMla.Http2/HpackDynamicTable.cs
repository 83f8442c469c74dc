namespace FlashMla.Http2;

/// <summary>
/// The HPACK dynamic table of one connection's decoder (RFC 7541, section 2.3.2): a FIFO of header fields,
/// newest at index 1, whose size (name + value + 32 per entry) never exceeds <see cref="Capacity"/>.
/// </summary>
internal sealed class HpackDynamicTable
{
    /// <summary>The per-entry overhead RFC 7541 section 4.1 adds to an entry's size.</summary>
    public const int EntryOverhead = 32;

    private (string Name, string Value)[] _ring = new (string, string)[16];
    private int _oldest, _count;

    public int Count => _count;

    /// <summary>Sum of the entries' sizes.</summary>
    public int Size { get; private set; }

    /// <summary>The current maximum size, set by the encoder's dynamic table size updates.</summary>
    public int Capacity { get; private set; }

    public HpackDynamicTable(int capacity) => Capacity = capacity;

    public static int EntrySize(string name, string value) => name.Length + value.Length + EntryOverhead;

    /// <summary>Entry <paramref name="index"/>, 1 being the newest.</summary>
    public (string Name, string Value) Get(int index)
    {
        if (index < 1 || index > _count) throw new ArgumentOutOfRangeException(nameof(index));
        return _ring[(_oldest + _count - index) % _ring.Length];
    }

    /// <summary>Adds an entry, evicting the oldest until it fits; an entry larger than the table empties it (section 4.4).</summary>
    public void Add(string name, string value)
    {
        int size = EntrySize(name, value);
        EvictUntil(Capacity - size);
        if (size > Capacity) return;
        if (_count == _ring.Length) Grow();
        _ring[(_oldest + _count) % _ring.Length] = (name, value);
        _count++;
        Size += size;
    }

    public void Resize(int capacity)
    {
        Capacity = capacity;
        EvictUntil(capacity);
    }

    private void EvictUntil(int size)
    {
        while (_count > 0 && Size > size)
        {
            var (name, value) = _ring[_oldest];
            _ring[_oldest] = default;
            _oldest = (_oldest + 1) % _ring.Length;
            _count--;
            Size -= EntrySize(name, value);
        }
    }

    private void Grow()
    {
        var ring = new (string, string)[_ring.Length * 2];
        for (int i = 0; i < _count; i++) ring[i] = _ring[(_oldest + i) % _ring.Length];
        _ring = ring;
        _oldest = 0;
    }
}
