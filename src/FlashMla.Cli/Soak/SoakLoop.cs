namespace FlashMla.Cli.Soak;

internal static class SoakLoop
{
    /// <summary>Runs <paramref name="body"/> until <paramref name="stop"/>, counting each failure in the tally and going on after a short pause.</summary>
    public static async Task Run(SoakTally tally, CancellationToken stop, Func<Task> body)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await body();
            }
            catch (Exception) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                tally.Failed(e);
                await Task.Delay(200, CancellationToken.None);
            }
        }
    }
}
