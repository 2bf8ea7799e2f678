"""The per-site report: flags by name with their meaning; which flags fail a run."""
from certbot_incapsula import report


def test_clean_upload_reads_plainly():
    lines = report.site_lines("site 1 (www.a.test)", "uploaded",
                              {"active": True, "expirationDate": 1767225600000,
                               "validityError": False, "chainError": False}, None)
    assert lines == ["Imperva site 1 (www.a.test): uploaded; expires 2026-01-01 00:00 UTC; "
                     "active: yes; no error flags"]


def test_coverage_flags_under_both_names_are_warnings():
    for name in ("coverageError", "hostnameMismatchError"):
        fatal, warning = report.flags({name: True})
        assert fatal == []
        assert warning == [f"{name}: the certificate does not cover every domain of this site"]


def test_validity_chain_revocation_are_fatal_and_unknown_flags_are_named():
    fatal, warning = report.flags({"chainError": True, "revocationError": "true",
                                   "validityError": True, "sniError": True, "active": True})
    assert [f.split(":")[0] for f in fatal] == ["chainError", "revocationError", "validityError"]
    assert warning == ["sniError: set by Imperva (see its documentation for this flag)"]


def test_report_lines_show_flags_and_failures():
    lines = report.site_lines("site 2", "uploaded", {"active": False, "chainError": True}, None)
    assert lines[0].endswith("expires unknown; active: no")
    assert lines[1] == "  ERROR chainError: the chain is incomplete or does not lead to a trusted root"
    assert report.site_lines("site 3", "failed", None, "res 9413") == ["Imperva site 3: FAILED - res 9413"]
