"""The 1,000-record run of the benchmark: every flagged opportunity becomes exactly one referral.
Only correctness is asserted; the API-call and timing figures are printed for people, not checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_thousand_flagged_opportunities_become_a_thousand_referrals():
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "--records", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line and "OK" not in line)
    figures = {k.strip(): v.strip() for k, v in figures.items()}
    assert figures["referrals_for_records"] == "1000"
    assert figures["duplicates"] == "0" and figures["missing"] == "0"
    assert figures["microsoft_referrals"] == "500"  # every other record asks for Microsoft's help
