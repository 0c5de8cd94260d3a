"""Whether a pulled SVG is a plain picture: parsed as XML and checked against an allow-list of elements and attributes.

A result's SVG figures are served by the web service and opened in browsers, so a shared one must not run anything:
no ``<script>``, no event handler (``<svg onload=...>``), no animation that sets one (``<set attributeName=...>``), no
``javascript:`` however it is written (``javascript&#58;`` reaches the browser as ``javascript:``: the parser decodes
entities and the check sees the value the browser would), no foreign HTML, no external stylesheet or resource. What
matplotlib writes (paths, groups, clip paths, ``<use>``, embedded PNG images, metadata, a small ``<style>``) passes.
DTDs are refused before parsing (no entity expansion), as are processing instructions other than the XML declaration.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

__all__ = ["svg_problem", "ELEMENTS", "ATTRIBUTES"]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"
METADATA_NS = ("http://www.w3.org/1999/02/22-rdf-syntax-ns#", "http://creativecommons.org/ns#",
               "http://purl.org/dc/elements/1.1/")  # matplotlib's <metadata> (RDF, Creative Commons, Dublin Core)
ELEMENTS = frozenset("""svg g defs desc title metadata style path rect circle ellipse line polyline polygon text tspan
    use symbol clipPath mask pattern image linearGradient radialGradient stop marker""".split())
ATTRIBUTES = frozenset("""id class style d x y x1 y1 x2 y2 cx cy r rx ry fx fy width height viewBox transform points
    version baseProfile preserveAspectRatio fill fill-opacity fill-rule stroke stroke-width stroke-opacity stroke-linecap
    stroke-linejoin stroke-dasharray stroke-dashoffset stroke-miterlimit opacity clip-path clip-rule clipPathUnits mask
    maskUnits maskContentUnits font-family font-size font-weight font-style font-stretch font-variant letter-spacing
    word-spacing text-anchor dominant-baseline alignment-baseline baseline-shift text-decoration dx dy rotate textLength
    lengthAdjust offset stop-color stop-opacity gradientUnits gradientTransform spreadMethod patternUnits
    patternContentUnits patternTransform marker-start marker-mid marker-end markerWidth markerHeight markerUnits refX refY
    orient color display visibility overflow shape-rendering image-rendering color-interpolation-filters type media
    href space lang""".split())  # href: xlink:href or href; space, lang: xml:space, xml:lang
_METADATA_ATTRIBUTES = frozenset({"about", "resource"})
_LOCAL_REF = re.compile(r"#[A-Za-z_][A-Za-z0-9_.:-]*")
_IMAGE_DATA = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=\s]*")
_URL = re.compile(r"url\s*\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
_DANGER = ("javascript:", "vbscript:", "data:", "expression(", "@import", "-moz-binding", "behavior:", "<", "\\")
_DOCTYPE = re.compile(rb'\s*<!DOCTYPE\s+svg(\s+PUBLIC\s+"[^"<>\[\]]*"\s+"[^"<>\[\]]*")?\s*>')
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")


def _split(tag: str) -> tuple[str, str]:
    return (tag[1:].split("}", 1)[0], tag.split("}", 1)[1]) if tag.startswith("{") else ("", tag)


def _value_problem(value: str, where: str) -> str | None:
    """A style or attribute value (entity-decoded by the parser) that could load or run something."""
    squeezed = _CONTROL.sub("", value).lower()  # "java\tscript:" and "java script:" are javascript: to a browser
    for word in _DANGER:
        if word in squeezed:
            return f"{where} holds {word!r}"
    for _, target in _URL.findall(value):
        if not _LOCAL_REF.fullmatch(target.strip()):
            return f"{where} refers to {target.strip()[:60]!r} (only url(#id) of the figure itself)"
    if "url(" in squeezed and not _URL.search(value):
        return f"{where} has a url( it cannot read"
    return None


def _attribute_problem(tag: str, name: str, value: str) -> str | None:
    ns, local = _split(name)
    where = f"<{tag} {local}>"
    if local.lower().startswith("on"):
        return f"{where} is an event handler"
    allowed = {XLINK_NS: local == "href", XML_NS: local in ("space", "lang"), "": local in ATTRIBUTES}.get(ns, False)
    if not allowed:
        return f"attribute {local!r} ({ns or 'no namespace'}) of <{tag}> is not one a plain figure uses"
    if local == "href":
        if _LOCAL_REF.fullmatch(value.strip()) or (tag == "image" and _IMAGE_DATA.fullmatch(value.strip())):
            return None
        return f"{where} points at {value.strip()[:60]!r} (only #id in the figure, or an embedded PNG/JPEG image)"
    return _value_problem(value, where)


def svg_problem(data: bytes) -> str | None:
    """Why ``data`` is not a plain SVG picture, or None when it is one."""
    head = data.lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if head.startswith(b"<?xml"):
        end = head.find(b"?>")
        head = head[end + 2:] if end > 0 else head
    if b"<?" in head:
        return "it has an XML processing instruction (an external stylesheet, say)"
    upper = head.upper()
    doctype = _DOCTYPE.match(head)
    if b"<!ENTITY" in upper or upper.count(b"<!DOCTYPE") > (1 if doctype else 0):
        return "it has a DTD of its own (entities are refused; only the standard SVG doctype line is accepted)"
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        return f"it is not well-formed XML ({e})"
    ns, local = _split(root.tag)
    if (ns, local) != (SVG_NS, "svg"):
        return f"its root element is {root.tag!r}, not an SVG <svg>"
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        ns, local = _split(el.tag)
        if ns in METADATA_NS:
            bad = [a for a in el.attrib if _split(a)[1] not in _METADATA_ATTRIBUTES]
            problem = (f"metadata element {local!r} has attribute {_split(bad[0])[1]!r}" if bad else
                       next((p for a, v in el.attrib.items() if (p := _value_problem(v, f"<{local} {_split(a)[1]}>"))), None))
            if problem:
                return problem
            continue
        if ns != SVG_NS or local not in ELEMENTS:
            return f"element <{local}> ({ns or 'no namespace'}) is not one a plain figure uses"
        for name, value in el.attrib.items():
            problem = _attribute_problem(local, name, value)
            if problem:
                return problem
        if local == "style" and el.text:
            problem = _value_problem(el.text, "<style>")
            if problem:
                return problem
    return None
