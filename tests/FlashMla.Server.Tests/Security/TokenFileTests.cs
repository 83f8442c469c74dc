using System.Text;
using FlashMla.Core.Cache;
using FlashMla.Server.Security;
using Grpc.Core;

namespace FlashMla.Server.Tests.Security;

/// <summary>The token file's format and checks, and how the directory authenticates against it.</summary>
public sealed class TokenFileTests
{
    private static TokenFile Parse(string json) => TokenFile.Parse(Encoding.UTF8.GetBytes(json), "test");

    [Fact]
    public void A_file_gives_each_tenant_its_tokens_quotas_and_admin_flag()
    {
        var file = Parse("""
            { "tenants": [
                { "name": "team-a", "tokens": ["aaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaa2"], "maxBlocks": 10, "maxSequences": 2, "maxRequestsInFlight": 3 },
                // comments and trailing commas are allowed
                { "name": "ops", "tokens": ["oooooooooooooooo1"], "admin": true, },
            ] }
            """);
        Assert.Equal(["team-a", "ops"], file.Tenants.Select(t => t.Name));
        Assert.Equal(new TenantQuota(10, 2, 3), file.Tenants[0].Quota);
        Assert.Equal(TenantQuota.Unlimited, file.Tenants[1].Quota);
        Assert.Equal((false, true), (file.Tenants[0].Admin, file.Tenants[1].Admin));
        Assert.Equal(2, file.Tenants[0].Tokens.Count);
    }

    [Theory]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["short"] } ] }""", "at least 16")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["has a space in it!!"] } ] }""", "without spaces")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": [] } ] }""", "no tokens")]
    [InlineData("""{ "tenants": [ { "name": "a" } ] }""", "no tokens (and no certificateNames)")]
    [InlineData("""{ "tenants": [ { "name": "a", "certificateNames": [""] } ] }""", "certificateNames[0] must be 1..253")]
    [InlineData("""{ "tenants": [ { "name": "a", "certificateNames": ["host\u0001"] } ] }""", "printable ASCII")]
    [InlineData("""{ "tenants": [ { "name": "a", "certificateNames": ["host-a"] }, { "name": "b", "certificateNames": ["host-a"] } ] }""", "'host-a' appears twice")]
    [InlineData("""{ "tenants": [ { "name": "A b", "tokens": ["aaaaaaaaaaaaaaaa1"] } ] }""", "must be 1..63")]
    [InlineData("""{ "tenants": [ { "name": "anonymous", "tokens": ["aaaaaaaaaaaaaaaa1"] } ] }""", "reserved")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"] }, { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa2"] } ] }""", "appears twice")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"] }, { "name": "b", "tokens": ["aaaaaaaaaaaaaaaa1"] } ] }""", "another token")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"], "maxBlocks": 0 } ] }""", "maxBlocks must be at least 1")]
    [InlineData("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"], "maxblocks": 5 } ] }""", "maxblocks")]
    [InlineData("""{ "tenants": [ { "tokens": ["aaaaaaaaaaaaaaaa1"] } ] }""", "name")]
    [InlineData("""{ "tenant": [] }""", "tenant")]
    [InlineData("""not json""", "not valid")]
    public void A_file_with_a_mistake_is_refused_with_a_reason_and_never_a_token(string json, string reason)
    {
        var error = Assert.Throws<InvalidDataException>(() => Parse(json));
        Assert.Contains(reason, error.Message);
        Assert.DoesNotContain("aaaaaaaaaaaaaaaa1", error.Message);
    }

    private static TenantDirectory Directory(string json) => TenantDirectory.FromFile(Parse(json));

    private static StatusCode Refusal(TenantDirectory directory, string? authorization) =>
        Assert.Throws<RpcException>(() => directory.Authenticate(authorization)).StatusCode;

    [Fact]
    public void Authenticate_takes_a_bearer_token_of_the_file_and_nothing_else()
    {
        var directory = Directory("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"] }, { "name": "b", "tokens": ["bbbbbbbbbbbbbbbb1"] } ] }""");
        Assert.Equal("a", directory.Authenticate("Bearer aaaaaaaaaaaaaaaa1").Tenant.Name);
        Assert.Equal("b", directory.Authenticate("bearer bbbbbbbbbbbbbbbb1").Tenant.Name); // the scheme is case-insensitive
        foreach (string? bad in new[] { null, "", "Bearer ", "aaaaaaaaaaaaaaaa1", "Basic aaaaaaaaaaaaaaaa1", "Bearer aaaaaaaaaaaaaaaa", "Bearer aaaaaaaaaaaaaaaa1x" })
            Assert.Equal(StatusCode.Unauthenticated, Refusal(directory, bad));
    }

    [Fact]
    public void A_reload_keeps_tenants_revokes_removed_tokens_and_applies_new_quotas()
    {
        var directory = Directory("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaa2"] } ] }""");
        var kept = directory.Authenticate("Bearer aaaaaaaaaaaaaaaa1");
        var removed = directory.Authenticate("Bearer aaaaaaaaaaaaaaaa2");
        var tenant = kept.Tenant;

        directory.Apply(Parse("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaa3"], "maxBlocks": 7, "admin": true } ] }"""));
        Assert.Same(tenant, directory.Authenticate("Bearer aaaaaaaaaaaaaaaa3").Tenant); // same tenant object: it still owns its sequences
        Assert.Equal(7, tenant.Quota.MaxBlocks);
        Assert.True(tenant.IsAdmin);
        Assert.Equal(StatusCode.Unauthenticated, Refusal(directory, "Bearer aaaaaaaaaaaaaaaa2"));
        kept.EnsureEntitled();
        Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(removed.EnsureEntitled).StatusCode);
        Assert.Equal(["anonymous", "a"], directory.Tenants.Select(t => t.Name));
    }

    private const string Mapped = """
        { "tenants": [
            { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"], "certificateNames": ["host-a", "alias-a"] },
            { "name": "b", "tokens": ["bbbbbbbbbbbbbbbb1"], "certificateNames": ["host-b"] },
            { "name": "c", "certificateNames": ["host-c"] } ] }
        """;

    [Fact]
    public void A_certificate_name_is_its_tenant_and_beside_a_token_both_must_name_the_same_one()
    {
        var directory = TenantDirectory.FromFile(Parse(Mapped), ClientCertificateTenantSource.SubjectCn);
        Assert.Equal("a", directory.Authenticate(null, ["host-a"]).Tenant.Name);
        Assert.Equal("c", directory.Authenticate(null, ["host-c"]).Tenant.Name); // a tenant of certificates only
        Assert.Equal("a", directory.Authenticate(null, ["unknown", "alias-a", "host-a"]).Tenant.Name); // names of one tenant
        var both = directory.Authenticate("Bearer aaaaaaaaaaaaaaaa1", ["host-a"]);
        Assert.Equal(("a", true, true), (both.Tenant.Name, both.Credential is not null, both.Certificate is not null));
        Assert.Equal("b", directory.Authenticate("Bearer bbbbbbbbbbbbbbbb1", ["not-in-the-file"]).Tenant.Name); // unmapped: the token decides

        StatusCode Refused(string? authorization, string[] names) =>
            Assert.Throws<RpcException>(() => directory.Authenticate(authorization, names)).StatusCode;
        Assert.Equal(StatusCode.Unauthenticated, Refused("Bearer bbbbbbbbbbbbbbbb1", ["host-a"])); // two tenants
        Assert.Equal(StatusCode.Unauthenticated, Refused("Bearer wrong-token-0000000", ["host-a"])); // a bad token beside a good certificate
        Assert.Equal(StatusCode.Unauthenticated, Refused("Basic aaaaaaaaaaaaaaaa1", ["host-a"]));
        Assert.Equal(StatusCode.Unauthenticated, Refused(null, ["host-a", "host-b"])); // ambiguous
        Assert.Equal(StatusCode.Unauthenticated, Refused(null, ["not-in-the-file"]));
        Assert.Equal(StatusCode.Unauthenticated, Refused(null, ["HOST-A"])); // compared exactly
        Assert.Equal(StatusCode.Unauthenticated, Refused(null, []));
    }

    [Fact]
    public void A_reload_revokes_a_certificate_name_that_moves_or_goes_and_keeps_one_that_stays()
    {
        var directory = TenantDirectory.FromFile(Parse(Mapped), ClientCertificateTenantSource.SubjectCn);
        var moved = directory.Authenticate(null, ["host-a"]);
        var kept = directory.Authenticate(null, ["host-b"]);
        var dropped = directory.Authenticate(null, ["host-c"]);
        var withToken = directory.Authenticate("Bearer aaaaaaaaaaaaaaaa1", ["host-a"]);

        directory.Apply(Parse("""{ "tenants": [ { "name": "a", "tokens": ["aaaaaaaaaaaaaaaa1"] }, { "name": "b", "tokens": ["bbbbbbbbbbbbbbbb1"], "certificateNames": ["host-b", "host-a"] } ] }"""));
        Assert.Equal("b", directory.Authenticate(null, ["host-a"]).Tenant.Name);
        Assert.Same(kept, directory.Authenticate(null, ["host-b"]));
        kept.EnsureEntitled();
        foreach (var revoked in new[] { moved, dropped, withToken })
            Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(revoked.EnsureEntitled).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(() => directory.Authenticate(null, ["host-c"])).StatusCode);
        Assert.Equal(2, directory.CertificateNameCount);
    }

    [Fact]
    public void With_the_certificate_source_off_certificate_names_name_nobody()
    {
        var directory = TenantDirectory.FromFile(Parse(Mapped));
        Assert.Empty(directory.CertificateNames.Of(null));
        Assert.False(directory.CertificateNames.Enabled);
        Assert.Equal("a", directory.Authenticate("Bearer aaaaaaaaaaaaaaaa1").Tenant.Name);
        Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(() => directory.Authenticate(null, ["host-a"])).StatusCode);
        Assert.Equal("b", directory.Authenticate("Bearer bbbbbbbbbbbbbbbb1", ["host-a"]).Tenant.Name); // no conflict: the name is not read
    }

    [Fact]
    public void Without_a_file_every_call_is_the_anonymous_admin()
    {
        var directory = TenantDirectory.Open();
        Assert.False(directory.RequiresTokens);
        var caller = directory.Authenticate(null);
        Assert.Same(directory.Anonymous, caller.Tenant);
        Assert.True(caller.Tenant.IsAdmin);
        Assert.Same(directory.Anonymous, directory.Authenticate("Bearer whatever-it-is-000").Tenant);
    }
}
