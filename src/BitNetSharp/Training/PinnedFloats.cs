using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace BitNetSharp.Training;

/// <summary>
/// Float arrays on the pinned object heap, so the training kernels can hold raw pointers into them across calls
/// (allocated once per model; the hot loop allocates nothing).
/// </summary>
internal static unsafe class PinnedFloats
{
    public static float[] Allocate(long count) => GC.AllocateArray<float>(checked((int)Math.Max(count, 1)), pinned: true);

    public static float* Pointer(float[] array) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
}
