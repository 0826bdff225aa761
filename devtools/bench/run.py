"""Benchmark: N flagged Dynamics 365 opportunities -> N co-sell referrals through the real app in process
(Azurite queue and tables, Partner Center and Dataverse emulators over HTTP). Reports API calls per record
and wall time; asserts only correctness (every record synced once, no duplicates)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from azure.functions.timer import TimerRequest

from devtools.localhost.azurite import start_azurite
from emulators.dataverse import DataverseEmulator
from emulators.partner_center import PartnerCenterEmulator

TOKEN = "bench-token"


def seed(dv: DataverseEmulator, count: int) -> list[str]:
    usd = next(c for c in dv.table("transactioncurrencies") if c["isocurrencycode"] == "USD")
    ids = []
    for i in range(count):
        account_id, contact_id, opp_id = (str(uuid.uuid4()) for _ in range(3))
        dv.seed(
            "accounts",
            {
                "accountid": account_id,
                "name": f"Customer {i:05d}",
                "address1_city": "Seattle",
                "address1_postalcode": f"{98000 + i % 900}",
                "address1_country": "US",
            },
        )
        dv.seed(
            "contacts",
            {
                "contactid": contact_id,
                "firstname": "Pat",
                "lastname": f"Buyer{i}",
                "emailaddress1": f"pat{i}@customer{i}.example",
                "_parentcustomerid_value": account_id,
            },
        )
        dv.seed(
            "opportunities",
            {
                "opportunityid": opp_id,
                "name": f"Deal {i:05d}",
                "estimatedvalue": 1000 + i,
                "estimatedclosedate": "2027-06-30",
                "description": "bench",
                "_transactioncurrencyid_value": usd["transactioncurrencyid"],
                "_customerid_value": account_id,
                "_parentcontactid_value": contact_id,
                "new_syncwithpartnercenter": True,
                "new_howcanmicrosofthelp": 100000005 if i % 2 else None,
                "new_products": "SOL-34104-EBB",
            },
        )
        ids.append(opp_id)
    return ids


def run(count: int, workers: int) -> dict[str, Any]:
    azurite = start_azurite()
    pc = PartnerCenterEmulator(required_token=TOKEN, dispatch_mode="off").start()
    dv = DataverseEmulator(required_token=TOKEN).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.update(
                {
                    "AzureWebJobsStorage": azurite.connection_string,
                    "DATAVERSE_URL": dv.url,
                    "DATAVERSE_ACCESS_TOKEN": TOKEN,
                    "PARTNER_CENTER_API_URL": pc.url,
                    "PARTNER_CENTER_WEBHOOK_API_URL": pc.url,
                    "PARTNER_CENTER_ACCESS_TOKEN": TOKEN,
                    "PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES": f"{pc.url}/cert/",
                    "PARTNER_CENTER_WEBHOOK_CA_BUNDLE": str(pc.write_ca_bundle(Path(tmp) / "ca.pem")),
                }
            )
            from tests.harness import InProcessHost

            host = InProcessHost()
            ids = seed(dv, count)
            dv.reset_counters()
            started = time.perf_counter()
            host.functions["poll_crm"](TimerRequest(past_due=False))
            poll_seconds = time.perf_counter() - started
            drain = host.drain(max_rounds=count * 4, parallel=workers)
            total_seconds = time.perf_counter() - started
            referrals = pc.referrals()
            own = Counter(r.get("externalReferenceId") for r in referrals if r.get("externalReferenceId"))
            dv_counts = dv.counters()
            pc_counts = pc.counters()
            return {
                "records": count,
                "referrals_for_records": len(own),
                "duplicates": sum(n - 1 for n in own.values() if n > 1),
                "missing": len(set(ids) - set(own)),
                "microsoft_referrals": len(referrals) - sum(own.values()),
                "failed_attempts": drain.failed,
                "pc_calls_per_record": (pc_counts.get("reads", 0) + pc_counts.get("writes", 0)) / count,
                "dataverse_calls_per_record": dv_counts["requests"] / count,
                "poll_seconds": round(poll_seconds, 2),
                "total_seconds": round(total_seconds, 2),
                "records_per_second": round(count / total_seconds, 1),
            }
    finally:
        pc.stop()
        dv.stop()
        azurite.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8, help="parallel queue workers (host.json batchSize)")
    args = parser.parse_args(argv)
    result = run(args.records, args.workers)
    for key, value in result.items():
        print(f"{key:>28}: {value:.2f}" if isinstance(value, float) else f"{key:>28}: {value}")
    ok = result["referrals_for_records"] == args.records and result["duplicates"] == 0 and result["missing"] == 0
    print("OK: every record synced once" if ok else "FAILED: missing or duplicate referrals")
    return 0 if ok else 1
