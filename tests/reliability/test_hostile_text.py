"""Issue 17 (Build 1 and 7), hostile text end to end: what a person writes on one side never
acts on the other with the bridge's power.

- Forum → Chat: posts, topic titles (also an edited title) and DM chat messages that smuggle
  `<users/all>`, a mention of a Chat user by id or email, or a labelled link past the converter
  (entities, nested entities, backslashes, markdown links and autolinks, code, HTML, BBCode,
  Slack-like forms…). Judged by what the Chat emulator holds: no mention annotation, no
  `<mention>` in what a reader sees, no `<users/` in `formattedText`, no disguised link to the
  attacker's host; a real @mention of a linked person still pings (the control).
- A long post whose second part begins with a forged attribution line: every part, on create
  and on edit, begins with the real author's attribution.
- Chat → forum: texts and display names with `[quote=…]`, `@group`, `@everyone`, `<script>`,
  `<img onerror>`, BBCode, `javascript:` links… Judged by the raw the Discourse emulator holds
  (its cooker is a stand-in, so the raw is parsed here as Discourse's markdown-it would):
  no HTML but comments, no BBCode tag, no `@mention`, no link to a non-web scheme.

`python main.py` runs as a subprocess against both emulators; only their state is inspected.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
import requests
from markdown_it import MarkdownIt

from tests.e2e.harness import BridgeFiles, BridgeProcess, wait_for
from tests.e2e.world import World
from tests.reliability.conftest import Figures
from tests.reliability.workload import FAST_FORUM
from tests.test_formatting import discourse_markup

pytestmark = pytest.mark.e2e

EVIL = "evil.example"
VICTIM = "users/123"  # a Chat user an attacker names by id
VICTIM_EMAIL = "victim@example.com"  # and by the email alias `users/{email}`

# --- forum → Chat corpus ------------------------------------------------------------------------

FORUM_POSTS = [
    # the forms of the issue
    "<users/all> urgent",
    "&lt;users/all&gt;",
    "&#60;users/all&#62;",
    "\\<users/all>",
    "[x](<users/all>)",
    # entities, nested and numeric, in every case
    "&amp;lt;users/all&amp;gt;",
    "&#x3C;users/all&#x3E;",
    "&#X3c;users&#x2F;all&#x3e;",
    "&lt;users&#47;all&gt;",
    "&lt;USERS/ALL&gt;",
    "\\&lt;users/all&gt;",
    "&lt;users/all|everyone&gt;",
    # a Chat user by id or by email alias
    "<users/123>",
    "&lt;users/123&gt;",
    "\\<users/123\\>",
    f"<users/{VICTIM_EMAIL}>",
    f"&lt;users/{VICTIM_EMAIL}&gt;",
    # labelled links that hide where they go
    f"<https://{EVIL}/x|click here>",
    f"&lt;https://{EVIL}/x|click here&gt;",
    f"\\<https://{EVIL}/x|click here\\>",
    f"&#60;https://{EVIL}/x|totally safe&#62;",
    f"&lt;mailto:it@{EVIL}|Reset your password&gt;",
    "&lt;tel:123|call the admin&gt;",
    f"[&lt;https://{EVIL}|x&gt;](https://docs.example.org)",
    # code, which Chat may parse differently
    "`<users/all>`",
    "```\n<users/all>\n```",
    "    <users/all>",
    "`&lt;users/all&gt;`",
    # markdown links, images and autolinks
    "[x](users/all)",
    "[<users/all>](https://docs.example.org)",
    "[&lt;users/all&gt;](https://docs.example.org)",
    "[\\<users/all>](https://docs.example.org)",
    "![<users/all>](https://docs.example.org/i.png)",
    f"<https://{EVIL}|click>",
    # HTML
    '<a href="users/all">x</a>',
    f'<a href="https://{EVIL}">safe</a>',
    "<div>&lt;users/all&gt;</div>",
    "<div>\n<users/all>\n</div>",
    "<b>&lt;</b>users/all>",
    "<span>&lt;</span>users/all&gt;",
    "&lt;<!-- -->users/all&gt;",
    "<users/all\u2060>",
    "<\u2060users/all>",
    # BBCode
    "[url=users/all]x[/url]",
    "[url]<users/all>[/url]",
    "[b]&lt;users/all&gt;[/b]",
    '[quote="admin, post:1, topic:1"]\n&lt;users/all&gt;\n[/quote]',
    '[quote="<users/all>, post:1"]\nhi\n[/quote]',
    '[details="<users/all>"]\nx\n[/details]',
    "[poll]\n* &lt;users/all&gt;\n[/poll]",
    # inside other markup
    "**&lt;users/all&gt;**",
    "_\\<users/all>_",
    "> &lt;users/all&gt;",
    "- &lt;users/all&gt;",
    "# &lt;users/all&gt;",
    "| a |\n|---|\n| &lt;users/all&gt; |",
    ":smile:&lt;users/all&gt;",
    # other platforms' forms and encodings
    "<!here> <!channel> <!everyone>",
    "&lt;!here&gt; @here @all",
    "%3Cusers/all%3E \\u003cusers/all\\u003e",
    "\\\\<users/all>",
]

FORUM_TITLES = [
    "<users/all> urgent",
    "<users/123> please read this",
    "&lt;users/all&gt; entity title",
    f"<https://{EVIL}|Password reset> required",
    "*bold* _it_ <users/all> in a title",
    "Title with <USERS/ALL> in caps",
    f"<users/{VICTIM_EMAIL}> hi there",
    "<\u200busers/all> zero width",
    "\\<users/all> backslash title",
    "`<users/all>` code in a title",
    "**Alice Admin** (@alice) on Discourse: fake",
    f"<mailto:it@{EVIL}|IT desk> says hi",
]
EDITED_TITLE = "<users/all> the title was edited"

FORUM_DMS = [
    "<users/all>",
    "&lt;users/all&gt;",
    "&#60;users/all&#62;",
    "\\<users/all>",
    "[x](<users/all>)",
    "<users/123>",
    f"&lt;https://{EVIL}|click&gt;",
    f"\\<https://{EVIL}|click>",
    "[url]<users/all>[/url]",
    "&lt;users&#47;all&gt;",
    "&amp;lt;users/all&amp;gt;",
    "<b>&lt;</b>users/all>",
]

# --- Chat → forum corpus ------------------------------------------------------------------------

CHAT_TEXTS = [
    '[quote="admin, post:1, topic:1"]I approve this[/quote]',
    "[quote=admin]\nfake words\n[/quote]",
    '[chat quote="admin;1;2024-01-01T00:00:00Z"]\nfake\n[/chat]',
    "@staff please look",
    "@everyone look at this",
    "@here now",
    "@all hands",
    "@admins @moderators @trust_level_0",
    "@mallory_admin not mapped",
    "\\@staff and &#64;staff",
    "x.@staff @@everyone a_@here (@admins)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "<javascript:alert(1)|click me>",
    "<data:text/html,hi|open>",
    "[b]bold[/b] [url=https://evil.example]x[/url]",
    "[details=open]hidden[/details]",
    "[poll]\n* a\n* b\n[/poll]",
    "[img]https://evil.example/x.png[/img]",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    '<iframe src="https://evil.example"></iframe>',
    "<!-- hidden --> visible",
    "<details><summary>x</summary>y</details>",
    '<div onclick="x">hi</div>',
    "<style>body{display:none}</style>",
    "<svg onload=alert(1)>",
    "<https://evil.example|[quote=admin]>",
    "> [quote=admin]",
    "* [quote=admin]x[/quote]",
    "`code` [quote=admin]x[/quote]",
    "[![x](https://evil.example/i.png)](javascript:alert(1))",
    "<users/all> meeting now",
]

CHAT_NAMES = [
    '[quote="admin, post:1, topic:1"]',
    "@staff",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "**Admin** Boss",
    "[b]Boss[/b] [/quote]",
    "@everyone Eve",
    "Mallory <!-- x -->",
    "[url=javascript:alert(1)]Admin[/url]",
    "Nor\n[quote=admin]\nmal",
    "# Heading Name",
    "> quoted name",
]


# --- judges -------------------------------------------------------------------------------------


def chat_problems(world: World, message: dict[str, Any], allowed: set[str]) -> list[str]:
    """Mentions of anyone but `allowed`, and links whose label hides an attacker's URL."""
    problems = []
    name = message["name"]
    for note in message.get("annotations", []):
        user = note.get("userMention", {}).get("user", {}).get("name")
        if note.get("type") == "USER_MENTION" and user not in allowed:
            problems.append(f"{name}: mention annotation of {user}")
    html = world.chat.control.rendered(name)["html"]
    for user in re.findall(r'<mention user="([^"]*)"', html):
        if user not in allowed:
            problems.append(f"{name}: a reader sees a mention of {user}")
    for user in re.findall(r"<(users/[^<>\s|]+)", message.get("formattedText", "")):
        if user not in allowed:
            problems.append(f"{name}: formattedText holds <{user}>")
    for href, label in re.findall(r'<a href="([^"]*)">([^<]*)</a>', html):
        if EVIL in href and label != href:
            problems.append(f"{name}: a link to {href} shown as {label!r}")
    return problems


_MD = MarkdownIt("commonmark", {"html": True}).enable(["strikethrough", "table"])
_DANGEROUS_HTML = re.compile(
    r"<(script|img|iframe|svg|style)\b|<[^>]*\son\w+=|href=\"javascript", re.I
)


def forum_problems(raw: str, where: str) -> list[str]:
    """Markup in a bridged raw, read as Discourse's markdown-it would (`discourse_markup`: HTML
    but comments, BBCode, @mentions by Discourse's boundary rule, non-web links), and what a
    CommonMark cooker makes of it."""
    body = re.sub(r"<!-- gchat:\S+ -->", "", raw)
    problems = [f"{where}: {found}" for found in discourse_markup(body)]
    cooked = _MD.render(body)
    for m in _DANGEROUS_HTML.finditer(cooked):
        problems.append(f"{where}: cooked HTML {cooked[m.start() : m.start() + 40]!r}")
    return problems


# --- helpers ------------------------------------------------------------------------------------


def _forum_api(username: str) -> requests.Session:
    api = requests.Session()
    api.headers.update({"Api-Key": "test-api-key", "Api-Username": username})
    return api


def _dm_channel_with(world: World, username: str) -> int | None:
    state = world.discourse.control.state()
    users = {u["id"]: u["username"] for u in state["users"]}
    for channel in state["chat_channels"]:
        members = {users.get(i) for i in channel["member_ids"]}
        if channel.get("chatable_type") == "DirectMessage" and username in members:
            return int(channel["id"])
    return None


def _bridged(world: World, space: str, prefix: str = "client-") -> list[dict[str, Any]]:
    return [
        m
        for m in world.chat_messages(space)
        if (m.get("clientAssignedMessageId") or "").startswith(prefix)
    ]


def _all_cases(kind: str, count: int, texts: list[str]) -> bool:
    """Every `case {kind}{n}` tag, n < count, is in one of `texts`."""
    found = {m for t in texts for m in re.findall(rf"case {kind}(\d+)\b", t)}
    return all(str(n) in found for n in range(count))


def _rooms(world: World, count: int, members: list[str]) -> list[tuple[str, int]]:
    rooms = []
    for n in range(count):
        space = world.add_space(f"Hostile Room {n}", members)
        rooms.append((space, world.category(f"Hostile Room {n}")))
    return rooms


def _cjk_words(count: int, seed: int) -> str:
    """`count` words of six random CJK letters (19 UTF-8 bytes with the space)."""
    rng = random.Random(seed)
    letters = [chr(0x4E00 + n) for n in range(3000)]
    return " ".join("".join(rng.choices(letters, k=6)) for _ in range(count))


def _start(files: BridgeFiles) -> BridgeProcess:
    bridge = BridgeProcess(files)
    bridge.wait_cycles(1)
    return bridge


# --- forum → Chat -------------------------------------------------------------------------------


def test_forum_text_never_pings_or_mentions_anyone_in_chat(world: World, figures: Figures) -> None:
    world.discourse.control.settings(**FAST_FORUM)
    ada, ann = world.add_people("Ada Lovelace", "Ann Lee")
    world.chat.control.create_user(name=VICTIM, displayName="Victim Numeric", email=VICTIM_EMAIL)
    rooms = _rooms(world, 4, [ada, VICTIM])
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[1]["email"], trust_level=1
    )
    dm = world.add_dm([ann])
    world.forum_user("mallory", "Mallory")
    files = world.config(
        [{"google_space_id": s, "discourse_category_id": c} for s, c in rooms]
        + [{"google_space_id": dm}]
    )
    world.hook_to(files)
    bridge = _start(files)
    try:
        # The control: Ada speaks, gets a forum account, and a forum @mention of her pings her.
        world.say(rooms[0][0], ada, "Ada says hello to the forum")
        world.say(dm, ann, "hello from Chat")
        ada_post = wait_for(
            lambda: next((p for p in world.live_posts() if "Ada says" in (p["raw"] or "")), None),
            timeout=30,
            what="Ada's post",
        )
        channel = wait_for(lambda: _dm_channel_with(world, "annl"), what="the DM channel")
        control = world.discourse.control
        dm_api = _forum_api("annl")
        topics = []
        for n, title in enumerate(FORUM_TITLES):
            category = rooms[n % len(rooms)][1]
            made = control.create_post(
                "mallory", f"case T{n} opening post", title=title, category_id=category
            )
            topics.append(made["topic_id"])
        for n, raw in enumerate(FORUM_POSTS):
            control.create_post("mallory", f"case P{n}\n\n{raw}", topic_id=topics[n % len(topics)])
            if n < len(FORUM_DMS):
                sent = dm_api.post(
                    f"{world.discourse.url}/chat/{channel}.json",
                    json={"message": f"case D{n}\n\n{FORUM_DMS[n]}"},
                )
                sent.raise_for_status()
        control.create_post(
            "mallory", f"case C0 @{ada_post['username']} is mentioned", topic_id=topics[0]
        )
        control.edit_post(topics_first_post(world, topics[1]), title=EDITED_TITLE)

        def all_arrived() -> bool:
            texts = [m["text"] for s, _c in rooms for m in _bridged(world, s, "client-dp-")]
            dms = [m["text"] for m in _bridged(world, dm)]
            return (
                _all_cases("P", len(FORUM_POSTS), texts)
                and _all_cases("T", len(FORUM_TITLES), texts)
                and _all_cases("C", 1, texts)
                and any("title was edited" in t for t in texts)
                and _all_cases("D", len(FORUM_DMS), dms)
            )

        wait_for(all_arrived, timeout=90, interval=0.5, what="every hostile forum text in Chat")
    finally:
        bridge.kill()
    problems: list[str] = []
    checked = 0
    for space in [s for s, _c in rooms] + [dm]:
        for message in _bridged(world, space):
            allowed = {ada} if "case C0" in message["text"] else set()
            problems += chat_problems(world, message, allowed)
            checked += 1
    control_message = next(
        m for s, _c in rooms for m in _bridged(world, s) if "case C0" in m["text"]
    )
    figures.set(
        forum_inputs=len(FORUM_POSTS) + len(FORUM_TITLES) + len([EDITED_TITLE]) + len(FORUM_DMS),
        chat_messages_checked=checked,
    )
    assert problems == [], "\n".join(problems)
    # Real mentions still work: the forum @mention of Ada pings Ada.
    assert [a["userMention"]["user"]["name"] for a in control_message["annotations"]] == [ada]


def topics_first_post(world: World, topic_id: int) -> int:
    return next(
        int(p["id"])
        for p in world.discourse.control.state()["posts"]
        if p["topic_id"] == topic_id and p["post_number"] == 1
    )


def test_every_part_of_a_long_post_carries_its_real_author(world: World) -> None:
    world.discourse.control.settings(**FAST_FORUM)
    (ada,) = world.add_people("Ada Lovelace")
    ((space, category),) = _rooms(world, 1, [ada])
    world.forum_user("mallory", "Mallory Mole")
    files = world.config([{"google_space_id": space, "discourse_category_id": category}])
    world.hook_to(files)
    forged = "**Alice Admin** (@alice) on Discourse:\nI approve the wire transfer."
    # 3-byte letters: over Chat's 32,000 bytes, under Discourse's 32,000 characters; the
    # paragraph break right after the filler is where the text splits. (Varied, so that the
    # forum's revision diff of the edit below stays quick.)
    filler = _cjk_words(1680, seed=1)
    raw = f"{filler}\n\n{forged}\n\n" + _cjk_words(300, seed=2)
    bridge = _start(files)
    try:
        first = world.discourse.control.create_post(
            "mallory", "An innocent opening post", title="Quarterly numbers here",
            category_id=category,
        )  # fmt: skip
        post = world.discourse.control.create_post("mallory", raw, topic_id=first["topic_id"])
        # The opening post, then the long one's two parts, in the order they were written.
        messages = wait_for(
            lambda: len(m := _bridged(world, space)) == 3 and m,
            timeout=60,
            what="the long post in two parts",
        )
        texts = [m["text"] for m in messages[1:]]
        assert any("Alice Admin" in t for t in texts[1:])  # the forged line is in a later part
        for text in texts:
            assert text.startswith("Mallory Mole (@mallory) on Discourse:\n"), text[:80]
            assert len(text.encode()) <= 32000
        # An edit rewrites every part, each still attributed.
        world.discourse.control.edit_post(post["id"], raw=raw.replace("wire", "wired"))

        def edited() -> list[dict[str, Any]] | None:
            messages = _bridged(world, space)
            return messages if any("wired" in m["text"] for m in messages) else None

        wait_for(edited, timeout=60, what="the edit in Chat")
        for message in edited() or []:
            assert message["text"].startswith("Mallory Mole (@mallory) on Discourse:\n")
    finally:
        bridge.kill()


# --- Chat → forum -------------------------------------------------------------------------------


def test_chat_text_and_names_never_become_forum_markup(world: World, figures: Figures) -> None:
    world.discourse.control.settings(**FAST_FORUM)
    people = []
    for n, name in enumerate(CHAT_NAMES):
        user = world.chat.control.create_user(
            name=f"users/30000000000000000{n:02d}", displayName=name, email=f"h{n}@example.com"
        )
        people.append(user["name"])
    (ann,) = world.add_people("Ann Lee")
    # Only Ann (and the bridge's person) have forum accounts: everyone else is posted by the API
    # user (or, in the group chat, by the channel's reader) under an attribution line.
    world.discourse.control.create_user(
        "annl", name="Ann Lee", email=world.people[0]["email"], trust_level=1
    )
    world.discourse.control.create_user(
        "bridgebot", name="Bridge Bot", email="bridge@example.com", trust_level=1
    )
    rooms = _rooms(world, 2, [*people, ann])
    group = world.add_dm([ann, people[0], people[2]], "GROUP_CHAT")
    files = world.config(
        [{"google_space_id": s, "discourse_category_id": c} for s, c in rooms]
        + [{"google_space_id": group}],
        extra_sync={"create_users": False},
    )
    openings = [world.say(s, ann, f"Opening of room {n}") for n, (s, _c) in enumerate(rooms)]
    expected = 2
    for n, text in enumerate(CHAT_TEXTS):
        room = n % len(rooms)
        speaker = people[n % len(people)]
        world.say(
            rooms[room][0], speaker, f"case X{n}\n{text}", thread=openings[room]["thread"]["name"]
        )
        expected += 1
    for n, speaker in enumerate(people):
        room = n % len(rooms)
        world.say(
            rooms[room][0], speaker, f"case N{n} says hi", thread=openings[room]["thread"]["name"]
        )
        expected += 1
    world.say(group, ann, "group opening")
    group_texts = CHAT_TEXTS[:6]
    for n, text in enumerate(group_texts):
        world.say(group, people[0] if n % 2 else people[2], f"case G{n}\n{text}")
    bridge = BridgeProcess(files)
    try:
        wait_for(
            lambda: (
                len([p for p in world.live_posts() if p["username"] == "system"]) >= expected - 2
            ),
            timeout=60,
            interval=0.5,
            what=f"{expected} posts",
        )
        channel = wait_for(lambda: _dm_channel_with(world, "annl"), what="the group channel")
        wait_for(
            lambda: len(world.channel_messages(channel)) >= 1 + len(group_texts),
            timeout=60,
            interval=0.5,
            what="the group chat's messages",
        )
    finally:
        bridge.kill()
    problems: list[str] = []
    posts = [p for p in world.live_posts() if p["username"] in ("system", "annl")]
    for post in posts:
        problems += forum_problems(post["raw"] or "", f"post {post['id']}")
    for message in world.channel_messages(channel):
        problems += forum_problems(message["message"], f"chat message {message['id']}")
    raws = [p["raw"] or "" for p in posts]
    arrived = _all_cases("X", len(CHAT_TEXTS), raws) and _all_cases("N", len(CHAT_NAMES), raws)
    figures.set(chat_inputs=len(CHAT_TEXTS) + len(CHAT_NAMES), forum_items_checked=len(posts))
    assert problems == [], "\n".join(problems)
    assert arrived
