using System.CommandLine;
using BitNetSharp.Cli.Commands;

namespace BitNetSharp.Cli;

/// <summary>
/// The <c>bitnet</c> tool: a thin shell that parses the command line and hands each command to its file under
/// Commands/. <see cref="Run"/> takes the output writers so tests can call the tool in-process.
/// </summary>
public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <param name="environment">Where serve reads its BITNET_* variables (default: the process environment); tests pass their own.</param>
    public static int Run(string[] args, TextWriter output, TextWriter error, TextReader? input = null, Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
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
        var parse = root.Parse(args);
        var configuration = new InvocationConfiguration { Output = output, Error = error };
        // serve drains on SIGTERM/Ctrl-C: give it its --shutdown-timeout plus time to stop before the process is ended.
        if (parse.CommandResult.Command.Name == "serve")
        {
            double drain = ServeCommand.DefaultShutdownSeconds;
            if (parse.CommandResult.Command.Options.FirstOrDefault(o => o.Name == ServeCommand.ShutdownTimeoutOption) is Option<double> o)
            {
                try
                {
                    if (ServeCommand.ShutdownSeconds(parse, o, environment) is >= 0 and <= 3600 and var d) drain = d;
                }
                catch (UsageException)
                {
                    // a bad BITNET_SHUTDOWN_TIMEOUT: serve reports it and exits before anything needs a drain
                }
            }
            configuration.ProcessTerminationTimeout = TimeSpan.FromSeconds(drain + 10);
        }
        return parse.Invoke(configuration);
    }
}
