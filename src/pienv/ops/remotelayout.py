"""How a pienv remote lies in an OCI repository: no server, only tags any registry keeps.

- ``c-<id12>``: one image manifest per env commit, pushed by the engine (layers shared by
  commits are blobs stored once). Its config is the commit's image config, so the commit id
  (the image id, the config's digest) is the same on every machine that pulls it.
- ``b-<escaped name>``: one OCI image index per branch, listing the head first and then every
  commit reachable from it, each with its id and parents in annotations: a fetch learns the
  whole DAG from one small object per branch, and the registry's garbage collector keeps
  every listed manifest. The real branch name is an annotation (tags allow fewer characters
  than branch names, see registry.escape). ``t-<escaped name>``: the same for a pienv tag.
- ``p-<head12>-<escaped name>``: an append-only record per branch push (an index naming the
  pushed head and the head it replaced). Registries have no compare-and-swap on tags, so a
  push that overwrote another one's head without noticing leaves a record whose head is not
  in the branch any more: the next fetch reports it as a lost update (its commits are still
  on the remote under their ``c-`` tags). ``x-<head12>-<escaped name>`` withdraws a record
  (its push was refused before it moved the branch).

Per-branch objects: pushes of different branches never write the same tag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pienv.errors import UsageError
from pienv.model import check_ref_name, now_rfc3339, short
from pienv.registry import INDEX, MANIFESTS, escape, valid_tag

A = "dev.pienv."
_ID = re.compile(r"[0-9a-f]{64}")
_ID12 = re.compile(r"[0-9a-f]{12}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
RefKind = Literal["branch", "tag"]
PREFIX: dict[RefKind, str] = {"branch": "b-", "tag": "t-"}


@dataclass(frozen=True)
class Descriptor:
    """One commit's manifest on the remote."""

    id: str  # the commit (image) id, hex
    digest: str
    media_type: str
    size: int
    parents: tuple[str, ...] = ()


@dataclass
class RemoteRef:
    kind: RefKind
    name: str
    head: str
    commits: dict[str, Descriptor] = field(default_factory=dict)
    digest: str = ""  # of the index itself
    pushed: str = ""
    by: str = ""


def commit_tag(cid: str) -> str:
    return "c-" + short(cid)


def ref_tag(kind: RefKind, name: str) -> str:
    return PREFIX[kind] + escape(name)


def record_tag(head: str, name: str, withdrawn: bool = False) -> str:
    return ("x-" if withdrawn else "p-") + short(head) + "-" + escape(name)


def build_index(ref: RemoteRef, order: list[str], extra: dict[str, str] | None = None) -> bytes:
    """The index of ``ref``: the commits of ``order`` (head first), each with its parents."""
    manifests = []
    for cid in order:
        d = ref.commits[cid]
        manifests.append(
            {
                "mediaType": d.media_type,
                "digest": d.digest,
                "size": d.size,
                "annotations": {A + "commit": cid, A + "parents": ",".join(d.parents)},
            }
        )
    annotations = {
        A + "ref": ref.kind,
        A + "name": ref.name,
        A + "head": ref.head,
        A + "pushed": ref.pushed or now_rfc3339(),
        A + "by": ref.by,
        **(extra or {}),
    }
    body = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
    body["annotations"] = annotations
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_index(body: bytes, digest: str) -> RemoteRef | None:
    """A ref index read back; None if it is not one pienv wrote (left alone)."""
    try:
        data: Any = json.loads(body)
        notes = data.get("annotations") or {}
        kind = notes.get(A + "ref")
        if kind not in ("branch", "tag") or not notes.get(A + "head"):
            return None
        ref = RemoteRef(
            kind=kind,
            name=str(notes[A + "name"]),
            head=str(notes[A + "head"]),
            digest=digest,
            pushed=str(notes.get(A + "pushed", "")),
            by=str(notes.get(A + "by", "")),
        )
        for m in data.get("manifests") or []:
            a = m.get("annotations") or {}
            cid = str(a.get(A + "commit", ""))
            if not cid:
                continue
            parents = tuple(p for p in str(a.get(A + "parents", "")).split(",") if p)
            ref.commits[cid] = Descriptor(
                cid, str(m["digest"]), str(m["mediaType"]), int(m["size"]), parents
            )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if ref.head not in ref.commits:
        return None
    return ref


def problem(ref: RemoteRef) -> str | None:
    """Why a ref index read from a remote must not be believed; None if it may. A remote is
    not trusted: its names become local ref names (and terminal output), its ids are given
    to the engine as image references (a name there would adopt a local image), its digests
    become pull references."""
    try:
        check_ref_name(ref.name, ref.kind)
    except UsageError as exc:
        return exc.message
    if not ref.name.isprintable():
        return f"its {ref.kind} name {ref.name!r} holds a control character"
    for d in ref.commits.values():
        bad = [x for x in (d.id, *d.parents) if not _ID.fullmatch(x)]
        if bad:
            return f"it names commit {bad[0][:80]!r}, which is not an image id"
        if not _DIGEST.fullmatch(d.digest) or d.media_type not in MANIFESTS:
            return f"commit {short(d.id)} has a bad manifest {d.digest[:80]!r}"
    return None


def record_body(head: Descriptor, name: str, old: str | None, by: str, attempt: str) -> bytes:
    """A push record: an index naming the pushed head (so its commits stay alive), the head
    it replaced, and the attempt (a random id: a withdrawal names the attempt it withdraws,
    as a retry of the same head writes the same record tag again)."""
    ref = RemoteRef("branch", name, head.id, {head.id: head}, by=by)
    notes = {A + "record": "push", A + "old": old or "", A + "attempt": attempt}
    return build_index(ref, [head.id], notes)


def notes_of(body: bytes) -> dict[str, str]:
    try:
        notes = json.loads(body).get("annotations") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in notes.items()}


def parse_record(tag: str) -> tuple[str, str, bool] | None:
    """(head12, escaped name, withdrawn) of a record tag; None for other tags."""
    if not (tag.startswith("p-") or tag.startswith("x-")) or len(tag) < 16 or tag[14] != "-":
        return None
    if not _ID12.fullmatch(tag[2:14]) or not valid_tag(tag):
        return None  # not one pienv wrote (a registry's tag list is its word, not ours)
    return tag[2:14], tag[15:], tag.startswith("x-")
