"""Site matching: which Imperva site gets the certificate for which name."""
import pytest

from certbot_incapsula import sites


def site(site_id, domain, display_name=None):
    return {"site_id": site_id, "domain": domain, "display_name": display_name or domain}


def test_exact_and_bare_names_map_to_one_site():
    found = sites.match_names(["www.example.com", "example.com"],
                              [site(1, "www.example.com"), site(2, "shop.example.com")])
    assert [(t.site_id, t.domain, t.names) for t in found.targets] == [
        (1, "www.example.com", ["www.example.com", "example.com"])]
    assert found.unmatched == []
    assert found.discovered


def test_exact_match_wins_over_www_rule():
    found = sites.match_names(["example.com"], [site(1, "www.example.com"), site(2, "example.com")])
    assert [t.site_id for t in found.targets] == [2]


def test_names_on_several_sites_and_unmatched_names():
    found = sites.match_names(["www.a.test", "b.test", "c.test"],
                              [site(1, "www.a.test"), site(2, "www.b.test"), site(3, "x.test")])
    assert [(t.site_id, t.names) for t in found.targets] == [(1, ["www.a.test"]), (2, ["b.test"])]
    assert found.unmatched == ["c.test"]


def test_case_and_trailing_dot_are_ignored():
    found = sites.match_names(["WWW.Example.COM."], [site(7, "www.example.com")])
    assert [t.site_id for t in found.targets] == [7]


def test_display_name_matches_too():
    found = sites.match_names(["api.example.com"], [site(5, "origin-7.example.net", "api.example.com")])
    assert [t.site_id for t in found.targets] == [5]


def test_a_name_on_two_sites_is_an_error_that_lists_them():
    with pytest.raises(sites.SiteMatchError) as err:
        sites.match_names(["www.a.test"], [site(1, "www.a.test"), site(2, "x.test", "www.a.test")])
    assert "www.a.test -> sites 1, 2" in str(err.value)
    assert "--incapsula-site-id" in str(err.value)


def test_no_site_at_all():
    found = sites.match_names(["a.test"], [])
    assert found.targets == [] and found.unmatched == ["a.test"]


def test_explicit_ids_take_the_whole_certificate():
    found = sites.explicit([3, 4], ["a.test", "b.test"])
    assert [(t.site_id, t.names) for t in found.targets] == [(3, ["a.test", "b.test"]),
                                                            (4, ["a.test", "b.test"])]
    assert not found.discovered
