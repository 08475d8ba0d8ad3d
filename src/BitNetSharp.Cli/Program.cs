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

    public static int Run(string[] args, TextWriter output, TextWriter error, TextReader? input = null)
    {
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
            ServeCommand.Create(cli),
            LogsCommand.Create(cli),
            ProfileCommand.Create(cli),
            CalibrateCommand.Create(cli),
        };
        return root.Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
    }
}
