"""The documentation stays true: README.md and every docs/*.md name only `ganserve` commands and options,
settings, `make` targets, routes, links and repository paths that exist, and the README stays short.

Fast and without servers: the command line is inspected (and each command asked for `--help` through typer's
CliRunner), the routes come from the app's OpenAPI schema, the rest from the tree. Each check is a function
from a page to its problems, each "file:line: what is wrong", and `test_each_check_catches_a_wrong_line` feeds
every check a wrong line, so that none of them can pass by never looking.
"""

import functools
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
from typer.testing import CliRunner

from core.settings import Settings
from ganserve.cli import app as cli_app
from ganserve.client import API_KEY_ENV, SERVER_ENV

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OPERATIONS = ROOT / "docs" / "operations.md"
# Files a person reads that name settings too; checked for variables only.
DEPLOY_FILES = [ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "docker-compose.yml", ROOT / "docker-compose.onebox.yml"]
README_MAX_BYTES = 12 * 1024

SERVER = "http://127.0.0.1:8000"
# Served, but left out of the OpenAPI schema (Prometheus text, the web page, the schema and its viewer).
UNSCHEMED_GETS = {"/metrics", "/", "/docs", "/openapi.json"}
UNSCHEMED_PREFIX = "/static/"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
REPO_PATH_ROOTS = ("service", "core", "training", "worker", "ganserve", "benchmarks", "experiments", "tests", "docs")
SHELL_LANGUAGES = {"", "sh", "shell", "bash", "console"}
# Where a shell command's arguments end.
STOP_TOKENS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<"}

SETTINGS_FIELDS = set(Settings.model_fields)
CLIENT_VARIABLES = {API_KEY_ENV, SERVER_ENV}  # read by ganserve/client.py, not by Settings
VARIABLE = re.compile(r"\bGANSERVE_([A-Z0-9_]+)\b")


# --- reading a page -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    line: int  # 1-based, where it starts
    text: str


@dataclass(frozen=True)
class Page:
    path: Path
    text: str

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)

    def at(self, line: int, problem: str) -> str:
        return f"{self.name}:{line}: {problem}"

    @functools.cached_property
    def parts(self) -> tuple[list[Snippet], list[Snippet], list[Snippet]]:
        """(shell command lines, inline code spans, prose lines without their code spans)."""
        shell: list[Snippet] = []
        spans: list[Snippet] = []
        prose: list[Snippet] = []
        fence: str | None = None
        language = ""
        pending: Snippet | None = None  # a shell line continued with a backslash
        for number, line in enumerate(self.text.splitlines(), start=1):
            opening = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
            if fence is None and opening:
                fence, language = opening.group(1), opening.group(2).lower()
                continue
            if fence is not None:
                if line.strip().startswith(fence):
                    fence = None
                elif language in SHELL_LANGUAGES:
                    text = line if pending is None else pending.text + " " + line.strip()
                    start = number if pending is None else pending.line
                    if text.rstrip().endswith("\\"):
                        pending = Snippet(start, text.rstrip()[:-1])
                    else:
                        pending = None
                        shell.append(Snippet(start, text))
                continue
            spans += [Snippet(number, m.group(2).strip()) for m in re.finditer(r"(`+)(.+?)\1", line)]
            prose.append(Snippet(number, re.sub(r"(`+)(.+?)\1", "", line)))
        return shell, spans, prose

    @property
    def shell(self) -> list[Snippet]:
        return self.parts[0]

    @property
    def spans(self) -> list[Snippet]:
        return self.parts[1]

    @property
    def prose(self) -> list[Snippet]:
        return self.parts[2]

    @property
    def code(self) -> list[Snippet]:
        """Everything written as code: shell lines and inline spans."""
        return self.shell + self.spans

    @functools.cached_property
    def anchors(self) -> set[str]:
        """The anchors GitHub gives this page's headings."""
        anchors: set[str] = set()
        for snippet in self.prose:
            heading = re.match(r"^#{1,6}\s+(.*)$", snippet.text)
            if heading is None:
                continue
            # The code spans were taken out of `prose`: read the heading from the line itself.
            base = slug(self.text.splitlines()[snippet.line - 1].lstrip("#").strip())
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
        return anchors


def read(path: Path) -> Page:
    return Page(path, path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: formatting dropped, lower case, punctuation out, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def tokens(text: str) -> list[str]:
    """A command's words up to where it ends (a pipe, `;`, `&&`, a redirection, a comment, a closing `)`)."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote, e.g. an apostrophe in a comment
        words = text.split()
    out = []
    for word in words:
        if word in STOP_TOKENS or word.startswith("#"):
            break
        if "`" in word:  # the end of a code span inside a shell comment
            out.append(word.split("`", 1)[0])
            break
        if word.endswith(")"):  # the end of a $(…)
            out.append(word.rstrip(")"))
            break
        out.append(word)
    return [w for w in out if w]


# --- (a) ganserve commands ------------------------------------------------------------------------------------

GANSERVE_CALL = re.compile(r"(?:^|(?<=[\s(;|&=`]))(?:[\w.-]*/)*ganserve[ \t]+(?=\S)")


@functools.cache
def cli() -> Any:
    """The click command typer builds (typer carries its own copy of click: read, not type-checked)."""
    return typer.main.get_command(cli_app)


def option_names(command: Any) -> set[str]:
    return {"--help"} | {name for p in command.params for name in (*p.opts, *p.secondary_opts) if name[0] == "-"}


@functools.cache
def help_exit_code(path: tuple[str, ...]) -> int:
    return CliRunner().invoke(cli_app, [*path, "--help"]).exit_code


def ganserve_problems(page: Page) -> list[str]:
    problems = []
    for snippet in page.code:
        for match in GANSERVE_CALL.finditer(snippet.text):
            words = tokens(snippet.text[match.end() :])
            if not words:
                continue
            problem = command_problem(words)
            if problem:
                problems.append(page.at(snippet.line, f"`ganserve {' '.join(words)}`: {problem}"))
    return problems


def command_problem(words: list[str]) -> str | None:
    """What is wrong with `ganserve <words>` (None: nothing)."""
    group = cli()
    if words[0].startswith("-"):
        return None if words[0] == "--help" else f"ganserve itself has no option {words[0]}"
    verb, rest = words[0], words[1:]
    command = group.commands.get(verb)
    if command is None:
        return f"{verb!r} is not a ganserve command (there are: {', '.join(sorted(group.commands))})"
    path = [verb]
    if hasattr(command, "commands"):  # a group of subcommands (`ganserve keys`)
        if not rest or rest[0].startswith("-"):
            return None  # the group alone shows its help
        sub = command.commands.get(rest[0])
        if sub is None:
            return f"{rest[0]!r} is not a `ganserve {verb}` command (there are: {', '.join(sorted(command.commands))})"
        command, rest, path = sub, rest[1:], [verb, rest[0]]
    known = option_names(command)
    for word in rest:
        if word.startswith("-") and word != "-" and word.split("=", 1)[0] not in known:
            return f"`ganserve {' '.join(path)}` has no option {word.split('=', 1)[0]}"
    if help_exit_code(tuple(path)) != 0:
        return f"`ganserve {' '.join(path)} --help` does not exit 0"
    return None


PYTHON_MODULE_CALL = re.compile(r"(?:^|(?<=[\s(;|&`]))(?:[\w.-]*/)*python3?[ \t]+-m[ \t]+([\w.]+)")


def module_problems(page: Page) -> list[str]:
    """Every `python -m X` names a module of this repository that runs (a .py file, or a package with
    `__main__.py`)."""
    problems = []
    for snippet in page.code:
        for match in PYTHON_MODULE_CALL.finditer(snippet.text):
            base = ROOT / match.group(1).replace(".", "/")
            if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
                problems.append(page.at(snippet.line, f"`python -m {match.group(1)}`: no such runnable module here"))
    return problems


# --- (b) GANSERVE_* variables -----------------------------------------------------------------------------


def variable_problems(page: Page) -> list[str]:
    problems = []
    for number, line in enumerate(page.text.splitlines(), start=1):
        for match in VARIABLE.finditer(line):
            name = match.group(0)
            if match.group(1).lower() not in SETTINGS_FIELDS and name not in CLIENT_VARIABLES:
                problems.append(
                    page.at(number, f"{name} is neither a core.settings.Settings field nor a client variable")
                )
    return problems


# --- (c) make targets ------------------------------------------------------------------------------------

MAKE_CALL = re.compile(r"(?:^|(?<=[\s(;|&`]))make[ \t]+([A-Za-z][\w-]*)")


@functools.cache
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.MULTILINE)}


def make_problems(page: Page) -> list[str]:
    return [
        page.at(snippet.line, f"`make {match.group(1)}`: the Makefile has no target {match.group(1)!r}")
        for snippet in page.code
        for match in MAKE_CALL.finditer(snippet.text)
        if match.group(1) not in make_targets()
    ]


# --- (d) routes: curl commands and `METHOD /path` ------------------------------------------------------------


@functools.cache
def api_routes() -> frozenset[tuple[str, str]]:
    """(method, path template) of every operation in the app's OpenAPI schema."""
    from service.main import create_app

    settings = Settings(_env_file=None, checkpoint_dir=Path("/nonexistent-ganserve-docs-check"))  # type: ignore[call-arg]
    schema = create_app(settings).openapi()
    return frozenset((method.upper(), path) for path, ops in schema["paths"].items() for method in ops)


def template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


def route_problem(method: str, path: str) -> str | None:
    """What is wrong with `method path` (None: the app serves it). `path` may hold placeholders: `<id>`,
    `{job_id}`, `$JOB`."""
    path = path.split("?", 1)[0] or "/"
    if method in ("GET", "HEAD") and (path in UNSCHEMED_GETS or path.startswith(UNSCHEMED_PREFIX)):
        return None
    methods = {m for m, template in api_routes() if template_pattern(template).match(path)}
    if method in methods:
        return None
    if methods:
        return f"{path} answers {', '.join(sorted(methods))}, not {method}"
    return f"the API has no route {path}"


def curl_request(words: list[str]) -> tuple[str, str] | None:
    """(method, path) of a curl command's words (after `curl`) to the local server; None for another URL."""
    method, url = None, None
    sends_data = False
    for i, word in enumerate(words):
        if word in ("-X", "--request") and i + 1 < len(words):
            method = words[i + 1].upper()
        elif word.startswith("-X") and len(word) > 2:
            method = word[2:].upper()
        elif word in ("-d", "--data", "--data-binary", "--data-raw", "--json", "-F", "--form"):
            sends_data = True
        elif word in ("-I", "--head"):
            method = "HEAD"
        elif word.startswith(SERVER) and url is None:
            url = word
    if url is None:
        return None
    return method or ("POST" if sends_data else "GET"), urlsplit(url).path


CURL_CALL = re.compile(r"(?:^|(?<=[\s(;|&`]))curl[ \t]+")
ROUTE_SPAN = re.compile(rf"^({'|'.join(METHODS)})\s+(/\S*)")


def route_problems(page: Page) -> list[str]:
    problems = []
    for snippet in page.code:
        for match in CURL_CALL.finditer(snippet.text):
            request = curl_request(tokens(snippet.text[match.end() :]))
            if request is not None and (problem := route_problem(*request)):
                problems.append(page.at(snippet.line, f"curl {request[0]} {request[1]}: {problem}"))
    for snippet in page.spans:
        if (match := ROUTE_SPAN.match(snippet.text)) and (problem := route_problem(match.group(1), match.group(2))):
            problems.append(page.at(snippet.line, f"`{snippet.text}`: {problem}"))
    return problems


# --- (e) relative links and anchors ------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def link_problems(page: Page) -> list[str]:
    problems = []
    for snippet in page.prose:
        for match in LINK.finditer(snippet.text):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: …
                continue
            file_part, _, anchor = target.partition("#")
            if not file_part:  # this page
                if anchor not in page.anchors:
                    problems.append(page.at(snippet.line, f"link to {target}: {page.name} has no heading #{anchor}"))
                continue
            path = (page.path.parent / file_part).resolve()
            if not path.exists():
                problems.append(page.at(snippet.line, f"link to {target}: {file_part} does not exist"))
            elif anchor and path.suffix == ".md" and anchor not in read(path).anchors:
                problems.append(page.at(snippet.line, f"link to {target}: {path.name} has no heading #{anchor}"))
    return problems


# --- (f) repository paths ---------------------------------------------------------------------------------

REPO_PATH = re.compile(rf"^(?:{'|'.join(REPO_PATH_ROOTS)})/[\w./-]*(?:::\w+)?$")


def path_problems(page: Page) -> list[str]:
    spans = [snippet for snippet in page.spans if REPO_PATH.match(snippet.text)]
    return [page.at(s.line, f"`{s.text}`: {problem}") for s in spans if (problem := missing(*s.text.partition("::")))]


def missing(file_part: str, _sep: str, test: str) -> str | None:
    """What a repository path (with `::test_name`) names that is not there."""
    path = ROOT / file_part
    if not path.exists():
        return f"{file_part} does not exist"
    if test and not re.search(rf"^\s*(?:async )?def {re.escape(test)}\(", path.read_text(), re.MULTILINE):
        return f"{file_part} has no function {test}"
    return None


# --- (g) the README's size --------------------------------------------------------------------------------


def size_problems(page: Page) -> list[str]:
    size = len(page.text.encode("utf-8"))
    if page.path == README and size > README_MAX_BYTES:
        return [page.at(1, f"{size} bytes; the README holds at most {README_MAX_BYTES}: move detail into docs/")]
    return []


CHECKS: dict[str, Callable[[Page], list[str]]] = {
    "commands": ganserve_problems,
    "modules": module_problems,
    "variables": variable_problems,
    "make": make_problems,
    "routes": route_problems,
    "links": link_problems,
    "paths": path_problems,
    "size": size_problems,
}


def page_ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_the_page_is_true(path: Path, check: str):
    problems = CHECKS[check](read(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=page_ids)
def test_every_variable_a_deploy_file_names_is_a_setting(path: Path):
    problems = variable_problems(read(path))
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_page_of_docs():
    linked = {
        (README.parent / m.group(1).partition("#")[0]).resolve()
        for snippet in read(README).prose
        for m in LINK.finditer(snippet.text)
    }
    missing = [page_ids(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links no page {missing}: add each to its table of contents"


# --- the configuration table of docs/operations.md ------------------------------------------------------------

TABLE_ROW = re.compile(r"^\|\s*`GANSERVE_([A-Z0-9_]+)`\s*\|\s*([^|]*)\|", re.MULTILINE)


def table_rows() -> Iterator[tuple[str, str]]:
    for match in TABLE_ROW.finditer(OPERATIONS.read_text()):
        yield match.group(1).lower(), match.group(2)


def test_the_configuration_table_lists_every_setting_once():
    names = [name for name, _ in table_rows()]
    assert sorted(names) == sorted(SETTINGS_FIELDS), (
        f"docs/operations.md: missing {sorted(SETTINGS_FIELDS - set(names))}, "
        f"not settings {sorted(set(names) - SETTINGS_FIELDS)}, twice {sorted({n for n in names if names.count(n) > 1})}"
    )


def test_the_configuration_table_gives_each_default():
    for name, default in table_rows():
        field = Settings.model_fields[name]
        if field.default is None or name == "bundled_models_dir":
            continue  # "unset", or a path inside the installed package
        assert str(field.default).lower() in default.lower(), (
            f"docs/operations.md says GANSERVE_{name.upper()} defaults to {default.strip()!r}, "
            f"core/settings.py to {field.default!r}"
        )


# --- every check can fail ---------------------------------------------------------------------------------

WRONG_LINES = [
    ("commands", "```sh\nganserve up\n```", "'up' is not a ganserve command"),
    ("commands", "Run `.venv/bin/ganserve train job.json --publish-to var/models`.", "has no option --publish-to"),
    ("commands", "```sh\nexport K=$(ganserve keys make --name me)\n```", "'make' is not a `ganserve keys` command"),
    ("modules", "```sh\n.venv/bin/python -m training train --config job.json\n```", "`python -m training`: no such"),
    ("variables", "Set `GANSERVE_RENDER_PROCESS=false`.", "GANSERVE_RENDER_PROCESS is neither"),
    ("make", "Then `make deploy`.", "no target 'deploy'"),
    ("routes", "```sh\ncurl 'http://127.0.0.1:8000/generates?seed=1'\n```", "no route /generates"),
    ("routes", "```sh\ncurl -X PUT http://127.0.0.1:8000/train/$JOB\n```", "not PUT"),
    ("routes", "```sh\ncurl -d '{}' http://127.0.0.1:8000/healthz\n```", "not POST"),
    ("routes", "Send `DELETE /models/mnist-mlp` to remove it.", "not DELETE"),
    ("links", "See [the API](docs/apis.md).", "docs/apis.md does not exist"),
    ("links", "See [keys](docs/operations.md#no-such-heading).", "has no heading #no-such-heading"),
    ("links", "See [above](#nowhere).", "has no heading #nowhere"),
    ("paths", "The batcher is `service/serving/batcher.py`.", "does not exist"),
    ("paths", "Shown by `tests/training/test_resume.py::test_it_never_ran`.", "has no function test_it_never_ran"),
    ("size", "x" * (README_MAX_BYTES + 1), "the README holds at most"),
]


@pytest.mark.parametrize(
    ("check", "markdown", "expected"), WRONG_LINES, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(WRONG_LINES)]
)
def test_each_check_catches_a_wrong_line(check: str, markdown: str, expected: str):
    text = "# A page\n\nSome prose.\n\n" + markdown + "\n"
    problems = CHECKS[check](Page(README, text))
    assert len(problems) == 1 and expected in problems[0], problems
    line = 1 if check == "size" else 6 if markdown.startswith("```") else 5
    assert problems[0].startswith(f"README.md:{line}: "), problems  # the file and the line


def test_right_lines_pass_every_check():
    text = (
        "# A page\n\n## Keys and scopes\n\n"
        "```sh\nexport GANSERVE_API_KEY=$(ganserve keys create --name me --scopes admin)\n"
        "curl -X POST http://127.0.0.1:8000/train -H 'content-type: application/json' \\\n"
        "     -d @job.json   # make run first\n```\n\n"
        "`ganserve sample mnist-mlp --seeds 0-15 --out grid`, `GET /train/{job_id}/plots/{plot}.png`, "
        "`GET /metrics`, `make test`, `python -m benchmarks.soak`, `python -m ganserve --help`, `GANSERVE_SERVER`, "
        "`tests/test_docs.py::test_right_lines_pass_every_check`, "
        "[keys](#keys-and-scopes), [training](docs/training.md#fields).\n"
    )
    page = Page(README, text)
    assert {name: check(page) for name, check in CHECKS.items()} == {name: [] for name in CHECKS}
