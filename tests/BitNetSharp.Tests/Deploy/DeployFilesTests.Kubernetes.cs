using System.Text.RegularExpressions;
using BitNetSharp.Cli.Commands;
using BitNetSharp.Tests.Server;
using YamlDotNet.RepresentationModel;

namespace BitNetSharp.Tests.Deploy;

/// <summary>
/// deploy/kubernetes: every YAML file parses, and the fields that make a rollout safe agree with each other and with
/// the server: probes on the container's port and /health, a grace period longer than the drain, the HPA's metric
/// one a server exports, Prometheus pod discovery matching the pods' labels and annotations.
/// </summary>
public sealed partial class DeployFilesTests
{
    private static string KubernetesDir => RepositoryFiles.Path(Path.Combine("deploy", "kubernetes"));

    /// <summary>Every .yaml/.yml under deploy/ parses as YAML (all its documents), each document a mapping.</summary>
    [Fact]
    public void EveryYamlFileParses()
    {
        var files = Directory.EnumerateFiles(RepositoryFiles.Path("deploy"), "*.*", SearchOption.AllDirectories)
            .Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
        Assert.True(files.Count >= 10, $"only {files.Count} YAML files under deploy/");
        foreach (var file in files)
        {
            var stream = new YamlStream();
            try
            {
                stream.Load(new StringReader(File.ReadAllText(file)));
            }
            catch (YamlDotNet.Core.YamlException e)
            {
                Assert.Fail($"{file}: {e.Message}");
            }
            Assert.True(stream.Documents.Count >= 1, $"{file}: no YAML document");
            foreach (var doc in stream.Documents) Assert.True(doc.RootNode is YamlMappingNode, $"{file}: a document is not a mapping");
        }
    }

    /// <summary>kustomization.yaml lists every manifest in the folder (the adapter rules and the Prometheus config are configuration, not resources), each with apiVersion, kind and metadata.name.</summary>
    [Fact]
    public void KustomizationListsEveryManifest()
    {
        var listed = Seq(Yaml("kustomization.yaml"), "resources").Select(n => ((YamlScalarNode)n).Value!).Order(StringComparer.Ordinal).ToList();
        var files = Directory.EnumerateFiles(KubernetesDir, "*.yaml").Select(f => Path.GetFileName(f))
            .Where(f => f is not ("kustomization.yaml" or "prometheus-adapter-rules.yaml")).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(files, listed);
        foreach (var file in files)
        {
            var doc = Yaml(file);
            foreach (var key in new[] { "apiVersion", "kind" }) Assert.False(string.IsNullOrEmpty(Str(doc, key)), $"{file}: no {key}");
            Assert.Equal("bitnet" + (Str(doc, "kind") == "PersistentVolumeClaim" ? "-models" : ""), Str(doc, "metadata", "name"));
        }
    }

    /// <summary>
    /// The Deployment: readiness is GET /health on the container's port (503 while loading, warming up or draining);
    /// startup and liveness are TCP connects, which pass while the model loads and while it drains; the grace period
    /// covers preStop plus the drain; non-root, read-only root file system; resources set; the model from a read-only
    /// volume with -m; every $(VAR) in args defined in env; every option in args one `bitnet serve` has.
    /// </summary>
    [Fact]
    public void DeploymentProbesShutdownAndSecurity()
    {
        var deployment = Yaml("deployment.yaml");
        Assert.Equal("Deployment", Str(deployment, "kind"));
        var pod = Node(deployment, "spec", "template", "spec");
        var container = (YamlMappingNode)Seq(pod, "containers").Single();
        var port = (YamlMappingNode)Seq(container, "ports").Single();
        string portName = Str(port, "name")!;
        int containerPort = int.Parse(Str(port, "containerPort")!, System.Globalization.CultureInfo.InvariantCulture);
        var env = Seq(container, "env").Cast<YamlMappingNode>().ToDictionary(e => Str(e, "name")!, e => Str(e, "value"));

        bool IsContainerPort(string? p) => p == portName || p == containerPort.ToString(System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal("/health", Str(container, "readinessProbe", "httpGet", "path"));
        Assert.True(IsContainerPort(Str(container, "readinessProbe", "httpGet", "port")), "readinessProbe is not on the container port");
        foreach (var probe in new[] { "startupProbe", "livenessProbe" })
        {
            Assert.True(Find(container, probe, "httpGet") is null,
                $"{probe} is an HTTP probe: /health answers 503 while the model loads and while it drains, so it would restart healthy pods; use tcpSocket");
            Assert.True(IsContainerPort(Str(container, probe, "tcpSocket", "port")), $"{probe} is not a TCP probe on the container port");
        }

        // The drain: preStop sleep, then SIGTERM and up to --shutdown-timeout of draining, inside the grace period.
        double shutdown = double.Parse(env["BITNET_SHUTDOWN_TIMEOUT"]!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(shutdown >= ServeCommand.DefaultShutdownSeconds, $"BITNET_SHUTDOWN_TIMEOUT {shutdown} is below the server's default {ServeCommand.DefaultShutdownSeconds}");
        int preStop = int.Parse(Str(container, "lifecycle", "preStop", "sleep", "seconds")!, System.Globalization.CultureInfo.InvariantCulture);
        int grace = int.Parse(Str(pod, "terminationGracePeriodSeconds")!, System.Globalization.CultureInfo.InvariantCulture);
        // serve allows itself 10 s after the drain to stop (ServeSignals' deadline, then exit 1): SIGKILL must come later.
        Assert.True(grace > preStop + shutdown + 10, $"terminationGracePeriodSeconds {grace} does not outlast preStop {preStop} s + drain {shutdown} s + serve's 10 s stop margin");
        Assert.True(grace > preStop + ServeCommand.DefaultShutdownSeconds, "terminationGracePeriodSeconds is not above the default --shutdown-timeout");

        Assert.Equal("true", Str(pod, "securityContext", "runAsNonRoot"));
        Assert.NotEqual("0", Str(pod, "securityContext", "runAsUser"));
        Assert.Equal("true", Str(container, "securityContext", "readOnlyRootFilesystem"));
        Assert.Equal("false", Str(container, "securityContext", "allowPrivilegeEscalation"));
        foreach (var kind in new[] { "requests", "limits" })
            foreach (var resource in new[] { "cpu", "memory" })
                Assert.False(string.IsNullOrEmpty(Str(container, "resources", kind, resource)), $"resources.{kind}.{resource} is not set");
        // The memory limit leaves 30 % over the highest RSS a committed soak of the bundled model measured (160Mi left
        // 14 % over the 30-minute soaks' 140 MiB, before socket buffers and page cache the cgroup also counts).
        string limit = Str(container, "resources", "limits", "memory")!;
        Assert.EndsWith("Mi", limit);
        double highest = Directory.EnumerateFiles(RepositoryFiles.Path(Path.Combine("bench", "results")), "soak-*.md")
            .Where(f => File.ReadAllText(f).Contains("bitnet-tinystories.gguf", StringComparison.Ordinal)) // the Deployment's model
            .SelectMany(f => Regex.Matches(File.ReadAllText(f), @"samples [0-9.]+–([0-9.]+) MiB").Select(m => double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)))
            .DefaultIfEmpty(0).Max();
        Assert.True(highest > 100, "no soak result with RSS samples under bench/results");
        Assert.True(double.Parse(limit[..^2], System.Globalization.CultureInfo.InvariantCulture) >= 1.3 * highest, $"memory limit {limit} is not 30 % over the soak's highest RSS sample, {highest} MiB");
        // The image by its version tag: with IfNotPresent a node keeps whichever latest it pulled first.
        string image = Str(container, "image")!;
        string version = Regex.Match(File.ReadAllText(RepositoryFiles.Path(Path.Combine("src", "BitNetSharp.Cli", "BitNetSharp.Cli.csproj"))), "<Version>([^<]+)</Version>").Groups[1].Value;
        Assert.True(image.EndsWith(":" + version, StringComparison.Ordinal) || Str(container, "imagePullPolicy") == "Always", $"image {image}: not the version tag {version}, and not pulled Always");

        // Arguments: $(VAR) references resolve, the port is the container port, -m points into the model volume.
        var args = Seq(container, "args").Select(a => ((YamlScalarNode)a).Value!).ToList();
        foreach (Match m in Regex.Matches(string.Join(' ', args), @"\$\(([A-Z_]+)\)"))
            Assert.True(env.ContainsKey(m.Groups[1].Value), $"args use $({m.Groups[1].Value}), which env does not define");
        string Arg(string option) => Regex.Replace(args[args.IndexOf(option) + 1], @"\$\(([A-Z_]+)\)", m => env[m.Groups[1].Value] ?? "");
        Assert.Equal(containerPort.ToString(System.Globalization.CultureInfo.InvariantCulture), Arg("--port"));
        Assert.Equal("0.0.0.0", Arg("--host"));
        Assert.Equal(shutdown.ToString(System.Globalization.CultureInfo.InvariantCulture), Arg(ServeCommand.ShutdownTimeoutOption));
        var mount = Seq(container, "volumeMounts").Cast<YamlMappingNode>().Single(v => Arg("-m").StartsWith(Str(v, "mountPath") + "/", StringComparison.Ordinal));
        Assert.Equal("true", Str(mount, "readOnly"));
        Assert.Contains(Seq(pod, "volumes").Cast<YamlMappingNode>(), v => Str(v, "name") == Str(mount, "name"));
        var help = new StringWriter();
        Assert.Equal(0, BitNetSharp.Cli.Program.Run(["serve", "--help"], help, new StringWriter()));
        foreach (var option in args.Where(a => a.StartsWith('-')))
            Assert.True(Regex.IsMatch(help.ToString(), $@"(^|[\s,]){Regex.Escape(option)}([\s,]|$)", RegexOptions.Multiline), $"`bitnet serve` has no option {option}");
        Assert.Equal(["/app/bitnet", "serve"], Seq(container, "command").Select(c => ((YamlScalarNode)c).Value!));

        // The scrape annotations name the container port and /metrics.
        Assert.Equal("true", Str(deployment, "spec", "template", "metadata", "annotations", "prometheus.io/scrape"));
        Assert.Equal(containerPort.ToString(System.Globalization.CultureInfo.InvariantCulture), Str(deployment, "spec", "template", "metadata", "annotations", "prometheus.io/port"));
        Assert.Equal("/metrics", Str(deployment, "spec", "template", "metadata", "annotations", "prometheus.io/path"));
    }

    /// <summary>
    /// Every BITNET_* variable the Deployment sets is one `bitnet serve` reads itself, and where args passes it to a
    /// flag, it is that variable's flag: the pod means the same with or without its args.
    /// </summary>
    [Fact]
    public void DeploymentVariablesAreServesOwn()
    {
        var container = (YamlMappingNode)Seq(Node(Yaml("deployment.yaml"), "spec", "template", "spec"), "containers").Single();
        var names = Seq(container, "env").Cast<YamlMappingNode>().Select(e => Str(e, "name")!).Where(n => n.StartsWith("BITNET_", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(names);
        var flags = ServeCommand.Variables.ToDictionary(v => v.Variable, v => v.Flag);
        foreach (var name in names) Assert.True(flags.ContainsKey(name), $"deployment.yaml sets {name}, which bitnet serve does not read");
        var args = Seq(container, "args").Select(a => ((YamlScalarNode)a).Value!).ToList();
        var aliases = new Dictionary<string, string> { ["-m"] = "--model", ["-t"] = "--threads", ["-c"] = "--ctx" };
        for (int i = 1; i < args.Count; i++)
        {
            if (Regex.Match(args[i], @"^\$\((BITNET_[A-Z_]+)\)$") is not { Success: true } m) continue;
            string flag = aliases.GetValueOrDefault(args[i - 1], args[i - 1]);
            Assert.True(flags.GetValueOrDefault(m.Groups[1].Value) == flag, $"args pass $({m.Groups[1].Value}) to {args[i - 1]}, but serve reads it as {flags.GetValueOrDefault(m.Groups[1].Value) ?? "nothing"}");
        }
    }

    /// <summary>
    /// The model claim can be filled and shared: writable (a ReadOnlyMany claim cannot be copied onto, and most
    /// provisioners cannot create one), shared by all replicas, and mounted read-only by the pods.
    /// </summary>
    [Fact]
    public void ModelClaimIsSharedAndWritableWhileThePodsMountItReadOnly()
    {
        var claim = Yaml("model-pvc.yaml");
        var modes = Seq(Node(claim, "spec"), "accessModes").Select(n => ((YamlScalarNode)n).Value).ToList();
        Assert.Equal(["ReadWriteMany"], modes);
        var pod = Node(Yaml("deployment.yaml"), "spec", "template", "spec");
        var volume = Seq(pod, "volumes").Cast<YamlMappingNode>().Single(v => Str(v, "persistentVolumeClaim", "claimName") is not null);
        Assert.Equal(Str(claim, "metadata", "name"), Str(volume, "persistentVolumeClaim", "claimName"));
        var container = (YamlMappingNode)Seq(pod, "containers").Single();
        var mount = Seq(container, "volumeMounts").Cast<YamlMappingNode>().Single(m => Str(m, "name") == Str(volume, "name"));
        Assert.Equal("true", Str(mount, "readOnly"));
    }

    /// <summary>The Service, the PodDisruptionBudget and the HPA select or target the Deployment's pods; the Service forwards to the named container port.</summary>
    [Fact]
    public void ServicePdbAndHpaTargetTheDeployment()
    {
        var deployment = Yaml("deployment.yaml");
        var podLabels = Map(deployment, "spec", "template", "metadata", "labels");
        string portName = Str((YamlMappingNode)Seq((YamlMappingNode)Seq(Node(deployment, "spec", "template", "spec"), "containers").Single(), "ports").Single(), "name")!;
        void Selects(Dictionary<string, string> selector, string what)
        {
            Assert.NotEmpty(selector);
            foreach (var (k, v) in selector) Assert.True(podLabels.GetValueOrDefault(k) == v, $"{what} selects {k}={v}, which the pods do not carry");
        }
        Selects(Map(deployment, "spec", "selector", "matchLabels"), "the Deployment");

        var service = Yaml("service.yaml");
        Selects(Map(service, "spec", "selector"), "the Service");
        Assert.Equal(portName, Str((YamlMappingNode)Seq(Node(service, "spec"), "ports").Single(), "targetPort"));

        var pdb = Yaml("pdb.yaml");
        Assert.Equal("policy/v1", Str(pdb, "apiVersion"));
        Selects(Map(pdb, "spec", "selector", "matchLabels"), "the PodDisruptionBudget");
        Assert.True(Find(pdb, "spec", "maxUnavailable") is not null || Find(pdb, "spec", "minAvailable") is not null);

        var hpa = Yaml("hpa.yaml");
        Assert.Equal("autoscaling/v2", Str(hpa, "apiVersion"));
        Assert.Equal("Deployment", Str(hpa, "spec", "scaleTargetRef", "kind"));
        Assert.Equal(Str(deployment, "metadata", "name"), Str(hpa, "spec", "scaleTargetRef", "name"));
        int min = int.Parse(Str(hpa, "spec", "minReplicas")!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(min >= 2, "with one replica the PodDisruptionBudget blocks every node drain");
        // Only metrics every cluster serves: an HPA skips every scale-down while one of its metrics is unavailable, so a
        // Pods metric without the Prometheus adapter kept the Deployment at its largest after one busy spell.
        Assert.All(Seq(Node(hpa, "spec"), "metrics").Cast<YamlMappingNode>(), m => Assert.Equal("Resource", Str(m, "type")));
    }

    private static string QueueScalingFile => RepositoryFiles.Path(Path.Combine("deploy", "kubernetes-queue-scaling", "kustomization.yaml"));

    /// <summary>The queue metric the kubernetes-queue-scaling overlay adds to the HPA (its JSON patch's value).</summary>
    private static YamlMappingNode QueueMetric()
    {
        var overlay = new YamlStream();
        overlay.Load(new StringReader(File.ReadAllText(QueueScalingFile)));
        var root = (YamlMappingNode)overlay.Documents[0].RootNode;
        Assert.Equal(["../kubernetes"], Seq(root, "resources").Select(n => ((YamlScalarNode)n).Value!));
        var patch = (YamlMappingNode)Seq(root, "patches").Single();
        Assert.Equal("HorizontalPodAutoscaler", Str(patch, "target", "kind"));
        Assert.Equal(Str(Yaml("hpa.yaml"), "metadata", "name"), Str(patch, "target", "name"));
        var ops = new YamlStream();
        ops.Load(new StringReader(Str(patch, "patch")!));
        var op = (YamlMappingNode)((YamlSequenceNode)ops.Documents[0].RootNode).Children.Single();
        Assert.Equal("add", Str(op, "op"));
        Assert.Equal("/spec/metrics/-", Str(op, "path"));
        return (YamlMappingNode)op.Children[new YamlScalarNode("value")];
    }

    /// <summary>kubectl (where installed) builds the overlay: the HPA scales on CPU and on the queue, everything else as the base.</summary>
    [Fact]
    public async Task QueueScalingOverlayBuildsWithKubectl()
    {
        string? kubectl = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Where(d => d.Length > 0).Select(d => Path.Combine(d, "kubectl")).FirstOrDefault(File.Exists);
        Assert.SkipWhen(kubectl is null, "kubectl is not on PATH; the overlay's patch was checked as YAML only (HpaQueueMetricIsServedByTheAdapterAndExported).");
        var psi = new System.Diagnostics.ProcessStartInfo(kubectl!, ["kustomize", Path.GetDirectoryName(QueueScalingFile)!]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        await p.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.True(p.ExitCode == 0, $"kubectl kustomize (exit {p.ExitCode}): {await stderr}");
        var docs = new YamlStream();
        docs.Load(new StringReader(await stdout));
        var kinds = docs.Documents.Select(d => Str((YamlMappingNode)d.RootNode, "kind")).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"], kinds);
        var hpa = (YamlMappingNode)docs.Documents.Single(d => Str((YamlMappingNode)d.RootNode, "kind") == "HorizontalPodAutoscaler").RootNode;
        var types = Seq(Node(hpa, "spec"), "metrics").Cast<YamlMappingNode>().Select(m => Str(m, "type")).ToList();
        Assert.Equal(["Resource", "Pods"], types);
    }

    /// <summary>
    /// The HPA scales on CPU, and with the kubernetes-queue-scaling overlay on the queue metric, which the Prometheus adapter rule serves under the same name
    /// from a series with namespace and pod labels, and which a running server exports.
    /// </summary>
    [Fact]
    public async Task HpaQueueMetricIsServedByTheAdapterAndExported()
    {
        var metrics = Seq(Node(Yaml("hpa.yaml"), "spec"), "metrics").Cast<YamlMappingNode>().ToList();
        Assert.Contains(metrics, m => Str(m, "type") == "Resource" && Str(m, "resource", "name") == "cpu");
        var pods = QueueMetric();
        Assert.Equal("Pods", Str(pods, "type"));
        string name = Str(pods, "pods", "metric", "name")!;
        Assert.Equal("bitnet_sequences_queued", name); // requests_waiting counted requests that start at the next step: idle replicas scaled out

        var rule = (YamlMappingNode)Seq(Yaml("prometheus-adapter-rules.yaml"), "rules").Single();
        Assert.Equal(name, Str(rule, "name", "as"));
        Assert.Equal([name], MetricNames(Str(rule, "seriesQuery")!));
        Assert.Equal("pod", Str(rule, "resources", "overrides", "pod", "resource"));
        Assert.Equal("namespace", Str(rule, "resources", "overrides", "namespace", "resource"));
        Assert.Contains("<<.Series>>", Str(rule, "metricsQuery"));

        await using var s = await TestServer.StartAsync();
        var families = PrometheusText.Parse(await s.MetricsAsync());
        Assert.True(Exported(name, families), $"{name} is not on a running server's /metrics");
        Assert.Equal("gauge", families[name]);
    }

    /// <summary>
    /// The pod-discovery scrape job keeps exactly the pods the Deployment labels and annotates, reads their port and
    /// path annotations, and attaches the namespace and pod labels the adapter rule needs; promtool accepts it where
    /// it is built with Kubernetes discovery.
    /// </summary>
    [Fact]
    public async Task PrometheusPodDiscoveryMatchesTheDeployment()
    {
        var config = Yaml("prometheus-kubernetes.yml");
        var job = (YamlMappingNode)Seq(config, "scrape_configs").Single();
        Assert.Equal("pod", Str((YamlMappingNode)Seq(job, "kubernetes_sd_configs").Single(), "role"));
        var relabel = Seq(job, "relabel_configs").Cast<YamlMappingNode>().ToList();
        var keep = relabel.First(r => Str(r, "action") == "keep");
        var template = Node(Yaml("deployment.yaml"), "spec", "template", "metadata");
        var values = Seq(keep, "source_labels").Select(l => ((YamlScalarNode)l).Value!).Select(l =>
            l == "__meta_kubernetes_pod_label_app_kubernetes_io_name" ? Str(template, "labels", "app.kubernetes.io/name")
            : l == "__meta_kubernetes_pod_annotation_prometheus_io_scrape" ? Str(template, "annotations", "prometheus.io/scrape")
            : throw new Xunit.Sdk.XunitException($"unexpected keep label {l}"));
        Assert.Matches($"^(?:{Str(keep, "regex")})$", string.Join(';', values));
        var targets = relabel.Select(r => Str(r, "target_label")).ToHashSet();
        foreach (var label in new[] { "__address__", "__metrics_path__", "namespace", "pod" }) Assert.Contains(label, targets);

        string promtool = RequirePromtool();
        var (code, output) = await RunPromtoolAsync(promtool, KubernetesDir, ["check", "config", "prometheus-kubernetes.yml"]);
        if (code != 0 && output.Contains("field kubernetes_sd_configs not found", StringComparison.Ordinal))
            Assert.Skip("this promtool is built without Kubernetes service discovery (Debian's package is); the structure was checked, promtool check config was not. The upstream release binary checks it.");
        Assert.True(code == 0, $"promtool check config prometheus-kubernetes.yml (exit {code}):\n{output}");
        Assert.Contains($"{AlertNames.Length + 1} rules found", output);
    }

    // ------------------------------------------------------------------------------------------------ YAML helpers

    private static YamlMappingNode Yaml(string file)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(File.ReadAllText(Path.Combine(KubernetesDir, file))));
        return (YamlMappingNode)stream.Documents.Single().RootNode;
    }

    private static YamlNode? Find(YamlNode node, params string[] path)
    {
        foreach (var key in path)
        {
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(key), out var next)) return null;
            node = next;
        }
        return node;
    }

    private static YamlMappingNode Node(YamlNode node, params string[] path) =>
        Find(node, path) as YamlMappingNode ?? throw new Xunit.Sdk.XunitException($"no mapping at {string.Join('.', path)}");

    private static string? Str(YamlNode node, params string[] path) => (Find(node, path) as YamlScalarNode)?.Value;

    private static IReadOnlyList<YamlNode> Seq(YamlNode node, params string[] path) =>
        (Find(node, path) as YamlSequenceNode)?.Children.ToList() ?? throw new Xunit.Sdk.XunitException($"no sequence at {string.Join('.', path)}");

    private static Dictionary<string, string> Map(YamlNode node, params string[] path) =>
        Node(node, path).Children.ToDictionary(kv => ((YamlScalarNode)kv.Key).Value!, kv => ((YamlScalarNode)kv.Value).Value!);
}
