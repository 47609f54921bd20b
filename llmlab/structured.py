"""Structured output by constrained decoding, written by hand (Lab 7), and the library
that does it.

A model asked for JSON writes text; nothing makes that text parse. Constrained decoding
makes it: at every step, a token mask allows only the tokens that keep the text a prefix
of some output the schema accepts, and the end token only when the text is complete.

- ``JsonSchemaGrammar(schema)`` compiles a subset of JSON Schema into a character-level
  recogniser: ``is_valid_prefix(text)`` and ``is_complete(text)``. The subset: objects
  whose properties are all required and come in the schema's order, strings (optional
  ``enum`` and ``maxLength``), integers (optional ``minimum`` and ``maximum``),
  booleans, ``null``, ``const``, ``anyOf`` and ``"type": [..., "null"]``, arrays
  (optional ``minItems`` and ``maxItems``). It accepts *canonical compact JSON only*,
  what ``json.dumps(value, separators=(",", ":"))`` writes: no whitespace between
  tokens, so the recogniser needs no rules for it. Free strings hold printable ASCII
  without ``"`` and ``\\`` (no escapes), again to keep the recogniser small.
- ``token_mask`` is one step of constrained decoding, the reference of exercise 07.7: a
  loop over the vocabulary. ``TokenMasker`` computes the same mask fast enough for a
  150k-token vocabulary: tokens sorted as in a trie, walked with the recogniser's state,
  so a dead prefix prunes every token that starts with it, and masks cached by state.
- ``constrained_generate`` decodes greedily from a Hugging Face causal LM with the mask
  applied to the logits at each step; ``greedy_until_brace`` is the naive alternative,
  and its docstring says why it fails; ``library_constrained_generate`` does what
  ``constrained_generate`` does with XGrammar, the library the serving engines use.
- The coffee order of Lab 4b as JSON: ``reference_order`` builds the expected order of a
  customer's first utterance, ``coffee_order_experiment`` trains a small decoder to
  write it and measures validity and accuracy with and without the mask on held-out
  dialogs.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# The recogniser's state once the text can no longer become an accepted output.
DEAD = -1
# What a free string may hold: printable ASCII except the quote and the backslash.
STRING_CHARACTERS = frozenset(chr(code) for code in range(32, 127)) - {'"', "\\"}
_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items",
             "minItems", "maxItems", "enum", "const", "anyOf", "maxLength", "minimum",
             "maximum", "title", "description", "$schema"}  # the rest is refused


def canonical_json(value) -> str:
    """``value`` as canonical compact JSON: no whitespace, ASCII only (what the grammar
    accepts)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


# --- the recogniser -------------------------------------------------------------------


def integer_prefix_feasible(text: str, minimum: int | None,
                            maximum: int | None) -> bool:
    """Whether some integer in [minimum, maximum] (None: unbounded) is written as
    ``text`` followed by more digits, in canonical form (no leading zero, no "-0")."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not digits:
        return negative and (minimum is None or minimum <= -1)
    if not digits.isdigit() or not digits.isascii():
        return False
    if digits[0] == "0":  # "0" cannot grow; "-0" and "01" are not canonical
        return len(digits) == 1 and not negative and _in_range(0, minimum, maximum)
    if negative:  # -m in [minimum, maximum] means m in [-maximum, -minimum]
        minimum, maximum = (None if maximum is None else -maximum,
                            None if minimum is None else -minimum)
    if maximum is None:
        return True
    # The magnitudes written with these digits: start·10^k ... start·10^k + 10^k - 1.
    start, width = int(digits), 1
    while start * width <= maximum:
        if minimum is None or start * width + width - 1 >= minimum:
            return True
        width *= 10
    return False


def _in_range(value: int, minimum: int | None, maximum: int | None) -> bool:
    return ((minimum is None or minimum <= value)
            and (maximum is None or value <= maximum))


def integer_complete(text: str, minimum: int | None, maximum: int | None) -> bool:
    """Whether ``text`` is a canonical integer in [minimum, maximum]."""
    return (integer_prefix_feasible(text, minimum, maximum) and text not in ("", "-")
            and _in_range(int(text), minimum, maximum))


class JsonSchemaGrammar:
    """A character-level recogniser of the canonical compact JSON that ``schema``
    accepts.

    The schema is compiled into nodes (literal text, free string, integer, sequence,
    choice, array). A *configuration* is a stack of what is still to be written, e.g.
    ``('"latte"', '","milk":', <choice>, ...)``; a *state* is the set of configurations
    the text so far can be in (a choice such as an enum opens several). Reading a
    character advances every configuration and drops those it does not fit; when none is
    left the state is ``DEAD``. States are numbered and each (state, character)
    transition is computed once and remembered: a lazily built deterministic automaton.
    Every state that is not dead can still be completed, so constrained decoding never
    walks into a dead end."""

    def __init__(self, schema: dict):
        self.schema = schema
        self._nodes: list[tuple] = []
        self._root = self._compile(schema, "schema")
        self._state_ids: dict[frozenset, int] = {}
        self._states: list[frozenset] = []
        self._accepting: list[bool] = []
        self._transitions: dict[tuple[int, str], int] = {}
        self.start = self._intern(self._expand((self._pending(self._root),)))
        self.max_length = self._longest(self._root)  # characters; None if unbounded

    # compiling the schema -------------------------------------------------------------

    def _add(self, node: tuple) -> int:
        self._nodes.append(node)
        return len(self._nodes) - 1

    def _literal(self, text: str) -> int:
        return self._add(("literal", text))

    def _choice(self, options: list[int]) -> int:
        return (
            options[0] if len(options) == 1 else self._add(("choice", tuple(options)))
        )

    def _compile(self, schema: dict, where: str) -> int:
        if not isinstance(schema, dict):
            raise ValueError(f"{where}: a schema must be a JSON object, got {schema!r}")
        unknown = sorted(set(schema) - _KEYWORDS)
        if unknown:
            raise ValueError(
                f"{where}: keyword(s) {unknown} are outside the supported subset "
                f"({', '.join(sorted(_KEYWORDS))})"
            )
        if "const" in schema:
            return self._literal(canonical_json(schema["const"]))
        if "enum" in schema:
            if not schema["enum"]:
                raise ValueError(f"{where}: enum is empty, so nothing could be written")
            return self._choice(
                [self._literal(canonical_json(v)) for v in schema["enum"]]
            )
        if "anyOf" in schema:
            return self._choice(
                [
                    self._compile(option, f"{where}.anyOf[{i}]")
                    for i, option in enumerate(schema["anyOf"])
                ]
            )
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._choice(
                [self._compile({**schema, "type": k}, f"{where}<{k}>") for k in kind]
            )
        if kind == "object":
            return self._compile_object(schema, where)
        if kind == "array":
            if "items" not in schema:
                raise ValueError(f"{where}: an array needs an items schema")
            item = self._compile(schema["items"], f"{where}.items")
            low, high = schema.get("minItems", 0), schema.get("maxItems")
            if high is not None and high < low:
                raise ValueError(f"{where}: maxItems {high} is below minItems {low}")
            return self._add(("array", item, low, high))
        if kind == "string":
            return self._add(("string", schema.get("maxLength")))
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            if low is not None and high is not None and high < low:
                raise ValueError(f"{where}: maximum {high} is below minimum {low}")
            return self._add(("integer", low, high))
        if kind == "boolean":
            return self._choice([self._literal("true"), self._literal("false")])
        if kind == "null":
            return self._literal("null")
        raise ValueError(
            f"{where}: type {kind!r} is outside the supported subset "
            "(object, array, string, integer, boolean, null)"
        )

    def _compile_object(self, schema: dict, where: str) -> int:
        properties = schema.get("properties", {})
        if list(schema.get("required", [])) != list(properties):
            raise ValueError(
                f"{where}: required must list every property in order "
                f"({list(properties)}); optional properties are not supported"
            )
        if schema.get("additionalProperties", False) is not False:
            raise ValueError(
                f"{where}: additionalProperties must be false (or left out)"
            )
        parts, text = [], "{"
        for index, (key, value) in enumerate(properties.items()):
            text += ("," if index else "") + canonical_json(key) + ":"
            parts += [self._literal(text), self._compile(value, f"{where}.{key}")]
            text = ""
        parts.append(self._literal(text + "}"))
        return self._add(("sequence", tuple(parts)))

    def _longest(self, index: int) -> int | None:
        node = self._nodes[index]
        if node[0] == "literal":
            return len(node[1])
        if node[0] == "string":
            return None if node[1] is None else node[1] + 2
        if node[0] == "integer":
            return (
                None if None in node[1:] else max(len(str(node[1])), len(str(node[2])))
            )
        parts = [
            self._longest(i) for i in (node[1] if node[0] != "array" else [node[1]])
        ]
        if None in parts or (node[0] == "array" and node[3] is None):
            return None
        if node[0] == "sequence":
            return sum(parts)
        if node[0] == "choice":
            return max(parts)
        return 2 + node[3] * parts[0] + max(node[3] - 1, 0)  # "[" items and commas "]"

    # reading characters ---------------------------------------------------------------
    # Pending items on a configuration's stack, small tuples so that states hash fast:
    # ("L", text)          literal text still to write;
    # ("Q", n)             a string before its opening quote, at most n characters
    #                      (None: any number);
    # ("B", n)             inside a string, n more characters allowed;
    # ("I", node)          an integer not started;
    # ("D", node, digits)  an integer being written;
    # ("N", node)          a sequence, choice or array to expand;
    # ("R", node, count)   an array after count items.

    def _pending(self, index: int) -> tuple:
        node = self._nodes[index]
        if node[0] == "literal":
            return ("L", node[1])
        if node[0] == "string":
            return ("Q", node[1])
        if node[0] == "integer":
            return ("I", index)
        return ("N", index)

    def _expand(self, configuration: tuple) -> list[tuple]:
        """The configurations whose first pending item reads a character (or that are
        finished)."""
        done, todo = [], [configuration]
        while todo:
            current = todo.pop()
            if not current or current[0][0] in "LQBID":
                done.append(current)
                continue
            head, rest = current[0], current[1:]
            node = self._nodes[head[1]]
            if head[0] == "N" and node[0] == "sequence":
                todo.append(tuple(self._pending(i) for i in node[1]) + rest)
            elif head[0] == "N" and node[0] == "choice":
                todo.extend((self._pending(i),) + rest for i in node[1])
            else:  # an array: "[" then items separated by commas then "]"
                count = 0 if head[0] == "N" else head[2]
                _, item, low, high = node
                opening = (("L", "["),) if head[0] == "N" else ()
                if count >= low:
                    todo.append(opening + (("L", "]"),) + rest)
                if high is None or count < high:
                    comma = (("L", ","),) if count else ()
                    todo.append(
                        opening
                        + comma
                        + (self._pending(item), ("R", head[1], count + 1))
                        + rest
                    )
        return done

    def _read(self, configuration: tuple, character: str) -> list[tuple]:
        """The configurations after ``configuration`` reads ``character`` (none if it
        cannot)."""
        if not configuration:
            return []  # the value is complete: nothing may follow
        head, rest = configuration[0], configuration[1:]
        kind = head[0]
        if kind == "L":
            if head[1][0] != character:
                return []
            return [rest if len(head[1]) == 1 else (("L", head[1][1:]),) + rest]
        if kind == "Q":
            return [(("B", head[1]),) + rest] if character == '"' else []
        if kind == "B":
            if character == '"':
                return [rest]
            room = head[1] is None or head[1] > 0
            if character in STRING_CHARACTERS and room:
                return [(("B", None if head[1] is None else head[1] - 1),) + rest]
            return []
        # an integer: keep writing digits, and, once the number is complete, it may also
        # end here
        digits = (head[2] if kind == "D" else "") + character
        _, low, high = self._nodes[head[1]]
        if not integer_prefix_feasible(digits, low, high):
            return []
        after = [(("D", head[1], digits),) + rest]
        return after + ([rest] if integer_complete(digits, low, high) else [])

    def _intern(self, configurations) -> int:
        state = frozenset(configurations)
        if not state:
            return DEAD
        if state not in self._state_ids:
            self._state_ids[state] = len(self._states)
            self._states.append(state)
            self._accepting.append(() in state)
        return self._state_ids[state]

    def step(self, state: int, character: str) -> int:
        """The state after ``state`` reads one character (``DEAD`` if the text cannot go
        on)."""
        key = (state, character)
        found = self._transitions.get(key)
        if found is None:
            if state == DEAD:
                return DEAD
            following = [
                expanded
                for configuration in self._states[state]
                for read in self._read(configuration, character)
                for expanded in self._expand(read)
            ]
            found = self._transitions[key] = self._intern(following)
        return found

    def advance(self, state: int, text: str) -> int:
        """The state after ``state`` reads every character of ``text``."""
        for character in text:
            state = self.step(state, character)
            if state == DEAD:
                return DEAD
        return state

    def accepts(self, state: int) -> bool:
        """Whether the text that led to ``state`` is a complete output."""
        return state != DEAD and self._accepting[state]

    def is_valid_prefix(self, text: str) -> bool:
        """Whether ``text`` can still be completed into an output the schema accepts."""
        return self.advance(self.start, text) != DEAD

    def is_complete(self, text: str) -> bool:
        """Whether ``text`` is an output the schema accepts, in canonical compact
        JSON."""
        return self.accepts(self.advance(self.start, text))

    @property
    def states_built(self) -> int:
        """How many states the automaton has built so far (it grows as texts are
        read)."""
        return len(self._states)


# --- one step of constrained decoding: the token mask ---------------------------------


def token_mask(
    prefix: str,
    vocabulary: Sequence[str],
    is_valid_prefix: Callable[[str], bool],
    is_complete: Callable[[str], bool],
    end_token: int,
) -> np.ndarray:
    """Which tokens may come next after ``prefix``: one bool per token of
    ``vocabulary``.

    Token i is allowed iff ``prefix + vocabulary[i]`` is still a valid prefix: every one
    of its characters, not only the first, must fit. The end token is allowed iff the
    prefix is already complete (and only then, or decoding could stop in the middle of
    an object). A token whose text is empty is never allowed, except the end token: it
    would let decoding loop without writing anything."""
    if not 0 <= end_token < len(vocabulary):
        raise ValueError(
            f"end_token {end_token} is not an index of the vocabulary "
            f"({len(vocabulary)} tokens)"
        )
    allowed = np.zeros(len(vocabulary), dtype=bool)
    for index, token in enumerate(vocabulary):
        if index != end_token and token:
            allowed[index] = is_valid_prefix(prefix + token)
    allowed[end_token] = is_complete(prefix)
    return allowed


class TokenMasker:
    """``token_mask`` for one grammar and vocabulary, fast enough for a 150k-token
    vocabulary.

    The tokens are sorted, which lays them out as the leaves of a character trie: the
    tokens that start with a given string sit in one contiguous run. The walk reads each
    token's characters from the recogniser's state after the prefix, reusing the states
    of the characters it shares with the token before; when a character leads to
    ``DEAD``, every token that starts the same way is skipped at once (a binary search
    finds the end of the run). Masks are cached by state, since decoding meets the same
    states again and again."""

    def __init__(
        self, grammar: JsonSchemaGrammar, vocabulary: Sequence[str], end_token: int
    ):
        if not 0 <= end_token < len(vocabulary):
            raise ValueError(
                f"end_token {end_token} is not an index of the vocabulary "
                f"({len(vocabulary)} tokens)"
            )
        self.grammar, self.end_token = grammar, end_token
        self.vocabulary = list(vocabulary)
        kept = [i for i, text in enumerate(self.vocabulary) if text and i != end_token]
        kept.sort(key=lambda i: self.vocabulary[i])
        self._ids = np.array(kept, dtype=np.int64)
        self._sorted = [self.vocabulary[i] for i in kept]
        self._masks: dict[int, np.ndarray] = {}
        self.seconds = 0.0  # time the logits processors spent masking with it

    def mask_for_state(self, state: int) -> np.ndarray:
        """The allowed tokens after a text that left the recogniser in ``state``."""
        if state not in self._masks:
            self._masks[state] = self._walk(state)
        return self._masks[state]

    def mask(self, prefix: str) -> np.ndarray:
        """The same as ``token_mask(prefix, vocabulary, ...)`` with this grammar."""
        return self.mask_for_state(self.grammar.advance(self.grammar.start, prefix))

    def _walk(self, state: int) -> np.ndarray:
        allowed = np.zeros(len(self.vocabulary), dtype=bool)
        if state == DEAD:
            return allowed
        allowed[self.end_token] = self.grammar.accepts(state)
        step, tokens, keep = self.grammar.step, self._sorted, []
        # states[d]: the state after the first d characters of `previous`
        states, previous, index = [state], "", 0
        while index < len(tokens):
            token = tokens[index]
            shared = 0
            limit = min(len(token), len(previous), len(states) - 1)
            while shared < limit and token[shared] == previous[shared]:
                shared += 1
            del states[shared + 1 :]
            depth = shared
            while depth < len(token):
                following = step(states[depth], token[depth])
                if following == DEAD:
                    break
                states.append(following)
                depth += 1
            previous = token
            if depth == len(token):
                keep.append(index)
                index += 1
            else:  # skip every token that starts with the dead prefix token[:depth + 1]
                index = bisect.bisect_left(
                    tokens, token[: depth + 1] + "\U0010ffff", index + 1
                )
        allowed[self._ids[keep]] = True
        return allowed


# --- decoding with a Hugging Face causal LM -------------------------------------------


@dataclass
class Generation:
    """One generated output: its text (without the end token), whether it ended within
    the budget (the end token, or the stop rule of ``greedy_until_brace``) and its token
    count."""

    text: str
    finished: bool
    tokens: int


def vocabulary_strings(tokenizer, size: int | None = None) -> list[str]:
    """The text each token id adds to the output, as a token mask needs it.

    Special tokens and ids past the tokenizer's (rows a model pads its output layer
    with) get "", which ``token_mask`` never allows (the end token is allowed through
    ``end_token``). Checked on a probe text: the tokens of a byte-level BPE (GPT-2,
    Llama 3, Qwen) decode one by one to what they decode to together; a tokenizer whose
    do not is refused."""
    size = len(tokenizer) if size is None else size
    special = set(tokenizer.all_special_ids) | {
        index
        for index, token in tokenizer.added_tokens_decoder.items()
        if token.special
    }
    known = min(size, len(tokenizer))
    texts = tokenizer.batch_decode(
        [[i] for i in range(known)], clean_up_tokenization_spaces=False
    )
    strings = ["" if i in special else text for i, text in enumerate(texts)]
    strings += [""] * (size - known)
    probe = '{"drinks":[{"name":"flat white","quantity":2}],"note":null}'
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if "".join(strings[i] for i in ids) != probe:
        raise ValueError(
            "this tokenizer's tokens do not decode one at a time to the text they "
            "make together, so a character-level mask cannot follow them"
        )
    return strings


class GrammarLogitsProcessor:
    """The mask as a Hugging Face logits processor: ``model.generate(...,
    logits_processor=[this])`` calls it with the ids so far and the next-token logits of
    each row, and it sets the logits of every token the grammar forbids to -inf.

    Each row's text is what its generated tokens (after ``prompt_width``) add up to; a
    row that already wrote the end token is left alone (generate pads it). The time
    spent here adds up in ``masker.seconds``."""

    def __init__(self, masker: TokenMasker, prompt_width: int):
        self.masker, self.prompt_width = masker, prompt_width

    def __call__(self, input_ids, scores):
        import torch

        started = time.perf_counter()
        grammar, vocabulary = self.masker.grammar, self.masker.vocabulary
        masks = []
        for row in input_ids[:, self.prompt_width :].tolist():
            if self.masker.end_token in row:
                masks.append(np.ones(len(vocabulary), dtype=bool))
                continue
            text = "".join(vocabulary[token] for token in row)
            allowed = self.masker.mask_for_state(grammar.advance(grammar.start, text))
            if not allowed.any():
                raise ValueError(
                    f"no token can follow {text!r}: the vocabulary lacks a token "
                    "this grammar needs"
                )
            masks.append(allowed)
        allowed = torch.from_numpy(np.stack(masks)[:, : scores.shape[1]]).to(
            scores.device
        )
        scores = scores.masked_fill(~allowed, float("-inf"))
        self.masker.seconds += time.perf_counter() - started
        return scores


def brace_end(text: str, balanced: bool) -> int | None:
    """Where the naive rule stops: just after the first "}" (``balanced`` False), or
    after the "}" that closes the first "{" when braces are counted, strings ignored
    (True); None if it never does."""
    depth = 0
    for position, character in enumerate(text):
        depth += {"{": 1, "}": -1}.get(character, 0)
        if character == "}" and (not balanced or depth <= 0):
            return position + 1
    return None


class _StopAtBrace:
    """A stopping criterion for ``generate``: a row is done once its text reaches
    ``brace_end``."""

    def __init__(self, vocabulary: list[str], prompt_width: int, balanced: bool):
        self.vocabulary, self.prompt_width = vocabulary, prompt_width
        self.balanced = balanced

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [
            brace_end("".join(self.vocabulary[t] for t in row), self.balanced)
            is not None
            for row in input_ids[:, self.prompt_width :].tolist()
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _greedy_batches(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    end_token: int,
    batch_size: int,
    processors=None,
    stops=None,
    description: str = "generating",
) -> list[list[int]]:
    """Greedy ``generate`` over ``prompt_ids``, left-padded, ``batch_size`` prompts per
    call (similar lengths together). ``processors(width)`` and ``stops(width)`` make the
    logits processors and stopping criteria of one call whose prompts are ``width``
    tokens wide. Returns each prompt's generated ids, cut after the end token."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from llmlab.progress import tqdm

    if not len(prompt_ids):
        raise ValueError("no prompts to generate from")
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token
    order = np.argsort([len(p) for p in prompt_ids], kind="stable")
    generated: list[list[int]] = [[] for _ in prompt_ids]
    batches = range(0, len(order), batch_size)
    # no bar for a batch or two (the training curve's checks): it would only flicker
    # inside the training bar and leave escape codes in a notebook's saved output
    for start in tqdm(batches, desc=description, leave=False, disable=len(batches) < 3):
        rows = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.tensor(
            [[pad] * (width - len(prompt_ids[i])) + list(prompt_ids[i]) for i in rows],
            device=device,
        )
        attention = torch.tensor(
            [
                [0] * (width - len(prompt_ids[i])) + [1] * len(prompt_ids[i])
                for i in rows
            ],
            device=device,
        )
        with torch.no_grad():
            output = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end_token,
                pad_token_id=pad,
                logits_processor=LogitsProcessorList(
                    processors(width) if processors else []
                ),
                stopping_criteria=StoppingCriteriaList(stops(width) if stops else []),
            )
        for row, tokens in zip(rows, output[:, width:].tolist()):
            generated[row] = (
                tokens[: tokens.index(end_token) + 1] if end_token in tokens else tokens
            )
    return generated


def _decoded(tokenizer, tokens: list[int], end_token: int) -> tuple[str, bool]:
    finished = end_token in tokens
    text = tokenizer.decode(
        [t for t in tokens if t != end_token],
        skip_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    return text, finished


def _end_token(tokenizer, end_token: int | None) -> int:
    end = tokenizer.eos_token_id if end_token is None else end_token
    if end is None:
        raise ValueError("the tokenizer names no end-of-sequence token: pass end_token")
    return end


def output_size(model) -> int:
    """The number of logits the model gives for each position (its output layer's
    rows)."""
    return model.get_output_embeddings().weight.shape[0]


def greedy_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    end_token: int | None = None,
    batch_size: int = 32,
) -> list[Generation]:
    """Plain greedy decoding, no constraint: each prompt's output up to the end
    token."""
    end = _end_token(tokenizer, end_token)
    outputs = _greedy_batches(
        model, tokenizer, prompt_ids, max_new_tokens, end, batch_size
    )
    return [
        Generation(*_decoded(tokenizer, tokens, end), len(tokens)) for tokens in outputs
    ]


def greedy_until_brace(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    end_token: int | None = None,
    batch_size: int = 32,
    balanced: bool = False,
) -> list[Generation]:
    """The naive way to get JSON: decode greedily and stop at "}" (or at the end token).

    It fails in four ways, each of which a schema-constrained decoder rules out:

    - *nested braces*: in ``{"drinks":[{"name":"latte"}],...}`` the first "}" closes the
      inner object, so the output is cut in the middle (``balanced=True`` counts braces
      instead);
    - *a brace inside a string*: ``{"customer_name":"}"`` stops a counter too, and
      ``{"note":"{"`` keeps it from ever stopping;
    - *running out of tokens*: with ``max_new_tokens`` spent before the closing brace
      the output is cut;
    - *valid JSON, invalid order*: nothing stops the model from writing a drink that is
      not on the menu, a quantity of 0, a missing key or a key of its own.

    ``finished`` is True when the rule stopped the output (or the end token came first).
    """
    end = _end_token(tokenizer, end_token)
    vocabulary = vocabulary_strings(tokenizer, output_size(model))
    outputs = _greedy_batches(
        model,
        tokenizer,
        prompt_ids,
        max_new_tokens,
        end,
        batch_size,
        stops=lambda width: [_StopAtBrace(vocabulary, width, balanced)],
    )
    results = []
    for tokens in outputs:
        text, ended = _decoded(tokenizer, tokens, end)
        cut = brace_end(text, balanced)
        results.append(
            Generation(
                text[:cut] if cut else text, ended or cut is not None, len(tokens)
            )
        )
    return results


def constrained_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    grammar: JsonSchemaGrammar,
    max_new_tokens: int,
    end_token: int | None = None,
    batch_size: int = 32,
    masker: TokenMasker | None = None,
) -> list[Generation]:
    """Greedy decoding with the grammar's token mask applied to the logits at every
    step.

    ``prompt_ids`` holds one list of token ids per prompt. Each row stops at the end
    token, which the mask allows only once the text is complete (and then it is the only
    token allowed), or after ``max_new_tokens``: a schema whose outputs are at most
    ``grammar.max_length`` characters always finishes within ``grammar.max_length + 1``
    tokens, since every token the mask allows writes at least one character. Pass a
    ``masker`` built once to reuse its cache across calls (its ``seconds`` add up the
    time spent masking). Returns one ``Generation`` per prompt."""
    end = _end_token(tokenizer, end_token)
    if masker is None:
        masker = TokenMasker(
            grammar, vocabulary_strings(tokenizer, output_size(model)), end
        )
    if masker.grammar is not grammar or masker.end_token != end:
        raise ValueError("the masker was built for another grammar or end token")
    outputs = _greedy_batches(
        model,
        tokenizer,
        prompt_ids,
        max_new_tokens,
        end,
        batch_size,
        processors=lambda width: [GrammarLogitsProcessor(masker, width)],
        description="constrained generating",
    )
    return [
        Generation(*_decoded(tokenizer, tokens, end), len(tokens)) for tokens in outputs
    ]


def library_constrained_generate(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    schema: dict,
    max_new_tokens: int,
    end_token: int | None = None,
    batch_size: int = 32,
) -> list[Generation]:
    """``constrained_generate`` with XGrammar instead of the hand-written mask.

    XGrammar (Dong et al. 2024; ``pip install xgrammar``, tested with 0.2.9) compiles
    the JSON schema against the tokenizer once (``GrammarCompiler.compile_json_schema``,
    here with the same compact separators and no free whitespace as
    ``JsonSchemaGrammar``) and its ``xgrammar.contrib.hf.LogitsProcessor`` masks the
    logits inside ``model.generate``; a processor serves one ``generate`` call, so each
    batch gets a new one.

    Its language is not quite ``JsonSchemaGrammar``'s: free strings may hold any Unicode
    character and escapes, and, in 0.2.9, a string with ``maxLength`` admits raw control
    characters, which JSON forbids and ``json.loads`` rejects
    (github.com/mlc-ai/xgrammar issue 800, open): measured, a model with random weights
    wrote such strings."""
    try:
        import xgrammar
    except ImportError:
        raise ImportError(
            "library_constrained_generate needs XGrammar: pip install xgrammar"
        ) from None

    end = _end_token(tokenizer, end_token)
    info = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=output_size(model), stop_token_ids=[end]
    )
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(",", ":")
    )
    outputs = _greedy_batches(
        model,
        tokenizer,
        prompt_ids,
        max_new_tokens,
        end,
        batch_size,
        processors=lambda width: [xgrammar.contrib.hf.LogitsProcessor(compiled)],
        description="XGrammar generating",
    )
    return [
        Generation(*_decoded(tokenizer, tokens, end), len(tokens)) for tokens in outputs
    ]


# --- the coffee order of Lab 4b as JSON -----------------------------------------------

# Dialogs whose scenario (the template the crowd worker followed) asks a question rather
# than placing an order: templates 13, 14a, 14b, 15, 16, 17 and 25 of Taskmaster-4.
QUESTION_SCENARIOS = ("completely off topic", "what kind of", "do you have x",
                      "what's in a")
MAX_DRINKS, MAX_NAME = 3, 16
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
            "six": 6, "seven": 7, "eight": 8, "nine": 9,
            **{str(n): n for n in range(1, 10)}}
_NAME = re.compile(r"\b(?:for|name is|name's|named|under)\s+([A-Z][a-z]+)\b")
# Capitalised words after "for" that are no name ("for Here" is a drink to stay).
_NOT_NAMES = {"Here", "Me", "My", "Now", "Today", "The", "Us", "Pickup", "Takeout",
              "Delivery"}


def coffee_order_schema(max_drinks: int = MAX_DRINKS, max_name: int = MAX_NAME) -> dict:
    """The JSON schema of an order: its drinks (a name, milk and flavour from Lab 4b's
    menu, a quantity from 1 to 9) and the customer's name, if given."""
    from llmlab.instruct import MENU

    def optional(names: list[str]) -> dict:
        return {"anyOf": [{"type": "string", "enum": list(names)}, {"type": "null"}]}

    drink = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "enum": list(MENU["drink"])},
            "milk": optional(MENU["milk"]),
            "flavour": optional(MENU["flavour"]),
            "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["name", "milk", "flavour", "quantity"],
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "drinks": {"type": "array", "items": drink, "maxItems": max_drinks},
            "customer_name": {"type": ["string", "null"], "maxLength": max_name},
        },
        "required": ["drinks", "customer_name"],
    }


def is_order_dialog(dialog: dict) -> bool:
    """Whether the dialog's scenario is one of ordering (not a question about the
    menu)."""
    scenario = dialog["scenario"].lower()
    return not any(marker in scenario for marker in QUESTION_SCENARIOS)


def reference_order(utterance: str) -> dict:
    """The order a customer's utterance places, by a fixed rule over Lab 4b's menu.

    The staged dialogs carry no slot annotations (only turns and a scenario name), so
    this reference is a rule, not a human label. The drinks are the menu drinks that
    ``llmlab.instruct.menu_items`` finds, in order (at most ``MAX_DRINKS``); a drink's
    quantity is the last number word ("a", "one", "two", ... or a digit) among the three
    words before it, else 1; each milk and flavour found goes to the nearest drink
    (fewest characters between them; a drink keeps the first of each kind); the
    customer's name is a capitalised word after "for", "name is", "name's", "named" or
    "under" ("Here" and a few other words excepted).
    """
    from llmlab.instruct import menu_items

    items = menu_items(utterance)
    drinks = [(start, end, name) for kind, name, start, end in items if kind == "drink"]
    drinks = drinks[:MAX_DRINKS]
    order = []
    for index, (start, _, name) in enumerate(drinks):
        before = utterance[drinks[index - 1][1] if index else 0 : start]
        words = re.findall(r"[A-Za-z]+|\d+%?", before)[-3:]
        quantity = next(
            (_NUMBERS[w.lower()] for w in reversed(words) if w.lower() in _NUMBERS), 1
        )
        order.append(
            {"name": name, "milk": None, "flavour": None, "quantity": quantity}
        )
    for kind, name, start, end in items:
        if kind in ("milk", "flavour") and drinks:
            gaps = [
                max(d_start - end, start - d_end, 0) for d_start, d_end, _ in drinks
            ]
            nearest = order[int(np.argmin(gaps))]
            if nearest[kind] is None:
                nearest[kind] = name
    names = [
        m.group(1) for m in _NAME.finditer(utterance) if m.group(1) not in _NOT_NAMES
    ]
    return {"drinks": order, "customer_name": names[0][:MAX_NAME] if names else None}


def coffee_order_examples(
    dialogs: Sequence[dict], seed: int = 0, validation_fraction=0.05, test_fraction=0.15
) -> dict[str, list[tuple[str, dict]]]:
    """(first customer utterance, reference order) of every ordering dialog, split by
    dialog.

    The split is Lab 4b's (``split_by_dialog`` with its fractions and seed, over the
    same dialogs), so the held-out utterances come from Lab 4b's test dialogs."""
    from llmlab.instruct import split_by_dialog

    splits = split_by_dialog(dialogs, validation_fraction, test_fraction, seed)
    return {
        name: [
            (d["turns"][0]["text"], reference_order(d["turns"][0]["text"]))
            for d in chosen
            if is_order_dialog(d)
        ]
        for name, chosen in splits.items()
    }


def order_prompt_ids(tokenizer, utterance: str) -> list[int]:
    """The chat-template prompt that asks the model for the order of ``utterance``."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": utterance}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score_orders(
    texts: Sequence[str], references: Sequence[dict], schema: dict
) -> dict:
    """(successes, trials) of each measure over generated order texts.

    "JSON valid": the text parses; "schema valid": it also validates against ``schema``
    (``jsonschema``, independent of the recogniser); "exact order": it is valid and
    equals the reference; "drink count", "customer name": those parts are right; "name",
    "milk", "flavour", "quantity": per drink of the reference, the drink at the same
    position has that field right. An output that does not parse gets every part wrong.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    measures = ("JSON valid", "schema valid", "exact order", "drink count",
                "customer name", "name", "milk", "flavour", "quantity")
    counts = {measure: [0, 0] for measure in measures}
    for text, reference in zip(texts, references, strict=True):
        try:
            value, parsed = json.loads(text), True
        except ValueError:
            value, parsed = None, False
        valid = parsed and validator.is_valid(value)
        shaped = isinstance(value, dict) and isinstance(value.get("drinks"), list)
        drinks = value["drinks"] if shaped else []
        parts = {
            "JSON valid": parsed,
            "schema valid": valid,
            "exact order": valid and value == reference,
            "drink count": shaped and len(drinks) == len(reference["drinks"]),
            "customer name": shaped
            and value.get("customer_name") == reference["customer_name"],
        }
        for measure, right in parts.items():
            counts[measure][0] += bool(right)
            counts[measure][1] += 1
        for position, expected in enumerate(reference["drinks"]):
            got = drinks[position] if position < len(drinks) else None
            for field in ("name", "milk", "flavour", "quantity"):
                right = (isinstance(got, dict) and field in got
                         and type(got[field]) is type(expected[field])
                         and got[field] == expected[field])
                counts[field][0] += right
                counts[field][1] += 1
    return {measure: tuple(count) for measure, count in counts.items()}


# The experiment's settings, by the keys of a lab preset (any other key is ignored); the
# defaults are the cpu preset's. order_dialogs: the first N coffee dialogs (None: all
# 3,710). order_max_new_tokens None: the grammar's longest output + 1, so constrained
# decoding always finishes. order_curve_steps: after how many training steps the curve
# is measured (and before the first step), each time on the first order_curve_examples
# held-out utterances.
ORDER_DEFAULTS = dict(
    order_dialogs=None, order_vocab_size=768, order_d_model=128, order_d_ff=344,
    order_n_layers=2, order_n_heads=4, order_max_length=256, order_steps=500,
    order_batch_size=32, order_learning_rate=3e-3, order_max_new_tokens=None,
    order_generate_batch_size=64, order_curve_steps=[25, 50, 100, 200],
    order_curve_examples=100, order_library=False, order_seed=0, cpu_threads=1,
)


def build_order_writer(examples: Sequence[tuple[str, dict]], options: dict):
    """(tokenizer, untrained model, encoded conversations, how many were skipped).

    A byte-level BPE trained on the training utterances and their orders, and a small
    Llama-shaped decoder of the preset's shape. Each example is a conversation whose
    assistant reply is the order; one longer than ``order_max_length`` tokens is skipped
    and counted, never cut.
    """
    from llmlab.instruct import ConversationTooLong, encode_conversation
    from llmlab.instruct_training import small_decoder, train_chat_tokenizer

    conversations = [[{"role": "user", "content": utterance},
                      {"role": "assistant", "content": canonical_json(order)}]
                     for utterance, order in examples]
    text = "\n".join(message["content"] for messages in conversations
                     for message in messages)
    tokenizer = train_chat_tokenizer(text, options["order_vocab_size"])
    shape = {"d_model": options["order_d_model"], "d_ff": options["order_d_ff"],
             "n_layers": options["order_n_layers"], "n_heads": options["order_n_heads"],
             "max_length": options["order_max_length"]}
    model = small_decoder(tokenizer, shape, options["order_seed"])
    encoded, skipped = [], 0
    for messages in conversations:
        try:
            encoded.append(encode_conversation(tokenizer, messages,
                                               options["order_max_length"]))
        except ConversationTooLong:
            skipped += 1
    return tokenizer, model, encoded, skipped


def train_order_writer(model, tokenizer, encoded: list[dict], options: dict, device,
                       measure: Callable[[], dict] | None = None,
                       measure_after: Sequence[int] = ()) -> tuple:
    """(training history, {steps taken: what ``measure()`` returned}).

    Trains from scratch with the course's loop (``llmlab.training.train``) on random
    batches of the encoded conversations, the loss on the reply and its end token only
    (the labels of ``collate_conversations``). ``measure`` runs after each number of
    steps in ``measure_after`` (the loop offers an evaluation after every step and it
    passes on the others).
    """
    import torch

    from llmlab.instruct import collate_conversations
    from llmlab.training import train

    generator = torch.Generator().manual_seed(options["order_seed"])
    taken, measured = 0, {}

    def next_batch():
        nonlocal taken
        taken += 1
        rows = torch.randint(len(encoded), (options["order_batch_size"],),
                             generator=generator)
        batch = collate_conversations([encoded[i] for i in rows.tolist()],
                                      tokenizer.pad_token_id)
        return {key: value.to(device) for key, value in batch.items()}

    def evaluate() -> dict:
        if taken in measure_after and taken not in measured:
            measured[taken] = measure()
            return measured[taken]
        return {}

    history = train(model, next_batch, steps=options["order_steps"],
                    learning_rate=options["order_learning_rate"], device=device,
                    loss_fn=lambda model, batch: model(**batch).loss, weight_decay=0.1,
                    evaluate=evaluate if measure else None, eval_every=1,
                    description="training the order writer")
    return history, measured


def coffee_order_experiment(settings: dict, device) -> dict:
    """Lab 7's structured-output experiment: the coffee order of Lab 4b as JSON.

    A small decoder is trained from scratch on "first customer utterance -> order" pairs
    of the training dialogs. Before training and after each of ``order_curve_steps``
    steps, ``curve`` records on the first held-out utterances how often plain greedy
    decoding and constrained decoding write a schema-valid order, and the exact order.
    The trained model then writes every held-out order four ways: greedy until the end
    token, greedy until the first "}", greedy until the braces balance, and greedy under
    the schema's token mask (a fifth, XGrammar's mask, where ``order_library`` is set).

    Returns ``counts`` ((successes, trials) of each measure of ``score_orders``, per
    way), ``seconds per order`` per way (batches of ``order_generate_batch_size``), the
    seconds per order spent on the hand-written masks, the outputs, the held-out
    examples, the curve, the training history and the total seconds.
    """
    from llmlab.data import coffee_dialogs
    from llmlab.instruct_training import end_of_turn_id, use_cpu_threads

    chosen = {key: value for key, value in settings.items() if key in ORDER_DEFAULTS}
    options = {**ORDER_DEFAULTS, **chosen}
    use_cpu_threads(options, device)
    started = time.perf_counter()
    dialogs = coffee_dialogs()
    if options["order_dialogs"] is not None:
        dialogs = dialogs[:options["order_dialogs"]]
    examples = coffee_order_examples(dialogs)
    held_out, schema = examples["test"], coffee_order_schema()
    tokenizer, model, encoded, skipped = build_order_writer(examples["train"], options)
    model.to(device)
    grammar, end = JsonSchemaGrammar(schema), end_of_turn_id(tokenizer)
    vocabulary = vocabulary_strings(tokenizer, output_size(model))
    masker = TokenMasker(grammar, vocabulary, end)
    prompts = [order_prompt_ids(tokenizer, utterance) for utterance, _ in held_out]
    references = [order for _, order in held_out]
    budget = options["order_max_new_tokens"] or grammar.max_length + 1
    common = {"max_new_tokens": budget, "end_token": end,
              "batch_size": options["order_generate_batch_size"]}
    size = options["order_curve_examples"]

    def curve_point() -> dict[str, float]:
        point = {}
        first = prompts[:size]
        for way, generated in (
                ("greedy", greedy_generate(model, tokenizer, first, **common)),
                ("constrained", constrained_generate(model, tokenizer, first, grammar,
                                                     masker=masker, **common))):
            texts = [g.text for g in generated]
            counts = score_orders(texts, references[:size], schema)
            for measure in ("schema valid", "exact order"):
                point[f"{way} {measure}"] = counts[measure][0] / counts[measure][1]
        return point

    total = options["order_steps"]
    steps = [step for step in options["order_curve_steps"] if step < total]
    measured = {0: curve_point()} if size else {}
    history, after = train_order_writer(model, tokenizer, encoded, options, device,
                                        curve_point if size else None,
                                        [*steps, total])
    measured.update(after)
    curve = {"steps": sorted(measured), "examples": min(size, len(prompts))}
    for key in (measured[0] if measured else {}):
        curve[key] = [measured[step][key] for step in curve["steps"]]

    ways = {
        "greedy": lambda: greedy_generate(model, tokenizer, prompts, **common),
        "greedy, stop at first }": lambda: greedy_until_brace(
            model, tokenizer, prompts, **common),
        "greedy, stop at balanced }": lambda: greedy_until_brace(
            model, tokenizer, prompts, balanced=True, **common),
        "constrained (by hand)": lambda: constrained_generate(
            model, tokenizer, prompts, grammar, masker=masker, **common),
    }
    if options["order_library"]:
        ways["constrained (XGrammar)"] = lambda: library_constrained_generate(
            model, tokenizer, prompts, schema, **common)
    outputs, seconds = {}, {}
    for way, run in ways.items():
        began, masked = time.perf_counter(), masker.seconds
        outputs[way] = run()
        seconds[way] = (time.perf_counter() - began) / len(prompts)
        if way == "constrained (by hand)":
            mask_seconds = (masker.seconds - masked) / len(prompts)
    counts = {way: score_orders([g.text for g in generated], references, schema)
              for way, generated in outputs.items()}
    return {"counts": counts, "seconds per order": seconds, "outputs": outputs,
            "mask seconds per order": mask_seconds, "held out": held_out,
            "curve": curve, "vocabulary": vocabulary, "end token": end,
            "train examples": len(encoded), "skipped as too long": skipped,
            "held-out examples": len(held_out), "max new tokens": budget,
            "history": history, "options": options,
            "seconds": time.perf_counter() - started}


def order_table(result: dict):
    """The experiment's rates with 95 % Wilson intervals, a row per way of decoding."""
    import pandas as pd

    from llmlab.instruct import wilson_interval

    rows = {}
    for way, counts in result["counts"].items():
        row = {}
        for measure, (successes, trials) in counts.items():
            low, high = wilson_interval(successes, trials)
            low, high = max(low, 0.0), min(high, 1.0)  # no "-0.000" from rounding
            row[measure] = f"{successes / trials:.3f} [{low:.3f}, {high:.3f}]"
        row["s/order"] = f"{result['seconds per order'][way]:.4f}"
        rows[way] = row
    return pd.DataFrame(rows).T


def plot_order_curve(curve: dict, ax=None):
    """The experiment's curve: schema-valid and exact orders of greedy and constrained
    decoding against the training steps, with 95 % Wilson intervals."""
    import matplotlib.pyplot as plt

    from llmlab.instruct import wilson_interval

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    steps, trials = np.array(curve["steps"]), curve["examples"]
    styles = {"greedy": "tab:orange", "constrained": "tab:blue"}
    for way, colour in styles.items():
        for measure, line in (("schema valid", "-"), ("exact order", ":")):
            rates = np.array(curve[f"{way} {measure}"])
            bounds = np.array([wilson_interval(round(r * trials), trials)
                               for r in rates])
            ax.plot(steps, rates, line, color=colour, marker="o",
                    label=f"{way}: {measure}")
            ax.fill_between(steps, bounds[:, 0], bounds[:, 1], color=colour, alpha=0.12)
    ax.set_xscale("symlog", linthresh=max(1, int(steps[1]) if len(steps) > 1 else 1))
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"share of {trials} held-out orders")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return ax
