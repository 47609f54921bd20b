"""Remove personal data from a customer message before anything is logged or stored.

    redact("My card 4111 1111 1111 1111 was charged, mail me at ana+bank@mail.example.org")
    # 'My card [CARD] was charged, mail me at [EMAIL]'

Four kinds of personal data are found, in this order (an earlier rule wins where two overlap):

1. e-mail addresses                              → ``[EMAIL]``
2. IBANs: ``[IBAN]`` when the ISO 13616 mod-97 test passes, ``[LONG_NUMBER]`` when an
   IBAN-shaped string (right country and length, 10 digits or more) fails it
3. international phone numbers (``+`` or ``00``) → ``[PHONE]``
4. card numbers: 13–19 digits, grouped with spaces or dashes or not;
   ``[CARD]`` when the Luhn check passes, ``[LONG_NUMBER]`` when it fails
5. national phone numbers (leading 0, ``(area)`` or ``555-123-4567``) → ``[PHONE]``

Why a 13–19 digit number that fails the Luhn check is still removed: in a support chat such a
number is almost always a card, account or reference number, and a card number with one
mistyped digit still gives away the other 15. Hiding a harmless reference number costs an
agent one question; logging a card number is a data breach. The Luhn check only decides the
label, which tells the analyst reading the logs what was there.

What must survive: dates (``12/03/2024``, ``2024-03-12``, ``12.03.2024``), amounts
(``£1,250.00``, ``1 250 EUR``), times and short numbers. No rule matches fewer than 9 digits,
and none crosses a comma, a slash or a colon, which is what keeps them intact.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

# Length of the IBAN of each country (SWIFT IBAN registry); a country not listed is not matched.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")
# The start of an IBAN: country letters and two check digits; the rest is read by _iban_at.
IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})")
# "+" or "00" and a country code, then digit groups joined by one space, dash or dot, or wrapped in ().
INTERNATIONAL_PHONE = re.compile(r"(?<![\w+])(?:\+|00)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\w])")
# 13 to 19 digits, each optionally followed by one space or dash.
CARD_LIKE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w])")
NATIONAL_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\(0?\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"           # (020) 7946 0958, (555) 123-4567
    r"|0\d{1,4}(?:[ .-]?\d{2,4}){2,4}"                   # 020 7946 0958, 07700 900123, 030-1234-5678
    r"|\d{3}[.-]\d{3}[.-]\d{4}"                          # 555-123-4567, 555.123.4567
    r")(?![\w])"
)
# Dates with a four-digit year; hidden from the number rules so a date next to a number is never read as one.
DATE = re.compile(r"(?<!\d)(?:\d{1,2}([./-])\d{1,2}\1\d{4}|\d{4}([./-])\d{1,2}\2\d{1,2})(?!\d)")


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind (the placeholder's name) and where it sits in the text."""

    kind: str
    start: int
    end: int


def luhn_valid(number: str) -> bool:
    """The Luhn check of card numbers: double every second digit from the right, the sum must end in 0.

    Spaces and dashes are ignored; anything else that is not a digit makes the number invalid.
    """
    digits = number.replace(" ", "").replace("-", "")
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: known country and length, then (rest + first four, letters as 10..35) mod 97 == 1."""
    compact = re.sub(r"[ -]", "", iban).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", compact) or IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    as_number = "".join(str(int(character, 36)) for character in rearranged)
    return int(as_number) % 97 == 1


def _iban_at(text: str, match: re.Match) -> int | None:
    """End of the IBAN-shaped text that starts at ``match``, or None.

    IBAN-shaped: a known country, then exactly that country's number of letters and digits,
    single spaces or dashes allowed between them. Whether the check digits agree is decided
    by the caller with :func:`iban_valid`.
    """
    length = IBAN_LENGTHS.get(match.group(1).upper())
    if length is None:
        return None
    position, kept = match.end(), 4
    while kept < length and position < len(text):
        character = text[position]
        if character.isascii() and character.isalnum():
            kept += 1
            position += 1
        elif character in " -" and position + 1 < len(text) and text[position + 1].isascii() and text[position + 1].isalnum():
            position += 1
        else:
            break
    if kept != length:
        return None
    if position < len(text) and text[position].isascii() and text[position].isalnum():
        return None  # more characters follow: not an IBAN of this country's length
    return position


def _digit_count(text: str) -> int:
    return sum(character.isdigit() for character in text)


def find_personal_data(text: str) -> list[Finding]:
    """Every e-mail, IBAN, phone and card-like number in ``text``, in reading order, none overlapping."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    findings: list[Finding] = []

    def free(start: int, end: int) -> bool:
        return all(end <= f.start or start >= f.end for f in findings)

    for match in EMAIL.finditer(text):
        findings.append(Finding("EMAIL", match.start(), match.end()))
    for match in IBAN_START.finditer(text):
        end = _iban_at(text, match)
        if end is None or not free(match.start(), end):
            continue
        candidate = text[match.start():end]
        if iban_valid(candidate):
            findings.append(Finding("IBAN", match.start(), end))
        elif _digit_count(candidate) >= 10:
            # A mistyped IBAN still identifies the account, as a mistyped card number does.
            findings.append(Finding("LONG_NUMBER", match.start(), end))
    # The number rules read a copy in which dates are blanked out (same length, so positions agree).
    numbers_view = DATE.sub(lambda date: "#" * len(date.group()), text)
    for match in INTERNATIONAL_PHONE.finditer(numbers_view):
        if 8 <= _digit_count(match.group()) <= 15 and free(*match.span()):
            findings.append(Finding("PHONE", *match.span()))
    for match in CARD_LIKE.finditer(numbers_view):
        if free(*match.span()):
            findings.append(Finding("CARD" if luhn_valid(match.group()) else "LONG_NUMBER", *match.span()))
    for match in NATIONAL_PHONE.finditer(numbers_view):
        if 9 <= _digit_count(match.group()) <= 12 and free(*match.span()):
            findings.append(Finding("PHONE", *match.span()))
    return sorted(findings, key=lambda f: f.start)


def redact(text: str) -> str:
    """``text`` with every piece of personal data replaced by ``[KIND]``; everything else unchanged."""
    pieces, position = [], 0
    for finding in find_personal_data(text):
        pieces.append(text[position:finding.start])
        pieces.append(f"[{finding.kind}]")
        position = finding.end
    pieces.append(text[position:])
    return "".join(pieces)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message, a second line of defence behind redact().

    Attach it to a handler (``handler.addFilter(RedactingFilter())``) so that a message logged
    somewhere without redaction still reaches the log file cleaned.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True
