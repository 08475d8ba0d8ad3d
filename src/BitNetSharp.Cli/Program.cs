using System.CommandLine;
using BitNetSharp.Cli.Commands;

namespace BitNetSharp.Cli;

/// <summary>
/// The <c>bitnet</c> tool: a thin shell that parses the command line and hands each command to its file under
/// Commands/. <see cref="Run"/> takes the output writers so tests can call the tool in-process.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        // Windows writes the console (and a redirected stdout) in the OEM code page: generated text past ASCII came out as
        // "?", and text piped into chat was misread. UTF-8 without a BOM, as everywhere else.
        if (OperatingSystem.IsWindows())
        {
            Console.OutputEncoding = new System.Text.UTF8Encoding(false);
            Console.InputEncoding = new System.Text.UTF8Encoding(false);
        }
        // A piped stdout whose reader is gone ends the command (exit 141, as SIGPIPE would); not serve's: a log reader's
        // end is no reason to stop serving.
        var output = args.Length > 0 && args[0] == "serve" ? Console.Out : BrokenPipeOutput.ForStdout();
        return Run(args, output, Console.Error, handleSignals: true);
    }

    /// <param name="environment">Where serve reads its BITNET_* variables (default: the process environment); tests pass their own.</param>
    /// <param name="handleSignals">Whether SIGINT/SIGTERM stop the commands that stop cleanly (<see cref="Commands.CommandSignals"/>): the
    /// process's own entry point only; a host running commands in-process (the tests) keeps its own handlers.</param>
    public static int Run(string[] args, TextWriter output, TextWriter error, TextReader? input = null, Func<string, string?>? environment = null, bool handleSignals = false)
    {
        environment ??= Environment.GetEnvironmentVariable;
        if (error is not DiagnosticsWriter) error = new DiagnosticsWriter(error);
        var cli = new CliConsole(output, error);
        var root = new RootCommand("Run and inspect 1-bit and ternary (BitNet b1.58) language models on the CPU.")
        {
            InspectCommand.Create(cli),
            GenerateCommand.Create(cli),
            ChatCommand.Create(cli, input),
            TokenizeCommand.Create(cli),
            ConvertCommand.Create(cli),
            BenchCommand.Create(cli),
            TrainCommand.Create(cli),
            EvalCommand.Create(cli),
            ServeCommand.Create(cli, environment),
            LogsCommand.Create(cli),
            ProfileCommand.Create(cli),
            CalibrateCommand.Create(cli),
        };
        // `bitnet` alone shows what it can do.
        // Every value literal: System.CommandLine's response files read any token starting with @ as a file of more
        // options, so `-p "@user hi"` failed ("Response file not found") and `-p @notes.txt` ran the file's lines as options.
        var parse = root.Parse(args.Length == 0 ? ["--help"] : args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        // A command line that does not parse is a usage error like any other: exit 2, the message on stderr. The default
        // action exited 1 (the code of a bad model or data file) and wrote the help text to stdout, into `| jq`.
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) error.WriteLine($"error: {Describe(e)}");
            var path = new List<string>();
            for (var r = parse.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult) path.Insert(0, r.Command.Name);
            path[0] = "bitnet";
            error.WriteLine($"Run '{string.Join(' ', path)} --help' for its options.");
            return 2;
        }
        // The parser reads a float as .NET does, with ',' as a thousands separator: `--temp 0,8` (a decimal comma) ran at
        // temperature 8, `--repeat-penalty 1,1` at 11, without a word. A comma in a number is refused instead.
        if (CommaInANumber(parse) is { } comma)
        {
            error.WriteLine($"error: {comma}");
            error.WriteLine($"Run 'bitnet {parse.CommandResult.Command.Name} --help' for its options.");
            return 2;
        }
        // A mistyped option on a command of path arguments was read as a path: "--bogus: no such file or directory", exit 1
        // as for a missing model. A usage error, as tokenize says it (a path that starts with -- goes after --).
        if (parse.CommandResult.Command.Name is "inspect" or "convert" && !parse.Tokens.Any(t => t.Type == System.CommandLine.Parsing.TokenType.DoubleDash))
            foreach (var child in parse.CommandResult.Children)
                if (child is System.CommandLine.Parsing.ArgumentResult argument)
                    foreach (var token in argument.Tokens)
                        if (token.Value.Length > 2 && token.Value.StartsWith("--", StringComparison.Ordinal) && !File.Exists(token.Value) && !Directory.Exists(token.Value))
                        {
                            error.WriteLine($"error: '{token.Value}' is not an option of bitnet {parse.CommandResult.Command.Name}; a path that starts with -- goes after -- (bitnet {parse.CommandResult.Command.Name} [options] -- PATH).");
                            error.WriteLine($"Run 'bitnet {parse.CommandResult.Command.Name} --help' for its options.");
                            return 2;
                        }
        // The kernel tuning variables are read once by the kernels, which fall back to their defaults on a value they
        // cannot use: a typo (BITNET_WEIGHT_STREAMS=3) was measured as the default without a word. Said here, as a usage
        // error, by every command that runs a model (help, inspect, tokenize, convert and logs run none).
        if (parse.Action is not System.CommandLine.Help.HelpAction && parse.CommandResult.Command is not RootCommand && parse.CommandResult.Command.Name is not ("inspect" or "tokenize" or "logs" or "convert"))
        {
            var problems = BitNetSharp.Kernels.KernelRegistry.EnvironmentProblems(environment);
            if (problems.Count > 0)
            {
                foreach (var p in problems) error.WriteLine($"error: {p}");
                return 2;
            }
        }
        // The library's SIGINT/SIGTERM handler is off for every command: on a second signal it completed its task again
        // and the process died of it (exit 134; eval could leave its hidden partial output). serve handles the signals
        // itself (ServeSignals: drain, a deadline, a second signal exits at once); the commands that stop cleanly get
        // their cancellation token from CommandSignals; the rest end as a process does on the signal (chat's Ctrl-C
        // stops an answer through its own handler).
        var configuration = new InvocationConfiguration { Output = output, Error = error, ProcessTerminationTimeout = null };
        string name = parse.CommandResult.Command.Name;
        if (handleSignals && parse.CommandResult.Command is not RootCommand && name is "generate" or "eval" or "calibrate" or "logs" or "convert" or "train")
        {
            using var signals = Commands.CommandSignals.Register(name, error);
            return parse.InvokeAsync(configuration, signals.Token).GetAwaiter().GetResult();
        }
        return parse.Invoke(configuration);
    }

    /// <summary>The first float or double option given with a comma in its value, said as a usage error; else null.</summary>
    internal static string? CommaInANumber(ParseResult parse)
    {
        for (System.CommandLine.Parsing.SymbolResult? r = parse.CommandResult; r is not null; r = r.Parent)
        {
            if (r is not System.CommandLine.Parsing.CommandResult command) continue;
            foreach (var child in command.Children)
            {
                if (child is not System.CommandLine.Parsing.OptionResult option) continue;
                var plain = Nullable.GetUnderlyingType(option.Option.ValueType) ?? option.Option.ValueType;
                if (plain != typeof(double) && plain != typeof(float)) continue;
                foreach (var token in option.Tokens)
                    if (token.Value.Contains(','))
                        return $"{option.Option.Name} '{token.Value}' is not a number: write a decimal with a point (0.8, not 0,8) and no thousands separators.";
            }
        }
        return null;
    }

    /// <summary>
    /// The parser's message, with a value that does not convert said in words: it named the .NET type
    /// ("as expected type 'System.Nullable`1[System.UInt64]'"), which tells a user nothing.
    /// </summary>
    internal static string Describe(System.CommandLine.Parsing.ParseError e)
    {
        System.CommandLine.Parsing.OptionResult? option = null;
        for (var r = e.SymbolResult; r is not null && option is null; r = r.Parent) option = r as System.CommandLine.Parsing.OptionResult;
        if (option is null) return e.Message;
        var type = option.Option.ValueType;
        if (!e.Message.Contains(type.ToString(), StringComparison.Ordinal)) return e.Message;
        var plain = Nullable.GetUnderlyingType(type) ?? type;
        string expected =
            // int's own range (-2147483648 to 2147483647) said nothing of an option's ("profile -t 1,2"); each option checks its range.
            plain == typeof(int) ? "a whole number" :
            plain == typeof(long) ? "a whole number" :
            plain == typeof(uint) ? $"a whole number from 0 to {uint.MaxValue}" :
            plain == typeof(ulong) ? $"a whole number from 0 to {ulong.MaxValue}" :
            plain == typeof(float) || plain == typeof(double) ? "a number" :
            plain == typeof(bool) ? "true or false" :
            plain.IsEnum ? "one of " + string.Join(", ", Enum.GetNames(plain)).ToLowerInvariant() :
            "a valid value";
        string given = option.Tokens.Count > 0 ? option.Tokens[^1].Value : "";
        // Digits past the type's range are a whole number, too large ("--ctx 99999999999 is not a whole number").
        if ((plain == typeof(int) || plain == typeof(long) || plain == typeof(uint) || plain == typeof(ulong))
            && given.TrimStart('-', '+') is { Length: > 0 } digits && digits.All(char.IsAsciiDigit) && given.LastIndexOfAny(['-', '+']) <= 0)
            return given.StartsWith('-')
                ? $"{option.Option.Name} '{given}' is too small (no value below {(plain == typeof(int) ? int.MinValue : plain == typeof(long) ? long.MinValue : 0)} is read; the option's own range may be narrower)."
                : $"{option.Option.Name} '{given}' is too large (no value past {(plain == typeof(int) ? int.MaxValue : plain == typeof(long) ? long.MaxValue : plain == typeof(uint) ? uint.MaxValue : ulong.MaxValue)} is read; the option's own range may be smaller).";
        // A list where one number goes (`bench -p 16,32`, as llama-bench takes it): say that one value is read.
        if ((plain == typeof(int) || plain == typeof(long)) && given.Contains(',') && given.Split(',').All(p => p.Trim().Length > 0 && p.Trim().All(char.IsAsciiDigit)))
            return $"{option.Option.Name} '{given}': this option takes one whole number, written without commas (not a list: run once per value; no thousands separators).";
        return $"{option.Option.Name} '{given}' is not {expected}.";
    }
}
