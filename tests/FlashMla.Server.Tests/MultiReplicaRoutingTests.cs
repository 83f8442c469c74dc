using FlashMla.Client.Routing;
using FlashMla.Core.Tensors;

namespace FlashMla.Server.Tests;

/// <summary>Client-side routing over several real servers on loopback.</summary>
public sealed class MultiReplicaRoutingTests
{
    [Fact]
    public async Task Sequences_spread_over_replicas_and_every_call_reaches_the_one_that_holds_them()
    {
        await using var s1 = await TestServer.StartAsync();
        await using var s2 = await TestServer.StartAsync();
        await using var s3 = await TestServer.StartAsync();
        var servers = new[] { s1, s2, s3 };
        using var cluster = new FlashMlaCluster(servers.Select(s => s.GrpcAddress));

        var random = new Random(11);
        var sequences = new List<RoutedSequence>();
        var rows = new List<ushort[]>();
        for (int i = 0; i < 24; i++)
        {
            var seq = await cluster.CreateSequenceAsync($"conversation-{i}");
            Assert.Equal(cluster.Ring.ReplicaFor($"conversation-{i}"), seq.Replica);
            var kv = Random16.Bf16(random, (10 + i) * 576);
            await cluster.AppendKvAsync(seq, 0, kv);
            sequences.Add(seq);
            rows.Add(kv);
        }
        // Each server holds exactly the sequences routed to it, and every replica got some.
        foreach (var server in servers)
        {
            var stats = await server.Client.GetStatsAsync();
            Assert.Equal((uint)sequences.Count(s => s.Replica == server.GrpcAddress), stats.Sequences);
            Assert.True(stats.Sequences > 0, $"{server.GrpcAddress} got no sequence");
        }

        // One decode over all of them: split per replica, reassembled in order, each equal to the reference.
        const int hQ = 4;
        var q = Random16.Bf16(random, sequences.Count * hQ * 576);
        var newKv = Random16.Bf16(random, sequences.Count * 576);
        var (output, lse) = await cluster.DecodeAsync(0, sequences, 1, hQ, q, newKv);
        for (int i = 0; i < sequences.Count; i++)
        {
            var cached = await cluster.ReadKvAsync(sequences[i], 0);
            Assert.Equal(rows[i].Concat(newKv.Skip(i * 576).Take(576)).ToArray(), cached);
            var expectedOut = new double[hQ * 512];
            var expectedLse = new double[hQ];
            MlaReference.Decode(q.AsSpan(i * hQ * 576, hQ * 576), cached, cached.Length / 576, 1, hQ, MlaDims.DefaultSoftmaxScale, expectedOut, expectedLse);
            var actual = output.AsSpan(i * hQ * 512, hQ * 512).ToArray().Select(v => (double)Bf16.ToFloat(v)).ToArray();
            Assert.True(MlaReference.RelativeError(actual, expectedOut) < 1e-2, $"sequence {i} out is off");
            Assert.True(MlaReference.RelativeError(lse.AsSpan(i * hQ, hQ).ToArray().Select(v => (double)v).ToArray(), expectedLse) < 1e-3);
        }

        // A fork stays on its parent's replica.
        var fork = await cluster.ForkAsync(sequences[0], "conversation-0-beam-1");
        Assert.Equal(sequences[0].Replica, fork.Replica);
        Assert.Equal(await cluster.ReadKvAsync(sequences[0], 0), await cluster.ReadKvAsync(fork, 0));
    }

    [Fact]
    public void The_mapping_is_stable_and_adding_a_replica_moves_only_a_share_of_keys()
    {
        string[] three = ["http://10.0.0.1:50051", "http://10.0.0.2:50051", "http://10.0.0.3:50051"];
        var ring = new ReplicaRing(three);
        var reordered = new ReplicaRing(three.Reverse());
        var keys = Enumerable.Range(0, 3000).Select(i => $"seq-{i}").ToArray();
        Assert.All(keys, k => Assert.Equal(ring.ReplicaFor(k), reordered.ReplicaFor(k)));

        var counts = keys.GroupBy(ring.ReplicaFor).ToDictionary(g => g.Key, g => g.Count());
        Assert.All(counts.Values, c => Assert.InRange(c, 700, 1300)); // about 1000 each

        var four = new ReplicaRing([.. three, "http://10.0.0.4:50051"]);
        int moved = keys.Count(k => ring.ReplicaFor(k) != four.ReplicaFor(k));
        Assert.All(keys.Where(k => ring.ReplicaFor(k) != four.ReplicaFor(k)), k => Assert.Equal("http://10.0.0.4:50051", four.ReplicaFor(k)));
        Assert.InRange(moved, 450, 1100); // about a quarter, and only to the new replica
    }
}
