using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using BitNetSharp.Cli.Commands;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace BitNetSharp.Tests.Deploy;

[CollectionDefinition(nameof(ContainerImageTests), DisableParallelization = true)]
public sealed class ContainerImageCollection;

/// <summary>
/// The container image the .NET SDK builds for <c>bitnet serve</c> (<c>dotnet publish -t:PublishContainer</c>, written
/// to a tar archive: no Docker daemon), built offline: the fixture makes a base image from this host's C runtime
/// libraries, serves it from a registry on localhost, points <c>ContainerBaseImage</c> at it and publishes. The tests
/// read the archive's image config and layers, and run the image's entry point from its own file system. Runs alone:
/// the publish compiles the CLI self-contained and would slow every other test down.
/// </summary>
[Collection(nameof(ContainerImageTests))]
[SupportedOSPlatform("linux")]
public sealed class ContainerImageTests(ContainerImageFixture image) : IClassFixture<ContainerImageFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private JsonObject Config => image.Built.Config["config"]!.AsObject();

    private void RequireImage()
    {
        Assert.SkipWhen(image.SkipReason is not null, image.SkipReason ?? "");
        TestContext.Current.TestOutputHelper?.WriteLine(image.Log);
    }

    /// <summary>Entry point `/app/bitnet serve`, the non-root user, port 8080, listening on every interface, the OCI labels and the tags.</summary>
    [Fact]
    public void ConfigRunsServeAsANonRootUserOnPort8080()
    {
        RequireImage();
        var built = image.Built;
        Assert.Equal(["/app/bitnet", "serve"], Strings(Config["Entrypoint"]));
        Assert.Empty(Strings(Config["Cmd"])); // `docker run IMAGE --max-seqs 4` passes its arguments to serve
        Assert.Equal("/app/", Config["WorkingDir"]?.GetValue<string>());
        Assert.Equal(ContainerImageFixture.User, Config["User"]?.GetValue<string>());
        Assert.NotEqual(0, int.Parse(ContainerImageFixture.User, CultureInfo.InvariantCulture));
        Assert.Equal(["8080/tcp"], Config["ExposedPorts"]!.AsObject().Select(p => p.Key));
        var env = ImageEnvironment(built.Config);
        Assert.Equal("0.0.0.0", env.GetValueOrDefault(ServeCommand.HostVariable));
        Assert.Equal("8080", env.GetValueOrDefault(ServeCommand.PortVariable));
        Assert.False(env.ContainsKey(ServeCommand.ModelVariable), "the image must not pin a model: the bundled one is the default, BITNET_MODEL picks a mounted one");

        var labels = Config["Labels"]!.AsObject().ToDictionary(l => l.Key, l => l.Value!.GetValue<string>());
        Assert.Equal("BitNetSharp", labels.GetValueOrDefault("org.opencontainers.image.title"));
        Assert.Contains("OpenAI-compatible", labels.GetValueOrDefault("org.opencontainers.image.description"));
        Assert.Equal(image.Version, labels.GetValueOrDefault("org.opencontainers.image.version"));
        Assert.Equal(ContainerImageFixture.SourceUrl, labels.GetValueOrDefault("org.opencontainers.image.source"));
        Assert.Equal(ContainerImageFixture.License, labels.GetValueOrDefault("org.opencontainers.image.licenses"));
        Assert.Equal(image.BaseImage, labels.GetValueOrDefault("org.opencontainers.image.base.name"));
        Assert.False(labels.ContainsKey("org.opencontainers.image.authors"), "an authors label would name the assembly, \"bitnet\"");

        Assert.Equal(["amd64", "linux"], new[] { built.Config["architecture"]!.GetValue<string>(), built.Config["os"]!.GetValue<string>() });
        Assert.Equal([$"bitnetsharp:{image.Version}", "bitnetsharp:latest"], built.RepoTags.Order(StringComparer.Ordinal));
    }

    /// <summary>
    /// Two layers: the first is the base image's, byte for byte (the SDK pulled it from the test registry: manifest,
    /// config and layer requests were seen), the second holds the self-contained app and the bundled model, readable
    /// and executable by the image's user.
    /// </summary>
    [Fact]
    public void LayersAreTheBaseImageAndTheApp()
    {
        RequireImage();
        var built = image.Built;
        var diffIds = built.Config["rootfs"]!["diff_ids"]!.AsArray().Select(d => d!.GetValue<string>()).ToList();
        Assert.Equal(2, diffIds.Count);
        Assert.Equal(2, built.LayerDiffIds.Count);
        Assert.Equal(diffIds, built.LayerDiffIds);
        Assert.Equal(image.BaseDiffId, diffIds[0]);
        foreach (var path in new[] { $"/v2/{ContainerImageFixture.BaseRepository}/manifests/{ContainerImageFixture.BaseTag}", $"/v2/{ContainerImageFixture.BaseRepository}/blobs/{image.BaseLayerDigest}" })
            Assert.True(image.RegistryRequests.Any(r => r.EndsWith(" " + path, StringComparison.Ordinal)), $"the SDK never requested {path} from the test registry; it asked for: {string.Join(", ", image.RegistryRequests)}");

        var app = built.Layers[1];
        Assert.All(app.Keys, name => Assert.StartsWith("app/", name + "/"));
        var bitnet = app["app/bitnet"];
        Assert.Equal(TarEntryType.RegularFile, bitnet.Type);
        Assert.True(bitnet.Mode.HasFlag(UnixFileMode.OtherExecute) && bitnet.Mode.HasFlag(UnixFileMode.OtherRead), $"/app/bitnet is {bitnet.Mode}: user {ContainerImageFixture.User} cannot run it");
        foreach (var file in new[] { "app/bitnet.dll", "app/BitNetSharp.dll", "app/BitNetSharp.Server.dll", "app/libcoreclr.so", "app/System.Private.CoreLib.dll", "app/Microsoft.AspNetCore.Server.Kestrel.Core.dll" })
            Assert.True(app.TryGetValue(file, out var e) && e.Mode.HasFlag(UnixFileMode.OtherRead), $"the app layer has no readable {file} (self-contained: the runtime and ASP.NET Core travel with the app)");
        var model = app["app/models/" + ModelOptions.BundledModelFile];
        Assert.True(model.Mode.HasFlag(UnixFileMode.OtherRead));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(RepositoryFiles.Path("models/" + ModelOptions.BundledModelFile)))), model.Sha256);
        Assert.Contains(built.Layers[0].Keys, n => n.EndsWith("/libc.so.6", StringComparison.Ordinal));
    }

    /// <summary>
    /// The image runs: its layers unpacked into a root file system, its entry point started there (chroot, with /proc,
    /// /dev and /sys bound in, as a container runtime does) as its user, with its environment (BITNET_PORT moved to a free
    /// port, BITNET_API_KEY added). No -m and no BITNET_MODEL: the bundled model loads; /health turns 200, the API wants
    /// the key, a completion comes back, and SIGTERM drains and exits 0.
    /// </summary>
    [Fact]
    public async Task EntryPointServesTheBundledModelFromTheImageFileSystem()
    {
        RequireImage();
        Assert.SkipWhen(image.RunSkipReason is not null, image.RunSkipReason ?? "");
        var built = image.Built;
        string root = image.ExtractRootFileSystem();
        int port = FreePort();
        // One process all the way: unshare execs sh, sh execs chroot, chroot execs the entry point, so kill reaches serve.
        var psi = new ProcessStartInfo(ContainerImageFixture.Which("unshare")) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in image.RunAsRoot ? new[] { "--mount", "--propagation", "private" } : ["--user", "--map-root-user", "--mount", "--propagation", "private"]) psi.ArgumentList.Add(a);
        string user = image.RunAsRoot ? $"--userspec={ContainerImageFixture.User}:{ContainerImageFixture.User} " : "";
        foreach (var a in new[] { "/bin/sh", "-c", $"set -e; r=\"$1\"; shift; for d in proc dev sys; do mkdir -p \"$r/$d\"; mount --rbind \"/$d\" \"$r/$d\"; done; exec chroot {user}\"$r\" \"$@\"", "sh", root })
            psi.ArgumentList.Add(a);
        foreach (var a in Strings(Config["Entrypoint"]).Concat(Strings(Config["Cmd"]))) psi.ArgumentList.Add(a);
        psi.Environment.Clear();
        foreach (var (name, value) in ImageEnvironment(built.Config)) psi.Environment[name] = value;
        psi.Environment[ServeCommand.PortVariable] = port.ToString(CultureInfo.InvariantCulture);
        psi.Environment[ServeCommand.ApiKeyVariable] = "image-key";

        using var process = Process.Start(psi)!;
        var stderr = new StringBuilder();
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            if (e.Data.StartsWith("ready: model", StringComparison.Ordinal)) ready.TrySetResult();
        };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        string Log()
        {
            lock (stderr) return stderr.ToString();
        }
        try
        {
            var exited = process.WaitForExitAsync(Ct);
            if (await Task.WhenAny(ready.Task, exited, Task.Delay(TimeSpan.FromSeconds(90), Ct)) != ready.Task)
                Assert.Fail($"the image's entry point did not get ready ({(process.HasExited ? $"exit code {process.ExitCode}" : "still starting after 90 s")}):\n{Log()}");
            if (image.RunAsRoot)
            {
                string uid = File.ReadLines($"/proc/{process.Id}/status").Single(l => l.StartsWith("Uid:", StringComparison.Ordinal));
                Assert.Equal(ContainerImageFixture.User, uid.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
            }
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(60) };
            using (var health = await http.GetAsync("health", Ct)) Assert.Equal(HttpStatusCode.OK, health.StatusCode);
            using (var anonymous = await http.GetAsync("v1/models", Ct)) Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "image-key");
            using (var models = await http.GetAsync("v1/models", Ct))
            {
                Assert.Equal(HttpStatusCode.OK, models.StatusCode);
                var id = JsonDocument.Parse(await models.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("data")[0].GetProperty("id").GetString();
                Assert.Equal(Path.GetFileNameWithoutExtension(ModelOptions.BundledModelFile), id);
            }
            var body = JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = 8, temperature = 0 });
            using (var completion = await http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), Ct))
            {
                string json = await completion.Content.ReadAsStringAsync(Ct);
                Assert.True(completion.StatusCode == HttpStatusCode.OK, $"{completion.StatusCode}: {json}");
                Assert.False(string.IsNullOrWhiteSpace(JsonDocument.Parse(json).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()));
            }

            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(Ct);
            await exited.WaitAsync(TimeSpan.FromSeconds(40), Ct);
            process.WaitForExit(); // flush the redirected output
            Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode} after SIGTERM:\n{Log()}");
            Assert.Contains("stopped: every request in flight finished.", Log());
            TestContext.Current.TestOutputHelper?.WriteLine($"ran as {(image.RunAsRoot ? $"user {ContainerImageFixture.User} (chroot --userspec)" : "the mapped root of a user namespace (unshare -r)")}:\n{Log()}");
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    private static IReadOnlyList<string> Strings(JsonNode? node) => node is JsonArray a ? a.Select(n => n!.GetValue<string>()).ToList() : [];

    private static Dictionary<string, string> ImageEnvironment(JsonObject config) =>
        Strings(config["config"]!["Env"]).Select(e => e.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "");

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>An entry of an image layer: its type, mode, link target and, for files, the SHA-256 of its content.</summary>
public sealed record LayerEntry(TarEntryType Type, UnixFileMode Mode, string? LinkName, string? Sha256);

/// <summary>The image in the archive: its config, tags and layers (in order, with their uncompressed digests and entries).</summary>
public sealed record BuiltImage(JsonObject Config, IReadOnlyList<string> RepoTags, IReadOnlyList<string> LayerFiles, IReadOnlyList<string> LayerDiffIds, IReadOnlyList<IReadOnlyDictionary<string, LayerEntry>> Layers);

/// <summary>
/// Builds the image once for the class: a base image from this host's libraries, a registry for it on localhost, and
/// <c>dotnet publish -t:PublishContainer</c> with <c>ContainerBaseImage</c> pointing there and <c>ContainerArchiveOutputPath</c>
/// set; then reads the archive. <see cref="SkipReason"/> says why it could not be built here (not Linux x64, host
/// libraries missing); a failed publish throws.
/// </summary>
[SupportedOSPlatform("linux")]
public sealed class ContainerImageFixture : IAsyncLifetime
{
    public const string User = "1654";
    public const string BaseRepository = "bitnet-base";
    public const string BaseTag = "test";
    public const string SourceUrl = "https://example.invalid/bitnetsharp";
    public const string License = "LicenseRef-BitNetSharp-Test";
    private const string DockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
    private const string DockerConfig = "application/vnd.docker.container.image.v1+json";
    private const string DockerLayer = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    private static readonly DateTimeOffset Epoch = new(2000, 1, 1, 0, 0, 0, TimeSpan.Zero);

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bitnet-container-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly StringBuilder _log = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private BuiltImage? _built;
    private string? _root;

    public string? SkipReason { get; private set; }
    public string? RunSkipReason { get; private set; }
    public bool RunAsRoot { get; private set; }
    public string Version { get; } = Regex.Match(File.ReadAllText(RepositoryFiles.Path("src/BitNetSharp.Cli/BitNetSharp.Cli.csproj")), "<Version>([^<]+)</Version>").Groups[1].Value;
    public string BaseImage { get; private set; } = "";
    public string BaseDiffId { get; private set; } = "";
    public string BaseLayerDigest { get; private set; } = "";
    public List<string> RegistryRequests { get; } = [];
    public string Log => _log.ToString();
    public BuiltImage Built => _built ?? throw new InvalidOperationException(SkipReason ?? "the image was not built");

    private void Note(string line) => _log.AppendLine(CultureInfo.InvariantCulture, $"[{_clock.Elapsed.TotalSeconds,6:0.0} s] {line}");

    public async ValueTask InitializeAsync()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.OSArchitecture != Architecture.X64)
        {
            SkipReason = $"builds a linux-x64 image and its base from this host's libraries; this is {RuntimeInformation.OSDescription} {RuntimeInformation.OSArchitecture}";
            return;
        }
        var (libraries, missing) = await HostLibrariesAsync();
        if (missing is not null)
        {
            SkipReason = missing;
            return;
        }
        Directory.CreateDirectory(_dir);
        var (layer, diffId, config, manifest) = BaseImageBlobs(libraries);
        BaseDiffId = diffId;
        BaseLayerDigest = Digest(layer);
        Note($"base image: {libraries.Count} host files ({string.Join(", ", libraries.Select(l => l.ImagePath))}), layer {layer.Length:N0} bytes gzip");

        var blobs = new Dictionary<string, (byte[] Bytes, string MediaType)>
        {
            [BaseLayerDigest] = (layer, DockerLayer),
            [Digest(config)] = (config, DockerConfig),
        };
        try
        {
            await using (var registry = await StartRegistryAsync(manifest, blobs))
            {
                BaseImage = $"localhost:{new Uri(registry.Urls.First()).Port}/{BaseRepository}:{BaseTag}";
                await PublishAsync(Path.Combine(_dir, "bitnetsharp.tar"));
                await registry.StopAsync();
            }
            _built = ReadArchive(Path.Combine(_dir, "bitnetsharp.tar"));
        }
        catch
        {
            await DisposeAsync();
            throw;
        }
        string archive = Path.Combine(_dir, "bitnetsharp.tar");
        Note($"archive {new FileInfo(archive).Length:N0} bytes, layers {string.Join(" + ", _built.LayerFiles.Select(f => $"{new FileInfo(Path.Combine(_dir, "archive", f)).Length:N0}"))} bytes");
        (RunAsRoot, RunSkipReason) = await CanChrootAsync();
    }

    public ValueTask DisposeAsync()
    {
        try
        {
            if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
            // a temp folder left behind is not the test's failure
        }
        catch (UnauthorizedAccessException)
        {
        }
        return ValueTask.CompletedTask;
    }

    // ------------------------------------------------------------------------------------------------ the base image

    /// <summary>
    /// The files a self-contained .NET app needs from the OS: what ldd says this runtime's native parts and the CLI's
    /// apphost link against (the loader, libc, libm, libstdc++, libgcc_s, ...), plus OpenSSL, which the runtime loads
    /// on first use (the API key is compared by its SHA-256). Each keeps the path the loader found it at.
    /// </summary>
    private static async Task<(List<(string ImagePath, string HostPath)> Files, string? Missing)> HostLibrariesAsync()
    {
        string runtime = Path.GetDirectoryName(typeof(object).Assembly.Location)! + "/";
        string dotnetRoot = Path.GetFullPath(Path.Combine(runtime, "..", "..", ".."));
        var natives = new[] { "libcoreclr.so", "libclrjit.so", "libhostpolicy.so", "libSystem.Native.so", "libSystem.Net.Security.Native.so", "libSystem.IO.Compression.Native.so", "libSystem.Security.Cryptography.Native.OpenSsl.so" }
            .Select(n => Path.Combine(runtime, n)).ToList();
        natives.Add(Path.Combine(AppContext.BaseDirectory, "bitnet"));
        if (Directory.Exists(Path.Combine(dotnetRoot, "host", "fxr")))
            natives.AddRange(Directory.EnumerateFiles(Path.Combine(dotnetRoot, "host", "fxr"), "libhostfxr.so", SearchOption.AllDirectories).Take(1));
        if (natives.FirstOrDefault(n => !File.Exists(n)) is { } absent) return ([], $"{absent} is not here, so the libraries the .NET runtime needs cannot be read from it with ldd");
        string? ssl = new[] { "libssl.so.3", "libssl.so.1.1" }
            .SelectMany(name => new[] { "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/usr/lib" }.Select(d => Path.Combine(d, name)))
            .FirstOrDefault(File.Exists);
        if (ssl is null) return ([], "OpenSSL (libssl.so.3 or libssl.so.1.1) is not installed in /lib or /usr/lib; the runtime hashes with it");
        natives.Add(ssl);

        string output;
        try
        {
            output = await RunAsync("ldd", natives, TimeSpan.FromSeconds(30));
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return ([], $"ldd could not run ({e.Message}); it names the libraries the base image needs");
        }
        var files = new Dictionary<string, string>(StringComparer.Ordinal) { [ssl] = ssl };
        foreach (var line in output.Split('\n').Select(l => l.Trim()))
        {
            if (line.Contains("=> not found", StringComparison.Ordinal)) return ([], $"ldd: {line} (needed by the .NET runtime; a base image without it would not run)");
            var m = Regex.Match(line, @"^(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$");
            if (!m.Success) continue;
            string path = m.Groups[1].Value;
            if (path.StartsWith(runtime, StringComparison.Ordinal) || path.StartsWith(AppContext.BaseDirectory, StringComparison.Ordinal)) continue;
            files[path] = path;
        }
        foreach (var required in new[] { "libc.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libm.so.6" })
            if (!files.Keys.Any(f => Path.GetFileName(f) == required)) return ([], $"ldd named no {required} for the .NET runtime's libraries:\n{output}");
        if (!files.Keys.Any(f => Path.GetFileName(f).StartsWith("ld-linux", StringComparison.Ordinal))) return ([], $"ldd named no dynamic loader:\n{output}");
        return (files.Keys.Order(StringComparer.Ordinal).Select(f => (f, f)).ToList(), null);
    }

    /// <summary>A one-layer Docker v2 image: the host files at their paths, /tmp (1777), and a config with PATH set.</summary>
    private static (byte[] Layer, string DiffId, byte[] Config, byte[] Manifest) BaseImageBlobs(List<(string ImagePath, string HostPath)> files)
    {
        using var tar = new MemoryStream();
        using (var writer = new TarWriter(tar, TarEntryFormat.Ustar, leaveOpen: true)) // no PAX times: the same host files give the same layer
        {
            const UnixFileMode dirMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute;
            var dirs = files.SelectMany(f => Parents(f.ImagePath)).Append("tmp").Distinct().Order(StringComparer.Ordinal);
            foreach (var dir in dirs)
            {
                var mode = dir == "tmp" ? dirMode | UnixFileMode.GroupWrite | UnixFileMode.OtherWrite | UnixFileMode.StickyBit : dirMode;
                writer.WriteEntry(new UstarTarEntry(TarEntryType.Directory, dir + "/") { Mode = mode, ModificationTime = Epoch });
            }
            foreach (var (imagePath, hostPath) in files)
            {
                using var content = File.OpenRead(hostPath); // follows symbolic links: the image gets the file itself
                var mode = File.GetUnixFileMode(hostPath) & ~(UnixFileMode.SetUser | UnixFileMode.SetGroup | UnixFileMode.StickyBit);
                writer.WriteEntry(new UstarTarEntry(TarEntryType.RegularFile, imagePath.TrimStart('/')) { Mode = mode, ModificationTime = Epoch, DataStream = content });
            }
        }
        byte[] tarBytes = tar.ToArray();
        using var gz = new MemoryStream();
        using (var z = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true)) z.Write(tarBytes);
        byte[] layer = gz.ToArray();
        string diffId = Digest(tarBytes);
        byte[] config = JsonSerializer.SerializeToUtf8Bytes(new JsonObject
        {
            ["architecture"] = "amd64",
            ["os"] = "linux",
            ["created"] = Epoch.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
            ["config"] = new JsonObject { ["Env"] = new JsonArray("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ["WorkingDir"] = "/" },
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = new JsonArray(diffId) },
            ["history"] = new JsonArray(new JsonObject { ["created"] = Epoch.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture), ["created_by"] = "BitNetSharp ContainerImageTests: this host's C runtime libraries and OpenSSL" }),
        });
        byte[] manifest = JsonSerializer.SerializeToUtf8Bytes(new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = DockerManifest,
            ["config"] = new JsonObject { ["mediaType"] = DockerConfig, ["size"] = config.Length, ["digest"] = Digest(config) },
            ["layers"] = new JsonArray(new JsonObject { ["mediaType"] = DockerLayer, ["size"] = layer.Length, ["digest"] = Digest(layer) }),
        });
        return (layer, diffId, config, manifest);

        static IEnumerable<string> Parents(string path)
        {
            var parts = path.Trim('/').Split('/');
            for (int i = 1; i < parts.Length; i++) yield return string.Join('/', parts[..i]);
        }
    }

    private static string Digest(byte[] bytes) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>
    /// The pull side of the Docker Registry HTTP API v2, for one image: GET /v2/, GET|HEAD of its manifest (by tag or
    /// digest) and of its blobs. localhost registries are plain HTTP to the SDK (it falls back from HTTPS).
    /// </summary>
    private async Task<WebApplication> StartRegistryAsync(byte[] manifest, Dictionary<string, (byte[] Bytes, string MediaType)> blobs)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        builder.WebHost.ConfigureKestrel(k => k.ListenLocalhost(port));
        var app = builder.Build();
        string manifestDigest = Digest(manifest);
        app.Run(async context =>
        {
            var request = context.Request;
            var response = context.Response;
            lock (RegistryRequests) RegistryRequests.Add($"{request.Method} {request.Path}");
            response.Headers["Docker-Distribution-API-Version"] = "registry/2.0";
            string path = request.Path.Value ?? "";
            bool head = HttpMethods.IsHead(request.Method);
            if (!head && !HttpMethods.IsGet(request.Method))
            {
                response.StatusCode = 405;
                return;
            }
            if (path == "/v2/" || path == "/v2")
            {
                response.ContentType = "application/json";
                await response.WriteAsync("{}");
                return;
            }
            var m = Regex.Match(path, @"^/v2/(?<name>.+)/(?<kind>manifests|blobs)/(?<ref>[^/]+)$");
            (byte[] Bytes, string MediaType)? found = !m.Success || m.Groups["name"].Value != BaseRepository ? null
                : m.Groups["kind"].Value == "manifests" ? (m.Groups["ref"].Value == BaseTag || m.Groups["ref"].Value == manifestDigest ? (manifest, DockerManifest) : null)
                : blobs.TryGetValue(m.Groups["ref"].Value, out var blob) ? blob : null;
            if (found is not { } f)
            {
                response.StatusCode = 404;
                response.ContentType = "application/json";
                string code = !m.Success || m.Groups["name"].Value != BaseRepository ? "NAME_UNKNOWN" : m.Groups["kind"].Value == "manifests" ? "MANIFEST_UNKNOWN" : "BLOB_UNKNOWN";
                await response.WriteAsync($"{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"{code.ToLowerInvariant().Replace('_', ' ')}\"}}]}}");
                return;
            }
            response.ContentType = m.Groups["kind"].Value == "manifests" ? f.MediaType : "application/octet-stream";
            response.ContentLength = f.Bytes.Length;
            response.Headers["Docker-Content-Digest"] = Digest(f.Bytes);
            if (!head) await response.Body.WriteAsync(f.Bytes);
        });
        await app.StartAsync();
        return app;
    }

    // ------------------------------------------------------------------------------------------------ the publish

    /// <summary>The SDK that runs these tests: DOTNET_HOST_PATH when the dotnet CLI set it, else the dotnet next to this runtime, else PATH's.</summary>
    private static string DotnetHost()
    {
        if (System.Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host)) return host;
        string beside = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(typeof(object).Assembly.Location)!, "..", "..", "..", "dotnet"));
        return File.Exists(beside) ? beside : "dotnet";
    }

    /// <summary>
    /// dotnet publish -t:PublishContainer into the fixture's folder (--artifacts-path: its own bin and obj, so the
    /// repository's build outputs are not touched), self-contained for linux-x64 on the test registry's base image.
    /// </summary>
    private async Task PublishAsync(string archive)
    {
        var args = new List<string>
        {
            "publish", RepositoryFiles.Path("src/BitNetSharp.Cli/BitNetSharp.Cli.csproj"), "-c", "Release", "-r", "linux-x64", "-p:SelfContained=true",
            "-t:PublishContainer", $"-p:ContainerBaseImage={BaseImage}", $"-p:ContainerArchiveOutputPath={archive}",
            $"-p:RepositoryUrl={SourceUrl}", $"-p:PackageLicenseExpression={License}",
            "--artifacts-path", Path.Combine(_dir, "artifacts"), "-nodeReuse:false", "-p:UseSharedCompilation=false", "-nologo",
        };
        var psi = new ProcessStartInfo(DotnetHost()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || k.StartsWith("_MSBuild", StringComparison.OrdinalIgnoreCase)).ToList())
            psi.Environment.Remove(key);
        // The SDK keeps every layer it pulls or builds in $XDG_CACHE_HOME/dotnet/Containers (59 MB a run for the app
        // layer) and leaves empty folders in $TMPDIR: both go in the fixture's folder, deleted at the end. So does the
        // compiler, in-process (a compiler server started with this TMPDIR would outlive the folder).
        psi.Environment["XDG_CACHE_HOME"] = Directory.CreateDirectory(Path.Combine(_dir, "cache")).FullName;
        psi.Environment["TMPDIR"] = Directory.CreateDirectory(Path.Combine(_dir, "tmp")).FullName;
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        Note($"{psi.FileName} {string.Join(' ', args)}");
        var output = new StringBuilder();
        using var process = Process.Start(psi)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(6));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet publish -t:PublishContainer ran over 6 minutes:\n{Tail(output)}");
        }
        process.WaitForExit();
        Note($"dotnet publish exited {process.ExitCode}");
        if (process.ExitCode != 0 || !File.Exists(archive))
            throw new InvalidOperationException($"dotnet publish -t:PublishContainer failed (exit {process.ExitCode}{(File.Exists(archive) ? "" : ", no archive")}):\n{Tail(output)}");

        static string Tail(StringBuilder sb)
        {
            string[] lines;
            lock (sb) lines = sb.ToString().Split('\n');
            return string.Join('\n', lines.TakeLast(60));
        }
    }

    // ------------------------------------------------------------------------------------------------ the archive

    /// <summary>
    /// The archive the SDK wrote for a Docker v2 base: `docker save`'s layout (manifest.json naming the config and the
    /// layer files, each layer a tar, gzip-compressed or not), itself gzip-compressed or not.
    /// </summary>
    private BuiltImage ReadArchive(string archive)
    {
        string dir = Path.Combine(_dir, "archive");
        Directory.CreateDirectory(dir);
        using (var file = OpenMaybeGzip(File.OpenRead(archive)))
            TarFile.ExtractToDirectory(file, dir, overwriteFiles: false);
        string manifestFile = Path.Combine(dir, "manifest.json");
        Assert.True(File.Exists(manifestFile), $"the archive is not in `docker save` layout (no manifest.json); it holds {string.Join(", ", Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName))}");
        var manifest = JsonNode.Parse(File.ReadAllText(manifestFile))!.AsArray().Single()!;
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, manifest["Config"]!.GetValue<string>())))!.AsObject();
        var tags = manifest["RepoTags"]!.AsArray().Select(t => t!.GetValue<string>()).ToList();
        var layerFiles = manifest["Layers"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
        var diffIds = new List<string>();
        var layers = new List<IReadOnlyDictionary<string, LayerEntry>>();
        foreach (var layerFile in layerFiles)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var entries = new Dictionary<string, LayerEntry>(StringComparer.Ordinal);
            using (var stream = OpenMaybeGzip(File.OpenRead(Path.Combine(dir, layerFile))))
            using (var hashing = new HashingStream(stream, sha))
            using (var reader = new TarReader(hashing))
            {
                while (reader.GetNextEntry() is { } entry)
                {
                    string? contentSha = null;
                    if (entry.DataStream is { } data) contentSha = Convert.ToHexStringLower(SHA256.HashData(data));
                    entries[Normalize(entry.Name)] = new LayerEntry(entry.EntryType, entry.Mode, entry.LinkName, contentSha);
                }
                hashing.CopyTo(Stream.Null); // the end-of-archive blocks count toward the digest
            }
            diffIds.Add("sha256:" + Convert.ToHexStringLower(sha.GetHashAndReset()));
            layers.Add(entries);
        }
        return new BuiltImage(config, tags, layerFiles, diffIds, layers);
    }

    private static Stream OpenMaybeGzip(FileStream file)
    {
        int b0 = file.ReadByte(), b1 = file.ReadByte();
        file.Position = 0;
        return b0 == 0x1f && b1 == 0x8b ? new GZipStream(file, CompressionMode.Decompress) : file;
    }

    private static string Normalize(string name)
    {
        string n = name.Replace('\\', '/');
        while (n.StartsWith("./", StringComparison.Ordinal)) n = n[2..];
        return n.Trim('/');
    }

    /// <summary>The image's layers unpacked in order into one folder (once), with modes, as a container's root file system.</summary>
    public string ExtractRootFileSystem()
    {
        if (_root is not null) return _root;
        string root = Path.Combine(_dir, "rootfs");
        Directory.CreateDirectory(root);
        foreach (var layerFile in Built.LayerFiles)
        {
            using var stream = OpenMaybeGzip(File.OpenRead(Path.Combine(_dir, "archive", layerFile)));
            using var reader = new TarReader(stream);
            var directories = new List<(string Path, UnixFileMode Mode)>();
            while (reader.GetNextEntry() is { } entry)
            {
                string name = Normalize(entry.Name);
                if (name.Length == 0) continue;
                if (name.Split('/').Any(p => p is ".." || p.StartsWith(".wh.", StringComparison.Ordinal)))
                    throw new InvalidDataException($"layer {layerFile}: entry {entry.Name} (a path outside the root, or a whiteout, which these layers never need)");
                string target = Path.Combine(root, name);
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                switch (entry.EntryType)
                {
                    case TarEntryType.Directory:
                        Directory.CreateDirectory(target);
                        directories.Add((target, entry.Mode));
                        break;
                    case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                        if (File.Exists(target) || Directory.Exists(target)) File.Delete(target);
                        using (var file = File.Create(target)) entry.DataStream?.CopyTo(file);
                        File.SetUnixFileMode(target, entry.Mode);
                        break;
                    case TarEntryType.SymbolicLink:
                        if (File.Exists(target)) File.Delete(target);
                        File.CreateSymbolicLink(target, entry.LinkName);
                        break;
                    case TarEntryType.HardLink:
                        File.Copy(Path.Combine(root, Normalize(entry.LinkName)), target, overwrite: true);
                        break;
                    default:
                        break; // devices and FIFOs: a container runtime provides /dev
                }
            }
            foreach (var (path, mode) in directories) File.SetUnixFileMode(path, mode);
        }
        return _root = root;
    }

    /// <summary>
    /// Whether the image can be run here, and how: what the run does (a private mount namespace, /proc bound into a
    /// folder, chroot), tried as root and then as the mapped root of a new user namespace.
    /// </summary>
    private static async Task<(bool Root, string? Skip)> CanChrootAsync()
    {
        const string probe = "set -e; d=$(mktemp -d); mount --rbind /proc \"$d\"; test -r \"$d/self/status\"; umount -R \"$d\"; rmdir \"$d\"; chroot / true";
        var failures = new List<string>();
        try
        {
            bool root = (await RunAsync("id", ["-u"], TimeSpan.FromSeconds(10))).Trim() == "0";
            var modes = root ? new[] { (true, new[] { "--mount", "--propagation", "private" }) } : [];
            foreach (var (asRoot, unshare) in modes.Append((false, ["--user", "--map-root-user", "--mount", "--propagation", "private"])))
            {
                var psi = new ProcessStartInfo(Which("unshare")) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
                foreach (var a in unshare.Concat(["/bin/sh", "-c", probe])) psi.ArgumentList.Add(a);
                using var p = Process.Start(psi)!;
                string err = await p.StandardError.ReadToEndAsync();
                await p.WaitForExitAsync();
                if (p.ExitCode == 0) return (asRoot, null);
                failures.Add($"`unshare {string.Join(' ', unshare)}` then mount --rbind and chroot: exit {p.ExitCode} {err.Trim()}");
            }
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            failures.Add($"unshare(1), mount(8) and chroot(1) are needed (util-linux, coreutils): {e.Message}");
        }
        return (false, "running the image needs a chroot with /proc bound in, as root or in an unprivileged user namespace; neither works here: " + string.Join("; ", failures));
    }

    /// <summary>A program's path from this process's PATH (the image's environment replaces the child's).</summary>
    public static string Which(string name) =>
        (System.Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists) ?? name;

    private static async Task<string> RunAsync(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync().WaitAsync(timeout);
        return await stdout + await stderr;
    }

    /// <summary>Passes reads through and hashes what was read.</summary>
    private sealed class HashingStream(Stream inner, IncrementalHash hash) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = inner.Read(buffer);
            hash.AppendData(buffer[..n]);
            return n;
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
