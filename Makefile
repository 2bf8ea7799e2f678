# The two commands of the README; everything else is in scripts/.
.PHONY: test demo lint compat

test:
	scripts/test.sh

demo:
	scripts/demo.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy certbot_incapsula

compat:
	scripts/compat.sh
