using System.Runtime.InteropServices;
using BitNetSharp.Formats;
using BitNetSharp.Formats.Gguf;
using BitNetSharp.Formats.HuggingFace;
using BitNetSharp.Formats.Safetensors;
using BitNetSharp.Memory;
using BitNetSharp.Quantization;

namespace BitNetSharp.Model;

/// <summary>One transformer block's weights. Shapes in (out, in) order.</summary>
public sealed class LayerWeights : IDisposable
{
    public required float[] AttnNorm { get; init; }        // (dim)
    public required TernaryMatrix Q { get; init; }         // (heads·hd, dim)
    public required TernaryMatrix K { get; init; }         // (kvHeads·hd, dim)
    public required TernaryMatrix V { get; init; }         // (kvHeads·hd, dim)
    public float[]? AttnSubNorm { get; init; }             // (heads·hd), before o_proj
    public required TernaryMatrix O { get; init; }         // (dim, heads·hd)
    public required float[] FfnNorm { get; init; }         // (dim)
    public required TernaryMatrix Gate { get; init; }      // (ff, dim)
    public required TernaryMatrix Up { get; init; }        // (ff, dim)
    public float[]? FfnSubNorm { get; init; }              // (ff), before down_proj
    public required TernaryMatrix Down { get; init; }      // (dim, ff)

    public long PackedBytes => Q.ByteLength + K.ByteLength + V.ByteLength + O.ByteLength + Gate.ByteLength + Up.ByteLength + Down.ByteLength;

    public void Dispose()
    {
        Q.Dispose(); K.Dispose(); V.Dispose(); O.Dispose(); Gate.Dispose(); Up.Dispose(); Down.Dispose();
    }
}

/// <summary>
/// All weights of a BitNet model, loaded once: projections in the runtime ternary layout (in place from I2_S
/// files), embeddings and head read in their file encoding through the memory map, norms as float arrays.
/// Disposing releases repacked buffers and the file maps.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    private readonly IDisposable[] _sources;

    private ModelWeights(ModelConfig config, EmbeddingTable embedding, EmbeddingTable output, float[] outputNorm, LayerWeights[] layers, string path, IDisposable[] sources)
    {
        Config = config;
        TokenEmbedding = embedding;
        Output = output;
        OutputNorm = outputNorm;
        Layers = layers;
        SourcePath = path;
        _sources = sources;
    }

    public ModelConfig Config { get; }

    private ActivationBits? _activationBits;

    /// <summary>
    /// The activation bit widths engines built on these weights start with: the file's (<see cref="ActivationBits.GgufKey"/>),
    /// an override (<c>--activation-bits</c>), or null (8 everywhere).
    /// </summary>
    public ActivationBits? ActivationBits
    {
        get => _activationBits;
        set
        {
            if (value is not null && value.Layers != Config.Layers)
                throw new ArgumentException($"Activation bit widths for {value.Layers} layers; the model has {Config.Layers}.", nameof(value));
            _activationBits = value;
        }
    }
    public EmbeddingTable TokenEmbedding { get; }

    /// <summary>The output head; the same object as <see cref="TokenEmbedding"/> when the model ties them.</summary>
    public EmbeddingTable Output { get; }
    public float[] OutputNorm { get; }
    public LayerWeights[] Layers { get; }
    public string SourcePath { get; }

    /// <summary>Packed bytes of every layer's ternary projections (what a decode step reads besides the head).</summary>
    public long TernaryBytes
    {
        get
        {
            long sum = 0;
            foreach (var layer in Layers) sum += layer.PackedBytes;
            return sum;
        }
    }

    /// <summary>
    /// Throws <see cref="Formats.ModelFileChangedException"/> when a file the weights are read from in place is now
    /// shorter than when it was mapped (see <see cref="Formats.FileMapping.CheckNotTruncated"/>); one fstat a file.
    /// </summary>
    public void CheckFilesNotTruncated()
    {
        _parent?.CheckFilesNotTruncated();
        foreach (var source in _sources)
        {
            if (source is GgufFile gguf) gguf.CheckNotTruncated();
            else if (source is HfModelDirectory hf)
            {
                var files = hf.Weights.Files;
                for (int i = 0; i < files.Count; i++) files[i].CheckNotTruncated(); // indexed: no enumerator a step
            }
        }
    }

    private ModelWeights? _parent;

    /// <summary>The GGUF file, when loaded from one (tokenizer metadata lives there).</summary>
    public GgufFile? Gguf => _sources.OfType<GgufFile>().FirstOrDefault();

    /// <summary>The HF directory, when loaded from one.</summary>
    public HfModelDirectory? HfDirectory => _sources.OfType<HfModelDirectory>().FirstOrDefault();

    public bool TiedOutput => ReferenceEquals(Output, TokenEmbedding);

    private bool _ownsLayers = true;

    /// <summary>
    /// A model made of this one's first <paramref name="layers"/> blocks, then its final norm and output head (an
    /// early-exit draft for speculative decoding, same vocabulary by construction). It shares every buffer with this
    /// model and owns none: dispose this model after it, not before.
    /// </summary>
    public ModelWeights FirstLayers(int layers)
    {
        if (layers < 1 || layers > Config.Layers)
            throw new ArgumentOutOfRangeException(nameof(layers), layers, $"Between 1 and {Config.Layers} layers can be kept; got {layers}.");
        var bits = _activationBits is null ? null : ActivationBits.FromWidths(layers, _activationBits.ToArray().AsSpan(0, layers * ActivationBits.Inputs));
        return new ModelWeights(Config with { Layers = layers }, TokenEmbedding, Output, OutputNorm, Layers[..layers], SourcePath, [])
        {
            _ownsLayers = false,
            _parent = this, // reads the parent's mapped files: checked through it (its draft pass read them unchecked)
            ActivationBits = bits,
        };
    }

    public static ModelWeights Load(string path) => Load(path, null);

    public static ModelWeights Load(string path, ModelLoadOptions? options) => ModelPath.Detect(path) switch
    {
        ModelPathKind.Gguf => FromGguf(GgufFile.Open(path, (options ?? new ModelLoadOptions()).UseHugePages(Formats.PathIdentity.Length(path))), ownsFile: true, options),
        ModelPathKind.HuggingFaceDirectory => FromHf(HfModelDirectory.Open(path), ownsDirectory: true, options),
        ModelPathKind.Safetensors => throw new ModelFormatException(path, $"a safetensors file alone cannot be run: pass the Hugging Face model directory that holds it with its config.json ({Path.GetDirectoryName(Path.GetFullPath(path))})"),
        var kind => throw new ModelFormatException(path, $"a {kind} cannot be run directly; pass a .gguf file or a Hugging Face model directory"),
    };

    public static unsafe ModelWeights FromGguf(GgufFile file, bool ownsFile, ModelLoadOptions? options = null)
    {
        var layers = new List<LayerWeights>();
        var extra = new List<IDisposable>();
        try
        {
            // A vocabulary-only GGUF (llama.cpp's ggml-vocab-*.gguf) said "token_embd.weight: required tensor is missing",
            // or an architecture complaint, as if a model were damaged.
            if (file.Tensors.Count == 0)
                throw new ModelFormatException(file.FilePath, "the file holds no tensors (a vocabulary-only GGUF): there is no model to run or convert; `bitnet tokenize -m` reads its tokenizer");
            var c = ModelConfig.FromGguf(file);
            c = (options?.Apply(c) ?? c).Validated(file.FilePath);
            var embd = Table(file, "token_embd.weight", c.VocabSize, c.Dim);
            var output = file.TryGetTensor("output.weight", out _) ? Table(file, "output.weight", c.VocabSize, c.Dim) : embd;
            if (options?.HeadType is { } headType && headType != output.Type)
            {
                var stored = output;
                bool tied = ReferenceEquals(stored, embd);
                output = Reencode(stored, headType, file.FilePath, tied ? "token_embd.weight" : "output.weight", out var buffer);
                extra.Add(buffer);
                if (tied) embd = output;
                file.Mapping.ReleasePages(stored.Data, stored.ByteLength);
            }
            // A llama-arch file's ternary weights are I2_S or exact ±a values: other floats are an ordinary Llama.
            bool latent = c.Family != ModelFamily.TernaryLlama;
            TernaryMatrix Projection(GgufFile file, string name, int outFeatures, int inFeatures) =>
                ApplyScaleTensor(file, name, ModelWeights.Projection(file, name, outFeatures, inFeatures, latent));
            CheckNoGgufBiases(file);
            CheckEveryGgufTensorIsUsed(file, c);
            for (int l = 0; l < c.Layers; l++)
            {
                string p = $"blk.{l}.";
                layers.Add(new LayerWeights
                {
                    AttnNorm = Vector(file, p + "attn_norm.weight", c.Dim),
                    Q = Projection(file, p + "attn_q.weight", c.QDim, c.Dim),
                    K = Projection(file, p + "attn_k.weight", c.KvDim, c.Dim),
                    V = Projection(file, p + "attn_v.weight", c.KvDim, c.Dim),
                    AttnSubNorm = c.HasSubNorms ? Vector(file, p + "attn_sub_norm.weight", c.QDim) : null,
                    O = Projection(file, p + "attn_output.weight", c.Dim, c.QDim),
                    FfnNorm = Vector(file, p + "ffn_norm.weight", c.Dim),
                    Gate = Projection(file, p + "ffn_gate.weight", c.FeedForward, c.Dim),
                    Up = Projection(file, p + "ffn_up.weight", c.FeedForward, c.Dim),
                    FfnSubNorm = c.HasSubNorms ? Vector(file, p + "ffn_sub_norm.weight", c.FeedForward) : null,
                    Down = Projection(file, p + "ffn_down.weight", c.Dim, c.FeedForward),
                });
            }
            return new ModelWeights(c, embd, output, Vector(file, "output_norm.weight", c.Dim), [.. layers], file.FilePath, ownsFile ? [file, .. extra] : [.. extra])
            {
                ActivationBits = ActivationBits.FromGguf(file, c.Layers),
            };
        }
        catch
        {
            foreach (var layer in layers) layer.Dispose();
            foreach (var buffer in extra) buffer.Dispose();
            if (ownsFile) file.Dispose();
            throw;
        }
    }

    public static ModelWeights FromHf(HfModelDirectory dir, bool ownsDirectory, ModelLoadOptions? options = null)
    {
        var layers = new List<LayerWeights>();
        var extra = new List<IDisposable>();
        try
        {
            var c = ModelConfig.FromHf(dir.Config);
            c = (options?.Apply(c) ?? c).Validated(dir.Config.FilePath);
            var w = dir.Weights;
            CheckNoBiases(dir);
            var q = dir.Config.Quantization;
            var embd = Table(w, "model.embed_tokens.weight", c.VocabSize, c.Dim);
            bool tied = dir.Config.TieWordEmbeddings ?? true;
            bool storedHead = w.TryGetTensor("lm_head.weight", out _);
            var output = !tied || storedHead ? Table(w, "lm_head.weight", c.VocabSize, c.Dim) : embd;
            // tie_word_embeddings true beside a stored head that is not the embedding: the config and the weights disagree
            // on the head (the stored one was used without a word; an all-zero one made every token 0).
            if (dir.Config.TieWordEmbeddings == true && storedHead)
            {
                if (!SameValues(output, embd))
                    throw new ModelFormatException(dir.Config.FilePath,
                        "is true, but the checkpoint also holds an lm_head.weight that differs from model.embed_tokens.weight. Set it to false to use the stored head, or remove lm_head.weight to tie the head to the embedding",
                        "tie_word_embeddings");
                // The same values, maybe in another dtype (an F32 copy of a BF16 embedding was refused as different):
                // tied, as transformers ties them.
                if (output.Type != embd.Type) output = embd;
            }
            if (options?.HeadType is { } headType && headType != output.Type)
            {
                bool same = ReferenceEquals(output, embd);
                output = Reencode(output, headType, dir.DirectoryPath, same ? "model.embed_tokens.weight" : "lm_head.weight", out var buffer);
                extra.Add(buffer);
                if (same) embd = output;
            }
            string attnSub = c.Family == ModelFamily.BitNetLlama ? "self_attn.inner_attn_ln.weight" : "self_attn.attn_sub_norm.weight";
            string ffnSub = c.Family == ModelFamily.BitNetLlama ? "mlp.ffn_layernorm.weight" : "mlp.ffn_sub_norm.weight";
            CheckEveryHfTensorIsUsed(dir, c, attnSub, ffnSub);
            for (int l = 0; l < c.Layers; l++)
            {
                string p = $"model.layers.{l}.";
                layers.Add(new LayerWeights
                {
                    AttnNorm = Vector(w, p + "input_layernorm.weight", c.Dim),
                    Q = ProjectionLoader.LoadTernary(w, p + "self_attn.q_proj.weight", c.QDim, q),
                    K = ProjectionLoader.LoadTernary(w, p + "self_attn.k_proj.weight", c.KvDim, q),
                    V = ProjectionLoader.LoadTernary(w, p + "self_attn.v_proj.weight", c.KvDim, q),
                    AttnSubNorm = c.HasSubNorms ? Vector(w, p + attnSub, c.QDim) : null,
                    O = ProjectionLoader.LoadTernary(w, p + "self_attn.o_proj.weight", c.Dim, q),
                    FfnNorm = Vector(w, p + "post_attention_layernorm.weight", c.Dim),
                    Gate = ProjectionLoader.LoadTernary(w, p + "mlp.gate_proj.weight", c.FeedForward, q),
                    Up = ProjectionLoader.LoadTernary(w, p + "mlp.up_proj.weight", c.FeedForward, q),
                    FfnSubNorm = c.HasSubNorms ? Vector(w, p + ffnSub, c.FeedForward) : null,
                    Down = ProjectionLoader.LoadTernary(w, p + "mlp.down_proj.weight", c.Dim, q),
                });
                CheckCols(layers[^1], c, dir.Config.FilePath, l);
            }
            return new ModelWeights(c, embd, output, Vector(w, "model.norm.weight", c.Dim), [.. layers], dir.DirectoryPath, ownsDirectory ? [dir, .. extra] : [.. extra]);
        }
        catch
        {
            foreach (var layer in layers) layer.Dispose();
            foreach (var buffer in extra) buffer.Dispose();
            if (ownsDirectory) dir.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A checkpoint whose projections or norms carry a bias (Llama's attention_bias / mlp_bias, or *.bias tensors) is
    /// refused: transformers adds the bias, the engine does not, and the model loaded and gave other logits without a word.
    /// </summary>
    private static void CheckNoBiases(HfModelDirectory dir)
    {
        var config = dir.Config;
        if (config.AttentionBias == true)
            throw new ModelFormatException(config.FilePath, "is true: the attention projections have biases, which BitNetSharp does not add (BitNet models have none)", "attention_bias");
        if (config.MlpBias == true)
            throw new ModelFormatException(config.FilePath, "is true: the feed-forward projections have biases, which BitNetSharp does not add (BitNet models have none)", "mlp_bias");
        foreach (var t in dir.Weights.Tensors)
            if (t.Name.EndsWith(".bias", StringComparison.Ordinal))
                throw new ModelFormatException(t.File.FilePath, "is a bias, which BitNetSharp does not add (BitNet models have none): the logits would differ from transformers'", t.Name);
    }

    /// <summary>
    /// <paramref name="table"/> re-encoded as <paramref name="type"/> (<see cref="ModelLoadOptions.HeadType"/>) into a new
    /// buffer, rows split over the cores; each row is encoded on its own, so the bytes equal
    /// <see cref="EmbeddingEncoder.Encode"/>'s (what <c>bitnet convert --embedding-type</c> writes).
    /// </summary>
    private static unsafe EmbeddingTable Reencode(EmbeddingTable table, GgmlType type, string path, string name, out NativeBuffer buffer)
    {
        if (EmbeddingEncoder.CannotEncode(type, table.Cols) is { } reason)
            throw new UnsuitableSettingException($"{path}: {name}: the head cannot be re-encoded as {type}: {reason}; choose a head type that fits this model (--head-type f16 takes rows of any length)");
        long rowBytes = EmbeddingEncoder.RowBytes(type, table.Cols);
        var target = new NativeBuffer(rowBytes * table.Rows, zero: false);
        try
        {
            const int RowsPerChunk = 512;
            byte* data = target.Pointer;
            Parallel.For(0, (table.Rows + RowsPerChunk - 1) / RowsPerChunk, chunk =>
            {
                int start = chunk * RowsPerChunk, end = Math.Min(table.Rows, start + RowsPerChunk);
                EmbeddingEncoder.EncodeRows(table, type, start, end, new Span<byte>(data + start * rowBytes, checked((int)((end - start) * rowBytes))));
            });
            buffer = target;
            return new EmbeddingTable(type, target.Pointer, target.ByteLength, table.Rows, table.Cols, target, path, name);
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }

    private static void CheckCols(LayerWeights l, ModelConfig c, string path, int layer)
    {
        void Check(TernaryMatrix m, int cols, string name)
        {
            if (m.Cols != cols) throw new ModelFormatException(path, $"layer {layer} {name} has {m.Cols} inputs; config.json implies {cols}");
        }
        Check(l.Q, c.Dim, "q_proj"); Check(l.K, c.Dim, "k_proj"); Check(l.V, c.Dim, "v_proj"); Check(l.O, c.QDim, "o_proj");
        Check(l.Gate, c.Dim, "gate_proj"); Check(l.Up, c.Dim, "up_proj"); Check(l.Down, c.FeedForward, "down_proj");
    }

    /// <summary>
    /// A projection's optional <c>NAME.scale</c> tensor (llama.cpp's bitnet arch: one F32 multiplied onto the product's
    /// output) folded into its row scales. It was ignored: such a file loaded and every product was off by its scale.
    /// </summary>
    private static TernaryMatrix ApplyScaleTensor(GgufFile file, string weightName, TernaryMatrix m)
    {
        if (!weightName.EndsWith(".weight", StringComparison.Ordinal)) return m;
        string name = weightName[..^".weight".Length] + ".scale";
        if (!file.TryGetTensor(name, out var info)) return m;
        try
        {
            if (info.Type != GgmlType.F32 || info.ElementCount != 1)
                throw new ModelFormatException(file.FilePath, $"a projection scale must be one F32 value; found {info.Type} {info.ShapeText}", name);
            float scale = BitConverter.ToSingle(file.GetTensorData(info)[..4]);
            if (!float.IsFinite(scale) || scale < 0f)
                throw new ModelFormatException(file.FilePath, $"the projection scale is {scale}; it must be a finite number ≥ 0 (a negative one flips the sign of the layer's products)", name);
            var rows = m.RowScales;
            for (int r = 0; r < rows.Length; r++) rows[r] *= scale;
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    private static readonly string[] LayerNorms = ["attn_norm", "ffn_norm"], LayerSubNorms = ["attn_sub_norm", "ffn_sub_norm"],
        LayerProjections = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

    /// <summary>
    /// Refuses a GGUF holding a tensor the graph does not read, as llama.cpp does ("wrong number of tensors"): a
    /// block_count below the file's layers ran a model cut short, and a tensor of another variant (a q/k norm, one
    /// sub-norm without the other) was dropped; both loaded and gave other logits without a word.
    /// </summary>
    private static void CheckEveryGgufTensorIsUsed(GgufFile file, ModelConfig c)
    {
        foreach (var t in file.Tensors)
        {
            string name = t.Name;
            if (name is "token_embd.weight" or "output.weight" or "output_norm.weight") continue;
            if (name.StartsWith("blk.", StringComparison.Ordinal))
            {
                int dot = name.IndexOf('.', 4);
                if (dot > 4 && int.TryParse(name.AsSpan(4, dot - 4), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer))
                {
                    if (layer >= c.Layers)
                        throw new ModelFormatException(file.FilePath,
                            $"holds tensors of layer {layer}, but {c.Architecture}.block_count is {c.Layers}: the model would run with its layers cut short. Fix block_count or the file", name);
                    string rest = name[(dot + 1)..];
                    if (IsLayerTensor(rest, c.HasSubNorms)) continue;
                    if (!c.HasSubNorms && (rest is "attn_sub_norm.weight" or "ffn_sub_norm.weight"))
                        throw new ModelFormatException(file.FilePath,
                            "has a sub-norm here but no blk.0.attn_sub_norm.weight: a BitNet b1.58 file has both sub-norms in every layer, a plain one none", name);
                    // llama.cpp skips these (precomputed rotary tables of old Llama conversions).
                    if (rest == "attn_rot_embd.weight") continue;
                }
            }
            throw new ModelFormatException(file.FilePath,
                $"holds a tensor this engine does not use for the {c.Architecture} graph; the model would run without it and give other logits", name);
        }
    }

    /// <summary>Whether two tables hold the same values: the same bytes, or in other types row by row as floats.</summary>
    private static bool SameValues(EmbeddingTable a, EmbeddingTable b)
    {
        if (a.Type == b.Type) return SameBytes(a, b);
        if (a.Rows != b.Rows || a.Cols != b.Cols) return false;
        var x = new float[a.Cols];
        var y = new float[b.Cols];
        for (int r = 0; r < a.Rows; r++)
        {
            a.GetRow(r, x);
            b.GetRow(r, y);
            if (!x.AsSpan().SequenceEqual(y)) return false;
        }
        return true;
    }

    private static unsafe bool SameBytes(EmbeddingTable a, EmbeddingTable b)
    {
        if (a.Type != b.Type || a.ByteLength != b.ByteLength) return false;
        for (long at = 0; at < a.ByteLength; at += 1 << 30)
        {
            int n = (int)Math.Min(1 << 30, a.ByteLength - at);
            if (!new ReadOnlySpan<byte>(a.Data + at, n).SequenceEqual(new ReadOnlySpan<byte>(b.Data + at, n))) return false;
        }
        return true;
    }

    /// <summary>
    /// The HF counterpart of <see cref="CheckEveryGgufTensorIsUsed"/>: a tensor the graph does not read (a layer past
    /// num_hidden_layers, a q_norm, a stray name) means the model would run without it and give other logits. A checkpoint
    /// of 2 layers with num_hidden_layers 1 ran on its first layer without a word, and convert wrote it as a clean GGUF.
    /// </summary>
    private static void CheckEveryHfTensorIsUsed(HfModelDirectory dir, ModelConfig c, string attnSub, string ffnSub)
    {
        foreach (var t in dir.Weights.Tensors)
        {
            string name = t.Name;
            // Precomputed rotary tables (older conversions): the engine computes its own, as transformers does.
            if (name is "model.embed_tokens.weight" or "model.norm.weight" or "lm_head.weight" or "model.rotary_emb.inv_freq") continue;
            const string prefix = "model.layers.";
            if (name.StartsWith(prefix, StringComparison.Ordinal))
            {
                int dot = name.IndexOf('.', prefix.Length);
                if (dot > prefix.Length && int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer))
                {
                    if (layer >= c.Layers)
                        throw new ModelFormatException(t.File.FilePath,
                            $"holds tensors of layer {layer}, but config.json's num_hidden_layers is {c.Layers}: the model would run with its layers cut short. Fix num_hidden_layers or the checkpoint", name);
                    string rest = name[(dot + 1)..];
                    if (rest is "input_layernorm.weight" or "post_attention_layernorm.weight" or "self_attn.rotary_emb.inv_freq") continue;
                    if (c.HasSubNorms && (rest == attnSub || rest == ffnSub)) continue;
                    if (IsHfProjection(rest)) continue;
                }
            }
            throw new ModelFormatException(t.File.FilePath,
                $"holds a tensor this engine does not use for the {c.Architecture} graph; the model would run without it and give other logits", name);
        }
    }

    private static bool IsHfProjection(string rest)
    {
        foreach (var p in HfProjections)
            if (rest == p + ".weight" || rest == p + ".weight_scale") return true;
        return false;
    }

    private static readonly string[] HfProjections =
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    private static bool IsLayerTensor(string rest, bool subNorms)
    {
        foreach (var n in LayerNorms) if (rest == n + ".weight") return true;
        if (subNorms) foreach (var n in LayerSubNorms) if (rest == n + ".weight") return true;
        foreach (var n in LayerProjections) if (rest == n + ".weight" || rest == n + ".scale") return true;
        return false;
    }

    /// <summary>
    /// Refuses a GGUF with bias tensors (llama.cpp's llama graph adds optional blk.N.attn_q.bias and the like): the
    /// engine has none to add, so such a file loaded and gave other logits without a word (the HF path refuses them too).
    /// </summary>
    private static void CheckNoGgufBiases(GgufFile file)
    {
        foreach (var t in file.Tensors)
            if (t.Name.EndsWith(".bias", StringComparison.Ordinal))
                throw new ModelFormatException(file.FilePath, "this model has bias tensors, which BitNet b1.58 models do not have and this engine does not apply; its logits would differ from the model's", t.Name);
    }

    private static TernaryMatrix Projection(GgufFile file, string name, int outFeatures, int inFeatures, bool latentFloats = true)
    {
        var info = file.GetTensor(name);
        if (info.DimensionCount != 2 || info.Dims[0] != inFeatures || info.Dims[1] != outFeatures)
            throw new ModelFormatException(file.FilePath, $"expected shape [{inFeatures}, {outFeatures}] (ne0 = inputs), found {info.ShapeText}", name);
        return ProjectionLoader.LoadTernary(file, info, latentFloats);
    }

    private static unsafe EmbeddingTable Table(GgufFile file, string name, int rows, int cols)
    {
        var info = file.GetTensor(name);
        if (info.DimensionCount != 2 || info.Dims[0] != cols || info.Dims[1] != rows)
            throw new ModelFormatException(file.FilePath, $"expected shape [{cols}, {rows}], found {info.ShapeText}", name);
        return new EmbeddingTable(info.Type, file.GetTensorPointer(info), info.ByteSize, rows, cols, file, file.FilePath, name);
    }

    private static unsafe EmbeddingTable Table(SafetensorsCheckpoint w, string name, int rows, int cols)
    {
        var info = w.GetTensor(name);
        if (info.Shape.Length != 2 || info.Shape[0] != rows || info.Shape[1] != cols)
            throw new ModelFormatException(info.File.FilePath, $"expected shape [{rows}, {cols}], found {info.ShapeText}", name);
        var type = info.DType switch
        {
            SafetensorsDType.F32 => GgmlType.F32,
            SafetensorsDType.F16 => GgmlType.F16,
            SafetensorsDType.BF16 => GgmlType.BF16,
            _ => throw new ModelFormatException(info.File.FilePath, $"dtype {info.DTypeName} is not supported for embeddings; expected F32, F16 or BF16", name),
        };
        return new EmbeddingTable(type, info.File.GetTensorPointer(info), info.ByteLength, rows, cols, info.File, info.File.FilePath, name);
    }

    private static float[] Vector(GgufFile file, string name, int length)
    {
        var info = file.GetTensor(name);
        if (info.ElementCount != length)
            throw new ModelFormatException(file.FilePath, $"expected {length} values, found shape {info.ShapeText}", name);
        var data = file.GetTensorData(info);
        var result = new float[length];
        switch (info.Type)
        {
            case GgmlType.F32: MemoryMarshal.Cast<byte, float>(data).CopyTo(result); break;
            case GgmlType.F16: for (int i = 0; i < length; i++) result[i] = HalfConversions.HalfToFloat(MemoryMarshal.Read<ushort>(data[(2 * i)..])); break;
            case GgmlType.BF16: for (int i = 0; i < length; i++) result[i] = HalfConversions.BFloat16ToFloat(MemoryMarshal.Read<ushort>(data[(2 * i)..])); break;
            default: throw new ModelFormatException(file.FilePath, $"type {GgmlTypeInfo.Name(info.Type)} is not supported for a norm vector; expected f32, f16 or bf16", name);
        }
        CheckFinite(result, file.FilePath, name);
        return result;
    }

    /// <summary>A norm's gains are finite: a NaN or ∞ loaded (and convert copied it) and failed only at the first forward
    /// pass, as non-finite logits that named no tensor.</summary>
    private static void CheckFinite(float[] values, string path, string name)
    {
        for (int i = 0; i < values.Length; i++)
            if (!float.IsFinite(values[i]))
                throw new ModelFormatException(path, $"value {i} is {(float.IsNaN(values[i]) ? "NaN" : "infinite")}: a norm's gains must be finite numbers; the file is corrupt", name);
    }

    private static float[] Vector(SafetensorsCheckpoint w, string name, int length)
    {
        var info = w.GetTensor(name);
        // One dimension, as transformers' RMSNorm weight is: a [2, 32] "norm" of a 64-wide model was taken by its count.
        if (info.ElementCount != length || info.Shape.Length != 1)
            throw new ModelFormatException(info.File.FilePath, $"expected {length} values in one dimension, found shape {info.ShapeText}", name);
        if (info.DType is not (SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16))
            throw new ModelFormatException(info.File.FilePath, $"dtype {info.DTypeName} is not supported for a norm vector; expected F32, F16 or BF16", name);
        var result = info.File.ReadFloat32(info);
        CheckFinite(result, info.File.FilePath, name);
        return result;
    }

    public void Dispose()
    {
        if (_ownsLayers)
            foreach (var layer in Layers) layer.Dispose();
        foreach (var source in _sources) source.Dispose();
    }
}
