"""Chat templates: conversational records rendered with a checkpoint's own Jinja template, as
transformers' `apply_chat_template` renders them, then split into prompt and response tokens.

A conversational record (data/records.py, format 3) keeps its messages (`record.conversation`).
Without a template they become HH text (data/records.py); with one (`encode_preferences(...,
chat_template=...)`, the --chat-template flag):

    prompt   = render(prompt messages, add_generation_prompt=True)
    response = render(prompt messages + response messages)[len(prompt):]

so a response's mask covers what the template writes after the assistant's header: the assistant's
turn and its end-of-turn token. Each conversation's rendering must start with the prompt's (a
template that rewrites earlier turns breaks this); ChatTemplateError names the template and the row
otherwise, and for a template that cannot be rendered (a Jinja error, raise_exception called).

Tokens. What the template writes around the messages (<|im_start|>, <|eot_id|>, the bos_token) is
read with the tokenizer's special tokens; a message's content stays ordinary text even where it
spells a special token (it is swapped for a noncharacter placeholder while the template renders).
transformers' apply_chat_template(tokenize=True) would read such content as the special token: the
ids differ for those rows only.

EOS. Instruct checkpoints end a turn with their EOS (SmolLM2-Instruct, Qwen2.5-Instruct:
<|im_end|>; Llama 3.2 Instruct: <|eot_id|>), so a response that holds the EOS gets none appended: it
ends at its last EOS, and what the template writes after it (ChatML's "\\n", which generation never
reaches) is left out; it must be whitespace, anything else is an error. A response without the EOS
(a base checkpoint's template) gets it appended, as plain text does (data/encoding.py).

Where a template comes from (`find_chat_template`): chat_template.jinja beside tokenizer.json, else
tokenizer_config.json's "chat_template" (a string, or the entry named "default" of a list), in the
order transformers reads them; or a Jinja file (`load_chat_template`). `resolve_chat_template` maps
--chat-template (auto, hh or a file) to one of these.

The template renders in Jinja's sandbox as in transformers: trim_blocks, lstrip_blocks, loop
controls, raise_exception, strftime_now, a tojson that keeps non-ASCII text, the tokenizer's
bos_token / eos_token / pad_token texts; {% generation %} blocks render their body. Jinja2 is an
optional dependency (pip install -e ".[chat]"), imported when a template is used.

Left out: tools, documents and multimodal content. A response of several messages is scored whole,
the user's turns between the assistant's included: the data path masks one contiguous response.
"""

import dataclasses
import datetime
import functools
import json
import os
import re

from data.hf_tokenizer import literal_regex, read_json

# A special token's text inside a message, while the template renders: noncharacters (code points
# Unicode keeps for a program's internal use) around its number in the row's table.
PLACEHOLDER_OPEN, PLACEHOLDER_CLOSE = "\ufdd0", "\ufdd1"
PLACEHOLDER = re.compile(f"{PLACEHOLDER_OPEN}(\\d+){PLACEHOLDER_CLOSE}")


class ChatTemplateError(ValueError):
    """A chat template that cannot be read or rendered, or whose rendering cannot be split into
    prompt and response; the message names the template's source and the row."""


def _jinja():
    """The jinja2 module, or ImportError saying how to install it."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as err:
        raise ImportError("rendering a chat template needs Jinja2, an optional dependency: pip "
                          "install -e \".[chat]\" (or pip install jinja2); --chat-template hh "
                          "renders conversations as HH text instead") from err
    return jinja2


@functools.lru_cache(maxsize=16)
def _compiled(text: str):
    """`text` compiled in an environment like transformers' (module docstring)."""
    jinja2 = _jinja()

    class GenerationBlock(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %}: transformers marks the assistant's text with it;
        here the response is what follows the prompt, so the block renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, **kw: json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, **kw)
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return environment.from_string(text)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template: its text, and where it was read (named in errors)."""

    text: str
    source: str

    def compile(self):
        """Compile now (cached), so that a template with a syntax error fails before any work.
        Raises ImportError without Jinja2, ChatTemplateError naming the source."""
        jinja2 = _jinja()
        try:
            return _compiled(self.text)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"chat template {self.source}: {type(err).__name__}: "
                                    f"{err}") from err

    def render(self, messages: list[dict], *, add_generation_prompt: bool,
               special_tokens: dict[str, str], where: str) -> str:
        """The template rendered on `messages` ({"role", "content"} dicts); special_tokens: the
        variables bos_token, eos_token, pad_token (text). Raises ChatTemplateError naming the
        source and `where` (the row)."""
        compiled = self.compile()
        try:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   **special_tokens)
        except Exception as err:  # a template is code: whatever it raises, name where
            raise ChatTemplateError(f"chat template {self.source} cannot render {where}: "
                                    f"{type(err).__name__}: {err}") from err


def load_chat_template(path: str) -> ChatTemplate:
    """The template in the Jinja file at `path`. Raises OSError when it cannot be read."""
    with open(path, encoding="utf-8") as f:
        return ChatTemplate(f.read(), path)


def find_chat_template(directory: str) -> ChatTemplate | None:
    """A checkpoint directory's template: chat_template.jinja, else tokenizer_config.json's
    "chat_template" (a string, or the entry named "default" of a list of {"name", "template"});
    None when it has neither. Raises ChatTemplateError for a "chat_template" of another shape."""
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        return load_chat_template(jinja_file)
    config_file = os.path.join(directory, "tokenizer_config.json")
    value = (read_json(config_file) or {}).get("chat_template")
    source = f"{config_file} (chat_template)"
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value
                 if isinstance(entry, dict)}
        if "default" not in named:
            raise ChatTemplateError(f"{source}: a list of templates without one named 'default' "
                                    f"(names: {sorted(map(str, named))})")
        value, source = named["default"], f"{config_file} (chat_template 'default')"
    if value is None:
        return None
    if not isinstance(value, str):
        raise ChatTemplateError(f"{source}: expected a string, got {type(value).__name__}")
    return ChatTemplate(value, source)


def resolve_chat_template(choice: str, tokenizer) -> ChatTemplate | None:
    """The template --chat-template `choice` names, compiled: "hh" -> None (HH text); "auto" -> the
    tokenizer's checkpoint directory's (an HFEncoding's, data/hf_tokenizer.py), else None; anything
    else is the path of a Jinja file. Raises ImportError without Jinja2, ChatTemplateError or
    OSError for a template that cannot be read or compiled."""
    if choice == "hh":
        return None
    if choice == "auto":
        path = getattr(tokenizer, "path", None)  # tiktoken's own tokenizers have no directory
        template = find_chat_template(os.path.dirname(path)) if path else None
    else:
        template = load_chat_template(choice)
    if template is not None:
        template.compile()
    return template


def _special_token_texts(tokenizer) -> dict[str, str]:
    """The texts the template sees as bos_token, eos_token, pad_token."""
    texts = getattr(tokenizer, "special_token_texts", None)
    if texts is None:  # a tiktoken encoding: its EOS only
        texts = {"eos_token": tokenizer.decode_single_token_bytes(tokenizer.eot_token).decode()}
    return texts


def _text_ids(tokenizer, text: str, specials: frozenset[str], literals: list[str],
              context: str) -> list[int]:
    """Token ids of rendered `text`: the special tokens' texts are the template's (tokens), the
    placeholders are restored to the literal texts of the messages (ordinary text). `context`
    (template and row) starts the error messages."""
    ids = []
    for i, piece in enumerate(literal_regex(specials).split(text) if specials else [text]):
        if i % 2:
            ids.append(tokenizer.encode_single_token(piece))
            continue
        piece = PLACEHOLDER.sub(lambda m: literals[int(m.group(1))], piece)
        if PLACEHOLDER_OPEN in piece or PLACEHOLDER_CLOSE in piece:
            raise ChatTemplateError(f"{context}: the template cut into a message's special "
                                    "token text")
        ids += tokenizer.encode_ordinary(piece)
    return ids


def encode_conversation(template: ChatTemplate, tokenizer, conversation
                        ) -> tuple[list[int], list[list[int]]]:
    """Render `conversation` (data.records.Conversation: prompt messages, responses' messages,
    where) with `template` and tokenize it as the module docstring says.

    Returns (prompt_ids, [response_ids for each response]), int lists; each response ends with the
    EOS (`tokenizer.eot_token`). Raises ChatTemplateError naming the template and the row.
    """
    where, eos = conversation.where, tokenizer.eot_token
    context = f"chat template {template.source}, {where}"
    specials = frozenset(tokenizer.special_tokens_set)
    literals: list[str] = []  # literals[k]: the special token's text placeholder k stands for

    def placeholder(match: re.Match) -> str:
        literals.append(match.group())
        return f"{PLACEHOLDER_OPEN}{len(literals) - 1}{PLACEHOLDER_CLOSE}"

    def escaped(messages) -> list[dict]:
        out = []
        for message in messages:
            content = message["content"]
            if PLACEHOLDER_OPEN in content or PLACEHOLDER_CLOSE in content:
                raise ChatTemplateError(f"{context}: a message holds U+FDD0 or U+FDD1, the "
                                        "noncharacters that stand for special tokens' texts here")
            if specials:
                content = literal_regex(specials).sub(placeholder, content)
            out.append({**message, "content": content})
        return out

    variables = dict(special_tokens=_special_token_texts(tokenizer), where=where)
    prompt = escaped(conversation.prompt)
    prompt_text = template.render(prompt, add_generation_prompt=True, **variables)
    responses = []
    for response in conversation.responses:
        full_text = template.render(prompt + escaped(response), add_generation_prompt=False,
                                    **variables)
        if not full_text.startswith(prompt_text):
            at = len(os.path.commonprefix([prompt_text, full_text]))
            raise ChatTemplateError(
                f"{context}: the conversation renders as "
                f"{full_text[at:at + 40]!r}... where the prompt (add_generation_prompt=True) has "
                f"{prompt_text[at:at + 40]!r}...: the response cannot be split off")
        ids = _text_ids(tokenizer, full_text[len(prompt_text):], specials, literals, context)
        if eos not in ids:
            ids.append(eos)
        last = len(ids) - 1 - ids[::-1].index(eos)
        if tokenizer.decode(ids[last + 1:]).strip():
            raise ChatTemplateError(f"{context}: the response has "
                                    f"{tokenizer.decode(ids[last + 1:])!r} after its last EOS")
        responses.append(ids[:last + 1])
    return _text_ids(tokenizer, prompt_text, specials, literals, context), responses
