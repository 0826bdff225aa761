"""Starts, on demand, the local services the app's settings leave unset, and writes those settings.

* Storage: ``UseDevelopmentStorage=true`` -> the Azurite on the standard ports 10000-10002, started there
  (under a guard, so it cannot outlive us) unless one is running, so the operator commands share it.
  ``AzureWebJobsStorage`` unset or empty (and no identity-based ``AzureWebJobsStorage__*``), or those ports
  taken by something else -> a private Azurite on free ports. Either way the setting becomes an explicit
  connection string.
* Partner Center: ``PARTNER_CENTER_API_URL`` unset -> the Partner Center emulator (in-process). Writes
  both API URLs, a static ``PARTNER_CENTER_ACCESS_TOKEN``, the emulator's certificate URL prefix and a
  CA bundle file with its test root.
* Dataverse: ``CRM_PROVIDER`` dynamics and ``DATAVERSE_URL`` unset -> the Dataverse emulator
  (in-process), with ``DATAVERSE_URL`` and a static ``DATAVERSE_ACCESS_TOKEN``, and the columns and choice
  values the app's effective field mapping names (``CRM_MAPPING_FILE`` and the field-name settings included).
* Salesforce: ``CRM_PROVIDER`` salesforce and ``SALESFORCE_LOGIN_URL``, ``SALESFORCE_TOKEN_URL`` and
  ``SALESFORCE_INSTANCE_URL`` unset -> the Salesforce emulator (in-process) with the fields, stages and
  help picklist values the effective field mapping names. The app signs in as it would to a real org, by the
  client credentials flow at the emulator's ``/services/oauth2/token``: ``SALESFORCE_LOGIN_URL``,
  ``SALESFORCE_CLIENT_ID`` and a fresh ``SALESFORCE_CLIENT_SECRET`` registered with the emulator (its
  published default secret is refused), ``SALESFORCE_AUTH_FLOW=client_credentials``; a static
  ``SALESFORCE_ACCESS_TOKEN`` is blanked.
* Timer schedules: bindings read ``%..._SCHEDULE%`` straight from app settings, where the app's own
  defaults (``shared.settings``) do not apply, so unset schedules get those defaults written.

The main URL decides whether a service is emulated; once it is, every setting tied to that emulator is
written even over a value from the file (a Microsoft certificate prefix cannot verify the emulator's
callbacks), and the override is reported. Anything for a real service is used as is, so the same
command runs against real services.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from .azurite import ROOT, Azurite, azurite_command, dev_connection_string, free_port
from .guard import spawn_guarded

Progress = Callable[[str], None]
REGISTRATION_PATH = "/webhooks/v1/registration"
SECRET_MARKERS = ("TOKEN", "SECRET", "KEY", "PASSWORD", "AZUREWEBJOBSSTORAGE")
# The emulator's custom columns, by the neutral field the mapping puts in each.
CUSTOM_COLUMNS = {
    "sync": "sync_enabled",
    "referral_id": "referral_id",
    "referral_link": "referral_link",
    "help": "help_code",
    "products": "solution_ids",
    "audit": "audit",
}
# The column type an emulated org gives a mapped column it does not have yet (lookups need a table: not added).
DATAVERSE_KINDS = {
    "text": "string",
    "memo": "memo",
    "list": "string",
    "money": "money",
    "date": "date",
    "choice": "choice",
    "boolean": "bool",
}
SALESFORCE_KINDS = {
    "text": ("string", 255),
    "memo": ("textarea", 32000),
    "list": ("string", 255),
    "money": ("currency", None),
    "date": ("date", None),
    "choice": ("picklist", 255),
    "boolean": ("boolean", None),
}
SALESFORCE_ENDPOINT_SETTINGS = ("SALESFORCE_LOGIN_URL", "SALESFORCE_TOKEN_URL", "SALESFORCE_INSTANCE_URL")


def _unset(settings: Mapping[str, str], name: str) -> bool:
    return not settings.get(name, "").strip()


def needs_azurite(settings: Mapping[str, str]) -> bool:
    value = settings.get("AzureWebJobsStorage", "").strip()
    identity = any(k.startswith("AzureWebJobsStorage__") and v for k, v in settings.items())
    if identity and not value:
        return False
    return not value or value.rstrip(";").lower().replace(" ", "") == "usedevelopmentstorage=true"


def masked(name: str, value: str) -> str:
    """A setting as it may be printed: secrets (and connection strings, which hold keys) hidden."""
    if any(marker in name.upper() for marker in SECRET_MARKERS):
        return value[:4] + "…" if value else ""
    return value


def schedule_defaults() -> dict[str, str]:
    from shared.settings import Settings

    defaults = {}
    for field in Settings.model_fields.values():
        alias = getattr(field.validation_alias, "choices", [None])[0]
        if isinstance(alias, str) and alias.endswith("_SCHEDULE") and isinstance(field.default, str):
            defaults[alias] = field.default
    return defaults


def field_mapping(settings: Mapping[str, str]) -> Any:
    """The app's effective field mapping for these settings (blank ones unset), as the app builds it."""
    from shared.settings import load_settings
    from shared.wiring import load_crm_mapping

    return load_crm_mapping(load_settings(crm_only=True, **{k: v for k, v in settings.items() if v.strip()})).mapping


def missing_columns(mapping: Any, has: Callable[[str], bool]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(column, mapping type, choice values) of each mapped or extra column the org does not have yet."""
    found = []
    for _, entry in mapping.mapped():
        if not has(entry.column) and entry.type != "lookup":
            found.append((entry.column, entry.type, tuple(entry.values.values())))
    for extra in mapping.extra:
        if not has(extra.column) and extra.type != "lookup":
            found.append((extra.column, extra.type, tuple(mapping.fields[extra.source].values.values())))
    return found


# Where ``UseDevelopmentStorage=true`` points every client (Core Tools, Storage Explorer, the operator commands).
STANDARD_AZURITE_PORTS = (10000, 10001, 10002)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as Azurite (Node.js) binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_azurite_guarded(log_path: Path, timeout: float = 30.0, ports: tuple[int, int, int] | None = None) -> Azurite:
    """Azurite in memory, under a guard (see devtools.localhost.guard) in its own process group; on free ports
    unless ``ports`` (blob, queue, table) are given."""
    workdir = tempfile.mkdtemp(prefix="azurite-")
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    cmd = azurite_command(blob, queue, table)
    with open(log_path, "ab") as log:
        guarded = spawn_guarded(cmd, "azurite", cwd=workdir, output=log)
    azurite = Azurite(guarded.process, blob, queue, table, workdir)
    deadline = time.monotonic() + timeout
    for port in (blob, queue, table):
        if not _wait_for_port(port, deadline, guarded.process):
            azurite.stop()
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"Azurite did not start within {timeout:.0f}s: {tail}")
    return azurite


def _wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes]) -> bool:
    import socket

    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


class Stack:
    """Use as a context manager; ``settings`` holds the completed settings after ``start()``."""

    def __init__(
        self, settings: Mapping[str, str], progress: Progress | None = None, workdir: Path | None = None
    ) -> None:
        self.settings: dict[str, str] = dict(settings)
        self.written: dict[str, str] = {}
        self.progress = progress or (lambda message: None)
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cosell-stack-"))
        self.azurite: Azurite | None = None
        self.partner_center: Any = None
        self.dataverse: Any = None
        self.salesforce: Any = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write(self, name: str, value: str, only_if_unset: bool = True) -> None:
        current = self.settings.get(name, "").strip()
        if current and only_if_unset:
            return
        if current and current != value:
            action = "replaced" if value else "cleared"
            self.progress(f"{name}: {action} the configured value, which cannot work with the emulator")
        self.settings[name] = value
        self.written[name] = value

    def _own(self, name: str, value: str) -> None:
        """A setting the emulator we started depends on."""
        self._write(name, value, only_if_unset=False)

    # -- start -----------------------------------------------------------------------------------------
    def start(self) -> dict[str, str]:
        self._write("FUNCTIONS_WORKER_RUNTIME", "python")
        if needs_azurite(self.settings):
            self._start_storage(standard_ports=bool(self.settings.get("AzureWebJobsStorage", "").strip()))
        if _unset(self.settings, "PARTNER_CENTER_API_URL"):
            self._start_partner_center()
        provider = crm_provider(self.settings)
        if provider == "dynamics" and _unset(self.settings, "DATAVERSE_URL"):
            self._start_dataverse()
        if provider == "salesforce" and all(_unset(self.settings, name) for name in SALESFORCE_ENDPOINT_SETTINGS):
            self._start_salesforce()
        for name, value in schedule_defaults().items():
            self._write(name, value)
        return self.settings

    def _start_storage(self, standard_ports: bool) -> None:
        """``UseDevelopmentStorage=true`` means Azurite's standard ports, as for Core Tools, so the operator
        commands (which read the same setting) see the app's data: an Azurite already there is used, else one is
        started there. Storage left unset (the demo), or standard ports taken by something else: a private
        Azurite on free ports."""
        self.settings.pop("AzureWebJobsStorage", None)  # UseDevelopmentStorage=true is no override to report
        if standard_ports and all(_listening(port) for port in STANDARD_AZURITE_PORTS):
            self._own("AzureWebJobsStorage", dev_connection_string(*STANDARD_AZURITE_PORTS))
            self.progress("storage: the Azurite already listening on ports 10000-10002")
            return
        standard = standard_ports and all(_free(port) for port in STANDARD_AZURITE_PORTS)
        started = time.monotonic()
        self.azurite = start_azurite_guarded(
            self.workdir / "azurite.log", ports=STANDARD_AZURITE_PORTS if standard else None
        )
        self._own("AzureWebJobsStorage", self.azurite.connection_string)
        took = time.monotonic() - started
        self.progress(f"Azurite started (queue port {self.azurite.queue_port}) in {took:.1f}s")
        if standard_ports and not standard:
            a = self.azurite
            self.progress(
                "ports 10000-10002 are taken by something other than Azurite, so this Azurite listens on "
                f"{a.blob_port}/{a.queue_port}/{a.table_port}: the operator commands see the app's data only with "
                "AzureWebJobsStorage set to its connection string"
            )

    def _start_partner_center(self) -> None:
        from emulators.partner_center import PartnerCenterEmulator

        # A fresh token per run: the emulator refuses any other, as Partner Center refuses a wrong token.
        token = "pc-emulator-" + secrets.token_hex(8)
        self.partner_center = PartnerCenterEmulator(required_token=token)
        self.partner_center.start()
        url = self.partner_center.url
        self._own("PARTNER_CENTER_ACCESS_TOKEN", token)
        self._own("PARTNER_CENTER_API_URL", url)
        self._own("PARTNER_CENTER_WEBHOOK_API_URL", url)
        # Only the emulator's own certificate path is trusted, the way only Microsoft's is in production.
        cert_url = self.partner_center.certificate_url()
        self._own("PARTNER_CENTER_WEBHOOK_CERT_URL_PREFIXES", cert_url.rsplit("/", 1)[0] + "/")
        bundle = self.partner_center.write_ca_bundle(self.workdir / "partner-center-emulator-ca.pem")
        self._own("PARTNER_CENTER_WEBHOOK_CA_BUNDLE", str(bundle))
        self.progress(f"Partner Center emulator listening on {url}")

    def _start_dataverse(self) -> None:
        from emulators.dataverse import DataverseEmulator
        from emulators.dataverse.schema import CustomColumns

        # The emulated org has the columns and choice values the app's mapping names, as a real org would have to.
        mapping = field_mapping(self.settings)
        columns = CustomColumns(**{attribute: mapping.column(field) for attribute, field in CUSTOM_COLUMNS.items()})
        token = "dataverse-emulator-" + secrets.token_hex(8)
        self.dataverse = DataverseEmulator(
            columns=columns,
            account_country_column=mapping.customer.account_country,
            help_options=mapping.fields["help_code"].values.values(),
            required_token=token,
        )
        table = self.dataverse.tables["opportunities"]
        for column, kind, values in missing_columns(mapping, lambda name: name in table.columns):
            self.dataverse.add_column("opportunities", column, DATAVERSE_KINDS[kind], values)
        self.dataverse.start()
        self._own("DATAVERSE_ACCESS_TOKEN", token)
        self._own("DATAVERSE_URL", self.dataverse.url)
        self.progress(f"Dataverse emulator listening on {self.dataverse.url}")

    def _start_salesforce(self) -> None:
        from emulators.salesforce.emulator import DEFAULT_CLIENT_ID, SalesforceEmulator
        from emulators.salesforce.schema import DEFAULT_STAGES, CustomFields

        # The emulated org has the fields, stages and picklist values the app's mapping names, as a real org would
        # have to; a stage the standard org lacks is added.
        mapping = field_mapping(self.settings)
        fields = CustomFields(**{attribute: mapping.column(field) for attribute, field in CUSTOM_COLUMNS.items()})
        stages = {name: (closed, won) for name, closed, won in DEFAULT_STAGES}
        for stage in mapping.status.stages.values():
            stages.setdefault(stage, mapping.status.flags(stage))
        # "How can Microsoft help?" is a restricted picklist: the org lists the values the app will write.
        help_values = tuple(mapping.fields["help_code"].values.values())
        client_id = self.settings.get("SALESFORCE_CLIENT_ID", "").strip() or DEFAULT_CLIENT_ID
        # A fresh secret per run for the connected app: the emulator refuses any other, as Salesforce would.
        secret = "sf-emulator-" + secrets.token_hex(16)
        self.salesforce = SalesforceEmulator(
            fields=fields, stages=stages, help_values=help_values, clients={client_id: secret}
        )
        opportunity = self.salesforce.objects["Opportunity"]
        for column, kind, values in missing_columns(mapping, lambda name: opportunity.field(name) is not None):
            field_type, length = SALESFORCE_KINDS[kind]
            self.salesforce.add_field("Opportunity", column, field_type, length, values)
        self.salesforce.start()
        self._own("SALESFORCE_AUTH_FLOW", "client_credentials")
        self._own("SALESFORCE_LOGIN_URL", self.salesforce.url)
        self._own("SALESFORCE_CLIENT_ID", client_id)
        self._own("SALESFORCE_CLIENT_SECRET", secret)
        if not _unset(self.settings, "SALESFORCE_ACCESS_TOKEN"):
            # A static token would win over the sign-in, and no token from elsewhere is valid here.
            self._own("SALESFORCE_ACCESS_TOKEN", "")
        self.progress(f"Salesforce emulator listening on {self.salesforce.url}")

    # -- webhook registration ----------------------------------------------------------------------------
    def register_webhook(self, webhook_url: str) -> dict[str, Any] | None:
        """Register ``webhook_url`` with the Partner Center emulator through its Webhooks API.

        Only for our own emulator: registering with the real Partner Center is an operator's decision
        (``python -m shared register-webhook``), never a side effect of starting the app.
        """
        if self.partner_center is None:
            return None
        from shared.sync.webhook_intake import REFERRAL_EVENTS, TEST_EVENT

        url = self.settings["PARTNER_CENTER_WEBHOOK_API_URL"].rstrip("/") + REGISTRATION_PATH
        headers = {"Authorization": f"Bearer {self.settings['PARTNER_CENTER_ACCESS_TOKEN']}"}
        body = {"WebhookUrl": webhook_url, "WebhookEvents": [TEST_EVENT, *sorted(REFERRAL_EVENTS)]}
        response = requests.post(url, json=body, headers=headers, timeout=10)
        if response.status_code == 409:
            response = requests.put(url, json=body, headers=headers, timeout=10)
        response.raise_for_status()
        self.progress(f"webhook registered with the Partner Center emulator: {webhook_url}")
        return dict(response.json())

    # -- stop --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        for emulator in (self.partner_center, self.dataverse, self.salesforce):
            if emulator is not None:
                emulator.stop()
        self.partner_center = self.dataverse = self.salesforce = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def crm_provider(settings: Mapping[str, str]) -> str:
    """``CRM_PROVIDER`` as the app reads it (case-insensitive, default ``dynamics``)."""
    return settings.get("CRM_PROVIDER", "").strip().lower() or "dynamics"


def hermetic_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment without any app or host setting: the demo runs on the embedded default only."""
    from shared.settings import Settings

    names = {"AZUREWEBJOBSSTORAGE", "FUNCTIONS_WORKER_RUNTIME"}
    for field in Settings.model_fields.values():
        for alias in getattr(field.validation_alias, "choices", []):
            names.add(str(alias).upper())
    return {
        k: v
        for k, v in environ.items()
        if k.upper() not in names and not k.upper().startswith(("AZUREWEBJOBSSTORAGE__", "AZUREFUNCTIONSJOBHOST__"))
    }


def project_pythonpath(environ: Mapping[str, str]) -> str:
    existing = environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(ROOT), existing) if p)
