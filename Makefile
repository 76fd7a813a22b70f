PY := .venv/bin/python
# the venv: what train.py and sample.py need (make demo), then for make test also the independent CLIP the tests
# compare against and what export.py and sample.py --onnx need
RUN_STAMP := .venv/.installed-run
TEST_STAMP := .venv/.installed-test
# a few images of the synthetic test split (the last 10% of data/synth)
DEMO_IMAGES := data/synth/images/036000.png data/synth/images/036001.png data/synth/images/036002.png data/synth/images/036003.png

.PHONY: test demo bench clean

# Each part is rebuilt when a requirements file of it changes; make test installs all it needs with one pip command,
# byte-compiled once. pip byte-compiles one file at a time, so we let compileall do it on every core (the install takes
# a quarter less). A few files of torch's own tests are not Python 3.11: compileall skips them, names them and fails,
# and we go on.
install = $(PY) -m pip install -q --no-compile $(1) && { $(PY) -m compileall -q -j 0 .venv/lib > /dev/null 2>&1 || true; }

$(RUN_STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(call install,-r requirements.txt)
	touch $(RUN_STAMP)

$(TEST_STAMP): requirements.txt requirements-dev.txt requirements-export.txt
	test -x $(PY) || python3 -m venv .venv
	$(call install,-r requirements.txt -r requirements-dev.txt -r requirements-export.txt)
	touch $(RUN_STAMP) $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n auto --dist loadgroup tests

# draw the synthetic set (once), train a tiny CLIP + decoder from scratch on the CPU, predict a few test images, and
# say how long each phase took; a second run reuses the set and the venv and replaces out/demo, saying so
demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory $(RUN_STAMP) || exit 1; installed=$$(date +%s); \
	test -f data/synth/labels.csv || $(PY) synth.py || exit 1; drawn=$$(date +%s); \
	$(PY) train.py --dataset=synth --out_dir=out/demo --overwrite=True || exit 1; trained=$$(date +%s); \
	$(PY) sample.py $(DEMO_IMAGES) --ckpt=out/demo/ckpt.pt --out_dir=out/demo/samples --attention=True || exit 1; \
	end=$$(date +%s); \
	echo "make demo took $$((end - start)) s: install $$((installed - start)) s, drawing the set" \
	     "$$((drawn - installed)) s, train.py $$((trained - drawn)) s (its time: line splits training and evaluation)," \
	     "sampling $$((end - trained)) s"

bench: $(RUN_STAMP)
	$(PY) bench.py

clean:
	rm -rf .venv .pytest_cache
