"""Image dimensions declared inside a DICOM's compressed pixel data, read before decoding.

A DICOM header says Rows x Columns, but the decoder (openjpeg, CharLS, libjpeg) allocates for
whatever the codestream itself declares: a 512x512 DICOM can carry a JPEG 2000 codestream
claiming 60000x60000 pixels (~14 GB once decoded). `codestream_size` reads the codestream's
own header (the J2K SIZ segment; the JPEG / JPEG-LS SOFn / SOF55 segment) so the caller can
refuse a mismatch before any decoder runs. Pure Python, no third-party decoder involved.
"""

from __future__ import annotations

import struct

# Transfer syntaxes whose pixel data is a JPEG 2000 codestream (incl. HTJ2K).
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
})
# JPEG (baseline, extended, lossless) and JPEG-LS: both start with SOI and carry a SOF segment.
JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
# SOF0..SOF15 without DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) is JPEG-LS.
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class CodestreamError(ValueError):
    """The codestream header cannot be read; the message says why."""


def _j2k_size(data: bytes) -> tuple[int, int]:
    offset = 0
    if data.startswith(_JP2_SIGNATURE):  # JP2 file format: find the contiguous codestream box
        offset = 12
        while offset + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[offset:offset + 8])
            if kind == b"jp2c":
                offset += 8
                break
            if length < 8:
                raise CodestreamError("malformed JP2 box")
            offset += length
        else:
            raise CodestreamError("JP2 file without a codestream box")
    # SOC, then SIZ (mandatory second marker): Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz ...
    if data[offset:offset + 4] != b"\xff\x4f\xff\x51" or len(data) < offset + 24:
        raise CodestreamError("no JPEG 2000 SOC/SIZ header")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[offset + 8:offset + 24])
    if xosiz > xsiz or yosiz > ysiz:
        raise CodestreamError("JPEG 2000 SIZ image offset beyond its size")
    return ysiz - yosiz, xsiz - xosiz


def _jpeg_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(b"\xff\xd8"):
        raise CodestreamError("no JPEG SOI marker")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise CodestreamError("malformed JPEG marker segment")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in _SOF_MARKERS:
            if offset + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return height, width
        if marker in (0xD9, 0xDA) or length < 2:  # EOI / SOS before any SOF
            break
        offset += 2 + length
    raise CodestreamError("no JPEG SOF header")


def codestream_size(transfer_syntax: str, first_fragment: bytes) -> tuple[int, int] | None:
    """(height, width) declared by the codestream, or None for uncompressed / RLE syntaxes.

    Raises CodestreamError when the syntax is compressed but its header cannot be read. A JPEG
    height of 0 (defined later by a DNL marker) comes back as 0.
    """
    syntax = str(transfer_syntax)
    if syntax in J2K_SYNTAXES:
        return _j2k_size(first_fragment)
    if syntax in JPEG_SYNTAXES:
        return _jpeg_size(first_fragment)
    return None


__all__ = ["CodestreamError", "codestream_size"]
