namespace FlashMla.Cli;

/// <summary>
/// Where the measuring commands' <c>--out</c> goes: appended, its folder created. Raw results belong under
/// <c>results/raw/</c>, which git ignores; the curated summaries in <c>results/</c> are written by hand.
/// </summary>
internal static class ResultsFile
{
    public const string OutDescription = "Append the results to this markdown file (e.g. results/raw/NAME.md: ignored by git)";

    public static void Append(string path, string text)
    {
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        File.AppendAllText(path, text);
    }
}
