namespace BitNetSharp.Formats.Gguf;

/// <summary>Copies a GGUF with some metadata keys set or replaced and every tensor byte for byte (same types, order and alignment).</summary>
public static unsafe class GgufCopy
{
    /// <summary>
    /// Writes <paramref name="path"/> (through a temporary file, renamed when complete, so a failure leaves nothing)
    /// as <paramref name="source"/> with each key of <paramref name="set"/> added or replaced.
    /// </summary>
    public static void WithMetadata(GgufFile source, string path, IReadOnlyList<KeyValuePair<string, GgufValue>> set)
    {
        if (PathIdentity.SameFile(path, source.FilePath))
            throw new ArgumentException($"The output {path} is the input model; write to another file.", nameof(path));
        var w = new GgufWriter(source.Alignment);
        var replaced = new HashSet<string>(set.Select(kv => kv.Key), StringComparer.Ordinal) { GgufFile.AlignmentKey };
        foreach (var (key, value) in source.Metadata.Entries)
            if (!replaced.Contains(key)) w.Add(key, value);
        foreach (var (key, value) in set) w.Add(key, value);
        // Straight from the mapped file: a managed copy of each tensor doubled the memory (1.2 GB more for 2B4T) and
        // could not hold a tensor past 2 GiB. A private copy whose decoded tensors were released holds zeros there: those
        // are read from a fresh mapping of the file.
        GgufFile? fresh = null;
        try
        {
            if (source.Mapping.CopyHasReleasedRanges)
            {
                fresh = GgufFile.Open(source.FilePath);
                if (fresh.DataOffset != source.DataOffset || fresh.Tensors.Count != source.Tensors.Count)
                    throw new InvalidDataException($"{source.FilePath} changed on disk since it was loaded; load it again to copy it.");
            }
            for (int i = 0; i < source.Tensors.Count; i++)
            {
                var t = source.Tensors[i];
                if (fresh is not null && (fresh.Tensors[i].Offset != t.Offset || fresh.Tensors[i].ByteSize != t.ByteSize || fresh.Tensors[i].Name != t.Name))
                    throw new InvalidDataException($"{source.FilePath} changed on disk since it was loaded; load it again to copy it.");
                byte* data = fresh is null ? source.GetTensorPointer(t) : fresh.GetTensorPointer(fresh.Tensors[i]);
                w.AddTensor(t.Name, t.Type, t.Dims, data, t.ByteSize);
            }
            w.WriteFile(path);
        }
        finally
        {
            fresh?.Dispose();
        }
    }
}
