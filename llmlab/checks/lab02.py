"""Self-checks of Lab 2 (attention): scaled dot-product attention, the causal mask, RoPE, multi-head attention."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from llmlab import attention as reference
from llmlab.checks.core import (
    LearnerCodeError,
    Mismatch,
    close,
    devices,
    expect_shape,
    expect_tensor,
    grown,
    lab_shortcuts,
    learner,
    max_difference,
    seeded,
    self_check,
    variant_seed,
)


@self_check("02.1")
def check_scaled_dot_product_attention(attend) -> str:
    """fn(q, k, v, mask=None) -> (output, weights); weights and output compared with the reference on every device."""
    generator = seeded(0)
    cases = [((2, 3, 5, 5, 8, 8), False), ((1, 2, 4, 7, 16, 6), False), ((2, 1, 6, 6, 4, 4), True), ((3, 4, 3, 9, 8, 5), True)]
    for device in devices():
        for dtype in (torch.float64, torch.float32):
            for (batch, heads, n_q, n_k, d_k, d_v), masked in [(grown(*sizes), masked) for sizes, masked in cases]:
                q = torch.randn(batch, heads, n_q, d_k, generator=generator, dtype=dtype).to(device)
                k = torch.randn(batch, heads, n_k, d_k, generator=generator, dtype=dtype).to(device)
                v = torch.randn(batch, heads, n_k, d_v, generator=generator, dtype=dtype).to(device)
                mask = reference.causal_mask(n_q, n_k, device=device) if masked else None
                originals = [t.clone() for t in (q, k, v)]
                result = attend(q, k, v, mask) if masked else attend(q, k, v)
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise Mismatch("return a pair (output, weights), e.g. `return weights @ v, weights`")
                output, weights = (expect_tensor(x, name) for x, name in zip(result, ("output", "weights")))
                if any(not torch.equal(a, b) for a, b in zip(originals, (q, k, v))):
                    raise Mismatch("your function changed q, k or v in place; compute new tensors instead")
                expect_shape(weights, (batch, heads, n_q, n_k), "weights", "one row per query, one column per key: q @ k.transpose(-2, -1)")
                expect_shape(output, (batch, heads, n_q, d_v), "output", "weights @ v")
                if output.dtype != dtype or output.device.type != device.type or weights.device.type != device.type:
                    raise Mismatch("the result has another dtype or device than the inputs; build every tensor from q, k and v "
                                   "(or pass device=q.device), so the code runs on a GPU too")
                expected_output, expected_weights = reference.scaled_dot_product_attention(q, k, v, mask)
                if not torch.allclose(weights.sum(-1).double(), torch.ones(1, dtype=torch.float64, device=device), atol=1e-4):
                    if masked:  # the same code passed the unmasked cases, so the softmax itself is right
                        raise Mismatch("with a mask, rows of weights no longer sum to 1: set masked scores to -inf *before* "
                                       "the softmax, rather than zeroing weights after it")
                    raise Mismatch("each row of weights should sum to 1: take the softmax over the keys (dim=-1)")
                if masked and weights.masked_select(~mask).abs().max().item() > 0:
                    raise Mismatch("masked positions get non-zero weight: set their scores to -inf *before* the softmax")
                if not close(weights, expected_weights):
                    unscaled = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")) if masked else q @ k.transpose(-2, -1), dim=-1)
                    if close(weights, unscaled):
                        raise Mismatch("the weights are softmax(q kᵀ) *without* the 1/sqrt(d_k) scale: divide the scores by sqrt(d_k)")
                    raise Mismatch(f"the weights differ from softmax(q kᵀ / sqrt(d_k)) by up to {max_difference(weights, expected_weights):.2e}")
                if not close(output, expected_output):
                    raise Mismatch(f"the weights are right but the output differs from weights @ v by up to "
                                   f"{max_difference(output, expected_output):.2e}")
                if not close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=mask)):
                    raise Mismatch("the output differs from torch.nn.functional.scaled_dot_product_attention")
    return (f"weights and output match softmax(q kᵀ / sqrt(d_k)) v and torch's scaled_dot_product_attention "
            f"on {len(cases) * 2} cases (float32/64, with and without a causal mask)")


@self_check("02.2")
def check_causal_mask(make_mask) -> str:
    """fn(n) -> boolean (n, n) tensor, True where query i may attend to key j (j <= i)."""
    for n in (5, 8, 2, 1):
        mask = expect_tensor(make_mask(n), f"causal_mask({n})")
        expect_shape(mask, (n, n), f"causal_mask({n})")
        if mask.dtype != torch.bool:
            raise Mismatch(f"the mask should be a boolean tensor (True = may attend), got dtype {mask.dtype}")
        expected = torch.ones(n, n, dtype=torch.bool).tril()
        mask = mask.cpu()
        if torch.equal(mask, expected):
            continue
        if torch.equal(mask, expected.T):
            raise Mismatch("your mask lets each position see the future and not the past: use the lower triangle (tril)")
        if torch.equal(mask, ~expected):
            raise Mismatch("True and False are swapped: True should mean 'may attend'")
        if torch.equal(mask, expected.tril(-1)):
            raise Mismatch("a position must also attend to itself: keep the diagonal")
        raise Mismatch(f"causal_mask({n}) is not the lower-triangular matrix of ones")
    return "lower-triangular boolean mask, diagonal included, for n = 1, 2, 5 and 8"


def rotate_half_layout(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE with the pairs (x_i, x_{i+d/2}) that GPT-NeoX and LLaMA code use, to recognise that mix-up."""
    half = x.shape[-1] // 2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


@self_check("02.3")
def check_apply_rope(rotate) -> str:
    """fn(x, angles) -> x rotated pairwise; compared with llmlab.attention.apply_rope and the RoPE properties."""
    generator = seeded(1)
    for device in devices():
        for dtype in (torch.float64, torch.float32):
            for shape in ((2, 3, *grown(7), 8), (1, 1, *grown(5), 16), (4, *grown(6), 2)):  # an even last size: pairs
                x = torch.randn(*shape, generator=generator, dtype=dtype).to(device)
                angles = reference.rope_angles(shape[-2], shape[-1], device=device)
                rotated = expect_tensor(rotate(x, angles), "the result")
                expect_shape(rotated, shape, "the result", "rotation keeps the shape")
                if rotated.dtype != dtype or rotated.device.type != device.type:
                    raise Mismatch(f"the result is {rotated.dtype} for {dtype} input, or on another device; keep the input's dtype and device")
                expected = reference.apply_rope(x, angles)
                if close(rotated, expected):
                    continue
                if close(rotated, rotate_half_layout(x, angles)):
                    raise Mismatch("you rotate the pairs (x_i, x_{i+d/2}) (the 'rotate-half' layout of GPT-NeoX/LLaMA code); "
                                   "this lab pairs adjacent features (x_2i, x_2i+1) as the RoFormer paper does")
                if close(rotated, reference.apply_rope(x, -angles)):
                    raise Mismatch("you rotate by -θ: the pair (a, b) should become (a·cos θ - b·sin θ, a·sin θ + b·cos θ)")
                if not torch.allclose(rotated.norm(dim=-1).double(), x.norm(dim=-1).double(), atol=1e-4):
                    raise Mismatch("a rotation keeps each vector's length, yours changes it: check the cos/sin formula")
                raise Mismatch(f"differs from the reference RoPE by up to {max_difference(rotated, expected):.2e}")
    # The property that makes RoPE relative: <R_m q, R_n k> depends only on m - n.
    q, k = torch.randn(2, 1, 1, 16, generator=generator, dtype=torch.float64)
    angles = reference.rope_angles(32, 16)
    dots = [(rotate(q, angles[m:m + 1]) * rotate(k, angles[n:n + 1])).sum().item() for m, n in [(3, 1), (12, 10), (30, 28)]]
    if max(dots) - min(dots) > 1e-4 * max(abs(d) for d in dots) + 1e-6:
        raise Mismatch("q·k after rotation should depend only on the distance m - n, yours does not")
    # A single later position, as when decoding with a cache: the angles given are those of position m, not of 0.
    for m in (3, 30):
        rotated = expect_tensor(rotate(q, angles[m:m + 1]), "the result")
        if not (rotated.shape == q.shape and close(rotated, reference.apply_rope(q, angles[m:m + 1]))):
            raise Mismatch(f"given the angles of position {m} alone (angles[{m}:{m + 1}]), your result differs from the "
                           "reference: rotate by the angles passed in, do not recompute them from the positions 0, 1, …")
    return "matches the reference on float32/64 inputs, keeps lengths, and q·k depends only on the distance m - n"


def _forward(module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The learner's module on ``x``; a failure on a GPU that the CPU did not show is named for what it almost always is."""
    try:
        return learner(module)(x, keep_weights=True)
    except LearnerCodeError as error:
        if device.type != "cpu" and "device" in str(error.original):
            raise Mismatch(f"your module runs on the CPU but fails on {device.type} ({str(error.original).splitlines()[0]}): "
                           "a tensor it creates, such as the mask, stays on the CPU; create it on x.device") from None
        raise


def _without_mask(module, x: torch.Tensor) -> torch.Tensor:
    """What the reference module would output without its causal mask (to tell a missing mask from mixed positions)."""
    q, k, v = (reference.split_heads(t, module.n_heads) for t in module.qkv(x).chunk(3, dim=-1))
    if module.rotary:
        n = x.shape[1]
        q, k = reference.apply_rope(q, module.angles[:n]), reference.apply_rope(k, module.angles[:n])
    return module.out(reference.merge_heads(reference.scaled_dot_product_attention(q, k, v)[0]))


@self_check("02.4")
def check_multi_head_attention(attention_cls) -> str:
    """attention_cls(d_model, n_heads, rotary=...) with llmlab's weights copied in: same output and same ``last_weights``."""
    generator = seeded(2)
    configurations = [(32, 4, False), (32, 1, False), (48, 6, True), (16, 2, True)]
    for device in devices():
        for d_model, n_heads, rotary in configurations:
            setting = f"d_model={d_model}, n_heads={n_heads}, rotary={rotary}"
            torch.manual_seed(variant_seed(0))  # the reference's weights (the caller's random state is restored afterwards)
            expected_module = reference.MultiHeadSelfAttention(d_model, n_heads, rotary=rotary, max_positions=64).double()
            mine = attention_cls(d_model, n_heads, rotary=rotary, max_positions=64)
            try:  # copied on the CPU, then both modules move to the device
                mine.load_state_dict(expected_module.state_dict())
            except RuntimeError as error:
                raise Mismatch(f"cannot copy the reference weights into your module (keep the given __init__): {error}".splitlines()[0]) from None
            expected_module, mine = expected_module.to(device), mine.double().to(device)
            x = torch.randn(3, 9, d_model, generator=generator, dtype=torch.float64).to(device)
            output = expect_tensor(_forward(mine, x, device), "the module's output")
            expect_shape(output, x.shape, "the output", "attention maps (batch, n, d_model) to the same shape")
            expected = expected_module(x, keep_weights=True)
            if not close(output, expected):
                future = x.clone()
                future[:, -1] += 1.0  # changing the last token must not change any earlier output
                if not torch.allclose(learner(mine)(future)[:, :-1], output[:, :-1]):
                    if close(output, _without_mask(expected_module, x)):
                        raise Mismatch(f"({setting}) earlier positions change when a later token changes: apply the causal mask")
                    raise Mismatch(f"({setting}) earlier positions change when a later token changes, although the output is "
                                   "not the unmasked one: the head split or merge mixes positions; split with "
                                   ".view(batch, n, heads, d_head).transpose(1, 2) and merge back with the inverse")
                raise Mismatch(f"({setting}) output differs from the reference by up to {max_difference(output, expected):.2e}; "
                               "check the head split (batch, n, heads, d_head) -> (batch, heads, n, d_head) and the merge back")
            weights = getattr(mine, "last_weights", None)
            if not isinstance(weights, torch.Tensor):
                raise Mismatch("after forward(x, keep_weights=True), self.last_weights should hold the attention weights "
                               "(later cells plot them), found " + type(weights).__name__)
            expect_shape(weights, (3, n_heads, 9, 9), "last_weights", "(batch, heads, n, n): one matrix per head")
            if weights.requires_grad:
                raise Mismatch("store the weights with .detach() in last_weights, so plotting them keeps no graph alive")
            if not close(weights, expected_module.last_weights):
                raise Mismatch(f"({setting}) the output is right but last_weights differ from the weights the heads used "
                               f"by up to {max_difference(weights, expected_module.last_weights):.2e}")
    return (f"output and last_weights match the reference module in {len(configurations)} configurations "
            "(1 to 6 heads, with and without RoPE), causal")


@self_check("02.4")
def check_against_gpt2(attention_cls) -> str:
    """Your multi-head attention, given the weights of a Hugging Face GPT-2 block, reproduces that block's output and weights."""
    from llmlab.hf_bridge import (
        attention_block_io,
        copy_gpt2_attention_weights,
        tiny_gpt2,
    )

    gpt2 = tiny_gpt2(d_model=64, n_heads=4, n_positions=16)
    mine = attention_cls(64, 4, rotary=False, max_positions=16)
    try:
        copy_gpt2_attention_weights(gpt2.h[0].attn, mine)
    except AttributeError as error:
        raise Mismatch(f"cannot copy GPT-2's weights into your module (keep the layers qkv and out of the given __init__): {error}") from None
    mine.eval()
    token_ids = torch.randint(0, gpt2.config.vocab_size, (2, 12), generator=seeded(0))
    block_input, block_output, gpt2_weights = attention_block_io(gpt2, token_ids)
    with torch.no_grad():
        output = expect_tensor(learner(mine)(block_input, keep_weights=True), "the module's output")
    expect_shape(output, block_output.shape, "the output")
    difference = max_difference(output, block_output)
    if not difference <= 1e-4:
        raise Mismatch(f"output differs from the GPT-2 attention block by up to {difference:.2e}")
    weights = getattr(mine, "last_weights", None)
    if not isinstance(weights, torch.Tensor) or weights.shape != gpt2_weights.shape or max_difference(weights, gpt2_weights) > 1e-4:
        raise Mismatch("the output matches GPT-2 but last_weights do not hold the same attention weights")
    return "reproduces the output and the attention weights of a transformers GPT-2 block with copied weights (within 1e-4)"


# The exercises of this lab, id -> (title, points): what solutions/02_attention.ipynb's metadata declares
# (tests/test_architecture.py keeps the two equal); checks.summary() reads them.
EXERCISES = {"02.1": ("scaled dot-product attention", 2), "02.2": ("causal mask", 1),
             "02.3": ("rotary position embeddings", 2), "02.4": ("multi-head self-attention", 3)}

CHECKS = {"02.1": check_scaled_dot_product_attention, "02.2": check_causal_mask, "02.3": check_apply_rope,
          "02.4": check_multi_head_attention}


# What use_reference("02.k") puts in the notebook: the name its exercise defines, and the course's implementation.
REFERENCES = {"02.1": ("scaled_dot_product_attention", reference.scaled_dot_product_attention),
              "02.2": ("causal_mask", reference.causal_mask), "02.3": ("apply_rope", reference.apply_rope),
              "02.4": ("MultiHeadSelfAttention", reference.MultiHeadSelfAttention)}

# checks.use_reference("02.k") when stuck, checks.summary() at the end of the lab
use_reference, summary = lab_shortcuts("02")
