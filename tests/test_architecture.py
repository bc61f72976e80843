"""The import contracts of docs/ARCHITECTURE.md, checked by parsing every import with `ast`.

Run by `make lint` (and by `make test`). import-linter would be the usual tool, but it builds its
graph from packages only and refuses a flat module as a root package ("'main' is a module, not a
package", import-linter 2.16), and the product is flat modules by design (DESIGN §2). So this
test reads the sources itself: every `import` and `from … import` anywhere in a file (inside
functions and `if TYPE_CHECKING:` blocks too, since a lazy import is still a dependency), plus
`importlib.import_module("…")` and `__import__("…")` with a literal name.

Contracts:
1. The sync modules are independent: none imports another (directions meet in the store and in
   the shared modules).
2. Only the entry points (`main.py`, `cli.py`) import a sync module: the shared modules never do.
3. The product (the top-level modules) never imports `tests` or `bench`, and never `emulators`,
   except `demo.py`, which runs both emulators, imports them only inside a function, and is
   itself imported by no product module but `main.py`, inside its `demo` command (so neither
   the service nor the other commands ever load a test fixture).
4. `emulators` never imports a product module: a fake must not lean on the code it checks.
   Below them all, the faces (`db`, both clients, `config_loader`) import no module of ours.
5. No module uses another's private members (`obj._name` on anything but self/cls, or
   `from module import _name`): what is shared is public.
6. No state key is spelled outside `db.py`: neither the old `cursor` key shapes nor a status key
   as a string (status keys are `db.StatusKey`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT = {path.stem: path for path in sorted(REPO.glob("*.py"))}
SYNC_MODULES = sorted(name for name in PRODUCT if name.startswith("sync_"))
ENTRY_POINTS = {"main", "cli", "demo"}
# Contract 2: the entry points that wire or drive the sync services (the demo runs `main.py`).
MAY_IMPORT_SYNC = {"main", "cli"}
# Contract 3's one exception, with its reason in the module docstring: the module that may import
# the emulators, and the one module that may import it (lazily).
MAY_IMPORT_EMULATORS = "demo"
IMPORTS_THE_DEMO = "main"
TEST_SIDE = ("emulators", "tests", "bench")


@dataclass(frozen=True, slots=True)
class Import:
    path: Path
    line: int
    target: str  # the top-level name imported: "sync_dm", "emulators", "requests"
    lazy: bool = False  # inside a function: run when it is called, not when the module loads

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: imports {self.target}"


def imports_of(path: Path, package: str | None = None) -> Iterator[Import]:
    """Every import in `path`, by top-level name (relative imports resolve to `package`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
        if inner is not node
    }
    for node in ast.walk(tree):
        lazy = id(node) in in_functions
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name.split(".")[0], lazy)
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                if package is not None:
                    yield Import(path, node.lineno, package, lazy)
            elif node.module is not None:
                yield Import(path, node.lineno, node.module.split(".")[0], lazy)
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(path, node.lineno, node.args[0].value.split(".")[0], lazy)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def product_imports(module: str) -> list[Import]:
    return list(imports_of(PRODUCT[module]))


def test_the_contracts_name_real_modules() -> None:
    # A renamed module must not turn a contract into one about nothing.
    assert SYNC_MODULES == ["sync_discourse_to_gchat", "sync_dm", "sync_gchat_to_discourse"]
    assert PRODUCT.keys() >= ENTRY_POINTS | MAY_IMPORT_SYNC
    assert (REPO / "emulators" / "__init__.py").is_file()


@pytest.mark.parametrize("module", SYNC_MODULES)
def test_sync_modules_are_independent(module: str) -> None:
    others = set(SYNC_MODULES) - {module}
    broken = [str(i) for i in product_imports(module) if i.target in others]
    assert not broken, (
        "a sync module imports another (put the shared part in a shared module):\n"
        + "\n".join(broken)
    )


@pytest.mark.parametrize("module", sorted(set(PRODUCT) - MAY_IMPORT_SYNC - set(SYNC_MODULES)))
def test_shared_modules_import_no_sync_module(module: str) -> None:
    broken = [str(i) for i in product_imports(module) if i.target in SYNC_MODULES]
    assert not broken, "only main.py and cli.py may import a sync module:\n" + "\n".join(broken)


@pytest.mark.parametrize("module", sorted(PRODUCT))
def test_the_product_never_imports_the_test_side(module: str) -> None:
    forbidden = set(TEST_SIDE)
    if module == MAY_IMPORT_EMULATORS:
        forbidden.discard("emulators")
    broken = [str(i) for i in product_imports(module) if i.target in forbidden]
    assert not broken, "the product imports emulators, tests or bench:\n" + "\n".join(broken)


def test_the_demo_alone_imports_the_emulators_and_only_when_it_runs() -> None:
    emulators = [i for i in product_imports(MAY_IMPORT_EMULATORS) if i.target == "emulators"]
    assert emulators, "demo.py no longer imports the emulators: drop its exception"
    eager = [str(i) for i in emulators if not i.lazy]
    assert not eager, "demo.py imports the emulators at load time:\n" + "\n".join(eager)


@pytest.mark.parametrize("module", sorted(set(PRODUCT) - {MAY_IMPORT_EMULATORS}))
def test_only_main_imports_the_demo_and_only_in_its_command(module: str) -> None:
    demo = [i for i in product_imports(module) if i.target == MAY_IMPORT_EMULATORS]
    if module == IMPORTS_THE_DEMO:
        assert demo, "main.py no longer imports demo.py: update contract 3"
        broken = [str(i) for i in demo if not i.lazy]
    else:
        broken = [str(i) for i in demo]
    assert not broken, (
        "demo.py (which may start the emulators) is imported outside main.py's demo command:\n"
        + "\n".join(broken)
    )


def test_emulators_never_import_the_product() -> None:
    broken = [
        str(i)
        for path in sorted((REPO / "emulators").rglob("*.py"))
        for i in imports_of(path, package="emulators")
        if i.target in PRODUCT
    ]
    assert not broken, "an emulator imports a product module:\n" + "\n".join(broken)


# The faces of the outside world import nothing of ours (the layer below everything).
FACES = ("db", "google_chat_client", "google_events_client", "discourse_client", "config_loader")
# The one exception: both Google faces speak Google's API conventions, so the Workspace Events /
# Pub/Sub face is built on the Chat face's plumbing (error-body parser, discovery rewrite, time
# helpers) instead of a copy of it. The Chat face itself stays free of imports of ours.
FACE_MAY_IMPORT = {"google_events_client": {"google_chat_client"}}


@pytest.mark.parametrize("module", FACES)
def test_the_faces_import_nothing_of_ours(module: str) -> None:
    ours = (set(PRODUCT) | set(TEST_SIDE)) - FACE_MAY_IMPORT.get(module, set())
    assert [str(i) for i in product_imports(module) if i.target in ours] == []


# Contract 5: a module uses other modules' objects through their public surface only.


def private_uses(path: Path) -> Iterator[str]:
    """`from x import _name` of a product module, and `<something>._name` not on self or cls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PRODUCT:
            for alias in node.names:
                if alias.name.startswith("_"):
                    yield f"{where}:{node.lineno}: imports {node.module}.{alias.name}"
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            yield f"{where}:{node.lineno}: uses {ast.unparse(node)}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("module", sorted(PRODUCT))
def test_no_module_uses_a_private_member_of_another(module: str) -> None:
    # `self._discourse._request(...)` or `from db import _ts` would tie a module to another's
    # internals; what two modules share is public (e.g. `DiscourseClient.download_upload`).
    assert list(private_uses(PRODUCT[module])) == []


# Contract 6: the state's keys are db.py's business. The key shapes the old key/value `cursor`
# table held, and the status keys (now `db.StatusKey`), are spelled nowhere else.
OLD_STATE_KEYS = (
    "gchat_cursor:",
    "gchat_active:",
    "gchat_dm_cursor:",
    "gchat_dm_active:",
    "discourse_chat_high_water:",
    "discourse_chat_reader:",
    "discourse_high_water_post_id",
    "discourse_first_high_water_post_id",
    "discourse_post_parts:",
    "discourse_post_version:",
    "discourse_topic_seen:",
)
STATE_METHODS = {"set_status", "get_status", "get_cursor", "set_cursor", "all_cursors"}


def state_key_uses(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(node.value.startswith(key) for key in OLD_STATE_KEYS):
                yield f"{where}:{node.lineno}: spells the state key {node.value!r}"
        elif isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and any(
                str(head.value).startswith(key) for key in OLD_STATE_KEYS
            ):
                yield f"{where}:{node.lineno}: builds a state key {ast.unparse(node)}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STATE_METHODS
        ):
            if node.func.attr not in ("set_status", "get_status"):
                yield f"{where}:{node.lineno}: calls the removed {node.func.attr}"
            elif node.args and isinstance(node.args[0], ast.Constant):
                yield f"{where}:{node.lineno}: names a status key as a string"


@pytest.mark.parametrize("module", sorted(set(PRODUCT) - {"db"}))
def test_no_state_key_is_built_outside_the_store(module: str) -> None:
    assert list(state_key_uses(PRODUCT[module])) == []


def test_the_member_and_state_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from db import _ts\n"
        "def f(self, client, store):\n"
        "    client._request('GET', '/x')\n"
        "    self._ok()\n"
        "    store.set_status('last_poll', '')\n"
        "    return f'discourse_post_parts:{1}'\n",
        encoding="utf-8",
    )
    assert [line.split(": ", 1)[1] for line in private_uses(sample)] == [
        "imports db._ts",
        "uses client._request",
    ]
    assert [line.split(": ", 1)[1] for line in state_key_uses(sample)] == [
        "names a status key as a string",
        "builds a state key f'discourse_post_parts:{1}'",
        "spells the state key 'discourse_post_parts:'",  # the f-string's literal head
    ]
