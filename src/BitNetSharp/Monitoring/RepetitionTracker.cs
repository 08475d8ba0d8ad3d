namespace BitNetSharp.Monitoring;

/// <summary>
/// How much of one sequence's recent output repeats itself: of its last <see cref="Window"/> generated tokens, the
/// share whose trailing n-gram (<see cref="N"/> tokens, the token and the ones before it) already occurred earlier in
/// the sequence (prompt included). A model stuck in a loop — the classic failure of a small or badly quantized model —
/// reads near 1; fluent text well below (a few repeated phrases). One writer (the engine thread); the share is read
/// by other threads as a published double.
/// </summary>
public sealed class RepetitionTracker
{
    /// <summary>Tokens per n-gram.</summary>
    public const int N = 4;

    /// <summary>Generated tokens the share is taken over.</summary>
    public const int Window = 64;

    /// <summary>Generated tokens before there is a share (a few tokens say nothing about a loop).</summary>
    public const int MinTokens = 16;

    private readonly HashSet<ulong> _seen = [];
    private readonly bool[] _repeated = new bool[Window];
    private readonly int[] _last = new int[N];
    private int _tokens, _generated, _repeatedCount;
    private double _share = double.NaN;

    /// <summary>Adds a prompt token: its n-grams count as already seen, not as output.</summary>
    public void AddPrompt(int token) => Push(token, generated: false);

    /// <summary>Adds a generated token.</summary>
    public void AddGenerated(int token) => Push(token, generated: true);

    /// <summary>Generated tokens so far.</summary>
    public int Generated => _generated;

    /// <summary>
    /// The share of the last <see cref="Window"/> generated tokens (fewer at the start) that completed an n-gram seen
    /// before; NaN until <see cref="MinTokens"/> tokens have been generated.
    /// </summary>
    public double Share => Volatile.Read(ref _share);

    private void Push(int token, bool generated)
    {
        Array.Copy(_last, 1, _last, 0, N - 1);
        _last[N - 1] = token;
        _tokens++;
        bool repeated = false;
        if (_tokens >= N)
        {
            ulong h = 14695981039346656037UL; // FNV-1a over the n-gram's ids
            foreach (int t in _last)
            {
                h ^= (uint)t;
                h *= 1099511628211UL;
            }
            repeated = !_seen.Add(h);
        }
        if (!generated) return;
        int slot = _generated % Window;
        if (_generated >= Window && _repeated[slot]) _repeatedCount--;
        _repeated[slot] = repeated;
        if (repeated) _repeatedCount++;
        _generated++;
        if (_generated >= MinTokens) Volatile.Write(ref _share, (double)_repeatedCount / Math.Min(_generated, Window));
    }
}
