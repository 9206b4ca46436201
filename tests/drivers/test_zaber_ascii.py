"""Zaber ASCII message format: command encoding, reply parsing, checksums and warning lists."""

from __future__ import annotations

import pytest

from fluoscan.drivers.zaber_ascii import (
    Reply,
    ReplyFormatError,
    checksum,
    format_command,
    parse_reply,
    parse_warnings,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("01 0 OK IDLE -- 0", "8D"), ("1 0 move abs 10000", "41"), ("", "00")],
)
def test_checksum_examples(text: str, expected: str) -> None:
    assert checksum(text) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((1, 1, "move abs 1000"), {}, b"/1 1 move abs 1000\r\n"),
        ((1, 0, ""), {}, b"/1 0\r\n"),
        ((2, 1, "get pos"), {"message_id": 7}, b"/2 1 07 get pos\r\n"),
        ((1, 0, "move abs 10000"), {"with_checksum": True}, b"/1 0 move abs 10000:41\r\n"),
        ((1, 1, ""), {"message_id": 99, "with_checksum": True}, f"/1 1 99:{checksum('1 1 99')}\r\n".encode()),
    ],
)
def test_format_command(args: tuple, kwargs: dict, expected: bytes) -> None:
    assert format_command(*args, **kwargs) == expected


def test_format_command_rejects_message_id_100() -> None:
    with pytest.raises(ValueError, match="0 to 99"):
        format_command(1, 1, "get pos", message_id=100)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("@01 0 OK IDLE -- 0", Reply(1, 0, None, True, False, "--", "0")),
        ("@01 1 05 OK BUSY WR 0", Reply(1, 1, 5, True, True, "WR", "0")),
        ("@02 1 RJ IDLE -- BADCOMMAND", Reply(2, 1, None, False, False, "--", "BADCOMMAND")),
        ("@01 0 OK IDLE -- 0:8D", Reply(1, 0, None, True, False, "--", "0")),
        ("@01 0 OK IDLE WR 02 WR NI", Reply(1, 0, None, True, False, "WR", "02 WR NI")),
        ("@01 0 OK BUSY -- 20 10", Reply(1, 0, None, True, True, "--", "20 10")),
    ],
)
def test_parse_reply(line: str, expected: Reply) -> None:
    assert parse_reply(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "@01 0 OK IDLE -- 0:8C",  # wrong checksum
        "@1 0 OK IDLE -- 0",  # one-digit address
        "@01 0 MAYBE IDLE -- 0",
        "@01 0 OK RESTING -- 0",
        "@01 0 OK IDLE - 0",
        "01 0 OK IDLE -- 0",
        "@0\xff 0 OK IDLE -- 0",
    ],
)
def test_parse_reply_rejects_malformed(line: str) -> None:
    with pytest.raises(ReplyFormatError):
        parse_reply(line)


def test_reply_reason_and_fault() -> None:
    reply = parse_reply("@01 1 RJ IDLE FS BADDATA")
    assert reply.reason == "BADDATA"
    assert reply.is_fault


@pytest.mark.parametrize(
    ("data", "expected"),
    [("00", []), ("01 WR", ["WR"]), ("03 FS WR NI", ["FS", "WR", "NI"])],
)
def test_parse_warnings(data: str, expected: list[str]) -> None:
    assert parse_warnings(data) == expected


@pytest.mark.parametrize("data", ["", "WR", "02 WR", "01 WR NI", "01 wr"])
def test_parse_warnings_rejects_malformed(data: str) -> None:
    with pytest.raises(ReplyFormatError):
        parse_warnings(data)
