#!/usr/bin/env python3
"""Golden fixtures for BitNetSharp's Hugging Face loader and forward pass, made by HF transformers.

For each variant below this script builds a tiny random `BitNetForCausalLM` with transformers, saves it as a
Hugging Face directory the way the Hub ships BitNet checkpoints (config.json + model.safetensors, projections
packed with transformers' own `pack_weights` for the offline modes, float latent weights for the online mode),
loads that directory back with `BitNetForCausalLM.from_pretrained(..., dtype=torch.float32)` (so transformers'
quantizer installs its BitLinear / AutoBitLinear layers, exactly as for microsoft/bitnet-b1.58-2B-4T), and writes
`expected.json` with:

  * `prompt_ids`, `logits` ([prompt position][vocab], float32 as computed by transformers),
  * `greedy_ids`: the greedy continuation (argmax of transformers' logits, one full forward per step),
  * `greedy_min_margin`: the smallest gap between the best and second-best logit over those steps (the test's
    tolerance must stay well below it for the greedy comparison to be meaningful; the script retries seeds until
    it is at least 0.01 x the logit range; greedy steps are checked by that margin only),
  * `quant_min_tie_distance`: how close any quantized prompt activation came to an int8 rounding boundary
    (seeds are retried until it is at least TIE_DISTANCE; see there),
  * `logit_range`, and the transformers / torch versions that made the file,
  * for a model whose in-dimensions are multiples of 256 (so TQ2_0 / TQ1_0 can hold it), `fp16_scales`: the same
    outputs after rounding every weight_scale to fp16, which is exactly what those GGUF types store.

Run where torch and transformers (>= 4.52, which has BitNet; made with 5.12.1) are installed, e.g. Debian sid's
python3-transformers + python3-torch + python3-accelerate in a chroot, or the team's GPU machine (CPU is enough):

    TORCHDYNAMO_DISABLE=1 python3 tools/reference/make_hf_fixtures.py tests/fixtures/hf-bitnet

The output is deterministic for a given torch version (fixed seeds, CPU, float32).
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet layers are @torch.compile'd; eager is the reference

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BitNetConfig, BitNetForCausalLM  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers.integrations.bitnet import AutoBitLinear, pack_weights, unpack_weights  # noqa: E402

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# name: (config overrides, linear_class, quantization_mode, storage dtype)
VARIANTS = {
    # 2B4T's layout: autobitlinear offline packed (W = T * weight_scale), GQA 2:1, relu2, tied head, rope 500000.
    # In-dimensions 256 and 512, so TQ2_0 (256-weight blocks) and I2_S can both hold every projection.
    "autobitlinear-offline-gqa-f32": (
        dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, vocab_size=128, tie_word_embeddings=True),
        "autobitlinear", "offline", torch.float32),
    # Same mode, stored in bf16 as the Hub checkpoint is; no GQA; in-dimensions 128 and 384 (TQ2_0 cannot hold them).
    "autobitlinear-offline-mha-bf16": (
        dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=2, vocab_size=128, tie_word_embeddings=True),
        "autobitlinear", "offline", torch.bfloat16),
    # transformers' default linear class (W = T / weight_scale), in-dimensions 160 and 320 (not multiples of 128),
    # untied lm_head, rope base 10000.
    "bitlinear-offline-untied-f32": (
        dict(hidden_size=160, intermediate_size=320, num_attention_heads=5, num_key_value_heads=5,
             num_hidden_layers=2, vocab_size=96, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "bitlinear", "offline", torch.float32),
    # Online mode: float latent weights, ternarized by absmean inside every forward. GQA 3:1, in-dimensions 96/224.
    "autobitlinear-online-gqa-f32": (
        dict(hidden_size=96, intermediate_size=224, num_attention_heads=3, num_key_value_heads=1,
             num_hidden_layers=1, vocab_size=112, tie_word_embeddings=True),
        "autobitlinear", "online", torch.float32),
    # Online mode with bf16 latent weights (the microsoft/bitnet-b1.58-2B-4T-bf16 layout).
    "autobitlinear-online-bf16": (
        dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=1, vocab_size=128, tie_word_embeddings=True),
        "autobitlinear", "online", torch.bfloat16),
}

PROMPT_LENGTH = 7
# An int8 activation code is round(x * 127 / absmax): the model itself is discontinuous there, and two correct
# float32 implementations (different summation orders) can round a value that lies within ~1e-5 of k + 0.5 to
# different codes, which moves the logits by ~0.2 % of their range. The script keeps only seeds where every
# quantized prompt activation lies at least this far (in code units) from a rounding boundary.
TIE_DISTANCE = 5e-5
GREEDY_STEPS = 12


def build_state(config, linear_class, mode, dtype, seed):
    """A random model's state dict as it is stored on disk for the given mode."""
    torch.manual_seed(seed)
    model = BitNetForCausalLM(config).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith("norm.weight"):
            value = torch.empty_like(tensor).uniform_(0.6, 1.4)
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            value = torch.randn_like(tensor)
        elif name.split(".")[-2] in PROJECTIONS:
            value = torch.randn_like(tensor) * 0.7
        else:
            raise SystemExit(f"unexpected tensor {name}")
        if name.split(".")[-2] in PROJECTIONS and mode == "offline":
            beta = value.abs().mean().clamp(min=1e-5)
            ternary = (value / beta).round().clamp(-1, 1)
            base = name[: -len(".weight")]
            state[name] = pack_weights(ternary.to(torch.int8).clone())
            scale = beta if linear_class == "autobitlinear" else 1.0 / beta
            state[base + ".weight_scale"] = scale.reshape(1).to(dtype)
        else:
            state[name] = value.to(dtype).contiguous()
    return state


def save(directory, config, linear_class, mode, dtype, state):
    os.makedirs(directory, exist_ok=True)
    config_dict = config.to_dict()
    config_dict["architectures"] = ["BitNetForCausalLM"]
    config_dict["dtype"] = "bfloat16" if dtype == torch.bfloat16 else "float32"
    config_dict["quantization_config"] = {
        "quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode,
    }
    for key in ("transformers_version",):
        config_dict.pop(key, None)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


@torch.no_grad()
def repair_offline_autobitlinear(model, directory):
    """transformers 5.12.1's BitNetDeserialize unpacks an offline AutoBitLinear weight into the dtype of the packed
    tensor (uint8), so -1 wraps to 255 and the forward stops with "expected m1 and m2 to have the same dtype".
    Where that happened, unpack the stored bytes again with transformers' own unpack_weights into float32 (what
    transformers 4.x's load hook did); the forward that follows is transformers' unchanged."""
    packed = None
    for name, module in model.named_modules():
        if isinstance(module, AutoBitLinear) and module.weight.dtype == torch.uint8:
            if packed is None:
                packed = load_file(os.path.join(directory, "model.safetensors"))
            module.weight = torch.nn.Parameter(unpack_weights(packed[name + ".weight"], dtype=torch.float32),
                                               requires_grad=False)


@torch.no_grad()
def round_scales_to_fp16(model):
    """What a TQ2_0 / TQ1_0 GGUF holds: the same codes with each tensor's scale stored as fp16 per 256-weight block."""
    for module in model.modules():
        if isinstance(module, AutoBitLinear) and hasattr(module, "weight_scale"):
            module.weight_scale.copy_(module.weight_scale.half().float())


@torch.no_grad()
def reference(directory, vocab, seed, fp16_scales=False):
    model = BitNetForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    repair_offline_autobitlinear(model, directory)
    if fp16_scales:
        round_scales_to_fp16(model)
    kinds = {type(m).__name__ for m in model.modules()}
    if not ({"BitLinear", "AutoBitLinear"} & kinds):
        raise SystemExit(f"{directory}: transformers did not install BitNet linear layers ({sorted(kinds)})")
    generator = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, vocab, (1, PROMPT_LENGTH), generator=generator)
    distances = []

    def tie_distance(module, args):
        # The int8 code of x is round(x * 127 / absmax); how far is each value from a rounding boundary (k + 0.5)?
        x = args[0].float()
        v = x * (127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5))
        distances.append(float((v - v.floor() - 0.5).abs().min()))

    hooks = [m.register_forward_pre_hook(tie_distance) for m in model.modules()
             if type(m).__name__ in ("BitLinear", "AutoBitLinear")]
    logits = model(prompt).logits[0].float()
    for hook in hooks:
        hook.remove()
    ids = prompt
    greedy, margins = [], []
    for _ in range(GREEDY_STEPS):
        last = model(ids).logits[0, -1].float()
        top = torch.topk(last, 2)
        greedy.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        ids = torch.cat([ids, top.indices[:1].reshape(1, 1)], dim=1)
    return prompt[0].tolist(), logits, greedy, min(margins), sorted(kinds & {"BitLinear", "AutoBitLinear"}), min(distances)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf-bitnet"
    torch.set_num_threads(1)
    for name, (overrides, linear_class, mode, dtype) in VARIANTS.items():
        base = dict(rms_norm_eps=1e-5, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=None)
        base.update(overrides)
        config = BitNetConfig(**base)
        directory = os.path.join(out, name)
        for seed in range(100, 200):
            state = build_state(config, linear_class, mode, dtype, seed)
            save(directory, config, linear_class, mode, dtype, state)
            prompt, logits, greedy, margin, layers, tie = reference(directory, config.vocab_size, seed)
            span = float(logits.max() - logits.min())
            tq = None
            if linear_class == "autobitlinear" and mode == "offline" and \
                    config.hidden_size % 256 == 0 and config.intermediate_size % 256 == 0:
                # TQ2_0 / TQ1_0 can hold this model: also record transformers' output with the scales rounded to fp16.
                tq = reference(directory, config.vocab_size, seed, fp16_scales=True)
            if margin >= 0.01 * span and tie >= TIE_DISTANCE and (tq is None or (tq[3] >= 0.01 * span and tq[5] >= TIE_DISTANCE)):
                break
        else:
            raise SystemExit(f"{name}: no seed gave a clear greedy margin")
        expected = {
            "variant": name,
            "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU float32",
            "seed": seed,
            "linear_layers": layers,
            "prompt_ids": prompt,
            "logit_range": span,
            "greedy_min_margin": margin,
            "greedy_ids": greedy,
            "quant_min_tie_distance": tie,
            "logits": [[float(v) for v in row] for row in logits],
        }
        if tq is not None:
            expected["fp16_scales"] = {
                "logits": [[float(v) for v in row] for row in tq[1]],
                "greedy_ids": tq[2],
                "greedy_min_margin": tq[3],
                "quant_min_tie_distance": tq[5],
            }
        with open(os.path.join(directory, "expected.json"), "w") as f:
            json.dump(expected, f)
            f.write("\n")
        size = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
        print(f"{name}: seed {seed}, layers {layers}, logit range {span:.3f}, greedy margin {margin:.4f}, closest int8 tie {tie:.2e}, {size} bytes")


if __name__ == "__main__":
    main()
