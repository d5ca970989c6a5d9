"""SignedPageTokens: a token decodes only in its own scope, with its own key, exactly as issued."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_host.service.page_tokens import SignedPageTokens

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SCOPE = "schedules:tenant-a:11111111-2222-4333-8444-555555555555"
POSITION = ["2026-03-08T07:30:00.123456+00:00", "7d444840-9dc0-11d1-b245-5ffdce74fad2"]

# Every character an HTTP/gRPC client could plausibly put into a string field, and then some.
ALTERATION_CHARACTERS = st.sampled_from(string.printable) | st.characters()

B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
SWAP_CHARACTERS = B64_ALPHABET + "+/=!. ~%"

positions = st.lists(st.text(max_size=40), max_size=4)
scopes = st.text(min_size=1, max_size=60)


@pytest.fixture
def tokens() -> SignedPageTokens:
    return SignedPageTokens(KEY)


def signed(body: bytes, scope: str = SCOPE, key: bytes = KEY) -> str:
    """A token with a valid signature over arbitrary body bytes (the encoder's own scheme)."""
    mac = hmac.new(key, scope.encode() + b"\0" + body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def test_round_trip(tokens: SignedPageTokens) -> None:
    token = tokens.encode(SCOPE, POSITION)
    assert isinstance(token, str)
    assert token
    assert tokens.decode(SCOPE, token) == POSITION


def test_tokens_are_url_safe_and_unpadded(tokens: SignedPageTokens) -> None:
    token = tokens.encode(SCOPE, POSITION)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")


def test_the_same_position_gives_the_same_token(tokens: SignedPageTokens) -> None:
    assert tokens.encode(SCOPE, POSITION) == SignedPageTokens(KEY).encode(SCOPE, tuple(POSITION))


def test_an_empty_position_round_trips(tokens: SignedPageTokens) -> None:
    assert tokens.decode(SCOPE, tokens.encode(SCOPE, [])) == []


@given(scopes, positions)
def test_any_position_round_trips(scope: str, position: list[str]) -> None:
    tokens = SignedPageTokens(KEY)
    assert tokens.decode(scope, tokens.encode(scope, position)) == position


def test_another_scope_is_refused(tokens: SignedPageTokens) -> None:
    token = tokens.encode(SCOPE, POSITION)
    assert tokens.decode(SCOPE + "x", token) is None
    assert tokens.decode("schedules:tenant-b:11111111-2222-4333-8444-555555555555", token) is None
    assert tokens.decode("", token) is None


@given(scopes, scopes, positions)
def test_a_token_is_only_good_in_its_own_scope(
    scope: str, other_scope: str, position: list[str]
) -> None:
    tokens = SignedPageTokens(KEY)
    token = tokens.encode(scope, position)
    if other_scope != scope:
        assert tokens.decode(other_scope, token) is None


def test_another_key_is_refused(tokens: SignedPageTokens) -> None:
    token = tokens.encode(SCOPE, POSITION)
    assert SignedPageTokens(OTHER_KEY).decode(SCOPE, token) is None
    assert SignedPageTokens(KEY[:16]).decode(SCOPE, token) is None


@given(positions, st.data())
def test_any_single_altered_character_is_refused(position: list[str], data: st.DataObject) -> None:
    tokens = SignedPageTokens(KEY)
    token = tokens.encode(SCOPE, position)
    # Every position with every character a client might plausibly swap in, plus one drawn at
    # random: an altered token must never decode, not even to the same position.
    for index, original in enumerate(token):
        for replacement in sorted(set(SWAP_CHARACTERS) - {original}):
            altered = token[:index] + replacement + token[index + 1 :]
            assert tokens.decode(SCOPE, altered) is None, f"{altered!r} was accepted for {token!r}"
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    replacement = data.draw(
        ALTERATION_CHARACTERS.filter(lambda c: c != token[index]), label="replacement"
    )
    altered = token[:index] + replacement + token[index + 1 :]
    assert tokens.decode(SCOPE, altered) is None, f"{altered!r} was accepted for {token!r}"


def _alter(token: str, index: int, replacement: str) -> str:
    assert token[index] != replacement
    return token[:index] + replacement + token[index + 1 :]


def test_the_unused_low_bits_of_the_last_character_are_checked(tokens: SignedPageTokens) -> None:
    # 16 bytes of MAC + '["ab"]' = 22 bytes: the last of 30 characters carries 4 unused bits, so
    # 16 different last characters decode to the same bytes. Only the issued one may pass.
    token = tokens.encode(SCOPE, ["ab"])
    assert len(token) == 30
    last = B64_ALPHABET.index(token[-1])
    siblings = [c for i, c in enumerate(B64_ALPHABET) if i >> 4 == last >> 4 and i != last]
    accepted = [
        c for c in siblings if tokens.decode(SCOPE, _alter(token, len(token) - 1, c)) is not None
    ]
    assert accepted == [], f"{token!r} with its last character replaced by any of {accepted}"


def test_standard_base64_characters_are_not_aliases(tokens: SignedPageTokens) -> None:
    # The token alphabet is url-safe: "+" and "/" are not other spellings of "-" and "_".
    for n in range(200):
        token = tokens.encode(SCOPE, [f"position-{n}"])
        if "-" in token or "_" in token:
            break
    index = next(i for i, c in enumerate(token) if c in "-_")
    altered = _alter(token, index, "+" if token[index] == "-" else "/")
    assert tokens.decode(SCOPE, altered) is None, f"{altered!r} was accepted for {token!r}"


def test_characters_outside_the_alphabet_are_not_ignored(tokens: SignedPageTokens) -> None:
    token = tokens.encode(SCOPE, POSITION)
    for extra in ("!", " ", ".", "\n", "="):
        for altered in (extra + token, token[:5] + extra + token[5:], token + extra):
            assert tokens.decode(SCOPE, altered) is None, f"{altered!r} was accepted"


@given(positions, st.data())
def test_a_removed_or_added_character_is_refused(position: list[str], data: st.DataObject) -> None:
    tokens = SignedPageTokens(KEY)
    token = tokens.encode(SCOPE, position)
    index = data.draw(st.integers(0, len(token)), label="index")
    if data.draw(st.booleans(), label="remove") and index < len(token):
        altered = token[:index] + token[index + 1 :]
    else:
        altered = token[:index] + data.draw(ALTERATION_CHARACTERS, label="added") + token[index:]
    assert tokens.decode(SCOPE, altered) is None, f"{altered!r} was accepted for {token!r}"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "=",
        "====",
        "a",
        "abc",
        "!!!!",
        "not a token",
        "é",
        "\x00",
        "a" * 10_000,
        base64.urlsafe_b64encode(b"short").decode(),
        base64.urlsafe_b64encode(b"\0" * 16).decode(),
        base64.urlsafe_b64encode(b"\0" * 64).decode(),
        "eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
    ],
)
def test_garbage_is_refused(tokens: SignedPageTokens, garbage: str) -> None:
    assert tokens.decode(SCOPE, garbage) is None


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b'{"a": 1}', b'"text"', b"1", b"[1, 2]", b'["a", null]', b"\xff"],
)
def test_a_correctly_signed_body_that_is_not_a_list_of_strings_is_refused(
    tokens: SignedPageTokens, body: bytes
) -> None:
    assert tokens.decode(SCOPE, signed(body)) is None


def test_the_signing_helper_matches_the_encoder(tokens: SignedPageTokens) -> None:
    # Guards the test above: its tokens are refused for their body, not for their signature.
    assert signed(b'["a","b"]') == tokens.encode(SCOPE, ["a", "b"])
    assert tokens.decode(SCOPE, signed(b'["a","b"]')) == ["a", "b"]


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text: str) -> None:
    assert SignedPageTokens(KEY).decode(SCOPE, text) is None
