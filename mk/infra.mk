# Infrastructure checks and the release package (issue 6).
# Included by the root Makefile before its `test` target, so TEST_PREREQS below reaches `make test`.
#
# Two tool venvs, because checkov pins an older Bicep parser than the one the tests use:
#   .venv-checkov  checkov (security scan of infra/, Bicep and ARM)
#   .venv-infra    pycep-parser 0.7.1 (parses infra/*.bicep for the Bicep/ARM equivalence tests)
CHECKOV_VERSION := 3.3.30
PYCEP_VERSION := 0.7.1
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed-$(PYCEP_VERSION)
CHECKOV_SKIPS := infra/checkov-skips.yaml
PACKAGE_ZIP := dist/cosell-connector.zip

TEST_PREREQS += $(CHECKOV_STAMP) $(INFRA_STAMP)
# Under make the infra tests must run: they fail instead of skipping when a tool venv is missing.
test: export INFRA_TOOLS_REQUIRED := 1

.PHONY: package checkov infra-tools arm

$(CHECKOV_STAMP):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3.11"; exit 1; }
	rm -rf $(CHECKOV_VENV) && $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

$(INFRA_STAMP):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3.11"; exit 1; }
	rm -rf $(INFRA_VENV) && $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install --quiet pycep-parser==$(PYCEP_VERSION)
	touch $@

infra-tools: $(CHECKOV_STAMP) $(INFRA_STAMP)

# The release zip the Functions host runs: app files + Linux x86-64 / CPython 3.11 wheels.
package: $(VENV_STAMP)
	$(PY) -m devtools.release.package --output $(PACKAGE_ZIP)

# Human-readable security scan without the accepted findings (skipped here by check id; the test in
# tests/test_infra.py matches them per resource type and fails on anything unexplained).
checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -d infra --framework bicep arm --skip-download --compact \
		--skip-check "$$(sed -n 's/^  *"\(CKV[A-Z0-9_]*\) .*/\1/p' $(CHECKOV_SKIPS) | sort -u | paste -sd, -)"

# Recompile the ARM template where the Bicep CLI exists (az bicep or bicep on PATH).
arm:
	az bicep build --file infra/main.bicep --outfile infra/azuredeploy.json
