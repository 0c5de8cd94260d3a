"""Name rules and the reference parser, written once.

A leaf (it imports only ``errors``) so that the client, the registry, the resolver and the server
can all check names the same way without importing each other.

Accepted reference forms (``ACCEPTED_FORMS``): ``hf-hub:OWNER/NAME[@REV]``, ``local-dir:PATH``, a
bare path to a checkpoint folder, ``timm:NAME`` and registry names. Parsing is lexical and strict:
anything else, or a bare word that is both a folder and a registry name, is an
:class:`InvalidReferenceError` that lists the accepted forms.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ..errors import HubUnavailableError, InvalidNameError, InvalidReferenceError, RegistryError

__all__ = [
    "ACCEPTED_FORMS", "NAME_PATTERN", "NAME", "REPO_ID", "Reference", "check_collection_slug", "check_name",
    "check_endpoint", "check_endpoint_parses", "check_namespace", "check_path_in_repo", "check_registry_name",
    "check_repo_id", "check_revision", "parse_reference", "MAX_REGISTRY_NAME",
]

# One name: a registry entry, a population, a timm model tag, an owner or repo name in a server route. ASCII only,
# the characters of a Hub repo name (``\w`` would let in every script's letters: a Cyrillic 'а' look-alike of 'a').
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
NAME = re.compile(NAME_PATTERN)
MAX_REGISTRY_NAME = 200  # OWNER--NAME of the longest Hub repo id (96 + 2 + 96), with room to spare
# A Hub repo id as huggingface.co accepts it: OWNER/NAME, each at most 96 characters, not ending in '-' or '.'.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"  # ASCII only, as the Hub
REPO_ID = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
_HUB = re.compile(r"(?P<repo>[^@\s]+)(?:@(?P<rev>[^@\s]+))?")  # what follows hf-hub:
_SCHEME = re.compile(r"[A-Za-z][\w+.\-]*")

ACCEPTED_FORMS = """accepted forms:
  hf-hub:OWNER/NAME[@REVISION]  a Hub model repo, optionally pinned to a branch, tag or commit sha
  local-dir:PATH                a checkpoint folder on disk
  PATH                          a checkpoint folder on disk (it must exist)
  timm:NAME                     a timm architecture with timm's pretrained weights, e.g. timm:resnet18.a1_in1k
  NAME                          a registry name (see `hubcompare registry list`)"""

Kind = Literal["hf-hub", "local-dir", "timm", "registry"]


def check_repo_id(repo_id: str) -> str:
    """``OWNER/NAME`` as the Hub accepts it, or an error saying what is wrong."""
    if not REPO_ID.fullmatch(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise InvalidReferenceError(
            f"{repo_id!r} is not a Hub repo id: use OWNER/NAME (letters, digits, '-', '_', '.'; "
            "no '--' or '..'; at most 96 characters each), e.g. alice/digits-r14-s0"
        )
    return repo_id


def check_namespace(namespace: str) -> str:
    """A user or organisation name (the OWNER of OWNER/NAME): the same rules as either half of a repo id."""
    if not isinstance(namespace, str) or not re.fullmatch(_REPO_PART, namespace) or "--" in namespace or ".." in namespace:
        raise InvalidNameError(f"namespace {namespace!r}: use letters, digits, '-', '_' and '.' (no '--' or '..', "
                               "at most 96 characters), e.g. alice")
    return namespace


def _not_ascii(text) -> str:
    """`` ('а' is U+0430 CYRILLIC SMALL LETTER A, not ASCII)`` for the first non-ASCII character of ``text``, else ''."""
    c = next((c for c in text if ord(c) > 127), None) if isinstance(text, str) else None
    return "" if c is None else f" ({c!r} is U+{ord(c):04X} {unicodedata.name(c, 'a character')}, not ASCII)"


def check_collection_slug(slug: str) -> str:
    """A collection slug, OWNER/TITLE-ID: both halves follow the repo id rules (the server makes them so). Whatever
    else a side or a server's answer calls a slug (``../api/models``, ``a/../../b``) would become another Hub path
    requested with the user's token, so it is refused before any request."""
    if not isinstance(slug, str) or not REPO_ID.fullmatch(slug) or "--" in slug or ".." in slug:
        raise InvalidNameError(f"collection slug {slug!r}{_not_ascii(slug)}: use OWNER/SLUG as `hubcompare push-population` "
                               "printed it (ASCII letters, digits, '-', '_', '.'; no '..' or '--'; at most 96 characters "
                               "each), e.g. alice/digits-zoo-0123456789abcdef01234567")
    return slug


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REF_FORBIDDEN = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|//")


def check_revision(rev: str) -> str:
    """A branch, tag or commit id as git (so the Hub) accepts it: ``git check-ref-format`` rules, 255 chars at most."""
    ok = isinstance(rev, str) and 0 < len(rev) <= 255 and not _CONTROL.search(rev) and not _REF_FORBIDDEN.search(rev)
    ok = ok and rev != "@" and not rev.startswith(("/", "-")) and not rev.endswith(("/", "."))
    if not ok or any(p.startswith(".") or p.endswith(".lock") for p in rev.split("/")):
        raise InvalidNameError(f"revision {rev!r}: use a branch, tag or commit id, e.g. main, v1.0 or a commit sha "
                               "(no spaces, control characters, '..', '~^:?*[\\', '@{', '//', and no '/' or '.' at the ends)")
    return rev


FORBIDDEN_FOLDERS = (".git", ".cache")  # the client refuses these too (huggingface_hub._commit_api)


def check_path_in_repo(path: str, folder: bool = False) -> str:
    """A file path inside a repo: relative, '/'-separated, no '.', '..' or empty parts, no backslash or control
    characters, no .git/.cache folder; 255 bytes a part and 4096 in all (what a checkout on disk can hold).
    ``folder``: a trailing '/' is allowed (``deletedFolder``)."""
    body = path[:-1] if folder and isinstance(path, str) and path.endswith("/") else path
    try:
        size = len(body.encode("utf-8")) if isinstance(body, str) else -1
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        size = -1
    parts = body.split("/") if size > 0 else []
    ok = 0 < size <= 4096 and not _CONTROL.search(body) and "\\" not in body
    if not ok or any(p in ("", ".", "..") or p in FORBIDDEN_FOLDERS or len(p.encode()) > 255 for p in parts):
        raise InvalidNameError(f"path in repo {path!r}: use a relative path like weights/model.safetensors "
                               "(no leading '/', no '.', '..' or empty parts, no backslash, control characters, "
                               ".git or .cache)")
    return body


def check_name(name: str, what: str) -> str:
    """A population (or other) name: ASCII letters, digits, '-', '_' and '.', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidReferenceError(f"{what} {name!r}{_not_ascii(name)}: use ASCII letters, digits, '-', '_' and '.'")
    return name


def check_registry_name(name: str) -> str:
    """A registry name: the characters of a Hub repo name (ASCII letters, digits, '-', '_', '.'), starting with a
    letter or digit, at most ``MAX_REGISTRY_NAME`` characters. One rule for every way a name comes in (the CLI, a
    curated file, ``POST /api/registry``, ``push``, ``registry sync``), so no look-alike of a name is ever stored."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > MAX_REGISTRY_NAME:
        raise RegistryError(f"registry name {name!r}{_not_ascii(name)}: use ASCII letters, digits, '-', '_' and '.', "
                            f"starting with a letter or digit, at most {MAX_REGISTRY_NAME} characters")
    return name


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_URL_PATH = re.compile(r"(?:/[A-Za-z0-9._~\-]+)*/?")


def _host(netloc: str) -> str:
    """The host of ``[USER@]HOST[:PORT]`` (an IPv6 literal keeps its brackets)."""
    host = netloc.rpartition("@")[2]
    return host if host.endswith("]") else host.rpartition(":")[0] if ":" in host else host


def check_endpoint(url: str, where: str = "HF_ENDPOINT") -> str:
    """A Hub address (``HF_ENDPOINT``): ``http(s)://HOST[:PORT][/PATH]``, ASCII, no user or password (the token is
    HF_TOKEN's), no query or fragment. Returns it without a trailing '/' (as huggingface_hub reads it).

    Anything else would reach the HTTP client as a URL it cannot use (a traceback from deep inside it), or send the
    token somewhere the user did not mean."""
    why = None
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        port = parts.port if parts is not None else None  # ValueError: not a number, or out of range
    except ValueError as e:
        parts, port, why = None, None, str(e)
    if parts is None:
        why = why or "not a string"
    elif _CONTROL.search(url) or re.search(r"\s", url) or _not_ascii(url):
        why = "it holds spaces, control or non-ASCII characters" + _not_ascii(url) + " (write an IDN host in its xn-- form)"
    elif parts.scheme not in ("http", "https") or not url.startswith(parts.scheme + "://"):
        why = "it does not start with http:// or https://"
    elif not _HOST.fullmatch(_host(parts.netloc)):
        why = "no host name" if not _host(parts.netloc) else f"{_host(parts.netloc)!r} is not a host name"
    elif parts.username is not None or parts.password is not None:
        why = "it holds a user or password (the token goes in HF_TOKEN, never in the address)"
    elif port == 0:
        why = "port 0"
    elif parts.query or parts.fragment or "?" in url or "#" in url:
        why = "it has a query or fragment"
    elif not _URL_PATH.fullmatch(parts.path) or any(p in (".", "..") for p in parts.path.split("/")):
        why = f"the path {parts.path!r} is not a plain path (use letters, digits and -._~ between '/', no '.' or '..' parts)"
    if why is not None:
        raise HubUnavailableError(f"{where} {url!r} is not a Hub address: {why}. Set it to http(s)://HOST[:PORT], e.g. "
                                  "https://huggingface.co or the address `hubcompare hub serve` prints (http://127.0.0.1:8080), "
                                  "before the command starts; or unset it for huggingface.co.")
    return url.rstrip("/")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``kind`` and ``target`` (repo id, path, timm name or registry name)."""

    kind: Kind
    target: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hf-hub":
            return f"hf-hub:{self.target}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "registry":
            return self.target
        return f"{self.kind}:{self.target}"

    def pinned(self, commit_sha: str | None) -> "Reference":
        """The same Hub reference pinned to ``commit_sha`` (other kinds unchanged)."""
        if self.kind != "hf-hub" or not commit_sha:
            return self
        return Reference("hf-hub", self.target, commit_sha)


def _bad(text: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"{text!r} is not a model reference: {why}.\n{ACCEPTED_FORMS}")


def parse_reference(text: str, registry_names: "set[str] | None" = None) -> Reference:
    """Parse ``text``; ``registry_names`` (when given) lets a bare word be checked for ambiguity."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "it is empty")
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("hf-hub", "local-dir", "timm"):
        if not rest:
            raise _bad(text, f"nothing follows '{scheme}:'")
        if scheme == "hf-hub":
            m = _HUB.fullmatch(rest)
            if not m:
                raise _bad(text, "use hf-hub:OWNER/NAME or hf-hub:OWNER/NAME@REVISION (one '@' at most)")
            try:
                check_repo_id(m["repo"])
                if m["rev"] is not None:
                    check_revision(m["rev"])
            except (InvalidReferenceError, InvalidNameError) as e:
                raise _bad(text, str(e)) from None
            return Reference("hf-hub", m["repo"], m["rev"])
        if scheme == "local-dir":
            return Reference("local-dir", rest)
        if not NAME.fullmatch(rest):
            raise _bad(text, "a timm name has no '/' or spaces (for a Hub repo use hf-hub:OWNER/NAME)")
        return Reference("timm", rest)
    if sep and _SCHEME.fullmatch(scheme) and len(scheme) > 1:
        raise _bad(text, f"unknown scheme '{scheme}:'")
    is_dir = Path(text).expanduser().is_dir()
    named = NAME.fullmatch(text) is not None
    if is_dir and named and registry_names is not None and text in registry_names:
        raise _bad(text, f"it is both a folder and a registry name; write local-dir:{text} or rename the entry")
    if is_dir:
        return Reference("local-dir", text)
    if named:
        return Reference("registry", text)
    hint = f" (for the Hub repo write hf-hub:{text})" if re.fullmatch(r"[^/\s]+/[^/\s]+", text) else ""
    raise _bad(text, f"no folder {text} exists and it is not a registry name{hint}")


def check_endpoint_parses(value: str | None) -> None:
    """``HF_ENDPOINT`` as huggingface_hub parses it when it is imported: a value whose port or host cannot be parsed
    (``http://127.0.0.1:99999``, ``http://[::1``) makes that import itself fail, with a ValueError from deep inside it.
    The CLI calls this before any command runs (so before anything imports huggingface_hub); every other bad value
    is refused by :func:`check_endpoint` where the Hub is first used (commands that never use it still run)."""
    if not value:
        return
    try:
        parts = urlsplit(value.rstrip("/"))
        parts.hostname, parts.port  # noqa: B018  (what huggingface_hub reads at import)
    except ValueError:
        check_endpoint(value)
