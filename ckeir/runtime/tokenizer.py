"""The tokenizer a model file carries, built with the `tokenizers` library.

GGUF stores a byte-level BPE (`tokenizer.ggml.model = gpt2`) as its token strings, merges
and token types; `tokenizer.ggml.pre` names the pre-tokenizer.  We rebuild the same pipeline
the model was trained with: the `smollm`/`starcoder` family splits digits one by one before
the GPT-2 byte-level split; plain `gpt2`/`default` uses the byte-level split alone.  Control
tokens (type 3) are special tokens, so `<|im_start|>` encodes to one id.

The tokenizer is read when text is first encoded or decoded, each key checked for its type
and length first: a model run from token ids never needs it.

Chat: the file's `tokenizer.chat_template` (ChatML when it has none) renders a list of
messages into the prompt text as Hugging Face transformers renders it (Jinja2, sandboxed,
trim_blocks and lstrip_blocks, `raise_exception`, `add_generation_prompt`); the file's
BOS/EOS ids say where a sequence starts and ends.  `TextStream` turns generated ids into
text as they come: whole UTF-8 characters only, stop strings left out even when one spans
several tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ckeir.errors import CkeError, ModelFileError
from ckeir.limits import MAX_VOCAB

# pre-tokenizer names (GGUF `tokenizer.ggml.pre`) whose digits are split one by one
DIGIT_SPLIT = {"smollm", "starcoder", "refact", "codeshell", "smaug-bpe"}
CONTROL = 3
# GGUF tokenizer keys
MODEL, PRE = "tokenizer.ggml.model", "tokenizer.ggml.pre"
TOKENS, MERGES = "tokenizer.ggml.tokens", "tokenizer.ggml.merges"
TYPES, SCORES = "tokenizer.ggml.token_type", "tokenizer.ggml.scores"
SPECIAL_IDS = ("bos", "eos", "unknown", "padding")  # tokenizer.ggml.<name>_token_id
CHAT_TEMPLATE, ADD_BOS = "tokenizer.chat_template", "tokenizer.ggml.add_bos_token"
EOT_ID = "tokenizer.ggml.eot_token_id"  # end of turn, where a file names one apart from EOS
MAX_TEMPLATE = 1 << 20  # characters of a chat template

# ChatML, as llama.cpp falls back to it for a file without a template
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class Tokenizer:
    def __init__(
        self,
        tokens: list[str],
        merges: list[str],
        token_types: list[int] | None,
        pre: str,
        source: str = "<model>",
    ):
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = []
        for i, m in enumerate(merges):
            a, sep, b = m.partition(" ")
            if not (sep and a in vocab and b in vocab and a + b in vocab):
                raise ModelFileError(
                    f"{source}: metadata '{MERGES}' entry {i} ({m[:40]!r}) is not a BPE merge "
                    "('left right', both tokens and their join in the vocabulary)"
                )
            pairs.append((a, b))
        try:
            tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        except Exception as e:  # noqa: BLE001 - the library's error, kept in the message
            raise ModelFileError(f"{source}: the tokenizer does not build ({e})") from None
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in DIGIT_SPLIT:
            tk.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
        if token_types:
            special = [tokens[i] for i, t in enumerate(token_types) if t == CONTROL]
            tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
        self._tk = tk
        self.vocab_size = len(tokens)

    @classmethod
    def from_gguf(cls, model_file) -> GGUFTokenizer:
        """The file's tokenizer, read when text is first encoded or decoded."""
        return GGUFTokenizer(model_file)

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=False)


def read_gguf_tokenizer(model_file) -> Tokenizer:
    """Build the tokenizer from a GGUF file's metadata, each key checked for its type and
    length against the token list before it is used."""
    path = model_file.path
    kind = model_file.text(MODEL, default=None)
    if kind is None:
        raise ModelFileError(
            f"{path}: the file has no tokenizer ('{MODEL}' is missing), so text cannot be "
            "encoded or decoded",
            hint="give token ids instead of text (ckec run --ids 1,2,3)",
        )
    if kind not in ("gpt2", "llama"):
        raise ModelFileError(
            f"{path}: tokenizer '{kind}' is not supported ('gpt2' byte-level BPE and "
            "'llama' SentencePiece-style vocabularies are)"
        )
    # more tokens than embedding rows would encode to ids the model has no row for
    rows = model_file.require("token_embd.weight").shape[0]
    tokens = model_file.array(TOKENS, "string", (1, min(rows, MAX_VOCAB)))
    n = len(tokens)
    if kind == "llama":  # SentencePiece-style (Gemma, Llama 2, Mistral): pieces by score
        from ckeir.runtime.spm import SpmTokenizer

        return SpmTokenizer(
            tokens,
            model_file.array(SCORES, "real", (n, n)),
            model_file.array(TYPES, "integer", (n, n), default=None),
            bool(model_file.metadata("tokenizer.ggml.add_space_prefix", True)),
        )
    for name in SPECIAL_IDS:
        model_file.integer(f"tokenizer.ggml.{name}_token_id", 0, n - 1, default=None)
    model_file.array(SCORES, "real", (n, n), default=None)  # unused, but must fit the tokens
    return Tokenizer(
        tokens,
        model_file.array(MERGES, "string", (0, MAX_VOCAB)),
        model_file.array(TYPES, "integer", (n, n), default=None),
        model_file.text(PRE, default="default"),
        str(path),
    )


class GGUFTokenizer:
    """A GGUF file's tokenizer, read and built when text is first encoded or decoded: a run
    given token ids needs none, so a file without tokenizer metadata still runs from ids, and
    one with damaged metadata fails only where text is needed, with a message naming the key."""

    def __init__(self, model_file):
        self.model_file = model_file
        self._tk: Tokenizer | None = None

    def built(self) -> Tokenizer:
        if self._tk is None:
            self._tk = read_gguf_tokenizer(self.model_file)
        return self._tk

    def encode(self, text: str) -> list[int]:
        return self.built().encode(text)

    def decode(self, ids) -> str:
        return self.built().decode(ids)

    def token_id(self, name: str) -> int | None:
        """The file's `tokenizer.ggml.<name>_token_id` (bos, eos, eot...), or None."""
        key = f"tokenizer.ggml.{name}_token_id"
        i = self.model_file.integer(key, 0, MAX_VOCAB - 1, default=None)
        if i is not None and i >= self.built().vocab_size:
            raise ModelFileError(f"{self.model_file.path}: metadata '{key}' is not a token id")
        return i

    @property
    def bos_id(self) -> int | None:
        return self.token_id("bos")

    @property
    def eos_ids(self) -> frozenset[int]:
        """The ids that end a generated sequence: EOS, and end-of-turn where the file has
        one apart from EOS."""
        return frozenset(i for i in (self.token_id("eos"), self.token_id("eot")) if i is not None)

    @property
    def add_bos(self) -> bool:
        """Whether a prompt starts with the BOS id (`tokenizer.ggml.add_bos_token`)."""
        value = self.model_file.metadata(ADD_BOS, False)
        if not isinstance(value, bool):
            raise ModelFileError(f"{self.model_file.path}: metadata '{ADD_BOS}' is not a BOOL")
        return value and self.bos_id is not None

    def token_text(self, i: int | None) -> str:
        return "" if i is None else self.decode([i])

    @property
    def chat_template(self) -> str:
        """The file's chat template, ChatML where it has none."""
        text = self.model_file.text(CHAT_TEMPLATE, default=None)
        if text is not None and len(text) > MAX_TEMPLATE:
            raise ModelFileError(
                f"{self.model_file.path}: metadata '{CHAT_TEMPLATE}' is longer than "
                f"{MAX_TEMPLATE} characters"
            )
        return CHATML if text is None else text

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, rendered by the file's template."""
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.token_text(self.bos_id),
            eos_token=self.token_text(self.token_id("eos")),
        )

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's ids: BOS first where the file asks for it (and the text has none)."""
        ids = self.encode(text)
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids


def check_messages(messages) -> list[dict]:
    """A chat's messages as the template takes them: a non-empty list of objects, each with
    a string `role` and a `content` that is a string or a list of text parts."""
    if not isinstance(messages, list) or not messages:
        raise CkeError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise CkeError(f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: the text ones, joined
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
                raise CkeError(f"messages[{i}].content parts must be {{type: text, text}}")
            content = "".join(parts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise CkeError(f"messages[{i}].content must be a string")
        out.append({**m, "content": content})
    return out


def render_chat(template: str, messages, add_generation_prompt: bool = True, **context) -> str:
    """Render a chat template as transformers' `apply_chat_template` does: an immutable
    sandboxed Jinja2 environment with trim_blocks and lstrip_blocks, the loop-control
    extension, `raise_exception(msg)` and a `tojson` filter that keeps non-ASCII text.  A
    template's own error (or its `raise_exception`) is a CkeError."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = check_messages(messages)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        compiled = env.from_string(template)
        return compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **context
        )
    except jinja2.exceptions.TemplateError as e:
        raise CkeError(f"the chat template refused the messages: {e}") from None
    except Exception as e:  # noqa: BLE001 - a template's own bug (a bad key, a type)
        raise CkeError(
            f"the chat template failed on the messages: {type(e).__name__}: {e}"
        ) from None


class StreamDecoder:
    """Turns generated ids into text pieces as they arrive; a piece is emitted once its bytes
    form whole UTF-8 characters (a multi-byte character may span tokens).  Each push decodes
    only the ids since the last whole piece (byte-level BPE decodes piecewise)."""

    def __init__(self, tokenizer: Tokenizer | GGUFTokenizer):
        self.tk, self.ids = tokenizer, []
        self.prefix = self.read = 0  # ids[prefix:read] decoded to text already shown

    def push(self, token: int) -> str:
        self.ids.append(token)
        shown = self.tk.decode(self.ids[self.prefix : self.read])
        text = self.tk.decode(self.ids[self.prefix :])
        if text.endswith("\ufffd") or len(text) <= len(shown):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(shown) :]

    def flush(self) -> str:
        """What is left at the end (an unfinished character as U+FFFD): the pieces and this
        join to the decoding of every id."""
        shown = self.tk.decode(self.ids[self.prefix : self.read])
        text = self.tk.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(shown) :]


def check_stop(stop) -> tuple[str, ...]:
    """Stop strings as OpenAI takes them: one string, or a list of up to 16 non-empty ones."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise CkeError("stop must be a string or a list of strings")
    if len(stop) > 16:
        raise CkeError(f"stop takes at most 16 strings, not {len(stop)}")
    if "" in stop:
        raise CkeError("a stop string is empty")
    return tuple(stop)


class TextStream:
    """Generated ids in, text out as it becomes final: whole UTF-8 characters only, and
    never text that could still be the start of a stop string.  When the text reaches a stop
    string, everything before it is out, the stop string and what follows are not, and
    `stopped` names it: the generation should end."""

    def __init__(self, tokenizer: Tokenizer | GGUFTokenizer, stop: Iterable[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = check_stop(list(stop))
        self.held = ""  # decoded, not yet emitted
        self.stopped: str | None = None
        self.text = ""  # everything emitted

    def push(self, token: int) -> str:
        if self.stopped is not None:
            return ""
        return self._release(self.decoder.push(token), final=False)

    def finish(self) -> str:
        """The text still held at the end of the generation."""
        if self.stopped is not None:
            return ""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, piece: str, final: bool) -> str:
        self.held += piece
        hits = [(self.held.find(s), s) for s in self.stop if s in self.held]
        if hits:
            at, self.stopped = min(hits)
            out, self.held = self.held[:at], ""
        else:
            keep = 0 if final else _stop_prefix(self.held, self.stop)
            out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        self.text += out
        return out


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
