using System.Globalization;
using System.Runtime.InteropServices;

namespace BitNetSharp.Cli.Commands;

/// <summary>
/// serve's own SIGINT/SIGTERM handling. The first signal starts the graceful shutdown (the drain) and arms a deadline
/// of the drain plus a margin, past which the process exits 1 saying so; a second signal exits at once with 128 + its
/// number, as a second Ctrl-C does in other servers. The command-line library's handler, which serve used before,
/// completed its task again on the second signal and the process died of an unhandled exception (exit 134), and its
/// deadline never applied to a synchronous command.
/// </summary>
internal sealed class ServeSignals : IDisposable
{
    private readonly CancellationTokenSource _stop;
    private readonly TextWriter _error;
    private readonly TimeSpan _deadline;
    private readonly List<PosixSignalRegistration> _registrations = [];
    private Timer? _watchdog;
    private int _signals;
    private long _firstSignalTicks;

    /// <summary>
    /// A second signal this soon after the first is the same one delivered twice, not a user's second Ctrl-C: GNU
    /// timeout sends its signal to the child and again to the process group, and one `timeout … bitnet serve` stop cut
    /// the drain short as a "second signal" (in-flight requests cut, the telemetry log left without its footer).
    /// </summary>
    internal static readonly TimeSpan DuplicateWindow = TimeSpan.FromMilliseconds(250);

    private ServeSignals(CancellationTokenSource stop, TextWriter error, TimeSpan deadline)
    {
        _stop = stop;
        _error = error;
        _deadline = deadline;
    }

    /// <summary>Handles SIGINT and SIGTERM until disposed; the first cancels <paramref name="stop"/>.</summary>
    public static ServeSignals Register(CancellationTokenSource stop, TextWriter error, TimeSpan deadline)
    {
        var signals = new ServeSignals(stop, error, deadline);
        signals._registrations.AddRange(CommandSignals.OnInterruptAndTerminate(signals.Handle));
        return signals;
    }

    private void Handle(PosixSignalContext context)
    {
        context.Cancel = true; // serve ends itself
        int code = 128 + (context.Signal == PosixSignal.SIGINT ? 2 : 15);
        if (Interlocked.Increment(ref _signals) == 1)
        {
            Volatile.Write(ref _firstSignalTicks, System.Diagnostics.Stopwatch.GetTimestamp());
            _watchdog = new Timer(_ => Exit(1, string.Create(CultureInfo.InvariantCulture,
                $"error: the shutdown did not finish within {_deadline.TotalSeconds:0.#} s; exiting.")), null, _deadline, Timeout.InfiniteTimeSpan);
            // Off the signal thread: the drain's continuations run on the pool, not here.
            ThreadPool.QueueUserWorkItem(static s => ((CancellationTokenSource)s!).Cancel(), _stop);
            return;
        }
        // (0: the first is still being handled on another thread, so this one came with it.)
        if (Volatile.Read(ref _firstSignalTicks) is var first && (first == 0 || System.Diagnostics.Stopwatch.GetElapsedTime(first) < DuplicateWindow))
        {
            Interlocked.Decrement(ref _signals);
            return;
        }
        Exit(code, $"bitnet serve: second signal ({(code == 130 ? "SIGINT" : "SIGTERM")}) while stopping: exiting now (requests still in flight are cut).");
    }

    private void Exit(int code, string message)
    {
        try
        {
            _error.WriteLine(message);
            _error.Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // stderr gone: exit all the same
        }
        Environment.Exit(code);
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _watchdog?.Dispose();
    }
}
