using BitNetSharp.Formats;
using Spectre.Console;

namespace BitNetSharp.Cli;

/// <summary>
/// Where a command writes: plain text writers for machine-readable output and errors, and a Spectre console over
/// the same output for tables. Also the one place that turns expected failures into a one-line message.
/// </summary>
public sealed class CliConsole
{
    public CliConsole(TextWriter output, TextWriter error)
    {
        Output = output;
        Error = error;
        bool terminal = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected;
        Ansi = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            Interactive = InteractionSupport.No,
        });
        // A redirected or captured stream has no width; tensor names need more than the 80-column fallback.
        if (!terminal) Ansi.Profile.Width = 160;
    }

    public TextWriter Output { get; }

    public TextWriter Error { get; }

    /// <summary>Whether <see cref="Error"/> is the process's stderr (progress is drawn there only then).</summary>
    public bool ErrorIsConsole => ReferenceEquals(Error, Console.Error) || Error is DiagnosticsWriter { Inner: var inner } && ReferenceEquals(inner, Console.Error);

    public IAnsiConsole Ansi { get; }

    /// <summary>
    /// Runs a command body; a bad or missing model or data file or an I/O failure becomes "error: ..." on one line and exit
    /// code 1, because a stack trace tells a user nothing about their file. Other exceptions are bugs and propagate.
    /// </summary>
    public int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (ModelFormatException e)
        {
            Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (InvalidDataException e)
        {
            // The library's word for a bad data file (a checkpoint, a logits file, a corpus): the user's file, not a bug.
            Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (InsufficientMemoryException e)
        {
            Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (Monitoring.NonFiniteLogitsException e)
        {
            Error.WriteLine($"error: {e.Message}");
            return 3;
        }
        catch (UsageException e)
        {
            Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (UnsuitableSettingException e)
        {
            // A sound file and a setting it cannot take (--head-type q6_k on rows of 384): the setting is the user's to
            // change, a usage error (it exited 1, the code of a bad file).
            Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (ArgumentException e)
        {
            // The library's argument errors are written for users (a prompt past the context, an unknown template,
            // a token id outside the vocabulary); the parameter name suffix adds nothing for them.
            Error.WriteLine($"error: {e.Message.Split(" (Parameter '")[0]}");
            return 1;
        }
    }
}

/// <summary>
/// A command line that parses but makes no sense (e.g. neither --prompt nor --prompt-ids): exit code 2.
/// Built from a library's ArgumentException message too: its " (Parameter 'name')" suffix, .NET's wording, is dropped.
/// </summary>
public sealed class UsageException(string message) : Exception(WithoutParameterSuffix(message))
{
    /// <summary>The message without a trailing " (Parameter 'name')" (one inside the text, say in a path, is kept).</summary>
    private static string WithoutParameterSuffix(string message)
    {
        int at = message.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
        return at >= 0 && message.EndsWith("')", StringComparison.Ordinal) && message.IndexOf('\'', at + 13) == message.Length - 2 ? message[..at] : message;
    }
}

/// <summary>
/// The CLI's stderr: messages are best effort. A stderr that cannot be written (`2>/dev/full`, closed with `2>&-`) threw
/// from the first progress line, and again from the handler reporting it, so the process aborted (exit 134) after a
/// finished generation without writing its --ids-out and --logits-out files. Once a write fails, the rest are dropped.
/// </summary>
public sealed class DiagnosticsWriter(TextWriter inner) : TextWriter
{
    private bool _failed;

    public TextWriter Inner { get; } = inner;

    public override System.Text.Encoding Encoding => Inner.Encoding;

    public override IFormatProvider FormatProvider => Inner.FormatProvider;

    public override string NewLine
    {
#pragma warning disable CS8765 // TextWriter.NewLine's setter takes null (meaning the default); the getter never returns it
        get => Inner.NewLine;
        set => Inner.NewLine = value;
#pragma warning restore CS8765
    }

    private void Try(Action<TextWriter> write)
    {
        if (_failed) return;
        try
        {
            write(Inner);
        }
        // A closed descriptor (2>&-) is EBADF, which .NET throws as UnauthorizedAccessException.
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException or NotSupportedException)
        {
            _failed = true;
        }
    }

    public override void Write(char value) => Try(w => w.Write(value));
    public override void Write(string? value) => Try(w => w.Write(value));
    public override void Write(char[] buffer, int index, int count) => Try(w => w.Write(buffer, index, count));
    public override void WriteLine() => Try(w => w.WriteLine());
    public override void WriteLine(string? value) => Try(w => w.WriteLine(value));
    public override void Flush() => Try(w => w.Flush());
}
