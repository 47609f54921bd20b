"""Decoding strategies, the KV cache and batched generation: exact where they must be, clear errors where they refuse."""

from __future__ import annotations

import pytest
import torch

from llmlab.generation import Decoding, beam_search, generate, generate_batch, penalise_repetition, top_k_filter, top_p_filter
from llmlab.hf_bridge import to_gpt2_lm_head_model
from llmlab.model import GPT, GPTConfig

INF = float("-inf")


def small_gpt(rotary: bool = True, bias: bool = False, context: int = 48, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=23, context=context, d_model=32, n_heads=4, n_layers=2, rotary=rotary, bias=bias)).eval()


def test_top_k_keeps_ties_and_everything_when_k_is_large():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0]])
    assert torch.equal(top_k_filter(logits, 1), torch.tensor([[3.0, INF, INF, INF, INF]]))
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[3.0, INF, 2.0, 2.0, INF]]))  # the tie at the 2nd place stays
    assert torch.equal(top_k_filter(logits, 5), logits) and torch.equal(top_k_filter(logits, 50), logits)


def test_top_p_keeps_the_smallest_nucleus_and_ties():
    probabilities = torch.tensor([[0.5, 0.2, 0.2, 0.1]])
    logits = probabilities.log()
    kept = lambda p: (top_p_filter(logits, p) > INF).int().tolist()[0]
    assert kept(0.5) == [1, 0, 0, 0]          # the top token alone reaches 0.5
    assert kept(0.6) == [1, 1, 1, 0]          # 0.5 + 0.2 passes 0.6; the other 0.2 is tied with it and stays
    assert kept(0.95) == [1, 1, 1, 1]
    assert kept(0.01) == [1, 0, 0, 0]         # the most likely token is always kept
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_repetition_penalty_lowers_seen_tokens_whatever_their_sign():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalised = penalise_repetition(logits, torch.tensor([[0, 1]]), 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5, 3.0]]


@pytest.mark.parametrize("bad, message", [
    (dict(strategy="nucleus"), "unknown decoding strategy 'nucleus'"),
    (dict(temperature=0.0), "temperature must be positive, got 0.0"),
    (dict(top_p=1.5), "top_p must be in \\(0, 1\\], got 1.5"),
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\], got 0.0"),
    (dict(top_k=0), "top_k must be at least 1"),
    (dict(repetition_penalty=0.5), "repetition_penalty must be at least 1"),
])
def test_bad_decoding_settings_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        Decoding(**bad)


def test_bad_prompts_are_refused_before_any_work():
    model = small_gpt(context=16)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.tensor([], dtype=torch.long), 3)
    with pytest.raises(ValueError, match="the prompt has 17 tokens, more than the model's context of 16"):
        generate(model, torch.zeros(17, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"prompt \(10 tokens\) \+ new_tokens \(7\) = 17 exceeds the model's context of 16"):
        generate(model, torch.zeros(10, dtype=torch.long), 7, use_cache=True)
    assert len(generate(model, torch.zeros(10, dtype=torch.long), 7)) == 17  # without the cache a window slides


@pytest.mark.parametrize("rotary, bias", [(True, False), (False, True)], ids=["rope", "learned-positions"])
def test_cached_logits_equal_full_logits_at_every_position(rotary, bias):
    model = small_gpt(rotary, bias)
    tokens = torch.randint(0, 23, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        steps = [model(tokens[:, :9], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(9, 40)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5) and cache.length == 40
    assert cache.memory_bytes() == 2 * 2 * 2 * 4 * 8 * 48 * 4  # K and V × layers × batch × heads × d_head × tokens × fp32 bytes


def test_greedy_is_the_same_with_and_without_the_cache_and_batched():
    model = small_gpt()
    prompts = [torch.tensor([3, 1, 4, 1, 5]), torch.tensor([2, 7]), torch.tensor([9, 9, 8, 2, 6, 5, 3, 5])]
    greedy = Decoding("greedy")
    alone = [generate(model, prompt, 20, greedy) for prompt in prompts]
    for prompt, expected in zip(prompts, alone):
        assert torch.equal(generate(model, prompt, 20, greedy, use_cache=True), expected)
    for together, expected in zip(generate_batch(model, prompts, 20, greedy), alone):
        assert torch.equal(together, expected)  # left padding and the mask change nothing


def test_token_for_token_equal_to_hugging_face_generate():
    model = small_gpt(rotary=False, bias=True)
    gpt2 = to_gpt2_lm_head_model(model)
    prompt = torch.tensor([5, 17, 2, 11, 3, 8])
    ours = generate(model, prompt, 30, Decoding("greedy"), use_cache=True)
    theirs = gpt2.generate(prompt.view(1, -1), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=30,
                           min_new_tokens=30, do_sample=False, use_cache=True, pad_token_id=0)[0]
    assert torch.equal(ours, theirs)


def test_sampling_repeats_with_a_seed_and_stops_at_a_stop_sequence():
    model = small_gpt()
    prompt = torch.tensor([1, 2, 3])
    settings = Decoding(temperature=0.9, top_k=10, top_p=0.9, repetition_penalty=1.2)
    first, second = (generate(model, prompt, 25, settings, torch.Generator().manual_seed(4), use_cache=True) for _ in range(2))
    assert torch.equal(first, second)
    stop = [first[6:8].tolist()]  # a sequence the seeded run produces: generation must end right after it
    stopped = generate(model, prompt, 25, settings, torch.Generator().manual_seed(4), use_cache=True, stop=stop)
    assert torch.equal(stopped, first[:len(stopped)]) and stopped[-2:].tolist() == stop[0] and len(stopped) <= 8


def test_beam_search_finds_at_least_the_greedy_probability():
    model = small_gpt()
    prompt = torch.tensor([4, 2])

    def log_probability(text):
        with torch.no_grad():
            log_probs = torch.log_softmax(model(text[None, :-1]), -1)[0]
        return sum(log_probs[t - 1, text[t]].item() for t in range(len(prompt), len(text)))

    greedy = generate(model, prompt, 6, Decoding("greedy"))
    assert torch.equal(beam_search(model, prompt, 6, beams=1), greedy)
    beam = beam_search(model, prompt, 6, beams=5, length_penalty=0.0)
    assert log_probability(beam) >= log_probability(greedy) - 1e-6
    with pytest.raises(ValueError, match="beams must be at least 1"):
        beam_search(model, prompt, 3, beams=0)


def test_a_batch_needs_prompts():
    with pytest.raises(ValueError, match="at least one prompt"):
        generate_batch(small_gpt(), [], 3)
