using System.Globalization;
using System.Runtime.InteropServices;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// SIGINT and SIGTERM for the commands that stop cleanly (generate, eval, calibrate, logs, convert, train): the first cancels
/// <see cref="Token"/>, which the command checks between steps (it writes what it must, removes its scratch files and
/// exits 130); a second is said and otherwise ignored, since the command is already stopping (`timeout -s INT` signals
/// the child and then its process group: two signals for one stop); a third exits at once. System.CommandLine's own
/// handler did this job until a second signal came: it completed its task again, and the process died of the unhandled
/// exception (exit 134), sometimes leaving a hidden partial output behind.
/// </summary>
internal sealed class CommandSignals : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly TextWriter _error;
    private readonly string _command;
    private readonly List<PosixSignalRegistration> _registrations = [];
    private int _signals;

    private CommandSignals(string command, TextWriter error)
    {
        _command = command;
        _error = error;
    }

    public CancellationToken Token => _cts.Token;

    public static CommandSignals Register(string command, TextWriter error)
    {
        var signals = new CommandSignals(command, error);
        signals._registrations.AddRange(OnInterruptAndTerminate(signals.Handle));
        return signals;
    }

    /// <summary><paramref name="handler"/> registered for SIGINT and SIGTERM, where the platform has them.</summary>
    internal static List<PosixSignalRegistration> OnInterruptAndTerminate(Action<PosixSignalContext> handler)
    {
        var registrations = new List<PosixSignalRegistration>(2);
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
        {
            try
            {
                registrations.Add(PosixSignalRegistration.Create(signal, handler));
            }
            catch (PlatformNotSupportedException)
            {
                // a platform without this signal: the default behaviour (the process ends) stays
            }
        }
        return registrations;
    }

    private void Handle(PosixSignalContext context)
    {
        // A handler already on its way when the command ended (the runtime takes its list of handlers when the signal
        // arrives): the process goes on to exit as it was about to; the signal's default would only race it.
        if (Volatile.Read(ref _disposed) != 0)
        {
            context.Cancel = true;
            return;
        }
        context.Cancel = true; // the command ends itself
        int n = Interlocked.Increment(ref _signals);
        if (n == 1)
        {
            // Off the signal thread: whatever the cancellation runs belongs to the command. The source is never disposed
            // (it holds no timer), so a cancellation that lands after the command returned is harmless.
            ThreadPool.QueueUserWorkItem(static s => ((CancellationTokenSource)s!).Cancel(), _cts);
            // A training step or a large tensor can take seconds: said at once, so the wait is not read as a hang.
            if (_command is "train") Write("bitnet train: stopping (once training has begun: after the step in progress, with the run saved in its checkpoint).");
            return;
        }
        int code = 128 + (context.Signal == PosixSignal.SIGINT ? 2 : 15);
        if (n == 2)
        {
            Write($"bitnet {_command}: already stopping at its next step; a third signal exits at once (its partial files left behind).");
            return;
        }
        Write(string.Create(CultureInfo.InvariantCulture, $"bitnet {_command}: third signal: exiting now."));
        Environment.Exit(code);
    }

    private void Write(string message)
    {
        try
        {
            _error.WriteLine(message);
            _error.Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // stderr gone
        }
    }

    private int _disposed;

    public void Dispose()
    {
        Volatile.Write(ref _disposed, 1);
        foreach (var r in _registrations) r.Dispose();
    }
}
