"""held.py: what a site holds and which domains it serves, compared with a certificate."""
from __future__ import annotations

import pytest

from certbot_incapsula.held import difference, serves_none


def test_difference_on_an_empty_site():
    assert difference(None, None) == "the site holds no custom certificate"  # type: ignore[arg-type]


@pytest.mark.parametrize("names, domains, none", [
    (["example.test"], ["www.example.test"], False),  # Imperva serves both for one site
    (["*.example.test"], ["shop.example.test"], False),
    (["*.example.test"], ["example.test"], False),
    (["www.example.test"], ["shop.example.test"], True),
    (["a.test"], [], False),  # the site's domains unknown: not judged
])
def test_serves_none(names, domains, none):
    assert serves_none(domains, names) is none
