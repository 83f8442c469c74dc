namespace FlashMla.Http2.Tests;

/// <summary>Flow control as small types: send windows (connection and streams, credit taken and waited for) and receive windows.</summary>
public sealed class FlowControlTests
{
    [Fact]
    public async Task Send_credit_taken_for_a_frame_never_sent_comes_back()
    {
        var windows = new SendWindows();
        windows.AddStream(1);
        int taken = await windows.TakeAsync(1, 100_000, CancellationToken.None);
        Assert.Equal(Http2Frames.DefaultWindowSize, taken);
        windows.Return(1, taken);
        Assert.Equal(Http2Frames.DefaultWindowSize, await windows.TakeAsync(1, 100_000, CancellationToken.None));
        using var none = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await windows.TakeAsync(1, 1, none.Token));
    }

    [Fact]
    public async Task A_writer_waits_for_both_windows_and_wakes_when_the_one_it_lacks_opens()
    {
        var windows = new SendWindows();
        windows.AddStream(1);
        windows.AddStream(3);
        Assert.True(windows.Open(1, 100_000)); // stream 1: 165,535; the connection still 65,535
        Assert.Equal(65_535, await windows.TakeAsync(1, 200_000, CancellationToken.None));

        var stream1 = windows.TakeAsync(1, 10, CancellationToken.None).AsTask(); // the connection is shut
        var stream3 = windows.TakeAsync(3, 10, CancellationToken.None).AsTask();
        await Task.Delay(50);
        Assert.False(stream1.IsCompleted);
        Assert.False(stream3.IsCompleted);
        Assert.True(windows.Open(0, 15)); // both wake; whichever runs first takes 10, the other what is left
        int[] granted = [await stream1.WaitAsync(TimeSpan.FromSeconds(5)), await stream3.WaitAsync(TimeSpan.FromSeconds(5))];
        Assert.Equal([5, 10], granted.Order());
    }

    [Fact]
    public async Task A_stream_that_sends_no_more_wakes_its_writer_and_closing_fails_every_wait()
    {
        var windows = new SendWindows();
        windows.AddStream(1);
        windows.AddStream(3);
        Assert.Equal(65_535, await windows.TakeAsync(1, 100_000, CancellationToken.None));
        var removed = windows.TakeAsync(1, 1, CancellationToken.None).AsTask();
        windows.RemoveStream(1);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => removed.WaitAsync(TimeSpan.FromSeconds(5)));

        var closed = windows.TakeAsync(3, 1, CancellationToken.None).AsTask();
        windows.Close(new Exception("gone"));
        await Assert.ThrowsAsync<IOException>(() => closed.WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task Initial_window_changes_move_every_open_stream_and_may_shut_one()
    {
        var windows = new SendWindows();
        windows.AddStream(1);
        Assert.True(windows.Open(0, 1_000_000));
        Assert.Equal(60_000, await windows.TakeAsync(1, 60_000, CancellationToken.None));
        Assert.True(windows.SetInitialStreamWindow(1_000)); // 5,535 - 64,535 = -59,000
        var waiting = windows.TakeAsync(1, 1, CancellationToken.None).AsTask();
        Assert.True(windows.Open(1, 59_000)); // back to 0: still shut
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        Assert.True(windows.Open(1, 7));
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(5)));
        windows.AddStream(3);
        Assert.Equal(1_000, await windows.TakeAsync(3, 5_000, CancellationToken.None)); // new streams start at the new size
        Assert.True(windows.Open(3, 5_000)); // above the initial size: moving the initial size to the maximum would pass it
        Assert.False(windows.Open(3, int.MaxValue)); // past 2^31-1
        Assert.False(windows.SetInitialStreamWindow(int.MaxValue));
    }

    [Fact]
    public void A_receive_window_refuses_an_overrun_and_announces_credit_in_batches_or_when_flushed()
    {
        var window = new ReceiveWindow(1000, batchBytes: 300);
        Assert.True(window.TryReceive(1000));
        Assert.False(window.TryReceive(1));
        Assert.Equal(0, window.Release(200));
        Assert.Equal(400, window.Release(200)); // 400 >= 300: the whole batch at once
        Assert.Equal(0, window.Release(0, flush: true)); // nothing owed: no frame
        Assert.Equal(50, window.Release(50, flush: true));
        Assert.True(window.TryReceive(449)); // -1 + 450 credited
        Assert.False(window.TryReceive(2));
    }

    [Fact]
    public void The_opening_frames_carry_only_settings_that_differ_from_the_defaults_then_raise_the_connection_window()
    {
        var buffer = new byte[Http2Settings.MaxOpeningBytes];
        int n = new Http2Settings { HeaderTableSize = 0, DisablePush = true, StreamWindow = 1 << 20, ConnectionWindow = 1 << 24 }.WriteOpening(buffer);
        var settings = Http2FrameHeader.Read(buffer);
        Assert.Equal(new Http2FrameHeader(18, Http2FrameType.Settings, 0, 0), settings);
        Assert.Equal([0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0, 0x10, 0, 0], buffer[9..27]);
        Assert.Equal(new Http2FrameHeader(4, Http2FrameType.WindowUpdate, 0, 0), Http2FrameHeader.Read(buffer.AsSpan(27)));
        Assert.Equal(27 + 13, n);
        Assert.Equal(9, new Http2Settings().WriteOpening(buffer)); // all defaults: an empty SETTINGS, no WINDOW_UPDATE
    }

    [Fact]
    public void A_header_list_limit_is_advertised_as_SETTINGS_MAX_HEADER_LIST_SIZE()
    {
        var buffer = new byte[Http2Settings.MaxOpeningBytes];
        int n = new Http2Settings { MaxHeaderListSize = 65536 }.WriteOpening(buffer);
        Assert.Equal(new Http2FrameHeader(6, Http2FrameType.Settings, 0, 0), Http2FrameHeader.Read(buffer));
        Assert.Equal([0, 6, 0, 1, 0, 0], buffer[9..15]);
        Assert.Equal(15, n);
    }
}
