"""Ecuadorian identity numbers: cédula (10 digits) and RUC (13 digits).

Check digits (Registro Civil / SRI rules): a natural person's cédula uses module 10 with
coefficients 2,1,2,1,... over the first nine digits (products over 9 lose 9); a RUC is
a cédula followed by an establishment number (third digit < 6), or for a private company
(third digit 9) module 11 with coefficients 4,3,2,7,6,5,4,3,2 and for a public entity
(third digit 6) module 11 with 3,2,7,6,5,4,3,2 over the first eight digits. The province
code (first two digits) is 01-24, or 30 for Ecuadorians registered abroad.
"""

from __future__ import annotations

import re

_NON_DIGITS = re.compile(r"[\s.\-]")


def normalize(value: str) -> str:
    """Digits only (legacy data writes 1712345678, 171234567-8, 17.1234567.8 ...)."""
    return _NON_DIGITS.sub("", value.strip())


def _province_ok(digits: str) -> bool:
    province = int(digits[:2])
    return 1 <= province <= 24 or province == 30


def cedula_check_digit(first9: str) -> int:
    total = 0
    for i, ch in enumerate(first9):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product - 9 if product > 9 else product
    return (10 - total % 10) % 10


def _module11(digits: str, weights: tuple[int, ...]) -> int | None:
    rest = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    check = 11 - rest if rest else 0
    return None if check == 10 else check


def cedula_problem(value: str) -> str | None:
    """Why ``value`` is not a valid cédula, or None when it is."""
    digits = normalize(value)
    if not re.fullmatch(r"\d{10}", digits):
        return "a cédula has 10 digits"
    if not _province_ok(digits):
        return f"province code {digits[:2]} does not exist"
    if int(digits[2]) >= 6:
        return "third digit of a natural person's cédula must be below 6"
    if cedula_check_digit(digits[:9]) != int(digits[9]):
        return "check digit does not match (module 10)"
    return None


def ruc_problem(value: str) -> str | None:
    """Why ``value`` is not a valid RUC, or None when it is."""
    digits = normalize(value)
    if not re.fullmatch(r"\d{13}", digits):
        return "a RUC has 13 digits"
    if not _province_ok(digits):
        return f"province code {digits[:2]} does not exist"
    third = int(digits[2])
    if third < 6:
        problem = cedula_problem(digits[:10])
        return problem if problem or digits[10:] != "000" else "establishment 000"
    if third == 9:
        ok = _module11(digits[:9], (4, 3, 2, 7, 6, 5, 4, 3, 2)) == int(digits[9])
        return None if ok and digits[10:] != "000" else "check digit does not match (module 11)"
    if third == 6:
        ok = _module11(digits[:8], (3, 2, 7, 6, 5, 4, 3, 2)) == int(digits[8])
        return None if ok and digits[9:] != "0000" else "check digit does not match (module 11)"
    return f"third digit {third} is not used in a RUC"


def id_problem(value: str) -> str | None:
    """cédula or RUC, told apart by length."""
    return ruc_problem(value) if len(normalize(value)) == 13 else cedula_problem(value)


def make_cedula(province: int, body: int) -> str:
    """A valid cédula from a province and a 7-digit body (for sample data)."""
    first9 = f"{province:02d}{body % 10**7:07d}"
    if int(first9[2]) >= 6:
        first9 = first9[:2] + str(int(first9[2]) % 6) + first9[3:]
    return first9 + str(cedula_check_digit(first9))


def make_company_ruc(province: int, body: int) -> str:
    """A valid private-company RUC (third digit 9, establishment 001)."""
    for n in range(body, body + 100):
        first9 = f"{province:02d}9{n % 10**6:06d}"
        check = _module11(first9, (4, 3, 2, 7, 6, 5, 4, 3, 2))
        if check is not None:
            return f"{first9}{check}001"
    raise AssertionError("unreachable")
