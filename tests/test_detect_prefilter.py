"""The detectors' prefilters only skip work: find_spans gives exactly the
spans of every detector run on every text (tests/test_compliance_detect.py
says what those spans must be)."""

from __future__ import annotations

import random

import pytest

from exporter.compliance import detect as D

ALPHABET = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "１", "٣", "+", "-", ".", " ", "(", ")", "@",
            "x", "a", "k", "s", "_", "X", "\\n", "：", "。", "[at]", "(dot)", "sk-", "hf_", "AKIA", "Bearer ",
            "eyJ", "-----BEGIN ", "bob", ".com", "138", "0086", "+86", "415", "555", "2671", "192.168.",
            "6222", "4111", "11010519491231002X", "–", "\u3000"]


def reference_spans(text: str) -> list[tuple[int, int, str]]:
    """find_spans without any prefilter: every detector on every text."""
    return D.find_spans(text, prefilter=False)


@pytest.mark.parametrize("seed", range(40))
def test_prefilters_never_hide_a_span(seed):
    rng = random.Random(seed)
    found = 0
    for _ in range(250):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        ref = reference_spans(text)
        assert D.find_spans(text) == ref, text
        found += bool(ref)
    assert found  # the alphabet does make spans


@pytest.mark.parametrize("text", ["call 13800138000", "+1 4 1 5 5 5 5 2 6 7 1", "ip 8.8.8.8", "415-555-2671",
                                  "(415) 555-2671", "4111 1111 1111 1111", "11010519491231002X",
                                  "１３８００１３８０００", "010-62345678"])
def test_number_hint_sees_every_number_form(text):
    assert D._may_hold_number(D.scan_view(text))
    assert D.find_spans(text) == reference_spans(text) != []


@pytest.mark.parametrize("text", ["a", "é中文", "\uffff", "\U00010000", "x\U0001F600y", "\ud800", "\udfff\ud800",
                                  "𝟏𝟐𝟑", "١٢٣"])
def test_has_astral_is_a_utf16_length_test(text):
    assert D._has_astral(text) == (len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text))


def test_number_hint_is_the_three_forms():
    import re
    forms = re.compile(r"[0-9]{4}|\+[0-9]|[0-9]\.[0-9]", re.ASCII)
    rng = random.Random(3)
    for _ in range(20000):
        text = "".join(rng.choice("0123+.a 9-") for _ in range(rng.randint(0, 9)))
        assert D._may_hold_number(text) == bool(forms.search(text)), text


def _plain_phrase_regex(phrases):
    """The phrases as one plain alternation (what the prefix tree must equal)."""
    import re
    parts = ["\\s+".join(re.escape(w) for w in p.lower().split()) for p in phrases if p.strip()]
    return re.compile("|".join(parts)) if parts else None


@pytest.mark.parametrize("seed", range(30))
def test_injection_phrase_tree_finds_what_the_alternation_finds(seed):
    rng = random.Random(seed)
    letters = ["a", "b", "ab", "A", " ", "  ", "\t", ".", "忽略", "*", "(", "\\"]
    phrases = tuple("".join(rng.choice(letters) for _ in range(rng.randint(0, 6)))
                    for _ in range(rng.randint(0, 6)))
    tree, plain = D._phrase_regex(phrases), _plain_phrase_regex(phrases)
    assert (tree is None) == (plain is None)
    for _ in range(300):
        text = "".join(rng.choice(letters + ["\n", "x"]) for _ in range(rng.randint(0, 14))).lower()
        if plain is not None:
            assert bool(tree.search(text)) == bool(plain.search(text)), (phrases, text)


def test_default_injection_phrases_tree():
    tree = D._phrase_regex(D.DEFAULT_INJECTION_PHRASES)
    plain = _plain_phrase_regex(D.DEFAULT_INJECTION_PHRASES)
    for p in D.DEFAULT_INJECTION_PHRASES:
        for text in (p.lower(), "x " + p.lower().replace(" ", " \n\t ") + " y", p.lower()[:-1]):
            assert bool(tree.search(text)) == bool(plain.search(text)), text
