"""Bad input, generated here, sent over HTTP to a real stack (PostgreSQL, Redis, S3, two worker
processes). Each bad file travels with a good sibling (the astronaut) in the same request.

Every kind must end in either an HTTP 4xx with a clear message, or an item marked failed with a
readable reason (or succeed, for odd but valid images); the siblings succeed; no worker dies.
The test prints a table kind -> outcome.
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Callable

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

import face2paint.models.image_io  # noqa: F401 - registers the HEIF opener, for making and checking HEIC
from face2paint.cli.stack import ProcessStack
from tests.helpers import astronaut_path
from tests.service_stack import fresh_database, redis_db

pytestmark = pytest.mark.integration

MAX_UPLOAD_BYTES = 3_000_000  # the astronaut PNG is 0.8 MB; the oversized file is 3.5 MB
CARTOON = {"style": "classical-cartoon"}
TERMINAL = {"succeeded", "failed", "partially_succeeded", "canceled"}
SAFE_KEY = re.compile(
    r"^jobs/[0-9a-f]{32}/items/[0-9a-f]{32}/"
    r"(input\.(jpg|png|webp|gif|bmp|tiff|heic|avif|pnm|bin)|result\.(png|jpg|webp)|(detect|parse|stylize|finalize)/[A-Za-z0-9_.-]+)$"
)


# --- generated inputs -----------------------------------------------------------------------


def _astronaut(size: tuple[int, int] | None = None) -> Image.Image:
    im = Image.open(astronaut_path()).convert("RGB")
    return im.resize(size, Image.LANCZOS) if size else im


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _asymmetric() -> Image.Image:
    """120x80, landscape, with a mark in one corner, so any rotation or flip shows."""
    im = _astronaut((120, 80))
    im.paste((255, 0, 0), (0, 0, 20, 10))
    return im


def _with_orientation(n: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = n
    return _save(_asymmetric(), "JPEG", quality=90, exif=exif)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height 8-bit RGB pixels (a decompression bomb's
    header: decoding it would need width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A valid small JPEG with its SOF0 size rewritten to width x height."""
    data = bytearray(_save(_astronaut((16, 16)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [_astronaut((96, 96)).rotate(a).convert("P") for a in (0, 10, 20)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_with_transparency() -> bytes:
    im = _astronaut((96, 96)).convert("P", palette=Image.ADAPTIVE, colors=64)
    return _save(im, "PNG", transparency=0)


def _png16() -> bytes:
    gray = _astronaut((96, 96)).convert("L")
    im = Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (0, v)))  # little-endian v*256
    return _save(im, "PNG")


def _broken_exif_jpeg() -> bytes:
    data = _save(_astronaut((96, 64)), "JPEG")
    # An APP1 Exif segment whose IFD offset points far outside the segment.
    app1 = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 0x7FFFFFF0) + b"\0" * 16
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _pdf() -> bytes:
    return _save(_astronaut((64, 64)), "PDF")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')
HTML = b"<!doctype html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>"


# --- cases ----------------------------------------------------------------------------------


@dataclass
class Part:
    name: str | None
    data: bytes
    ctype: str | None = "application/octet-stream"
    raw_name: bytes | None = None  # sent byte for byte in the multipart header


@dataclass
class Case:
    kind: str
    parts: list[Part]
    options: str | None = json.dumps(CARTOON)
    expect_http: int | None = None  # a request-level rejection with this status
    message: str = ""  # a fragment the HTTP detail or the item error must contain
    expect_item: str | None = None  # "failed" or "succeeded" for the first (odd) part
    check: Callable[[dict, "Outcome"], None] | None = None
    extra_form: dict = field(default_factory=dict)
    sibling: bool = True


@dataclass
class Outcome:
    http: int
    detail: str = ""
    job: dict | None = None
    items: list[dict] = field(default_factory=list)
    results: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> output size
    images: dict[int, Image.Image] = field(default_factory=dict)  # index -> output image
    raw: dict[int, bytes] = field(default_factory=dict)  # index -> the result file
    headers: dict[int, httpx.Headers] = field(default_factory=dict)  # index -> its download's headers


def _good() -> Part:
    return Part("astronaut.png", astronaut_path().read_bytes(), "image/png")


def _oriented_size(n: int) -> tuple[int, int]:
    return (80, 120) if n in (5, 6, 7, 8) else (120, 80)


def _cases() -> list[Case]:
    png = lambda im: _save(im, "PNG")  # noqa: E731
    small = _astronaut((96, 96))
    cases = [
        Case("empty file", [Part("empty.jpg", b"", "image/jpeg")], expect_item="failed", message="empty"),
        Case("empty file alone", [Part("empty.jpg", b"", "image/jpeg")], sibling=False,
             expect_http=400, message="empty"),
        Case("text named .jpg", [Part("notes.jpg", b"just some notes, not a photo\n" * 20, "image/jpeg")],
             expect_item="failed", message="not an image"),
        Case("text named .jpg alone", [Part("notes.jpg", b"just some notes\n" * 20, "image/jpeg")],
             sibling=False, expect_http=415, message="not an image"),
        Case("HTML named .jpg", [Part("page.jpg", HTML, "image/jpeg")], expect_item="failed", message="not an image"),
        Case("truncated JPEG", [Part("cut.jpg", _save(_astronaut(), "JPEG")[:6000], "image/jpeg")],
             expect_item="failed", message="truncated"),
        Case("truncated PNG", [Part("cut.png", astronaut_path().read_bytes()[:200_000], "image/png")],
             expect_item="failed", message="truncated"),
        Case("PNG header only (no IDAT)", [Part("header.png", _png_declaring(64, 64)[:33], "image/png")],
             expect_item="failed", message=""),
        Case("bomb PNG 100000x100000", [Part("bomb.png", _png_declaring(100_000, 100_000), "image/png")],
             expect_item="failed", message="decompression bomb"),
        Case("bomb PNG 100000x100000 alone", [Part("bomb.png", _png_declaring(100_000, 100_000), "image/png")],
             sibling=False, expect_http=413, message="decompression bomb"),
        Case("bomb PNG 9000x9000 (81 MP)", [Part("bomb81.png", _png_declaring(9000, 9000), "image/png")],
             expect_item="failed", message="above the limit"),
        Case("bomb JPEG 65000x65000", [Part("bomb.jpg", _jpeg_declaring(65000, 65000), "image/jpeg")],
             expect_item="failed", message="decompression bomb"),
        Case("1x1 image", [Part("dot.png", png(Image.new("RGB", (1, 1), (200, 30, 30))), "image/png")],
             expect_item="any", check=lambda c, o: _check_size(o, 0, (1, 1))),
        Case("100000x10 image", [Part("strip.png", png(Image.new("RGB", (100_000, 10), (10, 120, 200))), "image/png")],
             expect_item="any", check=lambda c, o: _check_size(o, 0, (100_000, 10))),
        Case("10x100000 image", [Part("pole.png", png(Image.new("RGB", (10, 100_000), (10, 120, 200))), "image/png")],
             expect_item="any", check=lambda c, o: _check_size(o, 0, (10, 100_000))),
        Case("16-bit PNG", [Part("deep.png", _png16(), "image/png")], expect_item="succeeded",
             check=lambda c, o: _check_size(o, 0, (96, 96))),
        Case("palette PNG", [Part("pal.png", png(small.convert("P", palette=Image.ADAPTIVE)), "image/png")],
             expect_item="succeeded"),
        Case("palette PNG with transparency", [Part("paltrns.png", _palette_with_transparency(), "image/png")],
             expect_item="succeeded"),
        Case("RGBA PNG", [Part("alpha.png", png(small.convert("RGBA")), "image/png")], expect_item="succeeded"),
        Case("LA PNG", [Part("la.png", png(small.convert("LA")), "image/png")], expect_item="succeeded"),
        Case("CMYK JPEG", [Part("cmyk.jpg", _save(small.convert("CMYK"), "JPEG"), "image/jpeg")],
             expect_item="succeeded"),
        Case("grayscale JPEG", [Part("gray.jpg", _save(small.convert("L"), "JPEG"), "image/jpeg")],
             expect_item="succeeded"),
        Case("animated GIF", [Part("anim.gif", _animated_gif(), "image/gif")], expect_item="succeeded"),
        Case("WebP", [Part("img.webp", _save(small, "WEBP"), "image/webp")], expect_item="succeeded"),
        Case("BMP", [Part("img.bmp", _save(small, "BMP"), "image/bmp")], expect_item="succeeded"),
        Case("TIFF", [Part("img.tiff", _save(small, "TIFF"), "image/tiff")], expect_item="succeeded"),
        Case("JPEG with broken EXIF", [Part("badexif.jpg", _broken_exif_jpeg(), "image/jpeg")],
             expect_item="succeeded"),
        Case("ICO (unsupported)", [Part("icon.ico", _save(small, "ICO"), "image/x-icon")],
             expect_item="failed", message="unsupported image format ICO"),
        Case("ICO alone", [Part("icon.ico", _save(small, "ICO"), "image/x-icon")], sibling=False,
             expect_http=415, message="unsupported image format ICO"),
        Case("PDF", [Part("doc.pdf", _pdf(), "application/pdf")], expect_item="failed", message="not an image"),
        Case("PDF alone", [Part("doc.pdf", _pdf(), "application/pdf")], sibling=False, expect_http=415,
             message="not an image"),
        Case("SVG alone", [Part("vector.svg", SVG, "image/svg+xml")], sibling=False, expect_http=415,
             message="not an image"),
        Case("PNG sent as text/plain", [Part("plain.png", png(small), "text/plain")], expect_item="succeeded"),
        Case("JPEG named .png", [Part("liar.png", _save(small, "JPEG"), "image/png")], expect_item="succeeded"),
        Case("no content type", [Part("untyped.png", png(small), None)], expect_item="succeeded"),
        Case("no filename", [Part(None, png(small), "image/png", raw_name=b"")], expect_item="succeeded",
             check=lambda c, o: _check_name(o, 0, lambda n: n == "image-1")),
        Case("over the size limit", [Part("big.bmp", _save(_astronaut((1100, 1100)), "BMP"), "image/bmp")],
             expect_http=413, message=f"limit of {MAX_UPLOAD_BYTES} bytes"),
        Case("too many files (101)", [Part(f"p{i}.png", png(Image.new("RGB", (2, 2))), "image/png") for i in range(101)],
             sibling=False, expect_http=413, message="the limit is 100"),
        Case("empty job (options only)", [], sibling=False, expect_http=400, message="no files"),
        Case("empty job (no body)", [], sibling=False, options=None, expect_http=400, message="no files"),
        Case("path traversal ../../etc/passwd.jpg", [Part("../../etc/passwd.jpg", _save(small, "JPEG"), "image/jpeg")],
             expect_item="succeeded", check=lambda c, o: _check_name(o, 0, lambda n: n == "passwd.jpg")),
        Case("absolute path /etc/shadow.png", [Part("/etc/shadow.png", png(small), "image/png")],
             expect_item="succeeded", check=lambda c, o: _check_name(o, 0, lambda n: n == "shadow.png")),
        Case("backslash path ..\\..\\win.ini.png", [Part("..\\..\\windows\\win.ini.png", png(small), "image/png")],
             expect_item="succeeded", check=lambda c, o: _check_name(o, 0, lambda n: n == "win.ini.png")),
        Case("name '..'", [Part("..", png(small), "image/png")], expect_item="succeeded",
             check=lambda c, o: _check_name(o, 0, lambda n: n == "image-1")),
        Case("control characters in name", [Part(None, png(small), "image/png",
                                                 raw_name=b"ev\x01il\x1b[31m\x7fname\t.png")],
             expect_item="succeeded",
             check=lambda c, o: _check_name(o, 0, lambda n: not re.search(r"[\x00-\x1f\x7f]", n) and "name" in n)),
        Case("long name (2000 chars)", [Part("a" * 2000 + ".png", png(small), "image/png")],
             expect_item="succeeded", check=lambda c, o: _check_name(o, 0, lambda n: 0 < len(n) <= 255)),
        # Above python-multipart's 4 KiB limit on one part header line: the whole request is
        # refused before any part is stored.
        Case("name over 4 KiB (5000 chars)", [Part("a" * 5000 + ".png", png(small), "image/png")],
             expect_http=400, message="multipart"),
        Case("unicode / RTL-override name", [Part("photo\u202egnp.exe\u00e9\u6f22.png", png(small), "image/png")],
             expect_item="succeeded", check=lambda c, o: _check_name(o, 0, lambda n: n.endswith(".png"))),
        Case("duplicate files in one job", [_good()], expect_item="succeeded", check=_check_duplicates),
        Case("options: bad JSON", [_good()], sibling=False, options="{style: cartoon", expect_http=422,
             message="not valid JSON"),
        Case("options: JSON array", [_good()], sibling=False, options="[1, 2]", expect_http=422,
             message="JSON object"),
        Case("options: deeply nested", [_good()], sibling=False, options="[" * 100_000, expect_http=422,
             message="nested"),
        Case("options: unknown key", [_good()], sibling=False, options=json.dumps({"colour": "blue"}),
             expect_http=422, message="unknown option"),
        Case("options: unknown style", [_good()], sibling=False, options=json.dumps({"style": "vaporwave"}),
             expect_http=422, message="unknown style"),
        Case("options: style of wrong type", [_good()], sibling=False, options=json.dumps({"style": 7}),
             expect_http=422, message="unknown style"),
        Case("options: face2paint not a bool", [_good()], sibling=False,
             options=json.dumps({"style": "classical-cartoon", "face2paint": "yes"}), expect_http=422,
             message="true or false"),
        Case("options: unknown param", [_good()], sibling=False,
             options=json.dumps({"style": "classical-cartoon", "params": {"evil": 1}}), expect_http=422,
             message="params must be"),
        Case("options: param of wrong type", [_good()], sibling=False,
             options=json.dumps({"style": "classical-cartoon", "params": {"eye_enhance_ratio": "big"}}),
             expect_http=422, message="params.eye_enhance_ratio"),
        Case("options: param out of range (NaN)", [_good()], sibling=False,
             options='{"style": "classical-cartoon", "params": {"eye_enhance_ratio": NaN}}', expect_http=422,
             message="out of range"),
        Case("form field face2paint=maybe", [_good()], sibling=False, options=None,
             extra_form={"face2paint": "maybe"}, expect_http=422, message="face2paint"),
        Case("form field style unknown", [_good()], sibling=False, options=None,
             extra_form={"style": "../../etc"}, expect_http=422, message="unknown style"),
    ]
    for n in range(1, 9):
        cases.append(Case(
            f"EXIF orientation {n}", [Part(f"orient{n}.jpg", _with_orientation(n), "image/jpeg")],
            expect_item="succeeded", check=lambda c, o, n=n: _check_orientation(c, o, n),
        ))
    return cases + _format_cases()


# --- formats: iPhone HEIC, AVIF, Netpbm; result formats without the input's metadata ---------

GPS_IFD = 0x8825


def _metadata_exif(orientation: int) -> Image.Exif:
    """EXIF with an orientation and a GPS position (the Eiffel tower), as a phone writes it."""
    from PIL.ExifTags import GPS

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    exif[GPS_IFD] = {GPS.GPSLatitudeRef: "N", GPS.GPSLatitude: (48.0, 51.0, 29.0),
                     GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: (2.0, 17.0, 40.0)}
    return exif


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.48N"/>'
       b"</rdf:RDF></x:xmpmeta>")


def _icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _with_metadata(fmt: str, orientation: int = 6, **kw) -> bytes:
    """The asymmetric astronaut with GPS EXIF, an ICC profile and XMP, in `fmt`."""
    return _save(_asymmetric(), fmt, exif=_metadata_exif(orientation), icc_profile=_icc(), xmp=XMP, **kw)


def _grace_hopper_pgm() -> bytes:
    """A grey face photo as the AT&T/ORL face set has them: 92x112 binary PGM (P5)."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return _save(ImageOps.fit(im.convert("L"), (92, 112)), "PPM")


def _check_clean(case: Case, o: Outcome, fmt: str) -> None:
    """The result is in `fmt`, carries none of the input's metadata, and is oriented as Pillow
    shows the input (a HEIF's own rotation box wins over its EXIF tag, which pillow-heif resets)."""
    with Image.open(io.BytesIO(case.parts[0].data)) as src:
        shown = ImageOps.exif_transpose(src).convert("RGB")
    _check_size(o, 0, shown.size)
    assert _reddest_corner(o.images[0]) == _reddest_corner(shown)
    with Image.open(io.BytesIO(o.raw[0])) as im:
        assert im.format == fmt, im.format
        assert not im.getexif(), dict(im.getexif())
        for k in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp"):
            assert k not in im.info, (k, im.info.keys())
    for needle in (b"Exif", b"PhoneMaker", b"xmpmeta", b"GPS", b"acsp"):  # acsp: any ICC profile
        assert needle not in o.raw[0], needle


def _check_download_name(o: Outcome, index: int, name: str) -> None:
    cd = o.headers[index].get("content-disposition", "")
    assert cd.startswith("attachment;") and f'filename="{name}"' in cd, cd


def _format_cases() -> list[Case]:
    small = _astronaut((96, 96))
    lossy = lambda fmt, q=None: json.dumps({**CARTOON, "output_format": fmt,  # noqa: E731
                                            **({"output_quality": q} if q else {})})
    return [
        Case("HEIC (iPhone) with GPS, ICC, XMP", [Part("IMG_0001.HEIC", _with_metadata("HEIF"), "image/heic")],
             expect_item="succeeded",
             check=lambda c, o: (_check_clean(c, o, "PNG"), _check_download_name(o, 0, "IMG_0001.png"))),
        Case("AVIF", [Part("photo.avif", _save(small, "AVIF", quality=80), "image/avif")],
             expect_item="succeeded", check=lambda c, o: _check_size(o, 0, (96, 96))),
        Case("PGM face photo (AT&T/ORL-like)", [Part("s1_1.pgm", _grace_hopper_pgm(), "image/x-portable-graymap")],
             expect_item="succeeded", check=lambda c, o: _check_size(o, 0, (92, 112))),
        Case("PPM", [Part("img.ppm", _save(small, "PPM"), "image/x-portable-pixmap")], expect_item="succeeded"),
        Case("PBM (1 bit)", [Part("img.pbm", _save(small.convert("1"), "PPM"), "image/x-portable-bitmap")],
             expect_item="succeeded", check=lambda c, o: _check_size(o, 0, (96, 96))),
        Case("JPEG with GPS, ICC, XMP -> JPEG result", [Part("trip.jpg", _with_metadata("JPEG", quality=90), "image/jpeg")],
             options=lossy("jpeg", 80), expect_item="succeeded",
             check=lambda c, o: (_check_clean(c, o, "JPEG"), _check_download_name(o, 0, "trip.jpg"))),
        Case("PNG with GPS, ICC, XMP -> WebP result", [Part("trip.png", _with_metadata("PNG"), "image/png")],
             options=lossy("webp"), expect_item="succeeded",
             check=lambda c, o: (_check_clean(c, o, "WEBP"), _check_download_name(o, 0, "trip.webp"))),
        Case("WebP with GPS -> result named after the upload, non-ASCII",
             [Part("été à Paris.webp", _with_metadata("WEBP"), "image/webp")], expect_item="succeeded",
             check=lambda c, o: (_check_clean(c, o, "PNG"), _check_non_ascii_name(o))),
    ]


def _check_non_ascii_name(o: Outcome) -> None:
    cd = o.headers[0].get("content-disposition", "")
    assert "filename*=UTF-8''%C3%A9t%C3%A9%20%C3%A0%20Paris.png" in cd, cd
    assert 'filename="_t_ _ Paris.png"' in cd, cd


def _reddest_corner(im: Image.Image) -> str:
    w, h = im.size
    cw, ch = max(1, w // 6), max(1, h // 6)
    boxes = {"top-left": (0, 0, cw, ch), "top-right": (w - cw, 0, w, ch),
             "bottom-left": (0, h - ch, cw, h), "bottom-right": (w - cw, h - ch, w, h)}

    def redness(box):
        r, g, b = np.asarray(im.crop(box), dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return r - (g + b) / 2

    return max(boxes, key=lambda k: redness(boxes[k]))


def _check_orientation(case: Case, o: Outcome, n: int) -> None:
    """The output has the oriented size, and the red mark sits where EXIF orientation puts it."""
    _check_size(o, 0, _oriented_size(n))
    with Image.open(io.BytesIO(case.parts[0].data)) as src:
        expected = _reddest_corner(ImageOps.exif_transpose(src).convert("RGB"))
    assert _reddest_corner(o.images[0]) == expected, (n, _reddest_corner(o.images[0]), expected)


def _check_size(o: Outcome, index: int, size: tuple[int, int]) -> None:
    item = o.items[index]
    if item["status"] == "succeeded":
        assert o.results[index] == size, (item["filename"], o.results[index], size)


def _check_name(o: Outcome, index: int, ok: Callable[[str], bool]) -> None:
    name = o.items[index]["filename"]
    assert ok(name), repr(name)
    assert "/" not in name and "\\" not in name and ".." != name


def _check_duplicates(case: Case, o: Outcome) -> None:
    # The case sends the astronaut, then the sibling astronaut: two identical files.
    assert len(o.items) == 2 and len({i["id"] for i in o.items}) == 2
    assert all(i["status"] == "succeeded" for i in o.items)
    assert o.results[0] == o.results[1] == (512, 512)


# --- HTTP -----------------------------------------------------------------------------------


def _multipart(parts: list[Part], form: dict[str, str]) -> tuple[bytes, str]:
    """A multipart body built by hand, so odd file names and missing types go out as given."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in form.items():
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n".encode())
        out.write(v.encode() + b"\r\n")
    for p in parts:
        if p.raw_name is not None:
            fname = p.raw_name
        else:
            fname = p.name.replace("\\", "\\\\").replace('"', '\\"').encode()
        out.write(f"--{boundary}\r\n".encode())
        out.write(b'Content-Disposition: form-data; name="files"; filename="' + fname + b'"\r\n')
        if p.ctype is not None:
            out.write(f"Content-Type: {p.ctype}\r\n".encode())
        out.write(b"\r\n" + p.data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _submit(http: httpx.Client, case: Case) -> Outcome:
    parts = list(case.parts) + ([_good()] if case.sibling else [])
    form = dict(case.extra_form)
    if case.options is not None:
        form["options"] = case.options
    if not parts and not form:
        r = http.post("/v1/jobs")
    else:
        body, ctype = _multipart(parts, form)
        r = http.post("/v1/jobs", content=body, headers={"Content-Type": ctype})
    try:
        detail = r.json().get("detail", "")
    except ValueError:
        detail = r.text
    out = Outcome(r.status_code, detail if isinstance(detail, str) else json.dumps(detail))
    if r.status_code == 202:
        out.job = r.json()
    return out


def _build_stack(pg_url, redis_url, s3, home, **extra) -> ProcessStack:
    env = {
        "FACE2PAINT_DATABASE_URL": fresh_database(pg_url),
        "FACE2PAINT_BROKER_URL": redis_db(redis_url),
        **s3.env(prefix=f"t-{uuid.uuid4().hex[:8]}"),
        **{k: str(v) for k, v in extra.items()},
    }
    return ProcessStack(env, home, workers=2)


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3, tmp_path_factory):
    st = _build_stack(pg_url, redis_url, s3, tmp_path_factory.mktemp("badinput"),
                      FACE2PAINT_MAX_UPLOAD_BYTES=MAX_UPLOAD_BYTES)
    try:
        st.start()
        yield st
    finally:
        st.stop()


def _fmt_outcome(case: Case, o: Outcome) -> str:
    if o.http != 202:
        return f"HTTP {o.http}: {o.detail[:110]}"
    first = o.items[0] if o.items else {}
    text = f"HTTP 202, item {first.get('status')}"
    if first.get("error"):
        text += f": {first['error'][:100]}"
    elif first.get("status") == "succeeded" and 0 in o.results:
        text += f" ({o.results[0][0]}x{o.results[0][1]})"
    if case.sibling and len(o.items) > 1:
        text += f"; sibling {o.items[-1]['status']}"
    return text


def test_bad_input_table(stack, s3):
    cases = _cases()
    assert len(cases) >= 30
    http = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"},
                        timeout=120)
    t0 = time.monotonic()
    outcomes = {c.kind: _submit(http, c) for c in cases}
    pending = {o.job["id"] for o in outcomes.values() if o.job}
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        time.sleep(1.0)
        for j in http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]:
            if j["status"] in TERMINAL:
                pending.discard(j["id"])
    assert not pending, f"jobs still running after 10 minutes: {pending}"
    elapsed = time.monotonic() - t0

    for case in cases:
        o = outcomes[case.kind]
        if o.job:
            o.job = http.get(f"/v1/jobs/{o.job['id']}").json()
            o.items = sorted(http.get(f"/v1/jobs/{o.job['id']}/items").json(), key=lambda i: i["index"])
            for item in o.items:
                if item["status"] == "succeeded":
                    r = http.get(item["result_url"], follow_redirects=False)
                    assert r.status_code == 307
                    download = httpx.get(r.headers["location"], timeout=60)
                    o.headers[item["index"]] = download.headers
                    if len(download.content) < 2_000_000:
                        o.raw[item["index"]] = download.content
                    im = Image.open(io.BytesIO(download.content))
                    o.results[item["index"]] = im.size
                    if im.width * im.height <= 1_000_000:
                        o.images[item["index"]] = im.convert("RGB")

    rows = [(c.kind, _fmt_outcome(c, outcomes[c.kind])) for c in cases]
    width = max(len(k) for k, _ in rows)
    print(f"\n{len(cases)} kinds of bad input, {sum(1 for o in outcomes.values() if o.job)} jobs, "
          f"{elapsed:.0f} s until every job was terminal")
    print(f"{'kind'.ljust(width)} | outcome\n{'-' * width}-+-{'-' * 60}")
    for kind, text in rows:
        print(f"{kind.ljust(width)} | {text}")

    problems = []
    for case in cases:
        o = outcomes[case.kind]
        try:
            _check_case(case, o)
        except AssertionError as e:
            problems.append(f"{case.kind}: {e or 'assertion failed'} ({_fmt_outcome(case, o)})")
    assert not problems, "\n".join(problems)

    _check_object_keys(stack, s3, outcomes)
    _check_processes(stack)
    http.close()


def _check_case(case: Case, o: Outcome) -> None:
    if case.expect_http is not None:
        assert o.http == case.expect_http, f"expected HTTP {case.expect_http}"
        assert case.message.lower() in o.detail.lower(), f"message lacks {case.message!r}"
        return
    assert o.http == 202, "expected the job to be accepted"
    assert o.job["status"] in TERMINAL
    first, sibling = o.items[0], o.items[-1]
    if case.sibling:
        assert sibling["filename"] == "astronaut.png" and sibling["status"] == "succeeded", "sibling did not succeed"
        assert o.results[sibling["index"]] == (512, 512)
    if case.expect_item == "failed":
        assert first["status"] == "failed", "expected the item to fail"
        assert first["error"] and case.message.lower() in first["error"].lower(), f"reason lacks {case.message!r}"
        assert "Traceback" not in first["error"]
    elif case.expect_item == "succeeded":
        assert first["status"] == "succeeded", "expected the item to succeed"
    else:  # either, but a failure must say why in words
        assert first["status"] in ("succeeded", "failed")
        if first["status"] == "failed":
            assert first["error"] and "Traceback" not in first["error"] and len(first["error"]) > 10
    if case.check:
        case.check(case, o)


def _check_object_keys(stack: ProcessStack, s3, outcomes: dict[str, Outcome]) -> None:
    prefix = stack.base_env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3]
    keys = s3.storage(prefix).list("")
    assert keys, "no objects stored"
    bad = [k for k in keys if not SAFE_KEY.match(k)]
    assert not bad, f"object keys outside the id-only layout: {bad[:5]}"
    for k in keys:
        assert ".." not in k and "passwd" not in k and "shadow" not in k and "win.ini" not in k, k
    # Exactly one result per succeeded item.
    results = {k.split("/")[3] for k in keys if re.search(r"/result\.[a-z]+$", k)}
    succeeded = {i["id"] for o in outcomes.values() for i in o.items if i["status"] == "succeeded"}
    assert results == succeeded


def _check_processes(stack: ProcessStack) -> None:
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
    for name in stack.procs:
        log = stack.log(name)
        for marker in ("Traceback", "WorkerLostError", "exited with", "Killed", "SIGKILL", "MemoryError"):
            assert marker not in log, f"{name} log has {marker!r}:\n{log[-3000:]}"
