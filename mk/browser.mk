# Headless Chromium from Debian's packages for the operator page's real-browser test (issue 14).
# Included by the root Makefile before its `test` target, so TEST_PREREQS below reaches `make test`.
# Playwright drives this browser (never `playwright install`, which downloads a browser build of its own).
# The browser test fails, naming what is missing, when the browser or Playwright is absent; only
# BROWSER_TEST_SKIP=1, which nothing here sets, lets it skip (for a developer machine without a browser).
CHROMIUM := /usr/bin/chromium
# apt-get needs root: sudo when not root and sudo is there.
APT_SUDO := $(shell [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && echo sudo; })

TEST_PREREQS += $(CHROMIUM)

$(CHROMIUM):
	@command -v apt-get >/dev/null 2>&1 || { echo "$(CHROMIUM) is missing and apt-get is not here: install Debian's chromium"; exit 1; }
	$(APT_SUDO) apt-get update -qq
	$(APT_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

.PHONY: browser
browser: $(CHROMIUM)
