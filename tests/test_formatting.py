"""Table tests for formatting.py: documented syntax of both platforms, case by case.

Sources cited in each case id / comment:
- GCF: Google Chat "Format messages" (developers.google.com/workspace/chat/format-messages),
  syntax table: bold, italic, strikethrough, monospace, monospace block, bulleted list,
  hyperlink `<url|text>`, mention `<users/{user}>`, `<users/all>`.
- GCT: Google Chat "text messages" guide (…/chat/api/guides/message-formats/text): plain URLs are
  auto-linked; "The pipe and link text are optional, so <https://example.com/foo> and
  https://example.com/foo are equivalent".
- GCR: /work/shared/reference/google-chat-api.md (§4 text formatting and size limit; §2.3
  formattedText: block quotes, custom emoji `:name:`).
- CM: CommonMark spec 0.31 (what Discourse's markdown-it parses): sections 2.4 backslash
  escapes, 4.1 thematic breaks, 4.2 ATX headings, 4.3 setext headings, 4.4 indented code,
  4.5 fenced code, 4.6 HTML blocks, 5.1 block quotes, 5.2/5.3 lists, 6.1 code spans,
  6.2 emphasis, 6.3 links, 6.4 images, 6.5 autolinks, 6.6 raw HTML, 6.7 hard line breaks.
- GFM: strikethrough `~~x~~` and tables (extensions Discourse enables).
- DR: /work/shared/reference/discourse-api.md (§7 upload markdown `![name|WxH](upload://…)`,
  `[file|attachment](upload://…) (size)`, `/uploads/short-url/`; §3.1 title rules; §2 external_id;
  "What a bridge must get right" 2 and 12: HTML-comment markers, external_id format).
- DM: Discourse markdown features (discourse-markdown-it): mentions matcher
  `@(\\w[\\w.-]{0,58}\\w)|@(\\w)`, BBCode `[quote="user, post:N, topic:M"]`, `[details=…]`,
  `[poll]`, `:emoji:` codes with `:t2:`–`:t6:` skin tones, raw HTML `<b>`, `<br>`.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

import formatting as f
import origin
from google_chat_client import ChatMessage

WJ = f.WORD_JOINER
ZW = f.ZWSP
CHAT_TO_DISCOURSE = {"users/111": "ada", "users/222": "bob.smith"}
DISCOURSE_TO_CHAT = {v: k for k, v in CHAT_TO_DISCOURSE.items()}
NAMES = {"users/333": "Carol Jones"}
BASE = "https://forum.example.org"


def to_discourse(text: str) -> str:
    return f.gchat_to_discourse_markdown(
        text, mention_lookup=CHAT_TO_DISCOURSE.get, display_name_lookup=NAMES.get
    )


def to_chat(raw: str) -> str:
    return f.discourse_to_gchat_text(raw, base_url=BASE, mention_lookup=DISCOURSE_TO_CHAT.get)


# (id naming the documented syntax, Chat text, expected Discourse markdown)
CHAT_TO_DISCOURSE_CASES = [
    ("GCF-bold", "*hello*", "**hello**"),
    ("GCF-italic", "_hello_", "_hello_"),
    ("GCF-strike", "~hello~", "~~hello~~"),
    ("GCF-monospace", "`hello`", "`hello`"),
    ("GCF-monospace-keeps-markup", "`*not bold* <users/111>`", "`*not bold* <users/111>`"),
    ("GCF-adjacent-monospace-CM6.1", "`a``b`", "`a`<!-- -->`b`"),
    ("GCF-monospace-block", "```\nHello\nWorld\n```", "```\nHello\nWorld\n```"),
    ("GCF-monospace-block-one-line", "```Hello World```", "```\nHello World\n```"),
    ("GCF-block-is-literal", "```\n# x *y* @z\n```", "```\n# x *y* @z\n```"),
    ("GCF-block-closes-at-first-fence", "```\na ``` b\n```", "```\na \n```\n\nb\n\\`\\`\\`"),
    ("GCF-bullets-star", "* first\n* second", "- first\n- second"),
    ("GCF-bullets-hyphen", "- first\n- second", "- first\n- second"),
    ("GCF-bullets-after-text-CM5.3", "Shopping:\n* milk", "Shopping:\n- milk"),
    ("GCF-bullet-with-bold", "* *urgent* fix", "- **urgent** fix"),
    (
        "GCF-pizza-example",
        "Your pizza delivery *has arrived*!\nThank you for using _Cymbal Pizza!_",
        "Your pizza delivery **has arrived**!\nThank you for using _Cymbal Pizza!_",
    ),
    ("GCF-nested-bold-italic", "*_both_*", "**_both_**"),
    ("GCF-strike-bold", "~*x*~", "~~**x**~~"),
    (
        "GCF-hyperlink",
        "<https://example.com|Example website>",
        "[Example website](<https://example.com>)",
    ),
    ("GCT-link-no-label", "<https://example.com/foo>", "https://example.com/foo"),
    ("GCT-bare-url", "see https://example.com/foo now", "see https://example.com/foo now"),
    ("GCT-bare-url-trailing-dot", "go to https://example.com.", "go to https://example.com."),
    ("GCT-url-with-underscores-CM6.5", "https://e.com/a_b_c", "<https://e.com/a_b_c>"),
    ("GCT-link-label-escaped", "<https://e.com|[x] *y*>", "[\\[x\\] \\*y\\*](<https://e.com>)"),
    ("GCF-mention-mapped", "hi <users/111>!", "hi @ada!"),
    ("GCF-mention-mapped-dot", "<users/222> ok", "@bob.smith ok"),
    ("GCF-mention-unmapped-display", "ping <users/333>", f"ping @{WJ}Carol Jones"),
    ("GCF-mention-unmapped-unknown", "<users/999>", f"@{WJ}unknown user"),
    ("GCF-mention-all", "<users/all> meeting now", f"@{WJ}all meeting now"),
    ("DM-plain-at-name-no-ping", "@bob said hi", f"@{WJ}bob said hi"),
    ("DM-email-untouched", "mail me@example.com", "mail me@example.com"),
    ("CM4.2-leading-hash", "# not a heading", "\\# not a heading"),
    ("CM4.2-leading-hashes", "## two", "\\## two"),
    ("GCR-quote", "> quoted text", "> quoted text"),
    ("CM5.1-gt-not-quote", ">not a quote", "\\>not a quote"),
    ("CM5.3-ordered-marker", "1. not a list", "1\\. not a list"),
    ("CM5.3-ordered-paren", "2) x", "2\\) x"),
    ("CM5.2-plus-marker", "+ plus", "\\+ plus"),
    ("CM4.1-thematic-break", "---", "\\---"),
    ("CM4.3-setext", "Title\n===", "Title\n\\==="),
    ("CM4.4-indented-code", "    indented", "indented"),
    ("DM-bbcode-quote", "[quote]hi[/quote]", "\\[quote\\]hi\\[/quote\\]"),
    ("DM-bbcode-details", "[details=x]y[/details]", "\\[details=x\\]y\\[/details\\]"),
    ("CM6.6-html-tag", "<b>x</b>", "\\<b\\>x\\</b\\>"),
    ("CM6.6-html-comment", "<!-- c -->", "\\<!-- c --\\>"),
    ("CM2.5-entity", "&amp; &copy;", "\\&amp; \\&copy;"),
    ("CM6.2-literal-stars", "2 * 3 * 4", "2 \\* 3 \\* 4"),
    ("CM6.2-intraword-underscore", "snake_case_name", "snake\\_case\\_name"),
    ("CM6.2-unclosed-bold", "*not bold", "\\*not bold"),
    ("CM6.2-space-before-closer", "*not bold *", "\\*not bold \\*"),
    ("CM6.3-literal-link-syntax", "[x](y) ![i](u)", "\\[x\\](y) !\\[i\\](u)"),
    ("GFM-table-pipe", "a | b", "a \\| b"),
    ("CM2.4-backslash", "C:\\dir", "C:\\\\dir"),
    ("GFM-tilde-literal", "~ approx", "\\~ approx"),
    ("DM-emoji-kept", "party :tada:", "party :tada:"),
    ("GCR-unicode", "héllo ✓ 👍", "héllo ✓ 👍"),
    ("GCF-blank-lines", "a\n\n\n\nb", "a\n\nb"),
    ("GCF-list-then-text-CM5.2", "* a\nafter", "- a\n\nafter"),
    ("GCR-quote-then-text-CM5.1", "> q\nafter", "> q\n\nafter"),
    ("GCF-crlf", "a\r\nb", "a\nb"),
    ("GCF-empty", "", ""),
    # formattedText as Google returns it with markupSyntax=MARKUP_SYNTAX_CHAT (GCR §2.3 example).
    (
        "GCR-formattedText-mention-and-bold",
        "Hi <users/222>, see *this*",
        "Hi @bob.smith, see **this**",
    ),
    (
        "GCF-formattedText-bold-mention-labelled-link",
        "*Deploy* by <users/111>: <https://ci.example.com/run/7|run 7>",
        "**Deploy** by @ada: [run 7](<https://ci.example.com/run/7>)",
    ),
    (
        "GCF-formattedText-unmapped-mention-in-bold",
        "*ask <users/333>*",
        f"**ask @{WJ}Carol Jones**",
    ),
    (
        "GCF-formattedText-labelled-link-in-italic",
        "_read <https://e.com/doc|the doc>_",
        "_read [the doc](<https://e.com/doc>)_",
    ),
]


@pytest.mark.parametrize(
    ("chat_text", "expected"),
    [pytest.param(c, e, id=i) for i, c, e in CHAT_TO_DISCOURSE_CASES],
)
def test_chat_to_discourse(chat_text: str, expected: str) -> None:
    assert to_discourse(chat_text) == expected


# (id naming the documented syntax, Discourse raw, expected Chat text)
DISCOURSE_TO_CHAT_CASES = [
    ("CM6.2-strong-stars", "**bold**", "*bold*"),
    ("CM6.2-strong-underscores", "__bold__", "*bold*"),
    ("CM6.2-em-star", "*it*", "_it_"),
    ("CM6.2-em-underscore", "_it_", "_it_"),
    ("CM6.2-strong-em", "***both***", "_*both*_"),
    ("GFM-strike", "~~gone~~", "~gone~"),
    ("CM6.1-code-span", "`code`", "`code`"),
    ("CM6.1-code-span-backtick", "``a`b``", "`a\u02cbb`"),
    ("CM6.1-code-keeps-emoji-code", "`:smile:`", "`:smile:`"),
    ("CM4.5-fence", "```python\nprint(1)\n```", "```\nprint(1)\n```"),
    ("CM4.5-tilde-fence", "~~~\nx\n~~~", "```\nx\n```"),
    ("CM4.5-fence-with-backticks", "````\na ``` b\n````", f"```\na `{ZW}`{ZW}` b\n```"),
    ("CM4.4-indented-code", "    code", "```\ncode\n```"),
    ("CM4.2-atx-heading", "# Release notes", "*Release notes*"),
    ("CM4.2-heading-with-bold", "### Plan **now**", "*Plan now*"),
    ("CM4.3-setext-heading", "Title\n=====", "*Title*"),
    ("CM5.1-quote", "> quoted\n> more", "> quoted\n> more"),
    ("CM5.2-bullets", "- a\n- b", "- a\n- b"),
    ("CM5.2-nested", "* a\n  * b", "- a\n    - b"),
    ("CM5.2-ordered", "1. one\n2. two", "1. one\n2. two"),
    ("CM5.2-ordered-start", "3) three", "3. three"),
    ("CM4.1-hr", "a\n\n---\n\nb", "a\n\n---\n\nb"),
    ("CM6.3-link", "[docs](https://example.com/docs)", "<https://example.com/docs|docs>"),
    ("CM6.3-link-relative", "[topic](/t/slug/12)", f"<{BASE}/t/slug/12|topic>"),
    ("CM6.3-link-label-markup", "[**bold** link](https://e.com)", "<https://e.com|bold link>"),
    ("CM6.3-link-label-pipe", "[a|b](https://e.com)", "a|b (https://e.com)"),
    ("CM6.5-autolink", "<https://example.com>", "https://example.com"),
    ("CM6.5-autolink-pipe", "<https://evil|click>", "https://evil|click"),
    ("CM6.5-email-autolink", "<a@b.com>", "a@b.com"),
    ("DM-onebox-bare-url", "https://example.com/page", "https://example.com/page"),
    (
        "DR7-image-upload",
        "![cat|690x400](upload://r3AYqoSn7W3wrFc5PjFAOFCBmHs.png)",
        f"<{BASE}/uploads/short-url/r3AYqoSn7W3wrFc5PjFAOFCBmHs.png|cat>",
    ),
    (
        "DR7-video-upload",
        "![clip|video](upload://abc.mp4)",
        f"<{BASE}/uploads/short-url/abc.mp4|clip>",
    ),
    (
        "DR7-attachment",
        "[doc.pdf|attachment](upload://xyz.pdf) (12 KB)",
        f"<{BASE}/uploads/short-url/xyz.pdf|doc.pdf> (12 KB)",
    ),
    ("CM6.4-image-no-alt", "![](https://e.com/i.png)", "<https://e.com/i.png|image>"),
    (
        "CM6.4-image-relative",
        "![x](/uploads/default/original/1X/a.png)",
        f"<{BASE}/uploads/default/original/1X/a.png|x>",
    ),
    ("DM-mention-mapped", "thanks @ada!", "thanks <users/111>!"),
    ("DM-mention-dot", "@bob.smith.", "<users/222>."),
    ("DM-mention-unmapped", "@carol hi", "@carol hi"),
    ("DM-mention-in-email", "a@b.com", "a@b.com"),
    ("DM-mention-in-code", "`@ada`", "`@ada`"),
    ("DM-emoji", ":smile: :+1:", "😄 👍"),
    ("DM-emoji-skin-tone", ":wave:t4:", "👋\U0001f3fd"),
    ("DM-emoji-unknown", ":not_an_emoji:", ":not_an_emoji:"),
    (
        "DM-quote-bbcode",
        '[quote="alice, post:3, topic:7"]\nhello **you**\n[/quote]',
        "alice wrote:\n> hello *you*",
    ),
    ("DM-quote-bbcode-anonymous", "[quote]\nplain\n[/quote]", "> plain"),
    ("DM-quote-bbcode-twice", "[quote]\na\n[/quote]\n[quote]\nb\n[/quote]", "> a\n\n> b"),
    (
        "DM-quote-bbcode-in-list",
        '- item\n  [quote="bob, post:1"]\n  hi\n  [/quote]',
        "- item\n    bob wrote:\n    > hi",
    ),
    ("DM-quote-bbcode-unclosed", "[quote]\nnever closed", "[quote]\nnever closed"),
    (
        "DM-details",
        '[details="More info"]\nhidden *text*\n[/details]',
        "*▸ More info*\nhidden _text_",
    ),
    ("DM-details-one-line", "[details=Sum]body[/details]", "*▸ Sum*\nbody"),
    (
        "DM-poll",
        "[poll type=regular]\n* yes\n* no\n[/poll]",
        "*📊 Poll* (vote on Discourse)\n- yes\n- no",
    ),
    (
        "DM-bbcode-inline-styles",
        "[b]bold[/b] [i]it[/i] [s]gone[/s] [u]under[/u]",
        "*bold* _it_ ~gone~ under",
    ),
    (
        "DM-bbcode-url",
        "[url=https://e.com]site[/url] [url]https://e.org[/url]",
        "<https://e.com|site> https://e.org",
    ),
    ("DM-html-bold", "<b>bold</b> and <strong>strong</strong>", "*bold* and *strong*"),
    ("DM-html-em-del", "<em>x</em> <del>y</del>", "_x_ ~y~"),
    ("DM-html-br", "a<br>b", "a\nb"),
    ("CM4.6-html-block", "<div>block <i>x</i></div>", "block x"),
    ("DR-origin-marker-removed", "hello\n\n<!-- gchat:spaces/S/messages/M -->", "hello"),
    ("CM6.6-inline-comment", "a <!-- c --> b", "a  b"),
    ("CM2.5-entities", "&amp; &lt;x&gt; &copy;", "& <x> ©"),
    ("CM6.7-soft-break-is-line-break", "line1\nline2", "line1\nline2"),
    ("CM6.7-hard-break", "line1  \nline2", "line1\nline2"),
    ("CM4.8-paragraphs", "para1\n\n\n\npara2", "para1\n\npara2"),
    ("CM2.4-escaped-stars", "\\*not bold\\*", f"{ZW}*{ZW}not bold{ZW}*{ZW}"),
    ("CM2.4-escaped-underscores", "\\_x\\_", f"{ZW}_{ZW}x{ZW}_{ZW}"),
    ("DM-literal-chat-mention-neutralised", "<users/all>", f"<{ZW}users/all>"),
    ("DM-literal-chat-link-neutralised", "<https://e.com a>", f"<{ZW}https://e.com a>"),
    ("GFM-table", "| h1 | h2 |\n|----|----|\n| c | d |", "*h1* | *h2*\nc | d"),
    ("CM2.4-escaped-heading", "\\# not heading", "# not heading"),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [pytest.param(r, e, id=i) for i, r, e in DISCOURSE_TO_CHAT_CASES],
)
def test_discourse_to_chat(raw: str, expected: str) -> None:
    assert to_chat(raw) == expected


def test_tables_have_at_least_40_cases_each_way() -> None:
    # Issue 7 acceptance: "A table of at least 40 formatting cases in each direction".
    assert len(CHAT_TO_DISCOURSE_CASES) >= 40
    assert len(DISCOURSE_TO_CHAT_CASES) >= 40
    assert len({c[0] for c in CHAT_TO_DISCOURSE_CASES}) == len(CHAT_TO_DISCOURSE_CASES)
    assert len({c[0] for c in DISCOURSE_TO_CHAT_CASES}) == len(DISCOURSE_TO_CHAT_CASES)


def test_everyone_mention_override_for_discourse_chat() -> None:
    # Discourse chat channels do have channel-wide @all (DR §9 `allow_channel_wide_mentions`).
    out = f.gchat_to_discourse_markdown(
        "<users/all> hi", mention_lookup=lambda _u: None, everyone_mention="@all"
    )
    assert out == "@all hi"


def test_custom_emoji_table_overrides_builtin() -> None:
    out = f.discourse_to_gchat_text(
        ":smile: :parrot:", base_url=BASE, mention_lookup=lambda _u: None, emoji={"parrot": "🦜"}
    )
    assert out == "😄 🦜"


def test_mention_lookup_bad_values_are_ignored() -> None:
    # A lookup returning something that is not a Chat user name must not inject markup.
    out = f.discourse_to_gchat_text(
        "@ada hi", base_url=BASE, mention_lookup=lambda _u: "users/all>"
    )
    assert out == "@ada hi"
    out = f.gchat_to_discourse_markdown("<users/1>", mention_lookup=lambda _u: "x y")
    assert out == f"@{WJ}unknown user"


# --- whole messages: formattedText + annotations -> body, plain text -> title ------------------
# What Google returns for a message read with markupSyntax=MARKUP_SYNTAX_CHAT (GCR §2.3): `text`
# is plain (a mention as `@Name`, a link as its label, no formatting), `formattedText` has the
# markup, and USER_MENTION annotations point at the `@Name` runs of `text`.


def api_message(
    text: str, formatted: str | None, annotations: list[dict[str, Any]] | None = None
) -> ChatMessage:
    data: dict[str, Any] = {
        "name": "spaces/S/messages/M",
        "createTime": "2026-01-01T12:00:00.000000Z",
        "sender": {"name": "users/1", "type": "HUMAN"},
        "text": text,
    }
    if formatted is not None:
        data["formattedText"] = formatted
    if annotations is not None:
        data["annotations"] = annotations
    return ChatMessage.from_api(data)


def mention(user: str, start: int, length: int, display_name: str | None) -> dict[str, Any]:
    person: dict[str, Any] = {"name": user, "type": "HUMAN"}
    if display_name is not None:
        person["displayName"] = display_name
    return {
        "type": "USER_MENTION",
        "startIndex": start,
        "length": length,
        "userMention": {"user": person, "type": "MENTION"},
    }


def message_to_discourse(message: ChatMessage) -> str:
    return f.gchat_to_discourse_markdown(
        message.markup,
        mention_lookup=CHAT_TO_DISCOURSE.get,
        display_name_lookup=message.mention_display_name,
    )


# (id, text, formattedText, annotations, expected Discourse markdown, expected title)
MESSAGE_CASES = [
    (
        "GCR-mention-mapped",
        "Hi @Bob Smith, see this now",
        "Hi <users/222>, see *this* now",
        [mention("users/222", 3, 10, "Bob Smith")],
        "Hi @bob.smith, see **this** now",
        "Hi @Bob Smith, see this now",
    ),
    (
        "GCR-mention-unmapped-annotation-display-name",
        "please ping @Dee Dee",
        "please ping <users/444>",
        [mention("users/444", 12, 8, "Dee Dee")],
        f"please ping @{WJ}Dee Dee",
        "please ping @Dee Dee",
    ),
    (
        # No displayName under user auth for a user outside our spaces (GCR §6.3): the name is
        # the `@Name` run of `text`; indices in UTF-16 units (the emoji counts 2).
        "GCR-mention-unmapped-name-from-text-utf16",
        "👍 @Émile Zola is on it",
        "👍 <users/555> is on it",
        [mention("users/555", 3, 11, None)],
        f"👍 @{WJ}Émile Zola is on it",
        "👍 @Émile Zola is on it",
    ),
    (
        "GCF-mention-all-no-ping",
        "@all standup in five minutes",
        "<users/all> standup in five minutes",
        [mention("users/all", 0, 4, "all")],
        f"@{WJ}all standup in five minutes",
        "@all standup in five minutes",
    ),
    (
        "GCF-labelled-link",
        "please read the design doc today",
        "please read <https://e.com/doc|the design doc> today",
        [],
        "please read [the design doc](<https://e.com/doc>) today",
        "please read the design doc today",
    ),
    (
        "GCF-bold-italic-strike-code",
        "Deploy tonight, not now, run make",
        "*Deploy* _tonight_, ~not now~, run `make`",
        [],
        "**Deploy** _tonight_, ~~not now~~, run `make`",
        "Deploy tonight, not now, run make",
    ),
    (
        # A plain `@word` in text that is no mention must not ping anybody either.
        "DM-plain-at-word-in-formattedText",
        "ask @bob about it later",
        "ask @bob about it later",
        [],
        f"ask @{WJ}bob about it later",
        "ask @bob about it later",
    ),
    (
        # Without formattedText (older records), `text` is converted as Chat markup.
        "GCT-no-formattedText-falls-back-to-text",
        "see <users/111> about *this*",
        None,
        None,
        "see @ada about **this**",
        "see @someone about this",
    ),
]


@pytest.mark.parametrize(
    ("text", "formatted", "annotations", "expected_md", "expected_title"),
    [pytest.param(t, ft, a, md, title, id=i) for i, t, ft, a, md, title in MESSAGE_CASES],
)
def test_message_converts_formatted_text_and_titles_from_plain_text(
    text: str,
    formatted: str | None,
    annotations: list[dict[str, Any]] | None,
    expected_md: str,
    expected_title: str,
) -> None:
    message = api_message(text, formatted, annotations)
    assert message_to_discourse(message) == expected_md
    title = f.title_from_text(
        message.text, fallback=FALLBACK, display_name_lookup=message.mention_display_name
    )
    assert title == expected_title


def test_message_hash_is_stable_when_google_omits_the_display_name() -> None:
    # Edit detection hashes the rendering; the same message read once with the annotation's
    # displayName and once without (GCR §6.3) must render, and hash, the same.
    with_name = api_message(
        "ask @Dee Dee now", "ask <users/444> now", [mention("users/444", 4, 8, "Dee Dee")]
    )
    without = api_message(
        "ask @Dee Dee now", "ask <users/444> now", [mention("users/444", 4, 8, None)]
    )
    assert message_to_discourse(with_name) == message_to_discourse(without)
    assert origin.content_hash(message_to_discourse(with_name)) == origin.content_hash(
        message_to_discourse(without)
    )


# --- split_for_limit ---------------------------------------------------------------------------


def test_split_prefers_paragraphs() -> None:
    text = "a" * 10 + "\n\n" + "b" * 10 + "\n" + "c" * 5
    assert f.split_for_limit(text, 20) == ["a" * 10, "b" * 10 + "\n" + "c" * 5]


def test_split_falls_back_to_lines_then_words_then_code_points() -> None:
    assert f.split_for_limit("aaa bbb\nccc ddd", 8) == ["aaa bbb", "ccc ddd"]
    assert f.split_for_limit("aaa bbb ccc", 8) == ["aaa bbb", "ccc"]
    assert f.split_for_limit("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_split_counts_utf8_bytes_and_keeps_clusters() -> None:
    # "é" is 2 bytes; an emoji with a skin tone is one cluster of 8 bytes.
    assert f.split_for_limit("éééé", 4) == ["éé", "éé"]
    thumbs = "👍🏽"
    parts = f.split_for_limit(thumbs * 3, 10)
    assert parts == [thumbs, thumbs, thumbs]
    flags = "🇫🇷🇩🇪"
    assert f.split_for_limit(flags, 9) == ["🇫🇷", "🇩🇪"]


def test_split_short_text_is_one_part_and_limits_exist() -> None:
    assert f.split_for_limit("hello", f.CHAT_MAX_BYTES) == ["hello"]
    assert f.split_for_limit("", 10) == [""]
    assert f.CHAT_MAX_BYTES == 32000 and f.DISCOURSE_MAX_POST_CHARS == 32000
    with pytest.raises(ValueError):
        f.split_for_limit("x", 3)


# --- titles ------------------------------------------------------------------------------------

FALLBACK = "Chat thread in Team (2024-05-01)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Deploy of *v2* tonight", "Deploy of v2 tonight", id="markup-stripped"),
        pytest.param("First line here ok\nsecond line", "First line here ok", id="first-line"),
        pytest.param("hi", f"hi — {FALLBACK}", id="DR3.1-min-length-15-padded"),
        pytest.param("", FALLBACK, id="empty"),
        pytest.param("👍", FALLBACK, id="emoji-only"),
        pytest.param("SERVER IS DOWN AGAIN", "Server is down again", id="DR3.1-all-caps"),
        pytest.param(
            "read <https://example.com/a/very/long/path/that/goes/on|this doc> please now",
            "read this doc please now",
            id="link-label",
        ),
        pytest.param(
            "see https://example.com/a/very/long/path/that/goes/on please",
            "see example.com please",
            id="bare-url-shortened",
        ),
        pytest.param(
            "ask <users/333> about the build",
            "ask @Carol Jones about the build",
            id="mention-to-name",
        ),
        pytest.param(
            "a" * 40 + " is a very long word in a title",
            "a" * 29 + "… is a very long word in a title",
            id="DR3.1-title-max-word-length-30",
        ),
        pytest.param("   lots    of   space   here  ", "lots of space here", id="whitespace"),
    ],
)
def test_title_from_text(text: str, expected: str) -> None:
    assert f.title_from_text(text, fallback=FALLBACK, display_name_lookup=NAMES.get) == expected


def test_title_cut_at_word_boundary() -> None:
    text = " ".join(["word"] * 100)
    title = f.title_from_text(text, fallback=FALLBACK, max_length=50)
    assert len(title) <= 50 and title.endswith("…")
    assert title[:-1].split() == ["word"] * len(title[:-1].split())


def test_title_low_entropy_padded() -> None:
    # DR §3.1 title_min_entropy 10: "aaaaaaaaaaaaaaaa" would be "unclear".
    assert f.title_from_text("a" * 16, fallback=FALLBACK) == "a" * 16 + f" — {FALLBACK}"


# --- attribution ------------------------------------------------------------------------------


def test_attribution_line() -> None:
    assert f.attribution_line("Ada Lovelace", "ada") == "*Ada Lovelace* (@ada) on Discourse:"
    assert f.attribution_line(None, "ada") == "*ada* on Discourse:"
    assert f.attribution_line("ADA", "ada") == "*ada* on Discourse:"
    assert (
        f.attribution_line("*Evil* <users/all>", "eve") == "*Evil users/all* (@eve) on Discourse:"
    )


def test_attribution_line_follows_the_operators_template() -> None:
    template = "{name} wrote on the forum (@{username}):"
    assert (
        f.attribution_line("Ada Lovelace", "ada", template)
        == "Ada Lovelace wrote on the forum (@ada):"
    )
    # No display name: {name} falls back to the username; markup is still cleaned out.
    assert f.attribution_line(None, "a*da", template) == "ada wrote on the forum (@ada):"


# --- hostile text (issue 17): nothing the bridge did not mean becomes markup --------------------

EVIL = "https://evil.example/x"
# Every form of the table, and more; each must reach Chat without a mention or a link.
SMUGGLED_INTO_CHAT = [
    "&lt;users/all&gt;",
    "&#60;users/all&#62;",
    "\\<users/all>",
    "[x](<users/all>)",
    "[x](users/all)",
    "&#x3C;users/all&#x3E;",
    "&lt;users&#47;all&gt;",
    "&lt;USERS/ALL&gt;",
    "\\<users\\/all\\>",
    "<span>&lt;</span>users/all>",
    "<b>&lt;</b>users/all>",
    "&lt;<!-- -->users/all&gt;",
    "<\u2060users/all>",
    "[url]<users/all>[/url]",
    "[url=users/all]x[/url]",
    "[<users/all>](https://docs.example)",
    "`<users/all>`",
    "```\n<users/all>\n```",
    "&lt;users/123&gt;",
    "\\<users/123>",
    f"&lt;{EVIL}|click here&gt;",
    f"\\<{EVIL}|click here>",
    f"&#60;{EVIL}|safe&#62;",
    "&lt;mailto:it@evil.example|Reset password&gt;",
    "[x](javascript:alert(1)) [y](<users/all>)",
]


@pytest.mark.parametrize("raw", SMUGGLED_INTO_CHAT)
def test_smuggled_mentions_and_links_never_reach_chat(raw: str) -> None:
    out = to_chat(raw)
    assert "<users/" not in out.lower(), out
    assert not re.search(r"<[a-z][a-z0-9+.-]*:", out, re.IGNORECASE), out
    for block in f.parse_chat(out):
        stack = list(block.inlines) if isinstance(block, f.ChatLine) else []
        while stack:
            node = stack.pop()
            if isinstance(node, f.ChatStyle):
                stack.extend(node.children)
            assert not isinstance(node, f.ChatMention), out
            assert not (isinstance(node, f.ChatLink) and node.label), out


def test_meant_mentions_and_links_survive_the_final_pass() -> None:
    out = to_chat("@ada see [the docs](https://e.com/d) and &lt;users/all&gt; `<users/111>`")
    assert (
        out == f"<users/111> see <https://e.com/d|the docs> and <{ZW}users/all> `<{ZW}users/111>`"
    )


def test_placeholder_characters_in_a_post_cannot_forge_markup() -> None:
    # The converter's placeholders are private-use characters; a post holding them gets U+FFFD.
    out = to_chat("@ada \ue0000\ue001 \ue0001\ue001")
    assert out == "<users/111> \ufffd0\ufffd \ufffd1\ufffd"


def test_neutralise_chat_is_idempotent_and_leaves_other_angles_alone() -> None:
    text = "a <users/all> b < users/1> <x> <3 <\u00adhttps://e.com|y>"
    once = f.neutralise_chat(text)
    assert once == (f"a <{ZW}users/all> b <{ZW} users/1> <x> <3 <{ZW}\u00adhttps://e.com|y>")
    assert f.neutralise_chat(once) == once


def test_a_topic_title_is_literal_bold_text_in_chat() -> None:
    assert f.chat_title("Weekly sync") == "*Weekly sync*"
    title = f.chat_title("<users/all> *urgent* <https://evil.example|reset>\n now")
    assert "<users/" not in title and "<https:" not in title
    assert title.startswith("*") and title.endswith("*") and "\n" not in title


def test_split_under_header_puts_the_header_on_every_part() -> None:
    header = "*Mallory* (@mallory) on Discourse:"
    body = "\n\n".join(["word " * 30] * 10) + "\n\n*Alice* (@alice) on Discourse:\nforged"
    parts = f.split_under_header(header, body, 400)
    assert len(parts) > 3
    for part in parts:
        assert part.startswith(header + "\n") and len(part.encode()) <= 400
    assert " ".join(p[len(header) + 1 :] for p in parts).split() == body.split()
    assert f.split_under_header(header, "short", 400) == [header + "\nshort"]
    assert f.split_under_header(header, "", 400) == [header]
    assert f.split_under_header("", "a b", 3 + 4) == ["a b"]
    # A header too long for its share is cut, never the body's room.
    long_parts = f.split_under_header("H" * 300, "x " * 100, 400)
    assert all(len(p.encode()) <= 400 and p.startswith("H" * 50) for p in long_parts)


HOSTILE_NAMES = [
    '[quote="admin, post:1, topic:1"]',
    "@staff",
    "x.@everyone",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "**Admin**",
    "[b]Boss[/b] [/quote]",
    "[url=javascript:alert(1)]Admin[/url]",
    "Nor\n[quote=admin]\nmal",
    "&lt;b&gt; &#64;staff",
    "# Heading > quote",
    "`code` ~~gone~~ _it_",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_chat_display_name_is_never_markup_in_discourse(name: str) -> None:
    line = f.discourse_attribution(name)
    assert line.startswith("**") and line.endswith("** (Google Chat):") and "\n" not in line
    assert discourse_markup(line) == [], line
    # What a forum reader sees is the name as typed (on one line).
    shown = MarkdownIt("commonmark").render(line)
    assert html.unescape(re.sub(r"<[^>]+>", "", shown)).replace(WJ, "").strip() == (
        " ".join(name.split()) + " (Google Chat):"
    )


@pytest.mark.parametrize(
    "text",
    [
        "x.@staff",
        "@@everyone",
        "a_@here",
        "(@admins)",
        "*b*@staff",
        "<javascript:alert(1)|click>",
        "<data:text/html,x|open>",
        "<vbscript:x>",
        '[quote="admin, post:1"]x[/quote]',
        "<script>alert(1)</script> <img src=x onerror=y>",
        "&lt;script&gt; &#64;staff",
    ],
)
def test_hostile_chat_text_is_never_markup_in_discourse(text: str) -> None:
    assert discourse_markup(to_discourse(text)) == [], to_discourse(text)


def test_email_addresses_are_left_alone() -> None:
    assert to_discourse("mail me@example.com") == "mail me@example.com"


def discourse_markup(markdown: str) -> list[str]:
    """What Discourse would make of `markdown` beyond literal text: raw HTML (comments aside),
    BBCode, @mentions (its text-post-process rule), links to non-web targets."""
    found = []
    for token in _walk(_DISCOURSE_MD.parse(markdown)):
        if token.type in ("html_inline", "html_block"):
            if not re.fullmatch(r"\s*<!--.*?-->\s*", token.content, re.DOTALL):
                found.append(f"HTML {token.content!r}")
        elif token.type == "link_open":
            href = str(token.attrs.get("href", ""))
            if not re.match(r"(https?|ftp)://|mailto:|/", href):
                found.append(f"link to {href!r}")
        elif token.type == "text":
            for m in re.finditer(r"@(\w[\w.-]{0,58}\w|\w)", token.content):
                before = token.content[m.start() - 1] if m.start() else " "
                if (
                    before.isspace()
                    or unicodedata.category(before).startswith("P")
                    or (before in "$+<=>^`|~")
                ):
                    found.append(f"mention @{m.group(1)}")
    # Escaped brackets become a stand-in: a '[' left in a text token is one Discourse's BBCode
    # rules would read (code spans and blocks are tokens of their own).
    marked = re.sub(r"(?<!\\)((?:\\\\)*)\\\[", "\\1\x01", markdown)
    autolink = False
    for token in _walk(_DISCOURSE_MD.parse(marked)):
        if token.type in ("link_open", "link_close"):
            autolink = token.type == "link_open" and token.markup == "autolink"
        elif token.type == "text" and not autolink:
            for m in _BBCODE_TAG.finditer(token.content):
                found.append(f"BBCode {token.content[m.start() : m.start() + 20]!r}")
    return found


_BBCODE_TAG = re.compile(r"\[/?(quote|chat|details|poll|url|img|b|i|s|u)\b", re.IGNORECASE)


_DISCOURSE_MD = MarkdownIt("commonmark", {"html": True}).enable(["strikethrough", "table"])


def _walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)
