using FlashMla.Cli.Soak;

namespace FlashMla.Server.Tests.Soak;

/// <summary>The soak driver's reading of the server's /metrics text (the soak itself is a script, not a test).</summary>
public sealed class SoakFiguresTests
{
    private const string Scrape = """
        # HELP flashmla_process_resident_memory_bytes Resident set size of the server process.
        # TYPE flashmla_process_resident_memory_bytes gauge
        flashmla_process_resident_memory_bytes{otel_scope_name="FlashMla"} 157286400 1733300000000
        flashmla_gc_heap_live_bytes{otel_scope_name="FlashMla"} 5.24288E7
        flashmla_tensor_pool_bytes{otel_scope_name="FlashMla",state="held"} 4096
        flashmla_tensor_pool_bytes{otel_scope_name="FlashMla",state="idle"} 1048576
        flashmla_tensor_pool_bytes{otel_scope_name="FlashMla",state="page_locked"} 0
        kestrel_active_connections{network_transport="tcp",server_address="127.0.0.1",server_port="50071"} 9
        kestrel_active_connections{network_transport="tcp",server_address="127.0.0.1",server_port="50073"} 1
        flashmla_dataplane_connections{otel_scope_name="FlashMla"} 3
        flashmla_decode_queue_wait_seconds_bucket{le="+Inf"} 12
        """;

    [Fact]
    public void Figures_are_read_by_name_and_label_and_the_metrics_ports_own_connections_are_left_out()
    {
        var figures = ServerFigures.Parse(Scrape, metricsPort: 50073);

        Assert.Equal(157286400, figures.RssBytes);
        Assert.Equal(52428800, figures.HeapLiveBytes);
        Assert.Equal(4096, figures.PoolHeldBytes);
        Assert.Equal(1048576, figures.PoolIdleBytes);
        Assert.Equal(0, figures.PoolPageLockedBytes);
        Assert.Equal(9, figures.GrpcConnections);
        Assert.Equal(3, figures.DataPlaneConnections);
        Assert.Equal(12, figures.Connections);
    }

    [Fact]
    public void A_figure_the_server_does_not_export_is_NaN_and_counts_as_no_connections()
    {
        var figures = ServerFigures.Parse("flashmla_serving 1\n", metricsPort: 9090);

        Assert.True(double.IsNaN(figures.RssBytes));
        Assert.True(double.IsNaN(figures.PoolPageLockedBytes));
        Assert.True(double.IsNaN(figures.GrpcConnections));
        Assert.Equal(0, figures.Connections);
    }

    [Theory]
    [InlineData("name_only 3", "name_only", 3)]
    [InlineData("bucket{le=\"+Inf\"} +Inf", "bucket", double.PositiveInfinity)]
    [InlineData("quoted{a=\"x,\\\"}y\",b=\"2\"} -1.5e3", "quoted", -1500)]
    public void Sample_lines_parse_with_labels_escapes_and_special_values(string line, string name, double value)
    {
        Assert.True(PrometheusSample.TryParse(line, out var sample));
        Assert.Equal(name, sample.Name);
        Assert.Equal(value, sample.Value);
    }

    [Fact]
    public void An_escaped_quote_and_brace_stay_inside_the_label_value()
    {
        Assert.True(PrometheusSample.TryParse("m{a=\"x,\\\"}y\",b=\"2\"} 1", out var sample));
        Assert.Equal("x,\"}y", sample.Label("a"));
        Assert.Equal("2", sample.Label("b"));
        Assert.Null(sample.Label("c"));
    }

    [Theory]
    [InlineData("")]
    [InlineData("9starts_with_a_digit 1")]
    [InlineData("no_value")]
    [InlineData("bad_value abc")]
    [InlineData("unterminated{a=\"x} 1")]
    [InlineData("unquoted{a=x} 1")]
    public void Lines_that_are_not_samples_are_refused(string line) => Assert.False(PrometheusSample.TryParse(line, out _));

    [Fact]
    public void Comments_blank_and_broken_lines_are_skipped_in_a_whole_scrape()
    {
        var samples = PrometheusSample.ParseAll("# HELP x y\n\nok_metric 1\r\nbroken{\nother 2\n");
        Assert.Equal(["ok_metric", "other"], samples.Select(s => s.Name));
    }

    [Theory]
    [InlineData("http://127.0.0.1:50071", 1, false, "http://127.0.0.1:50072")]
    [InlineData("https://host:50051/", 9090, true, "http://host:9090")]
    public void Default_addresses_follow_the_grpc_address(string address, int port, bool absolute, string expected) =>
        Assert.Equal(expected, SoakCommand.WithPort(address, port, absolute));
}
