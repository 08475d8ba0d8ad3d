using System.Buffers.Binary;

namespace BitNetSharp.Formats;

/// <summary>What a user-supplied model path points at.</summary>
public enum ModelPathKind
{
    /// <summary>A single GGUF file (llama.cpp / bitnet.cpp).</summary>
    Gguf,

    /// <summary>A Hugging Face directory with config.json and safetensors weights.</summary>
    HuggingFaceDirectory,

    /// <summary>A lone .safetensors file (no config).</summary>
    Safetensors,
}

/// <summary>
/// Decides what a path holds from its content, not its name: GGUF files start with the "GGUF" magic, safetensors
/// files with a plausible header length followed by '{', and a model directory contains config.json.
/// </summary>
public static class ModelPath
{
    public static ModelPathKind Detect(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path))
        {
            if (File.Exists(Path.Combine(path, "config.json"))) return ModelPathKind.HuggingFaceDirectory;
            throw new ModelFormatException(path, "this directory has no config.json, so it is not a Hugging Face model directory; pass a .gguf file or a model directory");
        }
        if (!File.Exists(path))
            throw new ModelFormatException(path, "no such file or directory");
        PathIdentity.RequireRegularFile(path, "a model");

        Span<byte> head = stackalloc byte[9];
        int read;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot read the file: {e.Message}", inner: e);
        }

        if (read >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(head) == Gguf.GgufFile.Magic) return ModelPathKind.Gguf;
        if (read >= 9 && head[8] == (byte)'{' && BinaryPrimitives.ReadUInt64LittleEndian(head) is > 1 and <= Safetensors.SafetensorsFile.MaxHeaderLength)
            return ModelPathKind.Safetensors;
        if (path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            throw new ModelFormatException(path, "the file is named .gguf but does not start with the GGUF magic; it is corrupt or not a GGUF file");
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new ModelFormatException(path, "the file is named .safetensors but its header is not a safetensors header");
        throw new ModelFormatException(path, "not a model file: expected a GGUF file, a .safetensors file or a Hugging Face model directory");
    }
}
