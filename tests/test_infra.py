"""Infrastructure: the Bicep parses, infra/azuredeploy.json says exactly what the Bicep says, the
security properties hold in both, and checkov reports nothing that the skip list does not explain.

The Bicep is parsed with pycep-parser 0.7.1 and scanned with checkov 3.3.30; each lives in its own venv
(``.venv-infra``, ``.venv-checkov``) because checkov pins an older pycep. ``make test`` creates both and
sets INFRA_TOOLS_REQUIRED=1, so there these tests fail rather than skip when a tool is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN_BICEP = INFRA / "main.bicep"
ARM_TEMPLATE = INFRA / "azuredeploy.json"
PARAMETERS_FILE = INFRA / "main.parameters.json"
SKIP_LIST = INFRA / "checkov-skips.yaml"
INFRA_PYTHON = ROOT / ".venv-infra" / "bin" / "python"
CHECKOV_PYTHON = ROOT / ".venv-checkov" / "bin" / "python"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

ARM_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Built-in role definition ids the identity needs, and nothing more.
ROLE_IDS = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

# (resource type, property path, required value) - must hold for every resource of that type.
SECURITY_PROPERTIES = [
    ("Microsoft.Web/serverfarms", "sku.name", "FC1"),
    ("Microsoft.Web/serverfarms", "sku.tier", "FlexConsumption"),
    ("Microsoft.Web/serverfarms", "properties.reserved", True),
    ("Microsoft.Web/sites", "kind", "functionapp,linux"),
    ("Microsoft.Web/sites", "identity.type", "UserAssigned"),
    ("Microsoft.Web/sites", "properties.httpsOnly", True),
    ("Microsoft.Web/sites", "properties.siteConfig.minTlsVersion", "1.2"),
    ("Microsoft.Web/sites", "properties.siteConfig.scmMinTlsVersion", "1.2"),
    ("Microsoft.Web/sites", "properties.siteConfig.ftpsState", "Disabled"),
    ("Microsoft.Web/sites", "properties.siteConfig.remoteDebuggingEnabled", False),
    ("Microsoft.Web/sites", "properties.functionAppConfig.runtime.name", "python"),
    ("Microsoft.Web/sites", "properties.functionAppConfig.runtime.version", "3.11"),
    ("Microsoft.Web/sites", "properties.functionAppConfig.deployment.storage.type", "blobContainer"),
    (
        "Microsoft.Web/sites",
        "properties.functionAppConfig.deployment.storage.authentication.type",
        "UserAssignedIdentity",
    ),
    ("Microsoft.Web/sites/basicPublishingCredentialsPolicies", "properties.allow", False),
    ("Microsoft.Web/sites/extensions", "properties.remoteBuild", False),
    ("Microsoft.Storage/storageAccounts", "properties.allowSharedKeyAccess", False),
    ("Microsoft.Storage/storageAccounts", "properties.defaultToOAuthAuthentication", True),
    ("Microsoft.Storage/storageAccounts", "properties.allowBlobPublicAccess", False),
    ("Microsoft.Storage/storageAccounts", "properties.minimumTlsVersion", "TLS1_2"),
    ("Microsoft.Storage/storageAccounts", "properties.supportsHttpsTrafficOnly", True),
    ("Microsoft.Storage/storageAccounts/blobServices/containers", "properties.publicAccess", "None"),
    ("Microsoft.KeyVault/vaults", "properties.enableRbacAuthorization", True),
    ("Microsoft.KeyVault/vaults", "properties.enableSoftDelete", True),
    ("Microsoft.KeyVault/vaults", "properties.enablePurgeProtection", True),
    ("Microsoft.KeyVault/vaults/secrets", "properties.contentType", "text/plain"),
    ("Microsoft.Insights/components", "properties.DisableLocalAuth", True),
]

REQUIRED_APP_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AZURE_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "KEY_VAULT_URI",
    "CRM_PROVIDER",
    "CHECKMARK_ENABLED",
    "SYNC_COSELL_ONLY",
    "CRM_POLL_SCHEDULE",
    "RECONCILE_SCHEDULE",
    "SYNC_LINKS_TABLE",
    "SYNC_STATE_TABLE",
    "SYNC_AUDIT_TABLE",
    "PARTNER_CENTER_TENANT_ID",
    "PARTNER_CENTER_CLIENT_ID",
    "PARTNER_CENTER_CLIENT_SECRET",
    "PARTNER_CENTER_REFRESH_TOKEN",
    "DATAVERSE_URL",
    "SALESFORCE_LOGIN_URL",
    "SALESFORCE_CLIENT_ID",
    "SALESFORCE_CLIENT_SECRET",
}
# A connection string (shared key) or a package URL setting has no place on this plan.
FORBIDDEN_APP_SETTINGS = {"AzureWebJobsStorage", "WEBSITE_RUN_FROM_PACKAGE", "FUNCTIONS_WORKER_RUNTIME"}
SECRET_SETTING = re.compile(r"(SECRET|TOKEN|PASSWORD)$")

EXPECTED_QUEUES = ["sync-jobs", "sync-jobs-poison"]
EXPECTED_TABLES = {"links": "SyncLinks", "state": "SyncState", "audit": "SyncAudit"}
WEBHOOK_ROUTE = "/api/webhooks/partner-center"

# Keys of a Bicep resource body / ARM resource that are about placement, not configuration.
BICEP_META_KEYS = {"name", "parent", "dependsOn", "scope"}
ARM_META_KEYS = {"type", "apiVersion", "name", "dependsOn", "condition", "copy", "scope", "comments"}


def _tools_required() -> bool:
    return os.environ.get("INFRA_TOOLS_REQUIRED") == "1"


def _need(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"{what} not found at {path.relative_to(ROOT)}; run `make infra-tools` (make test does this)"
    if _tools_required():
        pytest.fail(message)
    pytest.skip(message)


# ==================================================================================================
# Loading
# ==================================================================================================

_PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
out = {}
for name in sys.argv[1:]:
    out[name] = BicepParser().parse(file_path=Path(name))
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def bicep() -> dict[str, dict]:
    """Every Bicep file under infra/, parsed by pycep, keyed by its path relative to infra/."""
    _need(INFRA_PYTHON, "pycep-parser venv")
    files = sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep"))
    result = subprocess.run(
        [str(INFRA_PYTHON), "-c", _PARSE_SCRIPT, *files],
        cwd=INFRA,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pycep could not parse the Bicep:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def arm() -> dict:
    return json.loads(ARM_TEMPLATE.read_text(encoding="utf-8"))


# ==================================================================================================
# Helpers: pycep structures
# ==================================================================================================


def unwrap(resource: dict) -> tuple[dict, Any, Any]:
    """(body, condition, loop) of a pycep resource or module declaration."""
    config = resource["config"]
    if isinstance(config, dict) and "config" in config and ("condition" in config or "loop_type" in config):
        return config["config"], config.get("condition"), config.get("loop_type")
    return config, None, None


def deployed_resources(parsed: dict) -> dict[str, dict]:
    return {name: r for name, r in (parsed.get("resources") or {}).items() if not r.get("existing")}


def is_expression_node(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("function", "operator")


def decorators(declaration: dict) -> dict[str, Any]:
    return {d["type"]: d.get("argument") for d in declaration.get("decorators") or []}


def bicep_names(parsed: dict) -> tuple[set[str], set[str]]:
    return set(parsed.get("parameters") or {}), set(parsed.get("variables") or {})


def interpolation_template(text: str) -> str:
    """'a${x}b${y}' -> 'a{0}b{1}' (the first argument Bicep passes to format())."""
    counter = iter(range(1000))
    return re.sub(r"\$\{[^}]*\}", lambda _m: "{" + str(next(counter)) + "}", text)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ==================================================================================================
# Helpers: ARM expressions
# ==================================================================================================


def is_arm_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and not value.startswith("[[") and value.endswith("]")


def split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of an ARM function call's argument list."""
    args, depth, quoted, current = [], 0, False, []
    for char in text:
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if current:
        args.append("".join(current).strip())
    return args


def call_args(expression: str, function: str) -> list[str] | None:
    body = expression[1:-1] if is_arm_expression(expression) else expression
    if not body.startswith(function + "(") or not body.endswith(")"):
        return None
    return split_args(body[len(function) + 1 : -1])


def arm_token(text: str) -> str:
    """parameters('x').y -> x.y ; variables('x') -> x ; 'lit' -> lit."""
    match = re.fullmatch(r"(?:parameters|variables)\('(\w+)'\)\[copyIndex\(\)\]", text)
    if match:
        return match.group(1) + "[*]"
    match = re.fullmatch(r"(?:parameters|variables)\('(\w+)'\)((?:\.\w+)*)", text)
    if match:
        return match.group(1) + match.group(2)
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1]
    return text


def bicep_token(value: Any) -> str:
    """Identifier, literal or a.b property access of a pycep value, as text."""
    if isinstance(value, str):
        return value
    if is_expression_node(value) and "operator" in value and value["operator"]["type"] == "property_accessor":
        ops = value["operator"]["operands"]
        return bicep_token(ops["operand_1"]) + "." + bicep_token(ops["operand_2"])
    return json.dumps(value, sort_keys=True)


def name_key_bicep(name: Any, loop: dict | None = None) -> tuple[str, ...]:
    if loop is not None and name == loop["detail"]["item_name"]:
        return (loop["detail"]["array_name"] + "[*]",)
    if is_expression_node(name) and "function" in name and name["function"]["type"] == "guid":
        args = list(name["function"]["parameters"].values())[1:]
        return ("guid", *(bicep_token(a) for a in args if a is not None))
    return (bicep_token(name),)


def name_key_arm(name: str) -> tuple[str, ...]:
    if not is_arm_expression(name):
        return (name.rsplit("/", 1)[-1],)
    guid = call_args(name, "guid")
    if guid is not None:
        return ("guid", *(arm_token(a) for a in guid[1:]))
    fmt = call_args(name, "format")
    if fmt is not None:
        return (arm_token(fmt[-1]),)
    return (arm_token(name[1:-1]),)


# ==================================================================================================
# Structural comparison
# ==================================================================================================


class Mismatch(list):
    def add(self, path: str, message: str) -> None:
        self.append(f"{path}: {message}")


def compare(b: Any, a: Any, path: str, scope: tuple[set[str], set[str]], out: Mismatch) -> None:
    """Compare a pycep value with its ARM counterpart: literals must be equal, references must point
    at the same parameter or variable, interpolations must compile to the same format() template."""
    params, variables = scope
    if isinstance(b, bool) or isinstance(b, (int, float)) or b is None:
        if a != b or type(a) is not type(b):
            out.add(path, f"Bicep {b!r} but ARM {a!r}")
        return
    if isinstance(b, str):
        if IDENTIFIER.match(b) and b in params:
            if a != f"[parameters('{b}')]":
                out.add(path, f"Bicep parameter {b} but ARM {a!r}")
        elif IDENTIFIER.match(b) and b in variables:
            if a != f"[variables('{b}')]":
                out.add(path, f"Bicep variable {b} but ARM {a!r}")
        elif "${" in b:
            template = interpolation_template(b)
            if not is_arm_expression(a) or f"format('{template}'" not in a:
                out.add(path, f"Bicep '{b}' should compile to format('{template}', ...), ARM has {a!r}")
        elif is_arm_expression(a):
            if not IDENTIFIER.match(b):
                out.add(path, f"Bicep literal {b!r} but ARM expression {a!r}")
        elif a != b:
            out.add(path, f"Bicep {b!r} but ARM {a!r}")
        return
    if is_expression_node(b):
        if not is_arm_expression(a):
            out.add(path, f"Bicep expression but ARM literal {a!r}")
        elif "function" in b:
            function = camel(b["function"]["type"])
            if f"{function}(" not in a:
                out.add(path, f"Bicep calls {function}() but ARM has {a!r}")
        return
    if isinstance(b, list):
        if not isinstance(a, list) or len(a) != len(b):
            out.add(path, f"Bicep array of {len(b)} but ARM {a!r}")
            return
        for index, (bv, av) in enumerate(zip(b, a, strict=True)):
            compare(bv, av, f"{path}[{index}]", scope, out)
        return
    if isinstance(b, dict):
        if not isinstance(a, dict):
            out.add(path, f"Bicep object but ARM {a!r}")
            return
        keys = {}
        for key in b:
            plain = key[1:-1] if key.startswith("'") and key.endswith("'") else key
            keys[key] = plain
        arm_keys = set(a)
        for key, plain in keys.items():
            if "${" in plain:
                template = interpolation_template(plain)
                match = [k for k in arm_keys if is_arm_expression(k) and f"format('{template}'" in k]
                if len(match) != 1:
                    out.add(f"{path}.{plain}", "interpolated key missing in ARM")
                    continue
                arm_keys.discard(match[0])
                compare(b[key], a[match[0]], f"{path}.{plain}", scope, out)
            elif plain not in a:
                out.add(f"{path}.{plain}", "missing in ARM")
            else:
                arm_keys.discard(plain)
                compare(b[key], a[plain], f"{path}.{plain}", scope, out)
        for extra in sorted(arm_keys):
            out.add(f"{path}.{extra}", "only in ARM")
        return
    out.add(path, f"unhandled Bicep value {b!r}")


def compare_parameters(b: dict, a: dict, where: str, out: Mismatch) -> None:
    scope = bicep_names(b)
    bp, ap = b.get("parameters") or {}, a.get("parameters") or {}
    if list(bp) != list(ap):
        out.add(f"{where}.parameters", f"Bicep {list(bp)} but ARM {list(ap)}")
    for name in bp.keys() & ap.keys():
        decl, arm_param, path = bp[name], ap[name], f"{where}.parameters.{name}"
        deco = decorators(decl)
        expected_type = decl["type"]
        if "secure" in deco:
            expected_type = {"string": "securestring", "object": "secureObject"}[expected_type]
        if arm_param.get("type") != expected_type:
            out.add(path, f"type {expected_type} in Bicep, {arm_param.get('type')} in ARM")
        if decl.get("default") is None:
            if "defaultValue" in arm_param:
                out.add(path, "default only in ARM")
        else:
            compare(decl["default"], arm_param.get("defaultValue", "<none>"), path + ".default", scope, out)
        for bicep_key, arm_key in (
            ("allowed", "allowedValues"),
            ("min_length", "minLength"),
            ("max_length", "maxLength"),
            ("min_value", "minValue"),
            ("max_value", "maxValue"),
        ):
            if deco.get(bicep_key) != arm_param.get(arm_key):
                out.add(path, f"{arm_key}: Bicep {deco.get(bicep_key)!r}, ARM {arm_param.get(arm_key)!r}")
        if deco.get("description") != (arm_param.get("metadata") or {}).get("description"):
            out.add(path, "description differs")


def compare_outputs(b: dict, a: dict, where: str, out: Mismatch) -> None:
    scope = bicep_names(b)
    bo, ao = b.get("outputs") or {}, a.get("outputs") or {}
    if list(bo) != list(ao):
        out.add(f"{where}.outputs", f"Bicep {list(bo)} but ARM {list(ao)}")
    for name in bo.keys() & ao.keys():
        path = f"{where}.outputs.{name}"
        if bo[name]["type"] != ao[name]["type"]:
            out.add(path, f"type {bo[name]['type']} vs {ao[name]['type']}")
        value = bo[name]["value"]
        if isinstance(value, str) and "${" in value:
            # Interpolations that reach module outputs compile to reference(...) inside format().
            template = interpolation_template(value)
            if f"format('{template}'" not in ao[name]["value"]:
                out.add(path, f"expected format('{template}', ...)")
        else:
            compare(value, ao[name]["value"], path, scope, out)
        description = decorators(bo[name]).get("description")
        if description != (ao[name].get("metadata") or {}).get("description"):
            out.add(path, "description differs")


def compare_template(files: dict[str, dict], path: str, a: dict, out: Mismatch) -> None:
    """Compare one Bicep file (and, through its modules, the files it uses) with an ARM template."""
    b = files[path]
    where = path
    scope = bicep_names(b)
    if a.get("$schema") != ARM_SCHEMA:
        out.add(where, f"$schema {a.get('$schema')!r}")
    compare_parameters(b, a, where, out)
    compare_outputs(b, a, where, out)

    bvars, avars = b.get("variables") or {}, a.get("variables") or {}
    if set(bvars) != set(avars):
        out.add(f"{where}.variables", f"Bicep {sorted(bvars)} but ARM {sorted(avars)}")
    for name in bvars.keys() & avars.keys():
        compare(bvars[name]["value"], avars[name], f"{where}.variables.{name}", scope, out)

    arm_resources = list(a.get("resources") or [])
    arm_modules = {r["name"]: r for r in arm_resources if r["type"] == "Microsoft.Resources/deployments"}
    arm_plain = [r for r in arm_resources if r["type"] != "Microsoft.Resources/deployments"]

    # Resources: matched by type and name.
    bres = deployed_resources(b)
    existing = {n: r for n, r in (b.get("resources") or {}).items() if r.get("existing")}
    bicep_index = {}
    for symbol, resource in bres.items():
        body, _, loop = unwrap(resource)
        bicep_index[(resource["type"], name_key_bicep(body["name"], loop))] = symbol
    arm_index = {(r["type"], name_key_arm(r["name"])): r for r in arm_plain}
    if len(arm_index) != len(arm_plain):
        out.add(where, "two ARM resources share a type and name")
    for key in sorted(bicep_index.keys() - arm_index.keys()):
        out.add(where, f"resource {key} only in Bicep")
    for key in sorted(arm_index.keys() - bicep_index.keys()):
        out.add(where, f"resource {key} only in ARM")
    for key in bicep_index.keys() & arm_index.keys():
        symbol = bicep_index[key]
        resource, arm_resource = bres[symbol], arm_index[key]
        rpath = f"{where}:{symbol}"
        body, condition, loop = unwrap(resource)
        if resource["api_version"] != arm_resource["apiVersion"]:
            out.add(rpath, f"apiVersion {resource['api_version']} vs {arm_resource['apiVersion']}")
        if (condition is not None) != ("condition" in arm_resource):
            out.add(rpath, "condition differs")
        elif condition is not None:
            compare(condition, arm_resource["condition"], rpath + ".condition", scope, out)
        if (loop is not None) != ("copy" in arm_resource):
            out.add(rpath, "loop / copy differs")
        elif loop is not None:
            array = loop["detail"]["array_name"]
            if f"length(parameters('{array}'))" not in arm_resource["copy"]["count"] and (
                f"length(variables('{array}'))" not in arm_resource["copy"]["count"]
            ):
                out.add(rpath, f"copy does not iterate {array}")
        if "scope" in body:
            target = existing.get(body["scope"]) or bres.get(body["scope"])
            if target is None or scope_format(target["type"]) not in arm_resource.get("scope", ""):
                out.add(rpath, f"scope {body['scope']} not matched by ARM scope {arm_resource.get('scope')!r}")
        elif "scope" in arm_resource:
            out.add(rpath, "scope only in ARM")
        for dependency in body.get("dependsOn") or []:
            if not any(dependency_matches(dependency, b, dep) for dep in arm_resource.get("dependsOn") or []):
                out.add(rpath, f"explicit dependsOn {dependency} missing in ARM")
        bicep_body = {k: v for k, v in body.items() if k not in BICEP_META_KEYS}
        arm_body = {k: v for k, v in arm_resource.items() if k not in ARM_META_KEYS}
        compare(bicep_body, arm_body, rpath, scope, out)

    # Modules: nested deployments with inner scope, same parameters, same template.
    bmods = b.get("modules") or {}
    bmod_names = {}
    for symbol, module in bmods.items():
        body, _, _ = unwrap(module)
        bmod_names[body["name"]] = symbol
    if set(bmod_names) != set(arm_modules):
        out.add(where, f"modules {sorted(bmod_names)} vs deployments {sorted(arm_modules)}")
    for name in bmod_names.keys() & arm_modules.keys():
        symbol = bmod_names[name]
        module, deployment = bmods[symbol], arm_modules[name]
        mpath = f"{where}:module {symbol}"
        if module["type"] != "local":
            out.add(mpath, f"module source type {module['type']} (registry modules are not allowed)")
            continue
        body, condition, loop = unwrap(module)
        if condition is not None or loop is not None:
            out.add(mpath, "conditional or looped modules are not expected")
        props = deployment["properties"]
        if props.get("expressionEvaluationOptions") != {"scope": "inner"} or props.get("mode") != "Incremental":
            out.add(mpath, "deployment must be Incremental with inner expression scope")
        bparams = body.get("params") or {}
        aparams = props.get("parameters") or {}
        if set(bparams) != set(aparams):
            out.add(mpath, f"params {sorted(bparams)} vs {sorted(aparams)}")
        for pname in bparams.keys() & aparams.keys():
            compare(bparams[pname], aparams[pname]["value"], f"{mpath}.params.{pname}", scope, out)
        for dependency in body.get("dependsOn") or []:
            if not any(dependency_matches(dependency, b, dep) for dep in deployment.get("dependsOn") or []):
                out.add(mpath, f"explicit dependsOn {dependency} missing in ARM")
        module_path = (Path(path).parent / module["detail"]["path"]).as_posix()
        if module_path not in files:
            out.add(mpath, f"module file {module_path} not found")
            continue
        compare_template(files, module_path, props["template"], out)


def scope_format(resource_type: str) -> str:
    """How Bicep writes a scope of that type in ARM: 'A.B/vaults/secrets' -> "format('A.B/vaults/{0}/secrets/{1}'"."""
    namespace, *types = resource_type.split("/")
    return "format('" + namespace + "".join(f"/{t}/{{{i}}}" for i, t in enumerate(types)) + "'"


def dependency_matches(symbol: str, parsed: dict, arm_dependency: str) -> bool:
    modules = parsed.get("modules") or {}
    if symbol in modules:
        body, _, _ = unwrap(modules[symbol])
        return arm_dependency == f"[resourceId('Microsoft.Resources/deployments', '{body['name']}')]"
    resource = (parsed.get("resources") or {}).get(symbol)
    if resource is None:
        return False
    body, _, _ = unwrap(resource)
    token = name_key_bicep(body["name"])[-1]
    return arm_dependency.startswith(f"[resourceId('{resource['type']}'") and token in arm_dependency


# ==================================================================================================
# Views used by the property tests: every resource of a type, from both sides
# ==================================================================================================


def walk_bicep(files: dict[str, dict], path: str = "main.bicep") -> list[tuple[str, dict, dict]]:
    """(file, pycep resource, body) for every deployed resource reachable from path."""
    parsed = files[path]
    found = [(path, r, unwrap(r)[0]) for r in deployed_resources(parsed).values()]
    for module in (parsed.get("modules") or {}).values():
        found += walk_bicep(files, (Path(path).parent / module["detail"]["path"]).as_posix())
    return found


def walk_arm(template: dict) -> list[dict]:
    found = []
    for resource in template.get("resources") or []:
        if resource["type"] == "Microsoft.Resources/deployments":
            found += walk_arm(resource["properties"]["template"])
        else:
            found.append(resource)
    return found


def dig(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return KeyError(dotted)
        value = value[part]
    return value


def arm_nested(template: dict, deployment: str) -> dict:
    for resource in template["resources"]:
        if resource["type"] == "Microsoft.Resources/deployments" and resource["name"] == deployment:
            return resource["properties"]["template"]
    raise AssertionError(f"no nested deployment {deployment}")


def setting_names(value: Any) -> set[str]:
    """Names of {name, value} app-setting objects anywhere inside a pycep value or an ARM template
    (including createObject('name', 'X', 'value', ...) inside ARM expressions; other {name, ...} objects,
    such as the always-ready groups, are not app settings)."""
    names: set[str] = set()
    if isinstance(value, dict):
        if set(value) == {"name", "value"} and isinstance(value["name"], str):
            names.add(value["name"])
        for item in value.values():
            names |= setting_names(item)
    elif isinstance(value, list):
        for item in value:
            names |= setting_names(item)
    elif isinstance(value, str):
        names |= set(re.findall(r"createObject\('name', '(\w+)', 'value', ", value))
    return names


# ==================================================================================================
# Tests: Bicep itself
# ==================================================================================================


def test_bicep_files_parse_and_target_a_resource_group(bicep):
    assert "main.bicep" in bicep
    assert {p for p in bicep if p.startswith("modules/")}, "main.bicep should be composed of modules"
    for path, parsed in bicep.items():
        scope = (parsed.get("globals") or {}).get("scope", {}).get("value", "resourceGroup")
        assert scope == "resourceGroup", f"{path}: targetScope {scope}"
    assert re.search(r"^targetScope = 'resourceGroup'$", MAIN_BICEP.read_text(), re.M)


def test_modules_are_local_files_and_all_are_used(bicep):
    used = set()
    for path, parsed in bicep.items():
        for symbol, module in (parsed.get("modules") or {}).items():
            assert module["type"] == "local", f"{path}: module {symbol} is not a local file"
            used.add((Path(path).parent / module["detail"]["path"]).as_posix())
    assert used == {p for p in bicep if p != "main.bicep"}, "every module file is used exactly from main"


def test_every_parameter_is_described(bicep):
    for path, parsed in bicep.items():
        for name, decl in (parsed.get("parameters") or {}).items():
            assert decorators(decl).get("description"), f"{path}: parameter {name} has no description"
        for name, decl in (parsed.get("outputs") or {}).items():
            if path == "main.bicep":
                assert decorators(decl).get("description"), f"main.bicep: output {name} has no description"


def test_user_facing_parameters_have_safe_defaults_matching_the_app(bicep):
    from shared.settings import Settings

    params = bicep["main.bicep"]["parameters"]
    app_default = {name: field.default for name, field in Settings.model_fields.items()}
    assert params["crmProvider"]["default"] == app_default["crm_provider"] == "dynamics"
    assert decorators(params["crmProvider"])["allowed"] == ["dynamics", "salesforce"]
    assert params["checkmarkEnabled"]["default"] is app_default["checkmark_enabled"] is True
    assert params["syncCosellOnly"]["default"] is app_default["sync_cosell_only"] is True
    assert params["crmPollSchedule"]["default"] == app_default["crm_poll_schedule"]
    assert params["reconcileSchedule"]["default"] == app_default["reconcile_schedule"]
    for name in ("dataverseUrl", "salesforceLoginUrl", "partnerCenterClientId", "partnerCenterTenantId"):
        assert name in params
    for name in ("partnerCenterClientSecret", "dataverseClientSecret", "salesforceClientSecret"):
        assert "secure" in decorators(params[name]), f"{name} must be @secure()"
        assert params[name]["default"] == "", f"{name} must not have a default value"
    assert params["deployPackage"]["default"] is True
    assert params["maximumInstanceCount"]["default"] == 40


def test_the_salesforce_login_url_has_no_default_and_asks_for_the_my_domain(bicep, arm):
    # login.salesforce.com refuses the client credentials flow and the app refuses it at start-up (issue 13): the
    # deployment names no generic host; an empty value leaves the app answering "not configured".
    param = bicep["main.bicep"]["parameters"]["salesforceLoginUrl"]
    assert param["default"] == "" and arm["parameters"]["salesforceLoginUrl"]["defaultValue"] == ""
    assert "https://<mydomain>.my.salesforce.com" in decorators(param)["description"]
    for path in [*INFRA.rglob("*.bicep"), ARM_TEMPLATE, INFRA / "main.parameters.json"]:
        text = path.read_text(encoding="utf-8")
        assert "login.salesforce.com'" not in text and '"https://login.salesforce.com"' not in text, path


def test_no_shared_keys_or_connection_strings_anywhere():
    for path in [*INFRA.rglob("*.bicep"), ARM_TEMPLATE]:
        text = path.read_text(encoding="utf-8")
        for needle in ("listKeys", "AccountKey=", "DefaultEndpointsProtocol", "WEBSITE_RUN_FROM_PACKAGE", "br/public:"):
            assert needle not in text, f"{path.relative_to(ROOT)} contains {needle}"


# ==================================================================================================
# Tests: Bicep <-> ARM lockstep
# ==================================================================================================


def test_arm_template_is_strict_json_for_a_resource_group(arm):
    assert arm["$schema"] == ARM_SCHEMA
    assert arm["contentVersion"] == "1.0.0.0"
    json.loads(ARM_TEMPLATE.read_text(encoding="utf-8"))  # strict: no comments, no trailing commas


def test_arm_template_matches_bicep(bicep, arm):
    mismatches = Mismatch()
    compare_template(bicep, "main.bicep", arm, mismatches)
    b_meta = (bicep["main.bicep"].get("metadata") or {}).get("description", {}).get("value")
    if b_meta != (arm.get("metadata") or {}).get("description"):
        mismatches.add("metadata", "description differs")
    assert not mismatches, (
        "infra/azuredeploy.json differs from the Bicep (recompile with `make arm` where Bicep is installed, "
        "or edit both):\n  " + "\n  ".join(sorted(mismatches))
    )


def test_same_resource_types_and_api_versions(bicep, arm):
    bicep_types = sorted((r["type"], r["api_version"]) for _, r, _ in walk_bicep(bicep))
    arm_types = sorted((r["type"], r["apiVersion"]) for r in walk_arm(arm))
    assert bicep_types == arm_types


@pytest.mark.parametrize(("rtype", "path", "expected"), SECURITY_PROPERTIES)
def test_security_property_in_bicep_and_arm(bicep, arm, rtype, path, expected):
    bicep_values = [dig(body, path) for _, r, body in walk_bicep(bicep) if r["type"] == rtype]
    arm_values = [dig(r, path) for r in walk_arm(arm) if r["type"] == rtype]
    assert bicep_values, f"no {rtype} in the Bicep"
    assert len(bicep_values) == len(arm_values)
    for values, side in ((bicep_values, "Bicep"), (arm_values, "ARM")):
        for value in values:
            assert not isinstance(value, KeyError), f"{side}: {rtype} lacks {path}"
            if expected is not None:
                assert value == expected, f"{side}: {rtype} {path} = {value!r}, expected {expected!r}"


def test_role_assignments_use_named_constants_least_privilege(bicep, arm):
    rbac = bicep["modules/rbac.bicep"]
    constants = {name: v["value"] for name, v in rbac["variables"].items() if name.endswith("RoleId")}
    assert set(constants.values()) == set(ROLE_IDS), "the role set changed; update ROLE_IDS with a reason"
    arm_rbac = arm_nested(arm, "rbac")
    assert {k: v for k, v in arm_rbac["variables"].items() if k.endswith("RoleId")} == constants

    scopes = {n: r["type"] for n, r in rbac["resources"].items() if r.get("existing")}
    # (role, scope type) -> condition of the assignment (None: always made)
    expected_identity = {
        ("storageBlobDataOwnerRoleId", "Microsoft.Storage/storageAccounts"): None,
        ("storageQueueDataContributorRoleId", "Microsoft.Storage/storageAccounts"): None,
        ("storageTableDataContributorRoleId", "Microsoft.Storage/storageAccounts"): None,
        ("keyVaultSecretsUserRoleId", "Microsoft.KeyVault/vaults"): None,
        ("keyVaultSecretsOfficerRoleId", "Microsoft.KeyVault/vaults/secrets"): "refreshTokenSecretExists",
        ("monitoringMetricsPublisherRoleId", "Microsoft.Insights/components"): None,
    }
    # The sign-in stores the refresh token; the cosell CLI reads and writes the tables and queues (az login).
    expected_operator = {
        ("keyVaultSecretsOfficerRoleId", "Microsoft.KeyVault/vaults"),
        ("storageTableDataContributorRoleId", "Microsoft.Storage/storageAccounts"),
        ("storageQueueDataContributorRoleId", "Microsoft.Storage/storageAccounts"),
    }
    identity_roles, operator_roles = {}, set()
    for symbol, resource in deployed_resources(rbac).items():
        body, condition, _ = unwrap(resource)
        role = body["properties"]["roleDefinitionId"]
        assert is_expression_node(role) and role["function"]["type"] == "subscription_resource_id", symbol
        constant = role["function"]["parameters"]["resource_name_1"]
        assert constant in constants, f"{symbol}: role must be a named constant, not {constant!r}"
        if body["properties"]["principalId"] == "principalId":
            assert body["properties"]["principalType"] == "ServicePrincipal", symbol
            identity_roles[(constant, scopes[body["scope"]])] = condition
        else:
            assert body["properties"]["principalId"] == "operatorPrincipalId", symbol
            assert condition is not None, f"{symbol}: the operator's role is optional"
            operator_roles.add((constant, scopes[body["scope"]]))
    assert identity_roles == expected_identity, "the identity gets exactly these roles, on exactly these scopes"
    assert operator_roles == expected_operator
    for resource in arm_rbac["resources"]:
        assert re.fullmatch(
            r"\[subscriptionResourceId\('Microsoft.Authorization/roleDefinitions', variables\('\w+RoleId'\)\)\]",
            resource["properties"]["roleDefinitionId"],
        )
    for guid in ROLE_IDS:
        assert guid not in json.dumps(arm_rbac["resources"]), "role ids appear only as named constants"


def test_app_identity_reads_the_vault_and_writes_only_the_refresh_token_secret(bicep, arm):
    rbac, main = bicep["modules/rbac.bicep"], bicep["main.bicep"]
    officer = "keyVaultSecretsOfficerRoleId"

    # Bicep: no Secrets Officer on the vault for the app; Officer on the token secret, which is only referenced.
    existing = {n: r for n, r in rbac["resources"].items() if r.get("existing")}
    app_officer = []
    for resource in deployed_resources(rbac).values():
        body, condition, _ = unwrap(resource)
        role = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        if body["properties"]["principalId"] == "principalId" and role == officer:
            app_officer.append((existing[body["scope"]], condition))
    assert len(app_officer) == 1, "one write role for the app identity"
    (secret, condition) = app_officer[0]
    assert secret["type"] == "Microsoft.KeyVault/vaults/secrets"
    assert secret["config"]["name"] == "refreshTokenSecretName"
    assert existing[secret["config"]["parent"]]["type"] == "Microsoft.KeyVault/vaults"
    assert condition == "refreshTokenSecretExists"
    passed = unwrap(main["modules"]["rbac"])[0]["params"]
    assert bicep_token(passed["refreshTokenSecretName"]) == "secretNames.partnerCenterRefreshToken"
    assert passed["refreshTokenSecretExists"] == "partnerCenterTokenStored"
    assert main["parameters"]["partnerCenterTokenStored"]["default"] is False

    # ARM: the same, spelled as the scope strings ARM deploys.
    arm_rbac = arm_nested(arm, "rbac")
    app = [r for r in arm_rbac["resources"] if r["properties"]["principalId"] == "[parameters('principalId')]"]
    vault_scope = "[format('Microsoft.KeyVault/vaults/{0}', parameters('keyVaultName'))]"
    secret_scope = (
        "[format('Microsoft.KeyVault/vaults/{0}/secrets/{1}', parameters('keyVaultName'), "
        "parameters('refreshTokenSecretName'))]"
    )
    on_vault = [r for r in app if r["scope"] == vault_scope]
    assert [r["properties"]["roleDefinitionId"] for r in on_vault] == [
        "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', variables('keyVaultSecretsUserRoleId'))]"
    ], "on the vault the app identity only reads"
    writers = [r for r in app if f"variables('{officer}')" in r["properties"]["roleDefinitionId"]]
    assert len(writers) == 1 and writers[0]["scope"] == secret_scope
    assert writers[0]["condition"] == "[parameters('refreshTokenSecretExists')]"
    rbac_deployment = next(r for r in arm["resources"] if r["name"] == "rbac")["properties"]["parameters"]
    assert rbac_deployment["refreshTokenSecretName"]["value"] == "[variables('secretNames').partnerCenterRefreshToken]"
    assert rbac_deployment["refreshTokenSecretExists"]["value"] == "[parameters('partnerCenterTokenStored')]"

    # Neither form deploys the token secret itself, so a redeployment cannot overwrite a stored token.
    for _, resource, body in walk_bicep(bicep):
        if resource["type"] == "Microsoft.KeyVault/vaults/secrets":
            assert bicep_token(body["name"]) != "secretNames.partnerCenterRefreshToken"
    token_name = main["variables"]["secretNames"]["value"]["partnerCenterRefreshToken"]
    keyvault = arm_nested(arm, "keyvault")
    for resource in walk_arm(arm):
        if resource["type"] == "Microsoft.KeyVault/vaults/secrets":
            assert "partnerCenterRefreshToken" not in resource["name"] and token_name not in resource["name"]
    assert "partnerCenterRefreshToken" not in json.dumps(keyvault["resources"])


def test_app_settings_identity_based_and_secrets_from_key_vault(bicep, arm):
    main, app = bicep["main.bicep"], bicep["modules/functionapp.bicep"]
    in_bicep = setting_names(main["variables"]) | setting_names(app["variables"])
    arm_app = arm_nested(arm, "functionapp")
    in_arm = setting_names(arm["variables"]) | setting_names(arm_app["variables"])
    assert in_bicep == in_arm
    assert REQUIRED_APP_SETTINGS <= in_bicep, sorted(REQUIRED_APP_SETTINGS - in_bicep)
    assert not (FORBIDDEN_APP_SETTINGS & in_bicep)

    site = next(body for _, r, body in walk_bicep(bicep) if r["type"] == "Microsoft.Web/sites")
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert site["properties"]["siteConfig"]["appSettings"] == {
        "function": {"type": "concat", "parameters": {"arg_1": "platformSettings", "arg_2": "appSettings"}}
    }
    arm_site = next(r for r in walk_arm(arm) if r["type"] == "Microsoft.Web/sites")
    assert arm_site["properties"]["keyVaultReferenceIdentity"] == "[parameters('identityId')]"

    reference_format = main["variables"]["keyVaultReferenceFormat"]["value"]
    assert reference_format == "@Microsoft.KeyVault(VaultName={0};SecretName={1})"
    assert arm["variables"]["keyVaultReferenceFormat"] == reference_format

    def secret_values(value: Any) -> list[tuple[str, Any]]:
        found = []
        if isinstance(value, dict):
            if (
                set(value) == {"name", "value"}
                and isinstance(value["name"], str)
                and SECRET_SETTING.search(value["name"])
            ):
                found.append((value["name"], value["value"]))
            for item in value.values():
                found += secret_values(item)
        elif isinstance(value, list):
            for item in value:
                found += secret_values(item)
        return found

    secrets = secret_values(main["variables"]) + secret_values(app["variables"])
    assert {name for name, _ in secrets} >= {"PARTNER_CENTER_REFRESH_TOKEN", "PARTNER_CENTER_CLIENT_SECRET"}
    for name, value in secrets:
        assert value["function"]["type"] == "format", name
        assert value["function"]["parameters"]["format_string"] == "keyVaultReferenceFormat", name
    secret_names = main["variables"]["secretNames"]["value"]
    assert secret_names == arm["variables"]["secretNames"]
    assert secret_names["partnerCenterRefreshToken"] == "partner-center-refresh-token"
    arm_text = json.dumps(arm)
    for setting in sorted(s for s in REQUIRED_APP_SETTINGS if SECRET_SETTING.search(s)):
        if setting == "PARTNER_CENTER_REFRESH_TOKEN":
            entry = next(e for e in arm["variables"]["behaviourSettings"] if e["name"] == setting)
            assert entry["value"].startswith("[format(variables('keyVaultReferenceFormat')"), setting
        else:
            assert f"'{setting}', 'value', format(variables('keyVaultReferenceFormat')" in arm_text, setting


def test_queues_tables_and_container(bicep, arm):
    main = bicep["main.bicep"]
    assert main["variables"]["queueNames"]["value"] == EXPECTED_QUEUES == arm["variables"]["queueNames"]
    assert main["variables"]["tableNames"]["value"] == EXPECTED_TABLES == arm["variables"]["tableNames"]
    storage = bicep["modules/storage.bicep"]["resources"]
    assert unwrap(storage["queues"])[2]["detail"]["array_name"] == "queueNames"
    assert unwrap(storage["tables"])[2]["detail"]["array_name"] == "tableNames"
    assert main["variables"]["deploymentContainerName"]["value"] == arm["variables"]["deploymentContainerName"]


def test_code_arrives_by_one_deploy_after_the_role_assignments(bicep, arm):
    app = bicep["modules/functionapp.bicep"]["resources"]["codePackage"]
    body, condition, _ = unwrap(app)
    assert app["type"] == "Microsoft.Web/sites/extensions" and body["name"] == "onedeploy"
    assert condition == "deployPackage" and body["properties"]["packageUri"] == "packageUri"
    module = unwrap(bicep["main.bicep"]["modules"]["functionApp"])[0]
    assert module["dependsOn"] == ["rbac"], "the app and its code must wait for the role assignments"
    deployment = next(r for r in arm["resources"] if r["name"] == "functionapp")
    assert "[resourceId('Microsoft.Resources/deployments', 'rbac')]" in deployment["dependsOn"]
    uri = arm["variables"]["latestPackageUri"]
    assert "releases/latest/download/cosell-connector.zip" in uri
    assert arm["parameters"]["githubRepository"]["defaultValue"] == "cosell-connector/cosell-connector"


def test_outputs_name_the_webhook_app_and_vault(bicep, arm):
    outputs = bicep["main.bicep"]["outputs"]
    for name in ("webhookUrl", "functionAppName", "keyVaultName"):
        assert name in outputs and name in arm["outputs"]
    assert outputs["webhookUrl"]["value"].endswith(WEBHOOK_ROUTE)
    assert f"{WEBHOOK_ROUTE}'" in arm["outputs"]["webhookUrl"]["value"]


def test_azd_files_agree_with_the_template(bicep):
    parameters = json.loads(PARAMETERS_FILE.read_text(encoding="utf-8"))
    assert parameters["$schema"].endswith("deploymentParameters.json#")
    declared = bicep["main.bicep"]["parameters"]
    for name in parameters["parameters"]:
        assert name in declared, f"main.parameters.json sets unknown parameter {name}"
    assert parameters["parameters"]["deployPackage"]["value"] is False, "azd deploys the code itself"
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s+host: function$", azure_yaml, re.M)
    assert re.search(r"^\s+language: python$", azure_yaml, re.M)
    site = next(body for _, r, body in walk_bicep(bicep) if r["type"] == "Microsoft.Web/sites")
    service = re.search(r"^  (\w[\w-]*):\n", azure_yaml.split("services:", 1)[1], re.M).group(1)
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": service}


# ==================================================================================================
# Tests: latency settings (always-ready instances)
# ==================================================================================================

# Flex Consumption names the HTTP functions' group 'http' and any other function 'function:<name>'.
ALWAYS_READY_GROUPS = {"http": "httpTrigger", "function:sync_worker": "queueTrigger"}
ALWAYS_READY_PARAM = "alwaysReadyInstances"


def test_always_ready_defaults_to_none_and_fits_within_the_instance_limit(bicep, arm):
    params = bicep["main.bicep"]["parameters"]
    declared = params[ALWAYS_READY_PARAM]
    assert declared["type"] == "int"
    assert declared["default"] == 0, "always-ready instances are billed around the clock: none unless asked for"
    bounds = decorators(declared)
    assert bounds["min_value"] == 0
    # Every group at the maximum still fits the smallest maximumInstanceCount the template accepts.
    assert bounds["max_value"] * len(ALWAYS_READY_GROUPS) <= decorators(params["maximumInstanceCount"])["min_value"]
    arm_param = arm["parameters"][ALWAYS_READY_PARAM]
    assert (arm_param["type"], arm_param["defaultValue"]) == ("int", 0)
    assert (arm_param["minValue"], arm_param["maxValue"]) == (bounds["min_value"], bounds["max_value"])


def test_always_ready_reaches_the_webhook_and_the_sync_worker_in_bicep(bicep):
    main = bicep["main.bicep"]
    # var alwaysReady = (alwaysReadyInstances == 0) ? [] : [{name: GROUP, instanceCount: alwaysReadyInstances}, ...]
    ternary = main["variables"]["alwaysReady"]["value"]["operator"]
    assert ternary["type"] == "conditional"
    condition = ternary["operands"]["condition"]["operator"]
    assert condition["type"] == "equals"
    assert condition["operands"] == {"operand_1": ALWAYS_READY_PARAM, "operand_2": 0}
    assert ternary["operands"]["true_value"] == [], "0 deploys an empty alwaysReady list"
    assert ternary["operands"]["false_value"] == [
        {"name": group, "instanceCount": ALWAYS_READY_PARAM} for group in ALWAYS_READY_GROUPS
    ]
    module = unwrap(main["modules"]["functionApp"])[0]
    assert module["params"]["alwaysReady"] == "alwaysReady"
    app = bicep["modules/functionapp.bicep"]
    assert app["parameters"]["alwaysReady"]["type"] == "array"
    site = next(body for _, r, body in walk_bicep(bicep) if r["type"] == "Microsoft.Web/sites")
    assert site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"] == "alwaysReady"


def test_always_ready_compiles_to_the_same_arm_and_azd_passes_it(bicep, arm):
    groups = ", ".join(
        f"createObject('name', '{group}', 'instanceCount', parameters('{ALWAYS_READY_PARAM}'))"
        for group in ALWAYS_READY_GROUPS
    )
    assert arm["variables"]["alwaysReady"] == (
        f"[if(equals(parameters('{ALWAYS_READY_PARAM}'), 0), createArray(), createArray({groups}))]"
    )
    deployment = next(r for r in arm["resources"] if r["name"] == "functionapp")["properties"]
    assert deployment["parameters"]["alwaysReady"] == {"value": "[variables('alwaysReady')]"}
    assert deployment["template"]["parameters"]["alwaysReady"]["type"] == "array"
    arm_site = next(r for r in walk_arm(arm) if r["type"] == "Microsoft.Web/sites")
    scale = arm_site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["alwaysReady"] == "[parameters('alwaysReady')]"
    parameters = json.loads(PARAMETERS_FILE.read_text(encoding="utf-8"))["parameters"]
    assert parameters[ALWAYS_READY_PARAM]["value"] == "${ALWAYS_READY_INSTANCES=0}"


def test_always_ready_groups_name_the_apps_webhook_and_queue_functions():
    import azure.functions as func

    from shared.functions import http, worker

    app = func.FunctionApp()
    app.register_functions(http.bp)
    app.register_functions(worker.bp)
    triggers = {
        f.get_function_name(): json.loads(f.get_function_json())["bindings"][0]["type"] for f in app.get_functions()
    }
    assert triggers["partner_center_webhook"] == ALWAYS_READY_GROUPS["http"]
    for group, trigger in ALWAYS_READY_GROUPS.items():
        if group.startswith("function:"):
            assert triggers.get(group.removeprefix("function:")) == trigger, f"{group} is not a {trigger} function"


def test_deploy_doc_lists_the_latency_parameters_with_their_defaults(bicep):
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    params = bicep["main.bicep"]["parameters"]
    row = next(line for line in doc.splitlines() if line.startswith("| `crmPollSchedule`"))
    assert f"`{params['crmPollSchedule']['default']}`" in row
    row = next(line for line in doc.splitlines() if line.startswith(f"| `{ALWAYS_READY_PARAM}`"))
    assert f"`{params[ALWAYS_READY_PARAM]['default']}`" in row


# ==================================================================================================
# Tests: checkov
# ==================================================================================================


def read_skip_list() -> dict[tuple[str, str], str]:
    entries = {}
    for number, line in enumerate(SKIP_LIST.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "skips:":
            continue
        match = re.fullmatch(r'  "(CKV2?_[A-Z]+_\d+) ([A-Za-z.]+/[A-Za-z/]+)": "(.{20,})"', line)
        assert match, f'{SKIP_LIST.name}:{number}: expected \'  "CKV_ID Resource/Type": "reason"\''
        entries[(match.group(1), match.group(2))] = match.group(3)
    return entries


@pytest.fixture(scope="module")
def checkov_report() -> list[dict]:
    _need(CHECKOV, "checkov venv")
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(INFRA),
            "--framework",
            "bicep",
            "arm",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
        check=False,
    )
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def test_skip_list_is_valid_yaml_with_a_reason_per_entry():
    entries = read_skip_list()
    assert entries
    if CHECKOV_PYTHON.exists():
        loaded = subprocess.run(
            [
                str(CHECKOV_PYTHON),
                "-c",
                "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                str(SKIP_LIST),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        skips = json.loads(loaded.stdout)["skips"]
        assert {tuple(k.split(" ", 1)): v for k, v in skips.items()} == entries


def test_checkov_scans_every_file(checkov_report):
    by_type = {r["check_type"]: r for r in checkov_report}
    assert set(by_type) == {"bicep", "arm"}, sorted(by_type)
    for kind, report in by_type.items():
        assert report["summary"]["parsing_errors"] == 0, f"checkov could not parse some {kind} files"
        assert report["summary"]["resource_count"] > 0
    scanned = {
        Path(c["file_path"]).name
        for r in checkov_report
        for c in r["results"]["passed_checks"] + r["results"]["failed_checks"]
    }
    # The files with the resources checkov has policies for (the others parse, see parsing_errors).
    expected = {"functionapp.bicep", "storage.bicep", "keyvault.bicep", ARM_TEMPLATE.name}
    assert expected <= scanned, f"checkov checked nothing in {sorted(expected - scanned)}"


def test_checkov_findings_are_all_explained(checkov_report):
    skips = read_skip_list()
    used: set[tuple[str, str]] = set()
    unexplained = []
    for report in checkov_report:
        for failed in report["results"]["failed_checks"]:
            key = next(
                (k for k in skips if k[0] == failed["check_id"] and failed["resource"].startswith(k[1] + ".")),
                None,
            )
            if key is None:
                unexplained.append(
                    f"{report['check_type']}: {failed['check_id']} {failed['check_name']} "
                    f"on {failed['resource']} ({failed['file_path']})"
                )
            else:
                used.add(key)
    assert not unexplained, "fix these or add them with a reason to infra/checkov-skips.yaml:\n  " + "\n  ".join(
        unexplained
    )
    stale = sorted(set(skips) - used)
    assert not stale, f"skip list entries that no longer match a finding (remove them): {stale}"


# ==================================================================================================
# Tests: alerts and the operations workbook (over the app's telemetry, shared/telemetry)
# ==================================================================================================

# Each alert rule and the signals (shared/telemetry/names.py) its query must read.
ALERT_SIGNALS = {
    "poisonAlert": ("METRIC_QUEUE_DEPTH", "EVENT_JOB_POISONED"),
    "credentialAlert": ("EVENT_CREDENTIAL_REFUSED",),
    "quotaAlert": ("EVENT_QUOTA_PAUSED",),
    "webhookSilenceAlert": ("EVENT_WEBHOOK_RECEIVED", "EVENT_RECONCILE_CHANGES"),
}
# Each workbook chart and the names its query must read.
WORKBOOK_SIGNALS = {
    "syncs-per-hour": ("EVENT_JOB_COMPLETED", "DIM_DIRECTION", "DIM_OUTCOME"),
    "failures-by-reason": ("EVENT_JOB_COMPLETED", "DIM_FAILURE_REASON"),
    "webhook-latency": ("EVENT_JOB_COMPLETED", "DIM_WEBHOOK_TO_CRM_MS"),
    "queue-depth": ("METRIC_QUEUE_DEPTH", "DIM_QUEUE"),
}
ALERTS_MODULE = "modules/alerts.bicep"


def _alert_query(alerts: dict, symbol: str) -> str:
    """The KQL of an alert rule: a query variable, used as it is or through format(query, parameter)."""
    body = unwrap(alerts["resources"][symbol])[0]
    query = body["properties"]["criteria"]["allOf"][0]["query"]
    if is_expression_node(query):
        assert query["function"]["type"] == "format", symbol
        query = query["function"]["parameters"]["format_string"]
    return alerts["variables"][query]["value"]


def _workbook_queries(alerts: dict) -> dict[str, str]:
    items = alerts["variables"]["workbookContent"]["value"]["items"]
    return {item["name"]: alerts["variables"][item["content"]["query"]]["value"] for item in items if item["type"] == 3}


def _names_in(query: str) -> tuple[set[str], set[str]]:
    """(event and metric names compared with `name ==`, customDimensions keys) a KQL query reads."""
    return set(re.findall(r'\bname == "([^"]+)"', query)), set(re.findall(r"customDimensions\.(\w+)", query))


def test_action_group_alert_rules_and_workbook_are_deployed(bicep, arm):
    alerts = bicep[ALERTS_MODULE]
    resources = deployed_resources(alerts)
    by_type: dict[str, list[str]] = {}
    for symbol, resource in resources.items():
        by_type.setdefault(resource["type"], []).append(symbol)
    assert sorted(by_type["Microsoft.Insights/scheduledQueryRules"]) == sorted(ALERT_SIGNALS)
    assert by_type["Microsoft.Insights/actionGroups"] == ["actionGroup"]
    assert by_type["Microsoft.Insights/workbooks"] == ["workbook"]

    group = unwrap(resources["actionGroup"])[0]
    assert group["properties"]["emailReceivers"] == "emailReceivers"
    receivers = alerts["variables"]["emailReceivers"]["value"]["operator"]["operands"]["false_value"]
    assert receivers[0]["emailAddress"] == "alertEmail"
    for symbol in ALERT_SIGNALS:
        rule = unwrap(resources[symbol])[0]["properties"]
        assert rule["enabled"] is True, symbol
        assert rule["actions"]["actionGroups"] == [bicep_expression("actionGroup", "id")], symbol
        assert rule["scopes"] == [bicep_expression("appInsights", "id")], symbol
    workbook = unwrap(resources["workbook"])[0]
    assert workbook["kind"] == "shared" and workbook["properties"]["category"] == "workbook"
    assert workbook["properties"]["serializedData"]["function"]["parameters"]["value_to_convert"] == "workbookContent"

    main = bicep["main.bicep"]
    module = unwrap(main["modules"]["alerts"])[0]["params"]
    for name in ("alertEmail", "webhookSilenceMinutes", "authFailureThreshold"):
        assert module[name] == name and name in main["parameters"] and name in arm["parameters"]
    assert main["parameters"]["alertEmail"]["default"] == "", "no address is assumed"

    deployed = arm_nested(arm, "alerts")
    arm_types = sorted(r["type"] for r in deployed["resources"])
    assert arm_types == sorted(r["type"] for r in resources.values())
    action_group = "[resourceId('Microsoft.Insights/actionGroups', variables('actionGroupName'))]"
    for resource in deployed["resources"]:
        if resource["type"] == "Microsoft.Insights/scheduledQueryRules":
            assert resource["properties"]["actions"]["actionGroups"] == [action_group]
            assert action_group in resource["dependsOn"]


def bicep_expression(resource: str, prop: str) -> dict:
    return {"operator": {"type": "property_accessor", "operands": {"operand_1": resource, "operand_2": prop}}}


def test_alert_and_workbook_queries_read_only_names_the_app_emits(bicep, arm):
    from shared.store.queue import POISON_QUEUE
    from shared.telemetry import names

    alerts = bicep[ALERTS_MODULE]
    emitted = set(names.EVENTS) | set(names.METRICS)
    queries = {symbol: _alert_query(alerts, symbol) for symbol in ALERT_SIGNALS}
    workbook = _workbook_queries(alerts)
    assert set(workbook) == set(WORKBOOK_SIGNALS)
    for where, query in {**queries, **workbook}.items():
        read, dimensions = _names_in(query)
        assert read, f"{where}: the query reads no event or metric"
        assert read <= emitted, f"{where}: {sorted(read - emitted)} are not emitted (shared/telemetry/names.py)"
        assert dimensions <= set(names.DIMENSIONS), (
            f"{where}: unknown dimensions {sorted(dimensions - set(names.DIMENSIONS))}"
        )
    for symbol, signals in ALERT_SIGNALS.items():
        for signal in signals:
            assert f'"{getattr(names, signal)}"' in queries[symbol], f"{symbol} does not read {signal}"
    for item, signals in WORKBOOK_SIGNALS.items():
        for signal in signals:
            value = getattr(names, signal)
            assert f'"{value}"' in workbook[item] or f"customDimensions.{value}" in workbook[item], (item, signal)
    assert f'"{POISON_QUEUE}"' in queries["poisonAlert"]
    assert "percentile(" in workbook["webhook-latency"] and ", 95)" in workbook["webhook-latency"]

    # The thresholds come from the parameters; the ARM template carries the very same queries.
    for symbol, parameter in (
        ("credentialAlert", "authFailureThreshold"),
        ("webhookSilenceAlert", "webhookSilenceMinutes"),
    ):
        query = unwrap(alerts["resources"][symbol])[0]["properties"]["criteria"]["allOf"][0]["query"]
        assert query["function"]["parameters"]["arg_1"] == parameter
        assert "{0}" in _alert_query(alerts, symbol)
    deployed = arm_nested(arm, "alerts")
    for name, value in alerts["variables"].items():
        if name.endswith("Query"):
            assert deployed["variables"][name] == value["value"], name
