import json

import pytest

from reprolib.__main__ import main
from reprolib.claims import ClaimLog, build_report, load_claims, mean_std, record


def test_record_load_replace_and_report(tmp_path):
    c = record("eqnet.table3", paper={"2-bit": 87.3}, ours={"2-bit": "85.1 ± 0.4 (n=3)"}, holds=None,
               note="within noise", results_dir=tmp_path, source="02_eqnet_wdr", title="WDR ablation")
    assert c.verdict == "inconclusive" and "| 2-bit | 87.3 | 85.1 ± 0.4 (n=3) |" in c._repr_markdown_()
    log = ClaimLog(tmp_path, source="00_basics", quick=True)
    log.record("basics.lsq8", paper=0.0, ours=0.3, holds=True)
    log.record("basics.lsq8", paper=0.0, ours=0.4, holds=False)
    claims = load_claims(tmp_path)
    assert list(claims) == ["eqnet.table3", "basics.lsq8"]
    assert claims["basics.lsq8"].verdict == "does not hold" and claims["basics.lsq8"].quick
    report = build_report(tmp_path).read_text()
    assert "## EQ-Net" in report and "WDR ablation" in report and "quick mode" in report
    assert json.loads((tmp_path / "claims.json").read_text())["eqnet.table3"]["source"] == "02_eqnet_wdr"


def test_bad_claims(tmp_path):
    with pytest.raises(ValueError, match="claim_id"):
        record("table3", paper=1, ours=1, holds=True, results_dir=tmp_path)
    with pytest.raises(ValueError, match="holds"):
        record("qts.x", paper=1, ours=1, holds="maybe", results_dir=tmp_path)
    (tmp_path / "claims.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_claims(tmp_path)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0 (n=3)"
    assert mean_std([90.25], digits=2) == "90.25"


def test_report_cli(tmp_path, capsys):
    record("qts.mu", paper=93.6, ours=99.0, holds=True, results_dir=tmp_path)
    assert main(["report", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").exists()


def test_greater_verdict_against_scipy_and_by_hand():
    from reprolib.claims import greater_verdict

    assert greater_verdict([10.0, 10.1, 9.9], [5.0, 5.2, 4.9]) is True
    assert greater_verdict([5.0, 5.2, 4.9], [10.0, 10.1, 9.9]) is False
    assert greater_verdict([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]) is None
    assert greater_verdict([1.0], [0.0, 0.1]) is None
