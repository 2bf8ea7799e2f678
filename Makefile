# The two commands of the README; everything else is in scripts/.
.PHONY: test demo sandbox lint compat

test:
	scripts/test.sh

demo:
	scripts/demo.sh

sandbox:
	scripts/sandbox.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy certbot_incapsula

compat:
	scripts/compat.sh
