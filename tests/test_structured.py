"""Lab 7's constrained decoding: the JSON-schema recogniser against an independent validator, the
token mask and its classic mistakes, the fast mask against the loop, constrained generation
with a random tiny model saved and loaded the Hugging Face way, the naive brace rule's
failures, the coffee orders' reference rule and the experiment at toy size. Nothing is
downloaded: the tokenizer and the decoder are built here."""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest
import torch

from llmlab import structured
from llmlab.instruct_training import load_causal_lm, small_decoder, train_chat_tokenizer
from llmlab.structured import (
    DEAD, JsonSchemaGrammar, TokenMasker, brace_end, canonical_json, coffee_order_schema,
    constrained_generate, greedy_generate, greedy_until_brace, reference_order, token_mask,
    vocabulary_strings,
)

# A schema with every construct of the subset: const, enum with null, anyOf, a type list,
# booleans, integers with negative, one-sided and no bounds, strings with and without
# maxLength, arrays with minItems and maxItems, nesting.
KITCHEN_SINK = {
    "type": "object",
    "properties": {
        "kind": {"const": "order"},
        "size": {"enum": ["small", "large", None]},
        "count": {"type": "integer", "minimum": -12, "maximum": 305},
        "floor": {"type": "integer", "minimum": 7},
        "any": {"type": "integer"},
        "paid": {"type": "boolean"},
        "note": {"type": ["string", "null"], "maxLength": 5},
        "free": {"type": "string"},
        "tags": {"type": "array", "items": {"anyOf": [{"type": "string", "enum": ["a", "ab"]},
                                                      {"type": "integer", "minimum": 0,
                                                       "maximum": 9}]},
                 "minItems": 1, "maxItems": 3},
        "rows": {"type": "array", "maxItems": 2,
                 "items": {"type": "object", "properties": {"x": {"type": "null"}},
                           "required": ["x"]}},
    },
    "required": ["kind", "size", "count", "floor", "any", "paid", "note", "free", "tags",
                 "rows"],
}
SCHEMAS = {"coffee": coffee_order_schema(), "kitchen sink": KITCHEN_SINK}
ALPHABET = '{}[]",:-0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.\\\n'


def random_instance(schema: dict, rng: random.Random):
    """A random value that ``schema`` accepts (long strings and big numbers included)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "anyOf" in schema:
        return random_instance(rng.choice(schema["anyOf"]), rng)
    kind = schema["type"]
    if isinstance(kind, list):
        return random_instance({**schema, "type": rng.choice(kind)}, rng)
    if kind == "object":
        return {key: random_instance(value, rng) for key, value in schema["properties"].items()}
    if kind == "array":
        size = rng.randint(schema.get("minItems", 0), schema.get("maxItems", 4))
        return [random_instance(schema["items"], rng) for _ in range(size)]
    if kind == "string":
        length = rng.randint(0, schema.get("maxLength", 12))
        characters = sorted(structured.STRING_CHARACTERS)
        return "".join(rng.choice(characters) for _ in range(length))
    if kind == "integer":
        low, high = schema.get("minimum", -10**6), schema.get("maximum", 10**6)
        return rng.choice([low, high, rng.randint(low, high), 0 if low <= 0 <= high else low])
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def in_schema_order(value, schema) -> bool:
    """Whether every object in ``value`` lists its keys in the schema's order and no number is a
    float: what canonical output adds to validity (jsonschema does not look at either)."""
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        options = schema.get("anyOf", [schema])
        return any(list(value) == list(o.get("properties", {})) and all(
            in_schema_order(value[k], o["properties"][k]) for k in value) for o in options)
    if isinstance(value, list):
        items = schema.get("items", {})
        return all(in_schema_order(v, items) for v in value)
    return True


def plain_strings(value) -> bool:
    """Whether every string in ``value`` keeps to the subset's characters (no escapes)."""
    if isinstance(value, str):
        return set(value) <= structured.STRING_CHARACTERS
    if isinstance(value, dict):
        return all(plain_strings(k) and plain_strings(v) for k, v in value.items())
    return all(plain_strings(v) for v in value) if isinstance(value, list) else True


def expected_complete(text: str, schema: dict) -> bool:
    """The oracle: the text parses, jsonschema accepts it, and it is canonical compact JSON
    whose strings need no escapes."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (jsonschema.Draft202012Validator(schema).is_valid(value) and plain_strings(value)
            and canonical_json(value) == text and in_schema_order(value, schema))


def mutations(text: str, rng: random.Random, count: int) -> list[str]:
    """``count`` texts one insertion, deletion or replacement of a character away from ``text``."""
    found = []
    for _ in range(count):
        position, character = rng.randrange(len(text) + 1), rng.choice(ALPHABET)
        edit = rng.randrange(3)
        if edit == 0:
            found.append(text[:position] + character + text[position:])
        elif position < len(text):
            found.append(text[:position] + (character if edit == 1 else "") + text[position + 1:])
    return found


# --- the recogniser ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMAS)
def test_random_valid_objects_and_every_prefix_are_accepted(name):
    schema, rng = SCHEMAS[name], random.Random(0)
    grammar = JsonSchemaGrammar(schema)
    for _ in range(100):
        text = canonical_json(random_instance(schema, rng))
        assert expected_complete(text, schema), text
        assert grammar.is_complete(text), text
        assert all(grammar.is_valid_prefix(text[:n]) for n in range(len(text) + 1)), text
        assert not any(grammar.is_complete(text[:n]) for n in range(len(text))), text
        if grammar.max_length is not None:
            assert len(text) <= grammar.max_length


@pytest.mark.parametrize("name", SCHEMAS)
def test_the_recogniser_agrees_with_jsonschema_on_texts_one_edit_away(name):
    """Every mutant is complete exactly when it parses, validates and is canonical; a mutant the
    recogniser calls a valid prefix can still be completed (no dead ends)."""
    schema, rng = SCHEMAS[name], random.Random(1)
    grammar = JsonSchemaGrammar(schema)
    checked = rejected = 0
    for _ in range(60):
        text = canonical_json(random_instance(schema, rng))
        for mutant in mutations(text, rng, 12):
            assert grammar.is_complete(mutant) == expected_complete(mutant, schema), mutant
            checked += 1
            if not grammar.is_valid_prefix(mutant):
                rejected += 1
                continue
            completed, state = mutant, grammar.advance(grammar.start, mutant)
            for _ in range(400):  # finish it with allowed characters, closing ones first
                if grammar.accepts(state):
                    break
                character = next(c for c in '"]},' + ALPHABET if grammar.step(state, c) != DEAD)
                completed, state = completed + character, grammar.step(state, character)
            assert expected_complete(completed, schema), (mutant, completed)
    assert rejected > checked // 3, "the mutants should mostly break the text"


COFFEE_TEXTS = {
    '{"drinks":[],"customer_name":null}': True,
    '{"drinks":[{"name":"latte","milk":"oat milk","flavour":null,"quantity":2}],'
    '"customer_name":"Jo"}': True,
    '{"drinks":[{"name":"lattee","milk":null,"flavour":null,"quantity":1}],'
    '"customer_name":null}': False,  # not on the menu
    '{"drinks":[{"name":"latte","milk":null,"flavour":null,"quantity":0}],'
    '"customer_name":null}': False,  # below the minimum
    '{"drinks":[{"name":"latte","milk":null,"flavour":null,"quantity":10}],'
    '"customer_name":null}': False,  # above the maximum
    '{"drinks":[{"name":"latte","milk":null,"flavour":null,"quantity":01}],'
    '"customer_name":null}': False,  # a leading zero
    '{"drinks": [],"customer_name":null}': False,  # whitespace: not canonical
    '{"customer_name":null,"drinks":[]}': False,  # keys out of the schema's order
    '{"drinks":[]}': False,  # a required key missing
    '{"drinks":[],"customer_name":"}{"}': True,  # braces inside a string are text
    '{"drinks":[],"customer_name":"0123456789abcdef"}': True,  # exactly maxLength
    '{"drinks":[],"customer_name":"0123456789abcdefg"}': False,  # one past maxLength
    '{"drinks":[],"customer_name":"a\\"b"}': False,  # no escapes in this subset
    '{"drinks":[],"customer_name":null}x': False,  # nothing after a complete object
}


def test_hand_written_cases_of_the_coffee_order():
    grammar = JsonSchemaGrammar(coffee_order_schema())
    for text, complete in COFFEE_TEXTS.items():
        assert grammar.is_complete(text) == complete, text
        assert expected_complete(text, coffee_order_schema()) == complete, text
    drink = '{"name":"tea","milk":null,"flavour":null,"quantity":1}'
    three = '{"drinks":[' + ",".join([drink] * 3)
    assert grammar.is_valid_prefix(three + "]") and not grammar.is_valid_prefix(three + ",")
    assert grammar.is_valid_prefix('{"drinks":[{"name":"chai') and \
        not grammar.is_valid_prefix('{"drinks":[{"name":"chaos')


def test_integers_are_canonical_and_within_their_range():
    grammar = JsonSchemaGrammar({"type": "integer", "minimum": -12, "maximum": 305})
    accepted = {str(n) for n in range(-12, 306)}
    for text in [str(n) for n in range(-40, 400)] + ["-0", "00", "05", "-", "", "+5", "3.0"]:
        assert grammar.is_complete(text) == (text in accepted), text
    assert grammar.is_valid_prefix("-") and grammar.is_valid_prefix("30")
    assert not grammar.is_valid_prefix("306") and not grammar.is_valid_prefix("-13")
    assert not grammar.is_valid_prefix("-0") and not grammar.is_valid_prefix("3050")
    positive = JsonSchemaGrammar({"type": "integer", "minimum": 50, "maximum": 60})
    assert positive.is_valid_prefix("6") and not positive.is_valid_prefix("7")
    assert positive.is_complete("60") and not positive.is_complete("5")
    unbounded = JsonSchemaGrammar({"type": "integer", "minimum": 7})
    assert unbounded.is_complete("123456789012") and not unbounded.is_complete("6")
    assert unbounded.is_valid_prefix("6") and unbounded.max_length is None


def test_max_length_is_the_longest_output():
    assert JsonSchemaGrammar({"type": "array", "items": {"type": "boolean"},
                              "maxItems": 3}).max_length == len("[false,false,false]")
    assert JsonSchemaGrammar(coffee_order_schema()).max_length == len(canonical_json(
        {"drinks": [{"name": "hot chocolate", "milk": "coconut milk", "flavour": "pumpkin spice",
                     "quantity": 9}] * 3, "customer_name": "x" * 16}))


@pytest.mark.parametrize("schema, phrase", [
    ({"type": "number"}, "type 'number'"),
    ({"type": "object", "properties": {"a": {"type": "null"}}}, "optional properties"),
    ({"type": "object", "properties": {}, "additionalProperties": True}, "additionalProperties"),
    ({"type": "string", "pattern": "a+"}, "['pattern']"),
    ({"enum": []}, "enum is empty"),
    ({"type": "integer", "minimum": 3, "maximum": 2}, "maximum 2 is below minimum 3"),
    ({"type": "array"}, "items"),
    ("string", "a schema must be a JSON object"),
])
def test_schemas_outside_the_subset_are_one_line_errors(schema, phrase):
    with pytest.raises(ValueError, match=None) as error:
        JsonSchemaGrammar(schema)
    assert phrase in str(error.value) and "\n" not in str(error.value)


# --- the token mask and its classic mistakes ---------------------------------------------------

GRAMMAR = JsonSchemaGrammar(coffee_order_schema())
PREFIX = '{"drinks":[{"name":"flat'
# 0: continues the drink; 1: its first character fits, the rest does not; 2: ends the name and
# goes on; 3: does not fit at all; 4: empty; 5: the end token (its text is never looked at).
VOCABULARY = [" white", " whale", ' white","milk":', "x", "", "<end>"]
END = 5


def first_character_only(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
    mask = token_mask(prefix, vocabulary, is_valid_prefix, is_complete, end_token)
    for i, token in enumerate(vocabulary):
        if token and i != end_token:
            mask[i] = is_valid_prefix(prefix + token[0])
    return mask


def end_always_allowed(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
    mask = token_mask(prefix, vocabulary, is_valid_prefix, is_complete, end_token)
    mask[end_token] = True
    return mask


def end_before_complete(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
    mask = token_mask(prefix, vocabulary, is_valid_prefix, is_complete, end_token)
    mask[end_token] = is_valid_prefix(prefix)
    return mask


def empty_token_allowed(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
    return np.array([is_complete(prefix) if i == end_token else is_valid_prefix(prefix + t)
                     for i, t in enumerate(vocabulary)])


def end_token_read_as_text(prefix, vocabulary, is_valid_prefix, is_complete, end_token):
    mask = token_mask(prefix, vocabulary, is_valid_prefix, is_complete, end_token)
    mask[end_token] = is_valid_prefix(prefix + vocabulary[end_token])
    return mask


def test_the_token_mask_allows_exactly_the_tokens_that_fit():
    mask = token_mask(PREFIX, VOCABULARY, GRAMMAR.is_valid_prefix, GRAMMAR.is_complete, END)
    assert mask.dtype == bool and mask.tolist() == [True, False, True, False, False, False]
    done = '{"drinks":[],"customer_name":null}'
    assert token_mask(done, VOCABULARY, GRAMMAR.is_valid_prefix, GRAMMAR.is_complete,
                      END).tolist() == [False] * 5 + [True]
    with pytest.raises(ValueError, match="end_token 6"):
        token_mask(PREFIX, VOCABULARY, GRAMMAR.is_valid_prefix, GRAMMAR.is_complete, 6)


@pytest.mark.parametrize("mistake", [first_character_only, end_always_allowed, end_before_complete,
                                     empty_token_allowed, end_token_read_as_text])
def test_each_classic_mistake_changes_the_mask_on_these_cases(mistake):
    """The cases a check of exercise 07.7 needs: each planted mistake gives another mask."""
    cases = [(PREFIX, VOCABULARY, END),
             ('{"drinks":[],"customer_name":nul', ["l", "", "l}", "<end>"], 3),
             ('{"drinks":[],"customer_name":null}', ["x", "<end>", "}"], 1),
             ('{"drinks":[', ["]", "", '],"customer_name":null}'], 1)]
    differs = [not np.array_equal(
        mistake(p, v, GRAMMAR.is_valid_prefix, GRAMMAR.is_complete, e),
        token_mask(p, v, GRAMMAR.is_valid_prefix, GRAMMAR.is_complete, e)) for p, v, e in cases]
    assert any(differs), f"no case exposes {mistake.__name__}"


@pytest.mark.parametrize("seed", range(2))
def test_the_trie_mask_equals_the_loop_mask_on_random_vocabularies(seed):
    rng = random.Random(seed)
    schema = SCHEMAS["coffee" if seed % 2 else "kitchen sink"]
    grammar = JsonSchemaGrammar(schema)
    pieces = [canonical_json(random_instance(schema, rng)) for _ in range(30)]
    vocabulary = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3)))
                  for _ in range(300)]
    vocabulary += [p[i:i + rng.randint(1, 8)] for p in pieces for i in range(0, len(p), 5)]
    vocabulary += vocabulary[:20]  # the same text under two ids
    end = rng.randrange(len(vocabulary))
    masker = TokenMasker(grammar, vocabulary, end)
    prefixes = [p[:rng.randint(0, len(p))] for p in pieces] + mutations(pieces[0], rng, 10)
    for prefix in prefixes + [pieces[1]]:
        expected = token_mask(prefix, vocabulary, grammar.is_valid_prefix, grammar.is_complete,
                              end)
        assert np.array_equal(masker.mask(prefix), expected), prefix
        assert np.array_equal(masker.mask(prefix), expected)  # and from its cache


def test_the_trie_walk_prunes_a_large_vocabulary():
    """On 60,000 tokens the walk reads far fewer characters than the loop: a dead first
    character skips every token that starts with it."""
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz \",:{}[]0123456789"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 7)))
                  for _ in range(60_000)]
    grammar = JsonSchemaGrammar(coffee_order_schema())
    masker = TokenMasker(grammar, vocabulary, 0)
    steps = []
    original = grammar.step
    grammar.step = lambda state, character: steps.append(1) or original(state, character)
    prefix = '{"drinks":[{"name":"'
    allowed = masker.mask(prefix)
    grammar.step = original
    assert np.array_equal(allowed, token_mask(prefix, vocabulary, grammar.is_valid_prefix,
                                              grammar.is_complete, 0))
    assert len(steps) < sum(len(t) for t in vocabulary) / 20


# --- decoding with a Hugging Face model --------------------------------------------------------

SHAPE = dict(d_model=32, d_ff=64, n_layers=1, n_heads=2, max_length=512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tokenizer, model): a byte-level BPE and a random Llama, saved and read back."""
    rng = random.Random(0)
    schema = coffee_order_schema()
    text = "\n".join([canonical_json(random_instance(schema, rng)) for _ in range(40)]
                     + ["one latte please", "two mochas for Ann", "a tea"] * 10)
    tokenizer = train_chat_tokenizer(text, 320)
    folder = tmp_path_factory.mktemp("tiny-order-model")
    small_decoder(tokenizer, SHAPE, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_causal_lm(folder)


def prompts(tokenizer) -> list[list[int]]:
    return [structured.order_prompt_ids(tokenizer, u) for u in
            ("one latte please", "two mochas for Ann", "a tea", "hi", "{")]


def test_vocabulary_strings_blank_special_tokens_and_padding_rows(tiny):
    tokenizer, _ = tiny
    strings = vocabulary_strings(tokenizer, len(tokenizer) + 3)
    assert len(strings) == len(tokenizer) + 3 and strings[-3:] == ["", "", ""]
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert strings[tokenizer.convert_tokens_to_ids(token)] == ""
    ids = tokenizer('{"a": "b c"}', add_special_tokens=False)["input_ids"]
    assert "".join(strings[i] for i in ids) == '{"a": "b c"}'


def test_constrained_outputs_of_a_random_model_all_parse_and_validate(tiny):
    tokenizer, model = tiny
    schema = coffee_order_schema()
    grammar = JsonSchemaGrammar(schema)
    torch.manual_seed(0)
    outputs = constrained_generate(model, tokenizer, prompts(tokenizer), grammar,
                                   grammar.max_length + 1, batch_size=2)
    for output in outputs:
        assert output.finished and grammar.is_complete(output.text), output.text
        jsonschema.validate(json.loads(output.text), schema)
    plain = greedy_generate(model, tokenizer, prompts(tokenizer), 40, batch_size=2)
    assert not any(grammar.is_complete(g.text) for g in plain), "random weights write no order"


def test_the_processor_refuses_a_vocabulary_that_cannot_continue(tiny):
    tokenizer, model = tiny
    grammar = JsonSchemaGrammar(coffee_order_schema())
    strings = vocabulary_strings(tokenizer, structured.output_size(model))
    strings = ["" if s.startswith("{") else s for s in strings]  # no token can open the object
    masker = TokenMasker(grammar, strings, tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="no token can follow ''"):
        constrained_generate(model, tokenizer, prompts(tokenizer)[:1], grammar, 10, masker=masker)


def test_the_brace_rules_stop_where_the_naive_baseline_says(tiny):
    nested = '{"drinks":[{"name":"latte"}],"customer_name":"}"}'
    assert nested[:brace_end(nested, balanced=False)] == '{"drinks":[{"name":"latte"}'
    assert nested[:brace_end(nested, balanced=True)] == '{"drinks":[{"name":"latte"}],' \
                                                        '"customer_name":"}'
    assert brace_end('{"note":"{"}', balanced=True) is None
    tokenizer, model = tiny
    for balanced in (False, True):
        for output in greedy_until_brace(model, tokenizer, prompts(tokenizer), 30,
                                         batch_size=2, balanced=balanced):
            cut = brace_end(output.text, balanced)
            assert cut is None or cut == len(output.text), output.text


def test_the_library_path_needs_xgrammar_or_matches_the_hand_written_mask(tiny):
    tokenizer, model = tiny
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "enum": ["latte", "tea", "flat white"]},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 30},
        "sizes": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["name", "quantity", "sizes"]}
    grammar = JsonSchemaGrammar(schema)
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install xgrammar"):
            structured.library_constrained_generate(model, tokenizer, prompts(tokenizer), schema, 8)
        return
    ours = constrained_generate(model, tokenizer, prompts(tokenizer), grammar, 60)
    theirs = structured.library_constrained_generate(model, tokenizer, prompts(tokenizer),
                                                     schema, 60)
    assert [g.text for g in theirs] == [g.text for g in ours]


# --- the coffee order --------------------------------------------------------------------------


def order(*drinks, name=None):
    return {"drinks": [{"name": d, "milk": m, "flavour": f, "quantity": q}
                       for d, m, f, q in drinks], "customer_name": name}


@pytest.mark.parametrize("utterance, expected", [
    ("Hi, could I please get two Chai Lattes?", order(("chai latte", None, None, 2))),
    ("I need a latte for Julie", order(("latte", None, None, 1), name="Julie")),
    ("I'd like a Mocha with Oat milk and a Latte with Almond Milk, please.",
     order(("mocha", "oat milk", None, 1), ("latte", "almond milk", None, 1))),
    ("I'd like a 2% Milk Chai Latte with vanilla", order(("chai latte", None, "vanilla", 1))),
    ("Can I have one for here? A cortado.", order(("cortado", None, None, 1))),
    ("What's your favorite action movie?", order()),
])
def test_the_reference_order_rule(utterance, expected):
    assert reference_order(utterance) == expected


def test_every_ordering_dialog_has_a_valid_reference_and_the_split_is_lab_4b_s():
    from llmlab.data import coffee_dialogs
    from llmlab.instruct import split_by_dialog

    dialogs = coffee_dialogs()
    examples = structured.coffee_order_examples(dialogs)
    grammar = JsonSchemaGrammar(coffee_order_schema())
    assert len(examples["test"]) >= 300
    for split in examples.values():
        assert all(grammar.is_complete(canonical_json(o)) for _, o in split)
    test_dialogs = split_by_dialog(dialogs, 0.05, 0.15, 0)["test"]
    assert [u for u, _ in examples["test"]] == [
        d["turns"][0]["text"] for d in test_dialogs if structured.is_order_dialog(d)]
    questions = [d for d in dialogs if not structured.is_order_dialog(d)]
    assert len(questions) == 650 and all("What's in a" in d["scenario"] or "off topic" in
                                         d["scenario"] or "do you have" in d["scenario"] or
                                         "what kind of" in d["scenario"] for d in questions)


def test_score_orders_counts_each_part():
    schema = coffee_order_schema()
    reference = order(("latte", "oat milk", None, 2), ("tea", None, None, 1), name="Jo")
    texts = [canonical_json(reference),
             canonical_json(order(("latte", "oat milk", None, 1), name="Jo")),
             canonical_json(reference)[:-1],
             '{"drinks":[{"name":"latte","milk":"oat milk","flavour":null,"quantity":2}],'
             '"customer_name":"Jo","extra":1}']
    counts = structured.score_orders(texts, [reference] * 4, schema)
    assert counts["JSON valid"] == (3, 4) and counts["schema valid"] == (2, 4)
    assert counts["exact order"] == (1, 4) and counts["customer name"] == (3, 4)
    assert counts["drink count"] == (1, 4)
    assert counts["name"] == (4, 8) and counts["quantity"] == (3, 8) and counts["milk"] == (4, 8)


def test_the_experiment_runs_at_toy_size():
    settings = dict(order_dialogs=150, order_vocab_size=300, order_d_model=32, order_d_ff=64,
                    order_n_layers=1, order_n_heads=2, order_steps=4, order_batch_size=8,
                    order_max_new_tokens=48, order_curve_steps=(2, 9), order_curve_examples=4,
                    order_generate_batch_size=16, unrelated_key=1)
    result = structured.coffee_order_experiment(settings, torch.device("cpu"))
    ways = ["greedy", "greedy, stop at first }", "greedy, stop at balanced }",
            "constrained (by hand)"]
    assert list(result["counts"]) == ways and result["held-out examples"] > 10
    trials = result["held-out examples"]
    assert all(result["counts"][w]["JSON valid"][1] == trials for w in ways)
    assert result["curve"]["steps"] == [0, 2, 4]  # before training, after 2 steps, at the end
    assert len(result["curve"]["constrained schema valid"]) == 3
    table = structured.order_table(result)
    assert list(table.index) == ways and "s/order" in table.columns
    ax = structured.plot_order_curve(result["curve"])
    assert len(ax.lines) == 4 and ax.get_xlabel() == "training steps"
    ax.figure.clf()
