"""Frozen data of pienv: commits, their image labels, revisions and ref names.

Pure logic only (no Docker, no files), so it is unit-tested without an engine.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pienv.errors import UsageError

SCHEMA = 1
LABEL = "dev.pienv."

# What made a commit (the `kind` label): a root from a base image, a run, a flatten of a deep
# head, or `reset --system` (a fresh base keeping the agent's home).
CommitKind = Literal["root", "run", "flatten", "reset-system", "install", "prepare"]
COMMIT_KINDS: tuple[CommitKind, ...] = get_args(CommitKind)

# ``field(metadata=INTERNAL)``: a result field for the caller only, left out of its JSON.
INTERNAL = {"internal": True}


class JsonResult:
    """Base of every result a ``--json`` output prints: its JSON is its dataclass fields, named
    as docs/json.md names the keys (pipx's ``OperationData.to_dict = asdict`` model), so the
    CLI only renders. tests/test_json.py holds every output to the doc's key sets."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: to_plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]  # subclasses are dataclasses
            if not f.metadata.get("internal")
        }


def to_plain(value: Any) -> Any:
    """``value`` as JSON data: results by their ``to_json``, commits as docs/json.md's commit
    object, other dataclasses by their fields, tuples as lists."""
    if isinstance(value, Commit):
        return value.to_output()
    if isinstance(value, JsonResult):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return to_plain(asdict(value))
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


# Every commit sets *every* key below (empty string for "none"). Docker merges a parent's and
# the run container's labels into a commit, so a key left unset would inherit a stale value.
COMMIT_KEYS = (
    "schema",
    "role",
    "store",
    "parents",
    "branch",
    "message",
    "created",
    "command",
    "exit-code",
    "workspace",
    "git-head",
    "replays",  # a rebase's commit: the commit whose run it replayed
    "user",  # the run's user (uid:gid) and working directory, for a replay
    "workdir",
    "code",  # the workspace's code: a commit of HEAD + uncommitted state (gitrepo.snapshot_code)
    "changes",
    "flattened-from",
    "kind",
    "run-host",
    "run-pid",
    "run-started",
    "container",  # the run container it was made from: recovery finds an unindexed commit
    "egress",  # the hash of the egress policy the run ran under (egress.py); "": open
    "egress-audit",  # the run whose connection audit the store keeps (egress/audit/RUN.jsonl)
    "egress-slot",  # a run container's egress slot (egressnet.py); "" on every commit
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def short(commit_id: str) -> str:
    return commit_id.removeprefix("sha256:")[:12]


def full_hex(commit_id: str) -> str:
    return commit_id.removeprefix("sha256:")


@dataclass(frozen=True)
class Commit:
    """One env commit. ``id`` is the image id without ``sha256:``."""

    id: str
    parents: tuple[str, ...]
    branch: str | None  # the branch it was made on; None: a detached HEAD
    message: str
    created: str
    kind: CommitKind = "run"
    command: tuple[str, ...] = ()
    exit_code: int | None = None
    workspace: str = ""
    git_head: str = ""
    # The code recorded with the commit: a git commit holding HEAD plus what was uncommitted
    # and untracked (== git_head when the tree was clean; "" when not recorded).
    code: str = ""
    replays: str = ""  # made by `pienv rebase`: the commit whose run this one replayed
    user: str = ""  # the run's uid:gid ("": the host user's, as every run before 0.4)
    workdir: str = ""  # the run's working directory ("": /workspace)
    # Paths the commit changed; None: not counted at commit time (a run's list is read from
    # its layer on demand, see ops/history.py show).
    changes: int | None = None
    flattened_from: str = ""
    run_host: str = ""
    run_pid: int | None = None
    run_started: str = ""
    # Filled from the engine after the commit; not labels.
    size: int = 0
    layers: int = 0
    container: str = ""  # the run container it was made from (a label too, for recovery)
    egress: str = ""  # the egress policy's hash (egress.py); "": the run was open
    egress_audit: str = ""  # the run id its audit is kept under ("": none recorded)

    @property
    def short(self) -> str:
        return short(self.id)

    @classmethod
    def draft(cls, branch: str | None, message: str, kind: CommitKind, **fields: Any) -> Commit:
        """A commit not made yet: no id, created now."""
        return cls(
            id="",
            branch=branch,
            message=message,
            kind=kind,
            created=now_rfc3339(),
            parents=fields.pop("parents", ()),
            **fields,
        )

    def to_json(self) -> dict[str, Any]:
        """The commit index record (commits.jsonl); ``to_output`` is the ``--json`` form."""
        data = asdict(self)
        data["parents"] = list(self.parents)
        data["command"] = list(self.command)
        return data

    def to_output(self, refs: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
        """docs/json.md's commit object: ``short``, every field, and the refs pointing here."""
        return {"short": self.short, **self.to_json(), "refs": list(refs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        data = dict(data)
        data["parents"] = tuple(data.get("parents", ()))
        data["command"] = tuple(data.get("command", ()))
        data["branch"] = data.get("branch") or None  # index lines before 0.2 wrote ""
        known = set(cls.__dataclass_fields__)
        c = cls(**{k: v for k, v in data.items() if k in known})
        c.check_types()
        return c

    def check_types(self) -> None:
        """TypeError unless every field has its declared type (an index line written by hand
        or by another tool is skipped, not taken in to fail a later command)."""
        for name, good in _commit_checks():
            if not good(getattr(self, name)):
                raise TypeError(f"commit field {name} is of the wrong type")

    def labels(self, store_id: str) -> dict[str, str]:
        """The complete label set of this commit's image (see COMMIT_KEYS)."""
        values = {
            "schema": str(SCHEMA),
            "role": "commit",
            "store": store_id,
            "parents": ",".join(self.parents),
            "branch": self.branch or "",  # a label is a string: "" for a detached HEAD
            "message": self.message,
            "created": self.created,
            "command": json.dumps(list(self.command)) if self.command else "",
            "exit-code": "" if self.exit_code is None else str(self.exit_code),
            "workspace": self.workspace,
            "git-head": self.git_head,
            "code": self.code,
            "replays": self.replays,
            "user": self.user,
            "workdir": self.workdir,
            "changes": "" if self.changes is None else str(self.changes),
            "flattened-from": self.flattened_from,
            "kind": self.kind,
            "run-host": self.run_host,
            "run-pid": "" if self.run_pid is None else str(self.run_pid),
            "run-started": self.run_started,
            "container": self.container,
            "egress": self.egress,
            "egress-audit": self.egress_audit,
            # The run container's slot: Docker would merge it into the commit, and every
            # container of the image would then seem to be in that slot.
            "egress-slot": "",
        }
        assert set(values) == set(COMMIT_KEYS)
        return {LABEL + k: v for k, v in values.items()}

    @classmethod
    def from_labels(cls, image_id: str, labels: dict[str, str]) -> Commit:
        def get(key: str) -> str:
            return labels.get(LABEL + key, "")

        command = get("command")
        return cls(
            id=full_hex(image_id),
            parents=tuple(p for p in get("parents").split(",") if p),
            branch=get("branch") or None,
            message=get("message"),
            created=get("created"),
            kind=_commit_kind(get("kind")),
            command=tuple(json.loads(command)) if command else (),
            exit_code=int(get("exit-code")) if get("exit-code") else None,
            workspace=get("workspace"),
            git_head=get("git-head"),
            code=get("code"),
            replays=get("replays"),
            user=get("user"),
            workdir=get("workdir"),
            changes=int(get("changes")) if get("changes") else None,
            flattened_from=get("flattened-from"),
            run_host=get("run-host"),
            run_pid=int(get("run-pid")) if get("run-pid") else None,
            run_started=get("run-started"),
            container=get("container"),
            egress=get("egress"),
            egress_audit=get("egress-audit"),
        )


def _commit_kind(value: str) -> CommitKind:
    for kind in COMMIT_KINDS:
        if value == kind:
            return kind
    return "run"  # no label (or one a newer pienv wrote): an ordinary commit


@dataclass(frozen=True)
class RunInfo:
    """What a run container records about itself (its labels), for recovery."""

    store: str
    branch: str | None  # None: the run is on a detached HEAD
    parent: str
    host: str
    pid: int
    pid_start: str
    started: str
    workspace: str
    command: tuple[str, ...]
    message: str
    egress: str = ""  # the egress policy's hash; "": open
    egress_audit: str = ""  # the run's registration with the proxy (its audit's name)

    def labels(self) -> dict[str, str]:
        # Keys shared with COMMIT_KEYS on purpose: the commit overwrites every one of them.
        return {
            LABEL + "egress": self.egress,
            LABEL + "egress-audit": self.egress_audit,
            LABEL + "schema": str(SCHEMA),
            LABEL + "role": "run",
            LABEL + "store": self.store,
            LABEL + "branch": self.branch or "",
            LABEL + "parents": self.parent,
            LABEL + "run-host": self.host,
            LABEL + "run-pid": f"{self.pid}:{self.pid_start}",
            LABEL + "run-started": self.started,
            LABEL + "workspace": self.workspace,
            LABEL + "command": json.dumps(list(self.command)),
            LABEL + "message": self.message,
        }

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> RunInfo:
        def get(key: str) -> str:
            return labels.get(LABEL + key, "")

        pid, _, pid_start = get("run-pid").partition(":")
        command = get("command")
        return cls(
            store=get("store"),
            branch=get("branch") or None,
            parent=get("parents"),
            host=get("run-host"),
            pid=int(pid or 0),
            pid_start=pid_start,
            started=get("run-started"),
            workspace=get("workspace"),
            command=tuple(json.loads(command)) if command else (),
            message=get("message"),
            egress=get("egress"),
            egress_audit=get("egress-audit"),
        )


# ---------------------------------------------------------------------------------------------
# Ref names: git's check-ref-format rules, applied to one branch or tag name.

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


MAX_REF_NAME = 200


_CHECKS: list[tuple[str, Callable[[Any], bool]]] = []


def _commit_checks() -> list[tuple[str, Callable[[Any], bool]]]:
    """One type check per Commit field, from its annotation (made once)."""
    if not _CHECKS:

        def is_str(v: Any) -> bool:
            return isinstance(v, str)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def strs(v: Any) -> bool:
            return all(isinstance(x, str) for x in v)

        for f in dataclasses.fields(Commit):
            kind = str(f.type)
            base = kind.removesuffix("| None").strip()
            check = strs if kind.startswith("tuple[str") else is_int if base == "int" else is_str
            if kind.endswith("| None"):
                check = (lambda c: lambda v: v is None or c(v))(check)
            _CHECKS.append((f.name, check))
    return _CHECKS


def check_ref_name(name: str, what: str = "branch") -> str:
    """Return ``name`` if git would accept ``refs/heads/<name>``, else raise UsageError."""
    problem = None
    if not name:
        problem = "is empty"
    elif name == "HEAD" or name == "@":
        problem = "is reserved"
    elif _BAD_CHARS.search(name):
        problem = "contains a space, control character or one of ~^:?*[\\"
    elif name.startswith("-"):
        problem = "starts with '-'"
    elif ".." in name or "@{" in name:
        problem = "contains '..' or '@{'"
    elif name.endswith(".") or name.endswith("/") or name.startswith("/") or "//" in name:
        problem = "has an empty component or ends with '.' or '/'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "has a component starting with '.' or ending with '.lock'"
    elif re.fullmatch(r"[0-9a-f]{4,64}", name):
        # Would shadow commit-id prefixes in revisions.
        problem = "looks like a commit id"
    elif len(name.encode()) > MAX_REF_NAME:
        # Each name becomes a file name (locks/NAME.lock): longer ones could be created in
        # refs.json but never listed, locked or deleted.
        problem = f"is longer than {MAX_REF_NAME} bytes"
    if problem:
        raise UsageError(f"invalid {what} name {name[:60]!r}: it {problem}")
    return name


# ---------------------------------------------------------------------------------------------
# Revisions: NAME | HEAD | hex prefix | NAME@{N}, followed by ~N, ^, ^N suffixes.


@dataclass(frozen=True)
class Rev:
    base: str  # a name, "HEAD" or a hex prefix
    reflog: int | None = None  # NAME@{N}
    # Each step is ("~", n) = n-th first-parent ancestor, or ("^", n) = n-th parent.
    steps: tuple[tuple[str, int], ...] = field(default_factory=tuple)


_SUFFIX = re.compile(r"([~^])(\d*)")


def parse_rev(text: str) -> Rev:
    """Parse a revision string; raise UsageError with the offending text when malformed."""
    if not text or text.strip() != text:
        raise UsageError(f"bad revision {text!r}")
    cut = len(text)
    for i, ch in enumerate(text):
        if ch in "~^":
            cut = i
            break
    head, tail = text[:cut], text[cut:]
    reflog = None
    m = re.fullmatch(r"(.*)@\{(\d+)\}", head)
    if m:
        head, reflog = m.group(1) or "HEAD", _bounded(m.group(2), text)
    if not head or "@{" in head:
        raise UsageError(f"bad revision {text!r}")
    steps: list[tuple[str, int]] = []
    pos = 0
    while pos < len(tail):
        sm = _SUFFIX.match(tail, pos)
        if not sm:
            raise UsageError(f"bad revision {text!r}: cannot parse {tail[pos:]!r}")
        op, digits = sm.group(1), sm.group(2)
        steps.append((op, _bounded(digits, text) if digits else 1))
        pos = sm.end()
    return Rev(base=head, reflog=reflog, steps=tuple(steps))


# No history is deeper than this; a longer number (5,000 digits) passed Python's integer
# conversion limit and ended in a traceback.
MAX_REV_NUMBER = 10**9


def _bounded(digits: str, text: str) -> int:
    if len(digits) > 10 or int(digits) > MAX_REV_NUMBER:
        raise UsageError(f"bad revision {text[:40]!r}: a number larger than {MAX_REV_NUMBER}")
    return int(digits)


def is_hex_prefix(text: str) -> bool:
    return re.fullmatch(r"(sha256:)?[0-9a-f]{4,64}", text) is not None


def parse_age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' -> seconds."""
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not m:
        raise UsageError(f"bad age {text!r}: use a number and one of s, m, h, d, w (e.g. 7d)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return int(m.group(1)) * unit
