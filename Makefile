PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: test demo bench clean

# The venv is rebuilt when either requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf .venv .pytest_cache
