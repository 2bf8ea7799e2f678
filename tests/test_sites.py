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


# ----- wildcards --------------------------------------------------------------------------------

WILD_SITES = [site(1, "www.example.com"), site(2, "shop.example.com"), site(3, "a.b.example.com"),
              site(4, "example.com"), site(5, "shop.example.org"), site(6, "xexample.com")]


def test_a_wildcard_matches_exactly_one_label_below_never_deeper_nor_the_bare_name():
    found = sites.match_names(["*.example.com"], WILD_SITES)
    assert [(t.site_id, t.names, t.wildcard) for t in found.targets] == [
        (1, ["*.example.com"], True), (2, ["*.example.com"], True)]
    assert found.unmatched == []


def test_wildcard_and_bare_name_each_site_once_and_exact_matches_are_not_wildcard_only():
    found = sites.match_names(["*.example.com", "example.com"], WILD_SITES)
    assert [(t.site_id, t.names, t.wildcard) for t in found.targets] == [
        (1, ["*.example.com"], True), (2, ["*.example.com"], True),
        (4, ["example.com"], False)]
    without_apex_site = [s for s in WILD_SITES if s["site_id"] != 4]
    found = sites.match_names(["*.example.com", "example.com"], without_apex_site)
    # The bare name falls back to its www. site, which the wildcard covers too: one target.
    assert [(t.site_id, t.names, t.wildcard) for t in found.targets] == [
        (1, ["*.example.com", "example.com"], False), (2, ["*.example.com"], True)]


def test_a_wildcard_with_no_site_below_is_unmatched_and_never_ambiguous():
    assert sites.match_names(["*.nothing.test"], WILD_SITES).unmatched == ["*.nothing.test"]
    many = [site(n, f"s{n}.example.net") for n in range(1, 30)]
    assert len(sites.match_names(["*.example.net"], many).targets) == 29


def test_a_site_named_as_a_wildcard_matches_that_wildcard_exactly():
    found = sites.match_names(["*.example.com"], [site(9, "*.example.com"), site(1, "www.example.com")])
    assert [(t.site_id, t.wildcard) for t in found.targets] == [(1, True), (9, False)]


def test_wildcard_coverage_of_a_sites_domains():
    assert sites.uncovered(["shop.example.com", "example.com", "a.b.example.com"],
                           ["*.example.com"]) == ["example.com", "a.b.example.com"]


def test_chosen_lines_one_per_site_or_a_count_when_many():
    few = sites.match_names(["*.example.com"], WILD_SITES).targets
    assert sites.chosen_lines(few) == [
        "Imperva site 1 (www.example.com) chosen for *.example.com",
        "Imperva site 2 (shop.example.com) chosen for *.example.com"]
    many = sites.match_names(["*.example.net", "example.net"],
                             [site(n, f"s{n}.example.net") for n in range(1, 13)]
                             + [site(99, "example.net")]).targets
    assert sites.chosen_lines(many) == [
        "Imperva: 13 sites chosen: 12 for *.example.net, 1 for example.net "
        "(each site's outcome follows)"]
