"""The openapi contract checker itself: it must flag a non-conforming exchange.

(Every other Discourse emulator test runs its exchanges through the checker via the
`discourse_api` fixture; this file proves the checker is not a no-op.)
"""

from __future__ import annotations

import json

from tests.emulators.discourse_contract import KNOWN_SPEC_DEFECTS, check_exchange
from tests.fixtures_discourse import DiscourseApi


def test_conforming_exchange_has_no_problems(discourse_api: DiscourseApi) -> None:
    response = discourse_api.get("/posts.json")
    assert check_exchange(response) == []


def test_a_wrong_response_shape_is_reported(discourse_api: DiscourseApi) -> None:
    response = discourse_api.get("/posts.json")
    response._content = json.dumps({"latest_posts": 5, "extra": True}).encode()
    problems = check_exchange(response)
    assert any("latest_posts" in p for p in problems), problems
    assert any("extra" in p for p in problems), problems
    discourse_api.session.exchanges.remove(response)


def test_a_wrong_request_body_is_reported(discourse_api: DiscourseApi) -> None:
    response = discourse_api.post("/categories.json", json={"name": "Fine", "color": 12})
    assert response.status_code == 200
    problems = check_exchange(response)
    assert any("color" in p for p in problems), problems
    discourse_api.session.exchanges.remove(response)


def test_paths_outside_the_spec_are_not_checked(discourse_api: DiscourseApi) -> None:
    response = discourse_api.get("/admin/api/web_hooks.json")
    assert response.status_code == 200 and check_exchange(response) == []


def test_every_known_defect_gives_a_reason() -> None:
    assert all(len(defect.reason) > 20 for defect in KNOWN_SPEC_DEFECTS)
