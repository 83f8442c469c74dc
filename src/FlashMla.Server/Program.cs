using FlashMla.Server.Hosting;
using Microsoft.Extensions.Options;

try
{
    var app = FlashMlaServerApp.Build(args);
    // Resolve the scheduler (and so the backend) before listening: a backend that cannot start fails here.
    app.Services.GetRequiredService<FlashMla.Core.Scheduling.Scheduler>();
    await app.RunAsync();
    return 0;
}
catch (OptionsValidationException ex)
{
    Console.Error.WriteLine("flashmla-server: invalid options:\n  " + string.Join("\n  ", ex.Failures));
    return 2;
}
catch (InvalidOperationException ex) when (ex.Message.StartsWith("Backend=", StringComparison.Ordinal))
{
    Console.Error.WriteLine("flashmla-server: " + ex.Message);
    return 3;
}
