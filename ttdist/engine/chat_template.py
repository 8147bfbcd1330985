"""A checkpoint's chat template, rendered the way transformers' ``apply_chat_template`` does.

The template comes from the checkpoint folder (``chat_template.jinja``, or the
``chat_template`` entry of ``tokenizer_config.json``: a string or a list of named templates,
where ``default`` wins) or from a file that overrides it. It is rendered with jinja2 alone
(no torch, no transformers), in the same environment transformers builds: a sandbox with
``trim_blocks`` / ``lstrip_blocks`` and loop controls, a ``tojson`` filter that does not
escape HTML, the ``raise_exception`` and ``strftime_now`` globals, and the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...) as variables. Tokenize the result with
``add_special_tokens=False``, as transformers does: the template writes its own specials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool", "developer")


class ChatTemplateError(ValueError):
    """A conversation the template cannot render, or a template that fails; the message says why."""


class NoChatTemplateError(ChatTemplateError):
    """The model has no chat template (and none was given with --chat-template)."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class ChatTemplate:
    source: str                              # the jinja text
    special_tokens: tuple[tuple[str, str], ...] = ()   # (name, text): bos_token, eos_token, ...
    origin: str = ""                         # where it came from, for messages

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path, override: str | Path | None = None) -> ChatTemplate:
        """The template of a checkpoint folder (or of ``override``, a jinja file); raises
        ``NoChatTemplateError`` when there is none."""
        folder = Path(checkpoint_dir)
        config = _read_json(folder / "tokenizer_config.json")
        specials = _special_tokens(config)
        if override is not None:
            path = Path(override)
            try:
                return cls(path.read_text(), specials, str(path)).checked()
            except OSError as err:
                raise ChatTemplateError(f"--chat-template: cannot read {path}: {err.strerror}") from None
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return cls(jinja_file.read_text(), specials, str(jinja_file)).checked()
        template = config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template:
            return cls(template, specials, str(folder / "tokenizer_config.json")).checked()
        raise NoChatTemplateError(
            f"the model in {folder} has no chat template (no chat_template.jinja, no chat_template in "
            "tokenizer_config.json); start the server with --chat-template FILE, or use completions instead"
        )

    def checked(self) -> ChatTemplate:
        try:
            _compile(self.source)
        except jinja2.TemplateSyntaxError as err:
            raise ChatTemplateError(f"{self.origin or 'chat template'}: not a valid jinja template: {err}") from None
        return self

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None,
               **variables) -> str:
        """The prompt text for ``messages`` (dicts with ``role`` and ``content``); ``tools``: the
        OpenAI tool list the template may show the model (None: no tools)."""
        check_messages(messages)
        context = {**dict(self.special_tokens), **variables}
        plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return _compile(self.source).render(
                messages=plain, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **context)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the chat template refused the conversation: {err}") from None


_COMPILED: dict[str, jinja2.Template] = {}


def _compile(source: str) -> jinja2.Template:
    template = _COMPILED.get(source)
    if template is None:
        template = _COMPILED[source] = _environment().from_string(source)
    return template


def check_messages(messages) -> None:
    """Raise ``ChatTemplateError`` naming the first malformed message."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatTemplateError(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str) and not (role == "assistant" and content is None):
            raise ChatTemplateError(f"messages[{i}].content must be a string, got {type(content).__name__}")


def _special_tokens(config: dict) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in config.items():
        if not name.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out.append((name, value))
    return tuple(out)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
