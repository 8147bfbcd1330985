"""Chat templates rendered with jinja2 alone equal transformers' ``apply_chat_template``."""

from __future__ import annotations

import json
import shutil

import pytest

from ttdist.engine.chat_template import ChatTemplate, ChatTemplateError, NoChatTemplateError
from ttdist.engine.tokenizer import Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "é ü 日本 <b>"}],
]

# exercises what transformers adds to jinja: raise_exception, tojson without HTML escaping, loop controls,
# special-token variables, trim_blocks / lstrip_blocks
FANCY = """{{ bos_token }}
{% for m in messages %}
  {% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
  {% if m['content'] == 'skip' %}{% continue %}{% endif %}
  [{{ m['role'] }}] {{ m['content'] | tojson }}
{% endfor %}
{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token if not add_generation_prompt else '' }}"""


@pytest.fixture(scope="module")
def smollm2():
    from ttdist.model.smollm2 import materialize

    return materialize()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_equals_transformers(smollm2, hf_tokenizer, conversation, add_generation_prompt):
    template = ChatTemplate.from_dir(smollm2)
    text = template.render(conversation, add_generation_prompt=add_generation_prompt)
    want = hf_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert text == want
    ids = hf_tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=add_generation_prompt,
                                           return_dict=False)
    assert Tokenizer.from_dir(smollm2).encode(text, add_special_tokens=False) == list(ids)


def test_transformers_globals_and_filters_render_the_same(smollm2, hf_tokenizer, tmp_path):
    override = tmp_path / "fancy.jinja"
    override.write_text(FANCY)
    template = ChatTemplate.from_dir(smollm2, override=override)
    chat = [{"role": "user", "content": 'say "<hi>" & bye'}, {"role": "user", "content": "skip"},
            {"role": "assistant", "content": "ok"}]
    for gen in (True, False):
        want = hf_tokenizer.apply_chat_template(chat, chat_template=FANCY, tokenize=False, add_generation_prompt=gen)
        assert template.render(chat, add_generation_prompt=gen) == want
    assert '"say \\"<hi>\\" & bye"' in template.render(chat)


def test_template_errors_are_typed(smollm2, tmp_path):
    template = ChatTemplate.from_dir(smollm2, override=_write(tmp_path / "t.jinja", FANCY))
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        template.render([{"role": "tool", "content": "x"}])
    for bad, what in [([], "non-empty list"), ([{"role": "wizard", "content": "x"}], r"messages\[0\].role"),
                      ([{"role": "user", "content": 3}], r"messages\[0\].content")]:
        with pytest.raises(ChatTemplateError, match=what):
            template.render(bad)
    with pytest.raises(ChatTemplateError, match="not a valid jinja template"):
        ChatTemplate.from_dir(smollm2, override=_write(tmp_path / "broken.jinja", "{% for %}"))
    with pytest.raises(ChatTemplateError, match="cannot read"):
        ChatTemplate.from_dir(smollm2, override=tmp_path / "missing.jinja")


def test_template_sources(smollm2, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(smollm2 / "tokenizer.json", bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(NoChatTemplateError, match="--chat-template"):
        ChatTemplate.from_dir(bare)
    (bare / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": [{"name": "tool_use", "template": "T"},
                                                      {"name": "default", "template": "{{ eos_token }}D"}]}))
    assert ChatTemplate.from_dir(bare).render([{"role": "user", "content": "x"}]) == "<|im_end|>D"
    (bare / "tokenizer_config.json").write_text(json.dumps({"chat_template": "S{{ messages[0]['content'] }}"}))
    assert ChatTemplate.from_dir(bare).render([{"role": "user", "content": "x"}]) == "Sx"


def _write(path, text):
    path.write_text(text)
    return path
