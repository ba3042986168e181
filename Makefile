.PHONY: test serve demo bench
# The README's two commands, for those who prefer make.
test:
	bash scripts/test.sh
serve:
	bash scripts/serve.sh
demo:
	bash scripts/demo.sh
bench:
	bash scripts/bench.sh
