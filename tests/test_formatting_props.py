"""Property tests for formatting.py (hypothesis).

- Neither converter raises on any input.
- Chat -> Discourse -> Chat keeps the meaning (as read by Chat's documented syntax) for the
  supported subset: words, *bold*, _italic_, ~strike~, `code`, code blocks, links, bare URLs,
  mapped mentions, bullet and quote lines, and literal text with characters that are special
  to one of the two platforms.
- split_for_limit respects the limit and loses nothing. (Origin markers, client ids and external
  ids: tests/test_origin.py.)
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import formatting as f
import origin
from emulators import google_chat_markup as chat_markup

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHAT_TO_DISCOURSE = {"users/111": "ada", "users/222": "bob.smith", "users/333": "c_d"}
DISCOURSE_TO_CHAT = {v: k for k, v in CHAT_TO_DISCOURSE.items()}
BASE = "https://forum.example.org"


def to_discourse(text: str) -> str:
    return f.gchat_to_discourse_markdown(text, mention_lookup=CHAT_TO_DISCOURSE.get)


def to_chat(raw: str) -> str:
    return f.discourse_to_gchat_text(raw, base_url=BASE, mention_lookup=DISCOURSE_TO_CHAT.get)


def _norm_inlines(nodes: tuple[f.ChatInline, ...]) -> tuple[object, ...]:
    out: list[object] = []
    for node in nodes:
        if isinstance(node, f.ChatText):
            text = node.text
            for c in f.INVISIBLE:
                text = text.replace(c, "")
            if out and isinstance(out[-1], str):
                out[-1] += text
            else:
                out.append(text)
        elif isinstance(node, f.ChatStyle):
            out.append((node.marker, _norm_inlines(node.children)))
        else:
            out.append(node)
    squeezed = [re.sub(r"\s+", " ", x) if isinstance(x, str) else x for x in out]
    if squeezed and isinstance(squeezed[0], str):
        squeezed[0] = squeezed[0].lstrip()
    if squeezed and isinstance(squeezed[-1], str):
        squeezed[-1] = squeezed[-1].rstrip()
    return tuple(x for x in squeezed if x != "")


def meaning(chat_text: str) -> list[object]:
    """What a Chat reader sees: line kinds, styles, links, mentions and text (blank lines and
    invisible characters ignored)."""
    result: list[object] = []
    for block in f.parse_chat(chat_text):
        if isinstance(block, f.ChatCodeBlock):
            result.append(("code", block.code.strip("\n")))
            continue
        inl = _norm_inlines(block.inlines)
        if inl or block.kind != "text":
            result.append((block.kind, inl))
    return result


# --- strategies -------------------------------------------------------------------------------

WORD = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHXYZ0123456789éßж", min_size=1, max_size=7
)
LITERAL = st.sampled_from(
    [
        "#hash",
        "[b]x[/b]",
        "[quote]",
        "<b>tag</b>",
        "&amp;",
        "&copy;",
        "a|b",
        "<3",
        "x>y",
        "50%",
        "(c)",
        "@nobody",
        "me@example.com",
        "foo_bar_baz",
        "2*3",
        "a*b",
        "C:\\dir",
        "!",
        "?",
        "don't",
        '"q"',
        "{x}",
        "$5",
        "~",
        "_",
        "*",
        "1.5",
        "[link](x)",
    ]
)
URL = st.builds(lambda p: "https://example.com/" + p, st.text(alphabet="abcxyz019/-", max_size=10))


def styled(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda m, t: f"{m}{t}{m}", st.sampled_from("*_~"), inner)


PHRASE = st.lists(WORD, min_size=1, max_size=3).map(" ".join)
ELEMENT = st.one_of(
    WORD,
    WORD,
    LITERAL,
    styled(PHRASE),
    st.builds(lambda a, b: f"*_{a}_ {b}*", PHRASE, WORD),
    PHRASE.map(lambda p: f"`{p}`"),
    st.builds(lambda u, label: f"<{u}|{label}>", URL, PHRASE),
    URL,
    st.sampled_from(["<users/111>", "<users/222>", "<users/333>"]),
)
SEPARATOR = st.sampled_from([" ", " ", " ", "", ", ", "(", ")", "!", "\t"])
LINE = st.builds(
    lambda prefix, elements: prefix + "".join(e + sep for e, sep in elements).rstrip(),
    st.sampled_from(["", "", "", "- ", "* ", "> "]),
    st.lists(st.tuples(ELEMENT, SEPARATOR), min_size=1, max_size=6),
)
CODE_BLOCK = st.lists(
    st.text(alphabet="abc xyz*_<>[]#@", min_size=1, max_size=12), min_size=1, max_size=3
).map(lambda lines: "```\n" + "\n".join(lines) + "\n```")
CHAT_TEXT = st.lists(st.one_of(LINE, LINE, LINE, CODE_BLOCK, st.just("")), min_size=1, max_size=6)


@SETTINGS
@given(CHAT_TEXT.map("\n".join))
def test_chat_discourse_chat_keeps_meaning(chat_text: str) -> None:
    # A literal marker next to the same marker ('_0__', '~~~') is an open bug, pinned by the
    # strict xfail below; the property covers everything else.
    assume(not re.search(r"([*_~])\1", chat_text))
    raw = to_discourse(chat_text)
    back = to_chat(raw)
    assert meaning(back) == meaning(chat_text), (chat_text, raw, back)


@SETTINGS
@given(CHAT_TEXT.map("\n".join))
def test_unmapped_names_never_ping_in_discourse(chat_text: str) -> None:
    raw = f.gchat_to_discourse_markdown(chat_text, mention_lookup=lambda _u: None)
    outside_code = re.sub(r"```.*?```|`[^`]*`", "", raw, flags=re.DOTALL)
    # Text inside links (URLs such as https://host/@user) is not scanned for mentions.
    outside_code = re.sub(r"<?https://\S+", "", outside_code)
    # Discourse's matcher `@(\w[\w.-]{0,58}\w)|@(\w)` must find nothing outside code.
    assert not re.search(r"(?<![\w@])@\w", outside_code), raw


@SETTINGS
@given(st.text(max_size=300))
def test_chat_to_discourse_never_raises(text: str) -> None:
    assert isinstance(to_discourse(text), str)
    assert isinstance(f.title_from_text(text, fallback="Chat thread in Space (2024-01-01)"), str)


MD_ALPHABET = st.sampled_from(
    list("ab xy\n\n*_~`[]()<>!#>-+|:@=\\&;\"'")
    + ["[quote]", "[/quote]", "[details=s]", "<!--"]
    + ["-->", "```", "upload://x.png", "https://e.com", ":smile:", "@ada", "<b>", "</b>"]
)


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.lists(MD_ALPHABET, max_size=60).map("".join)))
def test_discourse_to_chat_never_raises(raw: str) -> None:
    out = to_chat(raw)
    assert isinstance(out, str)
    # HTML comments (our origin markers) never reach Chat unless the author put them in code.
    if not re.search(r"`|~~~|\t| {4}|<!--|gchat", raw):
        marked = to_chat(raw + "\n\n" + origin.origin_marker("spaces/S/messages/M"))
        assert "gchat" not in marked


@SETTINGS
@given(st.lists(MD_ALPHABET, max_size=60).map("".join))
def test_discourse_literal_users_all_never_becomes_a_chat_mention(raw: str) -> None:
    out = to_chat(raw + " <users/all> <users/999>")
    mentions = [b for b in f.parse_chat(out) if isinstance(b, f.ChatLine)]
    for line in mentions:
        stack = list(line.inlines)
        while stack:
            node = stack.pop()
            if isinstance(node, f.ChatStyle):
                stack.extend(node.children)
            assert not (
                isinstance(node, f.ChatMention) and node.user in ("users/all", "users/999")
            )


@SETTINGS
@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=400)
    | st.lists(st.sampled_from(["word", " ", "\n", "\n\n", "👍🏽", "🇫🇷", "é", "e\u0301"])).map(
        "".join
    ),
    st.integers(min_value=4, max_value=60),
)
def test_split_for_limit(text: str, max_bytes: int) -> None:
    parts = f.split_for_limit(text, max_bytes)
    assert parts
    for part in parts:
        assert len(part.encode("utf-8")) <= max_bytes
    assert "".join("".join(parts).split()) == "".join(text.split())


@SETTINGS
@given(st.text(max_size=400), st.sampled_from(["Chat thread in Space (2024-01-01)", "x"]))
def test_title_always_acceptable(text: str, fallback: str) -> None:
    title = f.title_from_text(text, fallback=fallback)
    assert title.strip()
    assert len(title) <= 255
    assert all(len(word) <= 30 for word in title.split()) or len(fallback) > 30
    letters = [c for c in title if c.isalpha() and c.isupper() != c.islower()]
    assert not letters or any(c.islower() for c in letters)


@pytest.mark.xfail(
    strict=True,
    reason="open bug found by the property above: Chat '~~~' (a strike of '~') comes back from "
    "Discourse as '~~\\u200b~', which Chat reads as plain text; the zero-width-space escape of a "
    "literal marker inside a span of the same marker lands on the wrong side (also '_0__': "
    "'_0\\__' comes back as '_0\\u200b_\\u200b_')",
)
@pytest.mark.parametrize("chat_text", ["~~~", "_0__"])
def test_a_strike_of_a_tilde_survives_the_round_trip(chat_text: str) -> None:
    assert meaning(to_chat(to_discourse(chat_text))) == meaning(chat_text)


# --- hostile text (issue 17) -------------------------------------------------------------------

SMUGGLING_ALPHABET = st.sampled_from(
    ["<", ">", "&lt;", "&gt;", "&#60;", "&#x3C;", "&#62;", "&amp;", "&#47;", "\\", "/", "|"]
    + ["users/", "users/all", "USERS/", "123", "https:", "//evil.example", "mailto:", "x:"]
    + ["[", "]", "(", ")", "](", "![", "[url]", "[/url]", "[url=", "`", "```\n", "*", "_", "~"]
    + ["<b>", "</b>", "<span>", "<!-- -->", "<!--", "-->", "\u2060", "\u200b", "\u00ad", " "]
    + ["\n", "\n\n", "> ", "- ", "# ", "@ada", "@bob", "a", "é", ":smile:", "\ue000", "\ue001"]
)
MENTION_OF_ADA = "<users/111>"
_WEB_LINK = re.compile(r"<(?:https?|ftp)://[^\s<>|]*\|[^<>|\n]*>|<mailto:[^\s<>|]*\|[^<>|\n]*>")


def _link_sources(raw: str) -> int:
    """How many links `raw` can hold: markdown links and images, BBCode [url=], autolinks."""
    return raw.count("](") + raw.count("[url=") + len(re.findall(r"<[a-z][\w+.-]*:", raw, re.I))


@SETTINGS
@given(st.lists(SMUGGLING_ALPHABET, max_size=50).map("".join))
def test_chat_markup_comes_only_from_meant_mentions_and_links(raw: str) -> None:
    out = f.discourse_to_gchat_text(raw, base_url=BASE, mention_lookup={"ada": "users/111"}.get)
    # A mention only where the lookup answered for an actual @mention; a labelled link only to
    # a web or mail address, and only from link syntax.
    assert out.count(MENTION_OF_ADA) <= raw.count("@ada"), (raw, out)
    links = _WEB_LINK.findall(out)
    assert len(links) <= _link_sources(raw), (raw, out)
    rest = _WEB_LINK.sub("\ufffd", out.replace(MENTION_OF_ADA, "\ufffd"))
    assert not re.search(r"<[\s\u00ad\u2060]*(users/|[a-z][a-z0-9+.-]*:)", rest, re.I), (raw, out)
    # What Chat's own parser (the emulator's model of it) reads agrees.
    for node in chat_markup.parse_chat(rest):
        assert not isinstance(node, chat_markup.Mention), (raw, out)
        assert not (isinstance(node, chat_markup.Link) and node.label), (raw, out)


HOSTILE_CHAT_ALPHABET = st.sampled_from(
    ["[quote", "[quote=admin]", '[quote="admin, post:1"]', "[/quote]", "[b]", "[url=x]", "]"]
    + ["[chat quote=a;1]", "[details=x]", "[poll]", "<script>", "</script>", "<img src=x ", "<"]
    + [">", "onerror=y>", "<!--", "-->", "&lt;", "&#64;", "&amp;", "@", "@@", "staff", "here"]
    + ["everyone", ".", "_", "*", "~", "`", "\\", "#", "> ", "- ", "\n", " ", "a", "1", "é"]
    + ["<users/all>", "<users/999>", "<https://e.com|label>", "<javascript:alert(1)|x>"]
)


def _discourse_problems(markdown: str) -> list[str]:
    from tests.test_formatting import discourse_markup

    return discourse_markup(markdown)


@SETTINGS
@given(st.lists(HOSTILE_CHAT_ALPHABET, max_size=40).map("".join))
def test_chat_text_never_becomes_quotes_pings_or_html_in_discourse(text: str) -> None:
    out = f.gchat_to_discourse_markdown(
        text, mention_lookup=lambda _u: None, display_name_lookup=lambda _u: "[quote] @staff <b>"
    )
    assert _discourse_problems(out) == [], (text, out)


@SETTINGS
@given(st.one_of(st.text(max_size=60), st.lists(HOSTILE_CHAT_ALPHABET, max_size=20).map("".join)))
def test_a_display_name_is_never_markup_in_discourse(name: str) -> None:
    line = f.discourse_attribution(name)
    assert "\n" not in line
    assert _discourse_problems(line) == [], (name, line)
