"""Dataverse emulator: the lead table's rules and the ``QualifyLead`` action.

A lead is Open (New 1, Contacted 2), Qualified (Qualified 3) or Disqualified (Lost 4, Cannot Contact 5, No Longer
Interested 6, Canceled 7). A seller disqualifies or reactivates a lead by writing its state; a lead becomes
Qualified only through ``QualifyLead`` (bound to the lead), which, as the service does, creates the account,
contact and opportunity asked for, stamps the opportunity's ``originatingleadid`` and the lead's
``qualifyingopportunityid``, ``parentaccountid`` and ``parentcontactid``, and answers the created rows. A lead
that is not open takes no other change until it is reactivated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .._server import Request, Response
from .lead_rules import CODE_LEAD_NOT_OPEN
from .odata import json_body
from .schema import LEAD_STATE_NAMES, LEAD_STATUSES, ODataError, bad_request
from .store import Row, Store

QUALIFY_PARAMETERS = ("CreateAccount", "CreateContact", "CreateOpportunity", "Status")


class LeadQualification:
    """``POST leads(<id>)/Microsoft.Dynamics.CRM.QualifyLead``."""

    def __init__(
        self,
        store: Store,
        lock: AbstractContextManager[Any],
        log_write: Callable[..., None],
        count_action: Callable[[str], None],
    ) -> None:
        self.store, self.lock, self.log_write, self.count_action = store, lock, log_write, count_action

    def routes(self, api: str) -> list[tuple[str, str, Callable[[Request], Response]]]:
        return [("POST", rf"{api}/leads\((?P<key>[^)]*)\)/(?:Microsoft\.Dynamics\.CRM\.)?QualifyLead", self.qualify)]

    def qualify(self, request: Request) -> Response:
        body = json_body(request)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        missing = [name for name in QUALIFY_PARAMETERS if name not in body]
        if missing:
            raise bad_request(f"QualifyLead needs the parameter(s) {', '.join(missing)}.")
        flags = {name: body[name] for name in QUALIFY_PARAMETERS[:3]}
        if not all(isinstance(value, bool) for value in flags.values()):
            raise bad_request("CreateAccount, CreateContact and CreateOpportunity must be true or false.")
        status = body["Status"]
        if isinstance(status, bool) or not isinstance(status, int) or status not in LEAD_STATUSES[1]:
            raise bad_request(f"{status} is not a valid status code for state code LeadState.Qualified on lead.")
        leads = self.store.tables["leads"]
        key = request.params["key"].strip("'").lower()
        with self.lock:
            lead = self.store.find(leads, key)
            if lead is None:
                raise self.store.not_found(leads, key)
            if lead.values["statecode"] != 0:
                state = LEAD_STATE_NAMES.get(lead.values["statecode"])
                raise ODataError(
                    400, f"The lead is already {state}; only an open lead can be qualified.", CODE_LEAD_NOT_OPEN
                )
            created = self._create_records(lead, request, **flags)
            changes: dict[str, Any] = {"statecode": 1, "statuscode": status}
            targets: dict[str, str] = {}
            for column, (entity_set, row) in {
                "_parentaccountid_value": ("accounts", created.get("accounts")),
                "_parentcontactid_value": ("contacts", created.get("contacts")),
                "_qualifyingopportunityid_value": ("opportunities", created.get("opportunities")),
            }.items():
                if row is not None:
                    changes[column] = row.values[self.store.tables[entity_set].pk]
                    targets[column] = entity_set
            self._set(lead, changes, targets)
            self.count_action("QualifyLead")
            self.log_write("action", leads, lead.values["leadid"], request, body, action="QualifyLead", status=status)
            value = [
                {
                    "@odata.type": f"#Microsoft.Dynamics.CRM.{self.store.tables[entity_set].logical_name}",
                    self.store.tables[entity_set].pk: row.values[self.store.tables[entity_set].pk],
                }
                for entity_set, row in created.items()
            ]
        return Response(200, {"@odata.context": "$metadata#Collection(crmbaseentity)", "value": value})

    def _create_records(
        self, lead: Row, request: Request, CreateAccount: bool, CreateContact: bool, CreateOpportunity: bool
    ) -> dict[str, Row]:
        values, created = lead.values, {}
        tables = self.store.tables
        if CreateAccount:
            if not values.get("companyname"):
                raise bad_request("The lead has no company name, so no account can be created from it.")
            address = {k: v for k, v in values.items() if k.startswith("address1_") and v is not None}
            created["accounts"] = self._insert("accounts", {"name": values["companyname"], **address}, {}, request)
        if CreateContact:
            if not values.get("lastname"):
                raise bad_request("The lead has no last name, so no contact can be created from it.")
            contact = {
                "firstname": values.get("firstname"),
                "lastname": values.get("lastname"),
                "emailaddress1": values.get("emailaddress1"),
                "telephone1": values.get("telephone1"),
                "jobtitle": values.get("jobtitle"),
            }
            targets = {}
            if "accounts" in created:
                contact["_parentcustomerid_value"] = created["accounts"].values["accountid"]
                targets["_parentcustomerid_value"] = "accounts"
            created["contacts"] = self._insert("contacts", contact, targets, request)
        if CreateOpportunity:
            opportunity: dict[str, Any] = {
                "name": values.get("subject") or values.get("companyname") or values.get("fullname"),
                "description": values.get("description"),
                "estimatedvalue": values.get("estimatedamount"),
                "estimatedclosedate": values.get("estimatedclosedate"),
                "_originatingleadid_value": values["leadid"],
            }
            targets = {"_originatingleadid_value": "leads"}
            customer = created.get("accounts") or created.get("contacts")
            if customer is not None:
                entity_set = "accounts" if "accounts" in created else "contacts"
                opportunity["_customerid_value"] = customer.values[tables[entity_set].pk]
                targets["_customerid_value"] = entity_set
            if "accounts" in created:
                opportunity["_parentaccountid_value"] = created["accounts"].values["accountid"]
                targets["_parentaccountid_value"] = "accounts"
            if "contacts" in created:
                opportunity["_parentcontactid_value"] = created["contacts"].values["contactid"]
                targets["_parentcontactid_value"] = "contacts"
            if values.get("_transactioncurrencyid_value"):
                opportunity["_transactioncurrencyid_value"] = values["_transactioncurrencyid_value"]
                targets["_transactioncurrencyid_value"] = "transactioncurrencies"
            created["opportunities"] = self._insert("opportunities", opportunity, targets, request)
        return created

    def _insert(self, entity_set: str, values: dict[str, Any], targets: dict[str, str], request: Request) -> Row:
        table = self.store.tables[entity_set]
        row = self.store.insert(table, {k: v for k, v in values.items() if v is not None}, targets, seeding=True)
        self.log_write("create", table, row.values[table.pk], request, values)
        return row

    def _set(self, lead: Row, changes: dict[str, Any], targets: dict[str, str]) -> None:
        lead.values.update(changes)
        lead.targets.update(targets)
        lead.values["modifiedon"] = self.store.now()
        lead.values["versionnumber"] = self.store.next_version()
