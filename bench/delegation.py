"""Token requests of real authorship (issue 16): per-user tokens are refreshed only when expired.

A burst of forum posts by Workspace users of the delegated domain goes through the bridge into
Chat, written as their authors. The Chat emulator counts its `/token` calls by grant type; the
JWT-bearer ones are the per-user tokens. Run twice: with Google's access-token lifetime (one
hour: one token per author, however many posts), and with a lifetime of 240 s, of which 15 s
are usable (google-auth renews 225 s before expiry), shorter than the run: each author's token
is renewed about once per 15 s, never per post.

`python -m bench.delegation [--scale F]` prints one JSON object as its last line.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bench.common import BRIDGE_USER, Bench, elapsed, emit, parse_args, scaled, with_bench
from cli import CHAT_SCOPES
from tests.e2e.harness import BridgeProcess, register_bridge_account, wait_for

DOMAIN = "example.com"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth treats a token as expired this long before its expiry (its REFRESH_THRESHOLD,
# 3 min 45 s), so a lifetime must exceed it for a token to be reused at all.
REFRESH_THRESHOLD_SECONDS = 225
SCOPES = [
    "https://www.googleapis.com/auth/chat.messages",
    "https://www.googleapis.com/auth/chat.memberships.readonly",
]


def run(bench: Bench, *, posts: int, authors: int, spaces: int, lifetime: float) -> dict[str, Any]:
    bench.unlimited()
    bench.chat.control.configure(access_token_lifetime=lifetime)
    people = []
    for i in range(authors):
        user = f"users/4{i:020d}"
        email = f"author.{i}@{DOMAIN}"
        bench.chat.control.create_user(name=user, displayName=f"Author {i}", email=email)
        bench.discourse.control.create_user(
            f"author{i}", name=f"Author {i}", email=email, trust_level=2
        )
        people.append(user)
    bench.people.extend(people)
    mappings = []
    categories = []
    for n in range(spaces):
        space = bench.add_space(f"Space {n}")
        category = bench.category(f"Space {n}")
        categories.append(category)
        mappings.append({"google_space_id": space, "discourse_category_id": category})
    directory = bench.directory / "bridge"
    directory.mkdir(parents=True, exist_ok=True)
    register_bridge_account(
        bench.chat.control,
        BRIDGE_USER,
        bench.chat.url,
        directory / "token.json",
        scopes=list(CHAT_SCOPES),
    )
    bench.chat.control.write_service_account_file(
        directory / "service-account.json", domains=[DOMAIN], delegated_scopes=SCOPES
    )
    files = bench.config(
        mappings,
        poll_interval_seconds=5,
        extra_google={
            "delegation": {
                "service_account_file": str(directory / "service-account.json"),
                "domains": [DOMAIN],
            }
        },
    )
    bench.hook_to(files.webhook_url)
    bridge = BridgeProcess(files)
    try:
        wait_for(bridge.ready, timeout=60, what="bridge ready")
        bench.clear_logs()
        started = time.monotonic()
        topics = []
        for n, category in enumerate(categories):
            created = bench.discourse.control.create_post(
                f"author{n % authors}",
                f"topic {n} opens with enough words",
                title=f"Bench topic number {n}",
                category_id=category,
            )
            topics.append(int(created.get("topic_id") or created["post"]["topic_id"]))
        for i in range(posts - len(topics)):
            bench.discourse.control.create_post(
                f"author{i % authors}", f"reply {i} in the burst", topic_id=topics[i % len(topics)]
            )

        def written() -> int:
            state = bench.chat.control.state()["messages"]
            return sum(
                1
                for space in bench.spaces
                for m in state.get(space, [])
                if m.get("sender", {}).get("name") in people and not m.get("deleteTime")
            )

        wait_for(lambda: written() >= posts, timeout=600, interval=0.5, what=f"{posts} posts")
        seconds = elapsed(started)
        grants = bench.chat.control.requests().get("token_grants", {})
    finally:
        bridge.terminate()
    jwt = int(grants.get(JWT_GRANT, 0))
    return {
        "posts": posts,
        "authors": authors,
        "spaces": spaces,
        "access_token_lifetime_seconds": lifetime,
        "run_seconds": seconds,
        "token_requests": jwt,
        "token_requests_per_1000_posts": round(jwt * 1000 / posts, 1),
        # Refreshed only when expired: at most one per author per (usable) lifetime started in
        # the run, the usable part ending google-auth's threshold before the expiry.
        "bound_if_only_when_expired": authors
        * math.ceil(seconds / (lifetime - REFRESH_THRESHOLD_SECONDS) + 1),
        "operator_refreshes": int(grants.get("refresh_token", 0)),
        "messages_by_authors": written_count(bench, people),
    }


def written_count(bench: Bench, people: list[str]) -> int:
    state = bench.chat.control.state()["messages"]
    return sum(
        1
        for space in bench.spaces
        for m in state.get(space, [])
        if m.get("sender", {}).get("name") in people and not m.get("deleteTime")
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    posts = scaled(1000, args.scale, minimum=20)
    authors = 10
    spaces = 20
    long_lived = with_bench(
        lambda bench: run(bench, posts=posts, authors=authors, spaces=spaces, lifetime=3600)
    )
    short_lived = with_bench(
        lambda bench: run(bench, posts=posts, authors=authors, spaces=spaces, lifetime=240)
    )
    emit(
        {
            "benchmark": "delegation",
            "scale": args.scale,
            "method": (
                "forum posts by Workspace users of the delegated domain, through signed "
                "webhooks, written in Chat as their authors; token requests are the Chat "
                "emulator's JWT-bearer grants counted at /token"
            ),
            "runs": {"hour_tokens": long_lived, "short_tokens": short_lived},
        }
    )


if __name__ == "__main__":
    main()
