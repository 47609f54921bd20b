"""Redaction removes cards, IBANs, e-mails and phones, including awkward spellings, and leaves dates and amounts alone."""

from __future__ import annotations

import logging

import pytest

from llmlab import privacy
from llmlab.privacy import redact


@pytest.mark.parametrize("text, expected", [
    # card numbers: grouped by spaces or dashes, or not at all; Luhn-valid → [CARD]
    ("my card 4111 1111 1111 1111 was charged", "my card [CARD] was charged"),
    ("4111-1111-1111-1111", "[CARD]"),
    ("card:5500005555555559.", "card:[CARD]."),
    ("amex 3782 822463 10005 please", "amex [CARD] please"),
    ("4111 1111-1111 1111", "[CARD]"),
    # one digit off: fails Luhn, still removed (it gives away 15 of 16 digits) but labelled differently
    ("4111 1111 1111 1112", "[LONG_NUMBER]"),
    # IBANs: upper or lower case, with or without spaces, with trailing punctuation
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN [IBAN] thanks"),
    ("de89370400440532013000", "[IBAN]"),
    ("send it to gb82 west 1234 5698 7654 32.", "send it to [IBAN]."),
    ("FR14 2004 1010 0505 0001 3M02 606", "[IBAN]"),
    ("GB82 WEST 1234 5698 7654 33", "[LONG_NUMBER]"),  # wrong check digits: still an account number
    # e-mails with plus-addressing, subdomains, dots, next to punctuation
    ("write to ana.maria+bank@mail.example.co.uk, please", "write to [EMAIL], please"),
    ("(j_doe-99@sub.dept.example.org)", "([EMAIL])"),
    # phones, international and national
    ("call me on +44 20 7946 0958", "call me on [PHONE]"),
    ("+1 (555) 123-4567 or 555.123.4567", "[PHONE] or [PHONE]"),
    ("+33 1 23 45 67 89", "[PHONE]"),
    ("my number is 020 7946 0958", "my number is [PHONE]"),
    ("07700 900123", "[PHONE]"),
    ("(555) 123-4567", "[PHONE]"),
    ("0049-30-12345678", "[PHONE]"),
    # several kinds in one message
    ("I'm bob@example.com, card 4111111111111111, tel +49 30 1234567",
     "I'm [EMAIL], card [CARD], tel [PHONE]"),
])
def test_personal_data_is_replaced(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "I was charged £1,250.00 on 12/03/2024 at 14:30",
    "the transfer of 1 250 EUR on 2024-03-12 has not arrived",
    "withdrew 200 on 12.03.2024 and 300 on 13-03-2024",
    "on 05-03-2024 12:30 I paid 49.99",
    "reference 12345678, order 987654",
    "my card expires 03/27 and the CVC is not something I will share",
    "I am 17 years old, can I open an account?",
    "top up of 10000 failed three times",
    "I tried 2 times, 3 days ago",
    "DE is my country and I have 22 cards",
    "contact support@ is not an address",
])
def test_dates_amounts_and_short_numbers_survive(text):
    assert redact(text) == text


def test_a_date_next_to_a_phone_keeps_the_date_and_removes_the_phone():
    assert redact("on 05-03-2024 call 020 7946 0958") == "on 05-03-2024 call [PHONE]"


def test_checksums():
    assert privacy.luhn_valid("4111 1111 1111 1111") and not privacy.luhn_valid("4111 1111 1111 1112")
    assert privacy.luhn_valid("79927398713") and not privacy.luhn_valid("12a4")
    assert privacy.iban_valid("GB82 WEST 1234 5698 7654 32") and privacy.iban_valid("gb82west12345698765432")
    assert not privacy.iban_valid("GB82 WEST 1234 5698 7654 3")  # one character short for GB
    assert not privacy.iban_valid("ZZ82 WEST 1234 5698 7654 32")  # no such country


def test_findings_give_positions_and_reject_non_text():
    text = "mail a@b.io or call +44 20 7946 0958"
    kinds = [(f.kind, text[f.start:f.end]) for f in privacy.find_personal_data(text)]
    assert kinds == [("EMAIL", "a@b.io"), ("PHONE", "+44 20 7946 0958")]
    with pytest.raises(TypeError, match="expected a str"):
        privacy.find_personal_data(4111111111111111)


def test_redacting_filter_cleans_what_reaches_a_handler(caplog):
    logger = logging.getLogger("test_privacy.filter")
    handler_filter = privacy.RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("raw message %s", "card 4111 1111 1111 1111, mail x@y.com")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "4111" not in caplog.text and "x@y.com" not in caplog.text
    assert "[CARD]" in caplog.text and "[EMAIL]" in caplog.text
