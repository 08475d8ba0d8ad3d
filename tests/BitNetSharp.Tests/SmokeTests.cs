namespace BitNetSharp.Tests;

public class SmokeTests
{
    [Fact]
    public void SharedDataIsFoundOrSkipped()
    {
        var p = SharedData.RequirePath("MANIFEST.txt");
        Assert.True(File.Exists(p));
    }
}
